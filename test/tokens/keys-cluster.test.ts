/**
 * KeyManager on a shared PostgreSQL key set: several replicas, one lifecycle.
 * A token signed on any replica verifies against every replica's JWKS at
 * every step of a rotation and of an emergency revocation.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { decodeJws, signingInputOf, verifyJwsSignature } from '../../src/tokens/jws.js';
import { KeyManager, type KeyManagerOptions } from '../../src/tokens/keys.js';
import { PostgresKeyStore } from '../../src/tokens/keystore-postgres.js';
import { freshDatabase, migratedSchemaPool } from '../helpers/postgres.js';

const MIN = 60_000;
let dbUrl: string;
beforeAll(async () => {
  dbUrl = await freshDatabase();
});

function freshPool(): Promise<pg.Pool> {
  return migratedSchemaPool(dbUrl, 'km', 6);
}

/** Signs a token with the replica's active key, as issuance does. */
function sign(km: KeyManager): string {
  const { signer } = km.active();
  const input = signingInputOf({ alg: signer.alg, kid: signer.kid, typ: 'JWT' }, { sub: 'x', n: randomBytes(4).toString('hex') });
  return `${input}.${signer.sign(Buffer.from(input)).toString('base64url')}`;
}

/** Whether `token` verifies against the JWKS `km` publishes now. */
function verifiesAt(km: KeyManager, token: string): boolean {
  const jws = decodeJws(token);
  const kid = jws.header.kid as string;
  if (!km.jwks().kids.includes(kid)) return false;
  const key = km.publicKey(kid);
  if (!key) return false;
  try {
    verifyJwsSignature(jws, key);
    return true;
  } catch {
    return false;
  }
}

/** Two replicas' key stores and key managers on one fresh database, one KEK and one manual clock, initialised. */
async function twoReplicas(opts: KeyManagerOptions) {
  const pool = await freshPool();
  const kek = randomBytes(32);
  const clock = new ManualClock();
  const a = await PostgresKeyStore.open({ pool, kek });
  const b = await PostgresKeyStore.open({ pool, kek });
  const ka = new KeyManager(a, clock, { ...opts, cluster: a });
  const kb = new KeyManager(b, clock, { ...opts, cluster: b });
  await ka.init();
  await kb.init();
  return { pool, clock, a, b, ka, kb };
}

describe('KeyManager across replicas (shared PostgreSQL key set)', () => {
  it('three replicas start with one active key, rotate once together, and every token verifies everywhere at every step', async () => {
    const pool = await freshPool();
    const kek = randomBytes(32);
    const clock = new ManualClock();
    const opts: KeyManagerOptions = { alg: 'ES256', rotationPeriodMs: 60 * MIN, prePublishMs: 10 * MIN, skewMs: MIN, maxPromotionWaitMs: 30 * MIN };
    const replicas: KeyManager[] = [];
    const stores: PostgresKeyStore[] = [];
    const localChanges: string[] = [];
    for (let i = 0; i < 3; i++) {
      const ks = await PostgresKeyStore.open({ pool, kek });
      stores.push(ks);
      replicas.push(new KeyManager(ks, clock, { ...opts, cluster: ks }, { onKeySetChange: (v, _j, origin) => origin === 'local' && localChanges.push(`${i}:${v}`) }));
    }
    await Promise.all(replicas.map((r) => r.init()));
    await Promise.all(replicas.map((r) => r.sync()));
    const all = await stores[0]!.list();
    expect(all.filter((k) => k.state === 'active')).toHaveLength(1);
    expect(all.filter((k) => k.state === 'next')).toHaveLength(1);
    expect(new Set(replicas.map((r) => r.jwks().version)).size).toBe(1);
    expect(new Set(replicas.map((r) => r.active().info.kid)).size).toBe(1);

    const tokens: string[] = [];
    const checkAll = () => {
      for (const r of replicas) tokens.push(sign(r));
      for (const t of tokens) for (const r of replicas) expect(verifiesAt(r, t)).toBe(true);
    };
    checkAll();
    const first = replicas[0]!.active().info.kid;
    for (const r of replicas) r.noteTokenExpiry(first, clock.now() + 65 * MIN);
    await Promise.all(stores.map((s) => s.flush()));

    // Due: all three tick at once; exactly one promotes, the others follow on sync.
    clock.advance(60 * MIN);
    await Promise.all(replicas.map((r) => r.tick()));
    await Promise.all(replicas.map((r) => r.sync()));
    const after = await stores[1]!.list();
    expect(after.filter((k) => k.state === 'active')).toHaveLength(1);
    expect(after.filter((k) => k.state === 'next')).toHaveLength(1);
    expect(after.find((k) => k.kid === first)!.state).toBe('retiring');
    expect(new Set(replicas.map((r) => r.active().info.kid))).toEqual(new Set([after.find((k) => k.state === 'active')!.kid]));
    checkAll();

    // A replica that has not synced yet still signs with the retiring key: still published everywhere.
    clock.advance(6 * MIN);
    await Promise.all(replicas.map((r) => r.tick()));
    await Promise.all(replicas.map((r) => r.sync()));
    expect((await stores[2]!.list()).find((k) => k.kid === first)!.state).toBe('retired');
    for (const r of replicas) expect(r.jwks().kids).not.toContain(first);
    expect(new Set(replicas.map((r) => r.jwks().version)).size).toBe(1);
    // Each cluster-wide key-set change was announced by exactly one replica.
    const versions = localChanges.map((c) => c.split(':')[1]);
    expect(new Set(versions).size).toBe(versions.length);

    for (const s of stores) await s.close();
    await pool.end();
  });

  it('an emergency revoke on one replica removes the key from every replica and stops their signers', async () => {
    const { pool, clock, a, b, ka, kb } = await twoReplicas({ alg: 'EdDSA', rotationPeriodMs: 60 * MIN, prePublishMs: 10 * MIN, skewMs: MIN, maxPromotionWaitMs: 30 * MIN });
    const victim = kb.active().info.kid;
    const oldSignerB = kb.active().signer;
    await ka.revoke(victim);
    await kb.sync();
    for (const km of [ka, kb]) {
      expect(km.jwks().kids).not.toContain(victim);
      expect(km.stateOf(victim)).toBe('revoked');
      expect(km.active().info.kid).not.toBe(victim);
    }
    expect(ka.active().info.kid).toBe(kb.active().info.kid);
    expect(() => oldSignerB.sign(Buffer.from('x'))).toThrow(/revoked/);
    const t = sign(kb);
    expect(verifiesAt(ka, t)).toBe(true);
    await a.close();
    await b.close();
    await pool.end();
  });

  it('promotion waits on a gate that may answer asynchronously (acknowledgements stored in the database)', async () => {
    const pool = await freshPool();
    const ks = await PostgresKeyStore.open({ pool, kek: randomBytes(32) });
    const clock = new ManualClock();
    const km = new KeyManager(ks, clock, { alg: 'ES256', rotationPeriodMs: 60 * MIN, prePublishMs: 10 * MIN, skewMs: MIN, maxPromotionWaitMs: 30 * MIN, cluster: ks });
    await km.init();
    const first = km.active().info.kid;
    let ready = false;
    km.setPromotionGate(async () => ({ ready, laggards: ready ? [] : ['rp-on-replica-2'] }));
    clock.advance(60 * MIN);
    await km.tick();
    expect(km.active().info.kid).toBe(first);
    expect(km.promotionBlockedSince()).toBe(clock.now());
    ready = true;
    await km.tick();
    expect(km.active().info.kid).not.toBe(first);
    await ks.close();
    await pool.end();
  });

  it('keys rotate taken by a replica that stops before promotion is completed by another, once the gate allows', async () => {
    const { pool, clock, a, b, ka, kb } = await twoReplicas({ alg: 'ES256', rotationPeriodMs: 24 * 60 * MIN, prePublishMs: 10 * MIN, skewMs: MIN, maxPromotionWaitMs: 30 * MIN });
    // A relying party has not acknowledged the next key yet: the gate (shared, as on PostgreSQL) holds promotion.
    let acked = false;
    const gate = async () => ({ ready: acked, laggards: acked ? [] : ['rp'] });
    ka.setPromotionGate(gate);
    kb.setPromotionGate(gate);
    const first = ka.active().info.kid;
    clock.advance(11 * MIN);
    await ka.rotate();
    expect(ka.active().info.kid).toBe(first);
    expect(ka.promotionBlockedSince()).toBe(clock.now());
    // Replica A stops for good before promotion: nothing of the request lives only in its memory.
    await a.close();
    clock.advance(MIN);
    await kb.tick();
    expect(kb.active().info.kid).toBe(first);
    acked = true;
    clock.advance(MIN);
    await kb.tick();
    expect(kb.active().info.kid).not.toBe(first);
    expect(kb.stateOf(first)).toBe('retiring');
    // Completed once: the request ended with the promotion, later ticks do not rotate again.
    const second = kb.active().info.kid;
    clock.advance(11 * MIN);
    await kb.tick();
    expect(kb.active().info.kid).toBe(second);
    expect(await b.rotationRequest()).toBeNull();
    await b.close();
    await pool.end();
  });

  it('a rotation whose replica died is forced after the maximum wait counted from the request, not from the survivor\'s first look', async () => {
    const { pool, clock, a, b, ka, kb } = await twoReplicas({ alg: 'ES256', rotationPeriodMs: 24 * 60 * MIN, prePublishMs: 10 * MIN, skewMs: MIN, maxPromotionWaitMs: 30 * MIN });
    const laggard = async () => ({ ready: false, laggards: ['rp-that-never-acks'] });
    ka.setPromotionGate(laggard);
    kb.setPromotionGate(laggard);
    const first = ka.active().info.kid;
    clock.advance(11 * MIN);
    const askedAt = clock.now();
    await ka.rotate();
    await a.close();
    // B first looks 20 minutes later: the wait already counts from the request.
    clock.advance(20 * MIN);
    await kb.tick();
    expect(kb.active().info.kid).toBe(first);
    expect(kb.promotionBlockedSince()).toBe(askedAt);
    clock.advance(10 * MIN - 1);
    await kb.tick();
    expect(kb.active().info.kid).toBe(first);
    clock.advance(1);
    await kb.tick();
    expect(kb.active().info.kid).not.toBe(first);
    await b.close();
    await pool.end();
  });
});
