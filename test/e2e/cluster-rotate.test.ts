/**
 * `keys rotate` sent to a replica that is killed before it could promote:
 * two `mayfly serve` processes on one PostgreSQL, a feed subscriber that never
 * acknowledges holds promotion back, the replica that took the request is
 * kill -9'd, and the survivor must complete the rotation (issue 9: keys rotate
 * acts on the whole cluster; key promotion survives the death of whoever ran it).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { freshDatabase } from '../helpers/postgres.js';
import { post, startCluster, type Cluster } from './cluster-harness.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: Cluster | undefined;
afterAll(async () => {
  await cluster?.stop();
}, 30_000);

describe('keys rotate across replicas', () => {
  it('a rotation requested on a replica killed before promotion is completed by the survivor', async () => {
    const c = await startCluster(2, await freshDatabase('mayfly_rotate'), (doc) => {
      // Only the request can make the key rotate here (the period is an hour); promotion waits for acknowledgements up to 10 min.
      doc['keys'] = { ...doc['keys'], rotation_period_seconds: 3600, pre_publish_seconds: 1, jwks_max_age_seconds: 1, max_promotion_wait_seconds: 600, check_interval_ms: 100 };
    });
    cluster = c;
    /** The kid replica i signs with now. */
    const signingKid = async (i: number): Promise<string> => {
      const client = c.client(i);
      const t = await client.beginTask({ purpose: 'which key signs', ttlSeconds: 60 });
      const tok = await client.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
      return JSON.parse(Buffer.from(tok.token.split('.')[0]!, 'base64url').toString()).kid as string;
    };
    // A relying party on replica 1 that never acknowledges the next key: promotion is held back.
    const laggard = c.client(0, 'relying-party').watchRevocations({ cursor: 0, subscriberId: 'laggard' }, () => undefined, () => undefined);
    const first = await signingKid(1);
    await sleep(1500); // the next key has been published longer than pre_publish_seconds
    const res = await post(`${c.replicas[0]!.https}/admin/keys/rotate`, c.ca, c.dir, 'admin');
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as { active_kid: string; promotion_blocked_since: number | null };
    expect(body.active_kid).toBe(first);
    expect(body.promotion_blocked_since).not.toBeNull();
    await sleep(1000);
    expect(await signingKid(1)).toBe(first);
    // The replica that took the request dies; so does the laggard's stream with it.
    await c.kill(0);
    laggard.cancel();
    const t0 = Date.now();
    let now = first;
    while (now === first && Date.now() - t0 < 15_000) {
      await sleep(200);
      now = await signingKid(1);
    }
    expect(now).not.toBe(first);
    console.log(`survivor completed the rotation ${Date.now() - t0} ms after the kill`);
  }, 90_000);
});
