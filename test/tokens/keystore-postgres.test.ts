import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { PostgresKeyStore } from '../../src/tokens/keystore-postgres.js';
import { runKeyStoreContract } from '../contracts/keystore.contract.js';
import { freshDatabase, migratedSchemaPool } from '../helpers/postgres.js';

const T0 = Date.UTC(2026, 0, 1);
let dbUrl: string;
beforeAll(async () => {
  dbUrl = await freshDatabase();
});

/** A fresh schema with the keys table, and a pool whose search_path points at it. */
function freshPool(): Promise<pg.Pool> {
  return migratedSchemaPool(dbUrl, 'ks', 4);
}

runKeyStoreContract('PostgresKeyStore', async () => {
  const pool = await freshPool();
  const kek = randomBytes(32);
  return {
    open: () => PostgresKeyStore.open({ pool, kek }),
    persistent: { openWithKek: (other) => PostgresKeyStore.open({ pool, kek: other }) },
    cleanup: () => pool.end(),
  };
});

describe('PostgresKeyStore across replicas', () => {
  it('stores the private key only sealed, and detects an edited row', async () => {
    const pool = await freshPool();
    const kek = randomBytes(32);
    const a = await PostgresKeyStore.open({ pool, kek });
    const k = await a.create('ES256', 'revoked', T0);
    const row = (await pool.query('SELECT * FROM signing_keys')).rows[0] as Record<string, unknown>;
    const text = JSON.stringify(row);
    expect(text).not.toMatch(/PRIVATE KEY|"d":/);
    expect(row['kek_id']).toMatch(/^[A-Za-z0-9_-]{22}$/);
    for (const [what, sql] of [
      ['state', `UPDATE signing_keys SET state = 'active'`],
      ['timestamp', `UPDATE signing_keys SET state_since = state_since + 1`],
      ['public key', `UPDATE signing_keys SET public_jwk = jsonb_set(public_jwk, '{x}', public_jwk->'y')`],
    ] as const) {
      await pool.query('BEGIN');
      await pool.query(sql);
      const err = await PostgresKeyStore.open({ pool, kek }).then(
        () => null,
        (e: unknown) => e as { code: string; message: string },
      );
      await pool.query('ROLLBACK');
      expect(err?.code, what).toBe('ERR_KEYSTORE');
      expect(err?.message).toContain(`key ${k.kid} in signing_keys failed its integrity check`);
    }
    await a.close();
    await pool.end();
  });

  it('a second replica sees every change, refuses a transition another replica already made, and its signer stops once the key is revoked elsewhere', async () => {
    const pool = await freshPool();
    const kek = randomBytes(32);
    const a = await PostgresKeyStore.open({ pool, kek });
    const b = await PostgresKeyStore.open({ pool, kek });
    const k = await a.create('EdDSA', 'next', T0);
    expect((await b.list()).map((x) => [x.kid, x.state])).toEqual([[k.kid, 'next']]);
    await a.setState(k.kid, 'active', T0 + 1);
    const sb = await b.signer(k.kid);
    expect(sb.sign(Buffer.from('x')).length).toBe(64);
    await a.setState(k.kid, 'revoked', T0 + 2);
    expect((await b.setState(k.kid, 'retiring', T0 + 3).catch((e: { code: string }) => e.code))).toBe('ERR_INVALID_ARGUMENT');
    await b.list();
    expect(() => sb.sign(Buffer.from('x'))).toThrow(/revoked/);
    await a.close();
    await b.close();
    await pool.end();
  });

  it('noted expiries from two replicas end as the larger, never lowered', async () => {
    const pool = await freshPool();
    const kek = randomBytes(32);
    const a = await PostgresKeyStore.open({ pool, kek, flushIntervalMs: 10_000 });
    const b = await PostgresKeyStore.open({ pool, kek, flushIntervalMs: 10_000 });
    const k = await a.create('ES256', 'active', T0);
    await b.list();
    a.noteTokenExpiry(k.kid, T0 + 900);
    b.noteTokenExpiry(k.kid, T0 + 500);
    await Promise.all([a.flush(), b.flush()]);
    const c = await PostgresKeyStore.open({ pool, kek });
    expect((await c.list())[0]!.lastTokenExpiresAt).toBe(T0 + 900);
    for (const s of [a, b, c]) await s.close();
    await pool.end();
  });

  it('runs the lifecycle on one replica at a time', async () => {
    const pool = await freshPool();
    const kek = randomBytes(32);
    const a = await PostgresKeyStore.open({ pool, kek });
    const b = await PostgresKeyStore.open({ pool, kek });
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const first = a.lock(() => held, true);
    await new Promise((r) => setTimeout(r, 50));
    expect(await b.lock(async () => 1, false)).toEqual({ ran: false });
    release();
    expect(await first).toEqual({ ran: true, value: undefined });
    expect(await b.lock(async () => 2, false)).toEqual({ ran: true, value: 2 });
    await a.close();
    await b.close();
    await pool.end();
  });
});
