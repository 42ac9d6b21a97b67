/**
 * `keys revoke KID` is two commits: the key's state in the shared key set,
 * then the key's tokens and the kind-key feed event. Here the replica that
 * took the command dies between them: a KeyManager in this process (the
 * code a replica runs, on the same database and KEK) commits the first and
 * goes away. The two `mayfly serve` replicas must finish the revocation on
 * their own, once: the key's tokens revoked in the store, one kind-key event
 * in the log, and verifiers subscribed to either replica rejecting the
 * tokens as signed by a revoked key (issue 9: an emergency `keys revoke`
 * acts on the whole cluster and survives the death of whoever ran it).
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { loadKek } from '../../src/tokens/keystore-file.js';
import { PostgresKeyStore } from '../../src/tokens/keystore-postgres.js';
import { KeyManager } from '../../src/tokens/keys.js';
import { freshDatabase } from '../helpers/postgres.js';
import { post, startCluster, type Cluster } from './cluster-harness.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting until ${what}`);
    await sleep(100);
  }
}

let cluster: Cluster | undefined;
let db: pg.Pool | undefined;
afterAll(async () => {
  await cluster?.stop();
  await db?.end();
}, 30_000);

describe('keys revoke across replicas', () => {
  it('a revocation whose replica died after the key and before its tokens is finished by the cluster, once', async () => {
    const url = await freshDatabase('mayfly_keyrevoke');
    const c = await startCluster(2, url, (doc) => {
      doc['keys'] = { ...doc['keys'], rotation_period_seconds: 3600, pre_publish_seconds: 1, jwks_max_age_seconds: 1, check_interval_ms: 200 };
    });
    cluster = c;
    db = new pg.Pool({ connectionString: url, max: 2 });
    const revokedAt = async (jti: string) => (await db!.query<{ revoked_at: string | null }>('SELECT revoked_at FROM tokens WHERE jti = $1', [jti])).rows[0]?.revoked_at ?? null;
    const keyEvents = async (kid: string) => (await db!.query<{ cursor: string; jtis: string[] }>(`SELECT cursor, jtis FROM events WHERE kind = 'key' AND kid = $1 ORDER BY cursor`, [kid])).rows;

    // Tokens signed by the active key on both replicas, accepted by a verifier on each.
    const tokens: { token: string; jti: string }[] = [];
    for (const i of [0, 1, 0]) {
      const client = c.client(i);
      const t = await client.beginTask({ purpose: 'signed by the key that leaks', ttlSeconds: 600 });
      const tok = await client.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
      tokens.push({ token: tok.token, jti: tok.tokenId });
    }
    const kid = JSON.parse(Buffer.from(tokens[0]!.token.split('.')[0]!, 'base64url').toString()).kid as string;
    // The tokens are bound to the workload's certificate, as a relying party sees it over mTLS.
    const bound = { clientCertDer: new X509Certificate(readFileSync(join(c.dir, 'workload.pem'))).raw };
    const verifiers = [c.verifier(0, 'rp-a'), c.verifier(1, 'rp-b')];
    for (const v of verifiers) {
      await v.start();
      for (const t of tokens) await v.verify(t.token, bound);
    }

    // The replica that took `keys revoke`: the key's state commits, then it dies before the tokens.
    const doc = readFileSync(c.replicas[0]!.config, 'utf8');
    expect(doc).toContain('kek_file: kek');
    const pool = new pg.Pool({ connectionString: url, max: 2 });
    const ks = await PostgresKeyStore.open({ pool, kek: loadKek({ file: join(c.dir, 'kek') }) });
    const dying = new KeyManager(ks, systemClock, { alg: 'ES256', rotationPeriodMs: 3_600_000, prePublishMs: 1000, skewMs: 60_000, maxPromotionWaitMs: 300_000, cluster: ks });
    await dying.init();
    await dying.revoke(kid);
    expect(dying.stateOf(kid)).toBe('revoked');
    await ks.close();
    await pool.end();
    const t0 = Date.now();

    // Finished by whichever replica runs the key lifecycle next: every token revoked, one kind-key event.
    await until('the key event is in the log', async () => (await keyEvents(kid)).length > 0);
    console.log(`the cluster finished the revocation ${Date.now() - t0} ms after the first commit`);
    for (const t of tokens) expect(await revokedAt(t.jti)).not.toBeNull();
    const [ev] = await keyEvents(kid);
    expect([...ev!.jtis].sort()).toEqual(tokens.map((t) => t.jti).sort());
    // Verifiers on both replicas learn it from the feed: rejected as signed by a revoked key.
    for (const v of verifiers) {
      await until('the verifier knows the key is revoked', async () => v.stats().revokedKeys === 1);
      for (const t of tokens) await expect(v.verify(t.token, bound)).rejects.toMatchObject({ code: 'ERR_TOKEN_REVOKED' });
    }
    // Later lifecycle runs (every 200 ms on each replica) announce nothing more.
    await sleep(1500);
    expect(await keyEvents(kid)).toHaveLength(1);

    // The command run again still answers, on either replica, and announces the key again.
    const rerun = await post(`${c.replicas[1]!.https}/admin/keys/${kid}/revoke`, c.ca, c.dir, 'admin');
    expect(rerun.status).toBe(200);
    expect(JSON.parse(rerun.body)).toMatchObject({ revoked_kid: kid, revoked_tokens: 0 });
    expect(await keyEvents(kid)).toHaveLength(2);
  }, 90_000);
});
