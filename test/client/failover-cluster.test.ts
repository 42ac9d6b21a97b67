/**
 * Client failover against a real cluster: two `mayfly serve` processes on one
 * PostgreSQL. A BrokerClient and a MayflyVerifier are given both replicas;
 * the one they use is kill -9'd; calls go on at the other, and the
 * verifier's feed resumes there from its cursor (cursors are global), so a
 * task completed after the kill is rejected. Needs `npm run build`.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/index.js';
import { MayflyVerifier } from '../../src/verifier/index.js';
import { startCluster, type Cluster } from '../e2e/cluster-harness.js';
import { codeOf } from '../helpers/codes.js';
import { freshDatabase } from '../helpers/postgres.js';

let cluster: Cluster;
const closers: Array<{ close(): void }> = [];
beforeAll(async () => {
  cluster = await startCluster(2, await freshDatabase('mayfly_failover'));
}, 90_000);
afterAll(async () => {
  for (const c of closers) c.close();
  await cluster?.stop();
});

function clientOf(who: string): BrokerClient {
  const c = new BrokerClient({
    address: cluster.replicas.map((r) => r.grpc),
    ca: cluster.ca,
    cert: readFileSync(join(cluster.dir, `${who}.pem`)),
    key: readFileSync(join(cluster.dir, `${who}.key`)),
    timeoutMs: 5_000,
  });
  closers.push(c);
  return c;
}

describe('failover to the surviving replica', () => {
  it('idempotent calls, new tasks and the verifier feed carry on after kill -9 of the replica in use', async () => {
    const workload = clientOf('workload');
    const rp = clientOf('relying-party');
    const v = new MayflyVerifier({
      issuer: cluster.issuer,
      audience: 'demo-api',
      jwks: { url: cluster.replicas.map((r) => r.jwksUrl), ca: cluster.ca },
      feed: { client: rp, subscriberId: 'rp-failover', maxSilenceMs: 5_000, backoff: { initialMs: 20, maxMs: 200 } },
    });
    closers.push(v);
    await v.start();
    const withCert = { clientCertDer: new X509Certificate(readFileSync(join(cluster.dir, 'workload.pem'))).raw };
    const task = await workload.beginTask({ purpose: 'before the kill', ttlSeconds: 300 });
    const { token } = await workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
    expect(await codeOf(v.verify(token, withCert))).toBe('OK');
    const cursorBefore = v.stats().cursor;

    await cluster.kill(0); // both clients and the feed were on replica 1 (the first address)

    expect((await workload.introspect(token)).active).toBe(true);
    await workload.ping();
    const done = await workload.completeTask(task.taskId);
    expect(done.taskIds).toEqual([task.taskId]);
    const t0 = Date.now();
    for (;;) {
      if ((await codeOf(v.verify(token, withCert))) === 'ERR_TOKEN_REVOKED') break;
      if (Date.now() - t0 > 10_000) throw new Error(`verifier did not learn of the revocation: ${JSON.stringify(v.stats())}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const after = v.stats();
    expect(after.reconnects).toBeGreaterThanOrEqual(1);
    expect(after.cursor).toBeGreaterThan(cursorBefore);
    // New work goes to the survivor without a failed call (the dead replica is skipped before sending).
    const next = await workload.beginTask({ purpose: 'after the kill', ttlSeconds: 300 });
    const fresh = await workload.issueToken({ taskId: next.taskId, audience: 'demo-api', scopes: ['read'] });
    expect(await codeOf(v.verify(fresh.token, withCert))).toBe('OK');
    expect(workload.stats().failovers + rp.stats().failovers).toBeGreaterThanOrEqual(1);
    console.log(`failover: workload client ${workload.stats().failovers} call(s) sent again, feed reconnects ${after.reconnects}, revocation seen ${Date.now() - t0} ms after CompleteTask at the survivor`);
  }, 60_000);
});
