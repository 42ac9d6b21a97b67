/**
 * The revocation feed as server-sent events (GET /v1/revocations), for
 * relying parties that do not speak gRPC: snapshot, live events, resume with
 * Last-Event-ID, and authentication.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSseFeed as openFeed, startTestBroker, until, type TestBroker } from './helpers.js';

describe('revocation feed over server-sent events', () => {
  let tb: TestBroker;
  beforeAll(async () => {
    tb = await startTestBroker();
  });
  afterAll(async () => {
    await tb?.stop();
  });

  it('needs an authenticated caller', async () => {
    const feed = openFeed(tb);
    expect(await feed.ready).toBe(401);
    feed.close();
  });

  it('sends a snapshot, then live task revocations; resumes from Last-Event-ID without losing any', async () => {
    const workload = tb.client();
    const feed = openFeed(tb, { cert: 'relying-party' });
    expect(await feed.ready).toBe(200);
    expect(await until(() => feed.events.some((e) => e.event === 'snapshot'))).toBe(true);
    expect(feed.events[0]!.data).toMatchObject({ kind: 'snapshot', reason: 'initial' });

    const t1 = await workload.beginTask({ purpose: 'sse 1' });
    await workload.completeTask(t1.taskId);
    expect(await until(() => feed.events.some((e) => e.event === 'task' && (e.data['taskIds'] as string[]).includes(t1.taskId)))).toBe(true);
    const seen = feed.events.filter((e) => e.event === 'task').at(-1)!;
    expect(Number(seen.id)).toBe(seen.data['cursor']);
    expect(seen.data['coversUntil']).toBeGreaterThan(Date.now());
    feed.close();

    // Revoked while the relying party is away...
    const t2 = await workload.beginTask({ purpose: 'sse 2' });
    await workload.completeTask(t2.taskId);
    // ...and replayed when it comes back with its last cursor, followed by the end-of-replay key set.
    const again = openFeed(tb, { cert: 'relying-party', lastEventId: seen.id! });
    expect(await again.ready).toBe(200);
    expect(await until(() => again.events.some((e) => e.event === 'keyset' && e.data['reason'] === 'current'))).toBe(true);
    const replayed = again.events.filter((e) => e.event === 'task').flatMap((e) => e.data['taskIds'] as string[]);
    expect(replayed).toContain(t2.taskId);
    expect(replayed).not.toContain(t1.taskId);
    again.close();
  });
});
