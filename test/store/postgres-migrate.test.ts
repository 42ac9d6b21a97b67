/**
 * Schema migrations on PostgreSQL: three brokers opening the same empty
 * database at once migrate it exactly once (advisory lock), a newer schema
 * is refused, and `migrate: false` refuses an unmigrated database.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createPgPool, migratePg, PG_SCHEMA_VERSION, PostgresStore } from '../../src/store/postgres.js';
import { PG_MIGRATIONS } from '../../src/store/migrations/postgres.js';
import { freshDatabase } from '../helpers/postgres.js';

async function rows<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(sql)).rows;
  } finally {
    await c.end();
  }
}

describe('PostgreSQL migrations', () => {
  it('three brokers starting together on an empty database migrate it once', async () => {
    const url = await freshDatabase('mayfly_migrate');
    // Each "broker" has its own pool, as separate processes would.
    const pools = [0, 1, 2].map(() => createPgPool({ url }));
    try {
      const results = await Promise.all(pools.map((p) => migratePg(p, url)));
      const applied = results.map((r) => r.applied.length);
      expect(applied.reduce((a, b) => a + b, 0)).toBe(PG_MIGRATIONS.length);
      expect(applied.filter((n) => n > 0)).toHaveLength(1);
      expect(results.every((r) => r.to === PG_SCHEMA_VERSION)).toBe(true);
      const recorded = await rows<{ version: number }>(url, 'SELECT version FROM mayfly_schema_migrations ORDER BY version');
      expect(recorded.map((r) => r.version)).toEqual(PG_MIGRATIONS.map((m) => m.version));
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
    // And stores opening afterwards find nothing to do but work.
    const stores = await Promise.all([0, 1, 2].map(() => PostgresStore.open({ url })));
    await stores[0]!.appendEvent({ kind: 'keyset', at: 1, taskIds: [], jtis: [], kid: 'k', reason: 'r', coversUntil: 2 });
    expect((await stores[2]!.cursorRange()).latest).toBe(1);
    await Promise.all(stores.map((s) => s.close()));
  });

  it('refuses a database whose schema is newer than this build', async () => {
    const url = await freshDatabase('mayfly_migrate');
    const s = await PostgresStore.open({ url });
    await s.close();
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query(`INSERT INTO mayfly_schema_migrations (version, name) VALUES (${PG_SCHEMA_VERSION + 1}, 'from the future')`);
    await c.end();
    await expect(PostgresStore.open({ url })).rejects.toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(new RegExp(`schema version ${PG_SCHEMA_VERSION + 1}, newer than this broker supports \\(${PG_SCHEMA_VERSION}\\)`)) });
  });

  it('with migrate: false, refuses an unmigrated database and accepts a migrated one', async () => {
    const url = await freshDatabase('mayfly_migrate');
    await expect(PostgresStore.open({ url, migrate: false })).rejects.toMatchObject({ code: 'ERR_STORE', message: expect.stringContaining('run mayfly db migrate') });
    expect(await rows(url, `SELECT to_regclass('tasks') AS t`)).toEqual([{ t: null }]);
    await (await PostgresStore.open({ url })).close();
    const s = await PostgresStore.open({ url, migrate: false });
    expect(await s.getTask('x')).toBeNull();
    await s.close();
  });

  it('fails with ERR_UNAVAILABLE, without the password, when nothing listens', async () => {
    const url = 'postgres://mayfly:hunter2-secret@127.0.0.1:1/mayfly';
    const err = await PostgresStore.open({ url, connectTimeoutMs: 1000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_UNAVAILABLE', message: expect.stringContaining('PostgreSQL store at 127.0.0.1:1/mayfly is unavailable') });
    expect(JSON.stringify(err) + String((err as Error).message)).not.toContain('hunter2');
  });

  it('names a wrong password as such, without echoing it', async () => {
    const good = new URL(await freshDatabase('mayfly_migrate'));
    good.password = 'wrong-password-value';
    const err = await PostgresStore.open({ url: good.toString() }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringContaining('refused the credentials') });
    expect((err as Error).message).not.toContain('wrong-password-value');
  });
});
