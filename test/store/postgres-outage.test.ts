/**
 * The store while its server is down: calls fail with ERR_UNAVAILABLE and
 * nothing is recorded, queued revocations do not pile up behind each other's
 * connect timeouts, health() reports the outage, and the same store instance
 * works again once the server is back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/store/postgres.js';
import { task, token } from '../contracts/store.contract.js';
import { createDatabase, startPgCluster, type PgCluster } from '../helpers/postgres.js';

const T0 = Date.UTC(2026, 0, 1);
let pgc: PgCluster;
let store: PostgresStore;

beforeAll(async () => {
  pgc = await startPgCluster();
  store = await PostgresStore.open({ url: await createDatabase(pgc.url, 'mayfly_outage'), connectTimeoutMs: 1000 });
});
afterAll(async () => {
  await store?.close();
  await pgc?.destroy();
});

describe('PostgresStore during an outage', () => {
  it('fails closed, reports it, and recovers without a new instance', async () => {
    for (let i = 0; i < 5; i++) await store.createTask(task(`t${i}`));
    await store.recordToken(token('before', 't0'));
    expect(store.health().ok).toBe(true);
    await pgc.stop();

    await expect(store.recordToken(token('during', 't0'))).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE' });
    expect(store.health()).toMatchObject({ ok: false, detail: expect.stringMatching(/^PostgreSQL at 127\.0\.0\.1:\d+\/mayfly_outage_\w+ unavailable/) });
    // Five revocations queued at once: every one fails, none hangs behind the others.
    const ends = await Promise.allSettled([0, 1, 2, 3, 4].map((i) => store.endTask(`t${i}`, 'completed', 'done', T0)));
    for (const r of ends) expect(r.status === 'rejected' && (r.reason as { code?: string }).code).toBe('ERR_UNAVAILABLE');

    await pgc.start();
    expect(await store.getToken('during')).toBeNull();
    expect(store.health().ok).toBe(true);
    const res = await store.endTask('t0', 'completed', 'done', T0);
    expect(res.revokedTokens).toBe(1);
    expect((await store.getToken('before'))!.revokedAt).toBe(T0);
    for (let i = 1; i < 5; i++) expect((await store.endTask(`t${i}`, 'completed', 'done', T0)).event).not.toBeNull();
  });
});
