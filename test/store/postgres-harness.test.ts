/**
 * The test PostgreSQL itself: started by the run, not as root, on loopback,
 * one database per file, and a cluster a test owns can be stopped and
 * started again (what the PostgreSQL-down tests rely on).
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { createDatabase, startPgCluster, type PgCluster } from '../helpers/postgres.js';

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(sql)).rows;
  } finally {
    await c.end();
  }
}

describe('test PostgreSQL harness', () => {
  const owned: PgCluster[] = [];
  afterAll(async () => {
    for (const c of owned) await c.destroy();
  });

  it('serves the run-wide cluster on 127.0.0.1 with password authentication', async () => {
    const admin = inject('pgAdminUrl');
    const u = new URL(admin);
    expect(u.hostname).toBe('127.0.0.1');
    expect(u.password).not.toBe('');
    const wrong = new URL(admin);
    wrong.password = 'wrong';
    await expect(query(wrong.toString(), 'SELECT 1')).rejects.toThrow(/password authentication failed/);
    const [row] = await query<{ v: number }>(admin, `SELECT current_setting('server_version_num')::int AS v`);
    expect(row!.v).toBeGreaterThanOrEqual(130000);
  });

  it('gives each caller its own empty database', async () => {
    const admin = inject('pgAdminUrl');
    const a = await createDatabase(admin);
    const b = await createDatabase(admin);
    expect(a).not.toBe(b);
    await query(a, 'CREATE TABLE only_in_a (x int)');
    expect(await query(b, `SELECT to_regclass('only_in_a') AS t`)).toEqual([{ t: null }]);
  });

  it('runs the server as a non-root OS user, and stops and restarts an owned cluster', async () => {
    const c = await startPgCluster();
    owned.push(c);
    const pid = c.pid()!;
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const uid = Number(/^Uid:\s+(\d+)/m.exec(status)![1]);
    expect(uid).not.toBe(0);
    await query(c.url, 'CREATE TABLE kept (x int)');
    await c.stop();
    expect(c.pid()).toBeUndefined();
    await expect(query(c.url, 'SELECT 1')).rejects.toThrow();
    await c.start();
    expect(await query(c.url, `SELECT to_regclass('kept')::text AS t`)).toEqual([{ t: 'kept' }]);
  });
});
