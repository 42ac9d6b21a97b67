import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { REPLAY_END_REASON, type TaskRecord } from '../../src/core/types.js';
import { RevocationFeed, type FeedMessage } from '../../src/service/feed.js';
import { MemoryStore } from '../../src/store/memory.js';

const keyset = () => ({ version: 'v1', json: '{"keys":[]}', kids: ['k1'] });

function task(id: string, now: number, ttlMs = 60_000): TaskRecord {
  return { id, owner: 'o', ownerKind: 'spiffe', purpose: 'p', labels: {}, createdAt: now, expiresAt: now + ttlMs, leaseExpiresAt: null, status: 'active', endedAt: null, endReason: null, parentId: null, rootId: id, depth: 0, scopeCeiling: null, actors: [], tokensIssued: 0 };
}

async function setup() {
  const clock = new ManualClock();
  const store = new MemoryStore();
  const feed = new RevocationFeed(store, clock, keyset, { heartbeatMs: 60_000, batch: 2, maxTokenTtlMs: 3_600_000 });
  await feed.start();
  const end = async (id: string, ttlMs?: number) => {
    await store.createTask(task(id, clock.now(), ttlMs));
    const r = await store.endTask(id, 'completed', 'done', clock.now());
    feed.publish(r.event!);
    return r.event!;
  };
  return { clock, store, feed, end };
}

describe('RevocationFeed', () => {
  it('a fresh subscriber gets a snapshot of live revocations, then live events', async () => {
    const { feed, end } = await setup();
    await end('t1');
    const got: FeedMessage[] = [];
    const sub = await feed.subscribe('rp', 0, (m) => got.push(m));
    expect(got[0]).toMatchObject({ kind: 'snapshot', taskIds: ['t1'], kid: 'v1', reason: 'initial' });
    // A snapshot covers tokens for at most the longest token lifetime; a task event until its task's deadline.
    expect(got[0]!.coversUntil).toBe(got[0]!.at + 3_600_000);
    const e2 = await end('t2', 7_200_000);
    expect(got[1]).toMatchObject({ kind: 'task', taskIds: ['t2'], coversUntil: e2.coversUntil });
    expect(e2.coversUntil).toBe(e2.at + 7_200_000);
    sub.close();
    await end('t3');
    expect(got).toHaveLength(2);
    feed.stop();
  });

  it('resumes from a cursor: replays what was missed in pages, marks the end of the replay, drops duplicates', async () => {
    const { feed, end } = await setup();
    const first = await end('t1');
    await end('t2');
    await end('t3');
    await end('t4');
    const got: FeedMessage[] = [];
    await feed.subscribe('rp', first.cursor, (m) => got.push(m));
    expect(got.map((m) => m.kind)).toEqual(['task', 'task', 'task', 'keyset']);
    expect(got.slice(0, 3).flatMap((m) => m.taskIds)).toEqual(['t2', 't3', 't4']);
    expect(got[3]!.reason).toBe(REPLAY_END_REASON);
    // A duplicate delivery of an already replayed cursor is dropped.
    feed.publish({ cursor: got[2]!.cursor, kind: 'task', at: 0, taskIds: ['t4'], jtis: [], kid: null, reason: 'dup', coversUntil: 0 });
    expect(got).toHaveLength(4);
    feed.stop();
  });

  it('events published while a replay is in progress are delivered after it, in order, exactly once', async () => {
    const { feed, end, store } = await setup();
    const first = await end('t1');
    await end('t2');
    const got: FeedMessage[] = [];
    // Publish a new event while the subscriber is between its range read and its replay.
    const original = store.eventsSince.bind(store);
    let injected = false;
    store.eventsSince = async (c, l) => {
      if (!injected) {
        injected = true;
        await end('t3');
      }
      return original(c, l);
    };
    await feed.subscribe('rp', first.cursor, (m) => got.push(m));
    const tasks = got.filter((m) => m.kind === 'task').flatMap((m) => m.taskIds);
    expect(tasks).toEqual(['t2', 't3']);
    feed.stop();
  });

  it('a cursor older than retention gets a snapshot instead of a replay with holes', async () => {
    const { clock, store, feed, end } = await setup();
    const seen = await end('short-1', 1_000); // the subscriber processed this one
    await end('short-2', 1_000); // ...but not this one, which is pruned while it is away
    await end('long', 3_600_000);
    clock.advance(10_000);
    await store.gc(clock.now(), 0);
    const range = await store.cursorRange();
    expect(range.oldest).toBeGreaterThan(seen.cursor + 1);
    const got: FeedMessage[] = [];
    await feed.subscribe('rp', seen.cursor, (m) => got.push(m));
    expect(got[0]).toMatchObject({ kind: 'snapshot', reason: 'cursor outside retention', taskIds: ['long'] });
    feed.stop();
  });

  it('the promotion gate waits for every live subscriber to acknowledge a key set containing the kid', async () => {
    const { feed } = await setup();
    await feed.subscribe('a', 0, () => undefined);
    const b = await feed.subscribe('b', 0, () => undefined);
    feed.noteKeySet({ version: 'v2', json: '{}', kids: ['k1', 'k2'] });
    expect(feed.gate('k2')).toEqual({ ready: false, laggards: ['a', 'b'] });
    feed.ack('a', 'v2');
    expect(feed.gate('k2')).toEqual({ ready: false, laggards: ['b'] });
    feed.ack('b', 'v1'); // an old key set does not count
    expect(feed.gate('k2').ready).toBe(false);
    b.close(); // a subscriber that left no longer blocks
    expect(feed.gate('k2')).toEqual({ ready: true, laggards: [] });
    feed.stop();
  });

  it('stop ends every stream', async () => {
    const { feed } = await setup();
    let ended = 0;
    await feed.subscribe('a', 0, () => undefined, () => ended++);
    await feed.subscribe('b', 0, () => undefined, () => ended++);
    feed.stop();
    expect(ended).toBe(2);
    expect(feed.subscriberCount()).toBe(0);
  });

  it('delivers in cursor order when use-cases publish out of order, each event once', async () => {
    const { clock, store, feed } = await setup();
    const got: FeedMessage[] = [];
    const sub = await feed.subscribe('rp', (await store.cursorRange()).latest, (m) => got.push(m));
    got.length = 0;
    // Three revocations durable in cursor order; their use-cases finish (and publish) in another order.
    const events = [];
    for (const id of ['a', 'b', 'c']) {
      await store.createTask(task(id, clock.now()));
      events.push((await store.endTask(id, 'completed', 'done', clock.now())).event!);
    }
    const [a, b, c] = events as [typeof events[0], typeof events[0], typeof events[0]];
    feed.publish(c);
    feed.publish(a);
    await new Promise((r) => setImmediate(r));
    feed.publish(b);
    await new Promise((r) => setImmediate(r));
    expect(got.map((m) => m.cursor)).toEqual([a.cursor, b.cursor, c.cursor]);
    expect(got.flatMap((m) => m.taskIds)).toEqual(['a', 'b', 'c']);
    // Later events still go out at once, and a subscriber resuming from the last cursor misses nothing.
    await store.createTask(task('d', clock.now()));
    const d = (await store.endTask('d', 'completed', 'done', clock.now())).event!;
    feed.publish(d);
    expect(got.at(-1)).toMatchObject({ cursor: d.cursor, taskIds: ['d'] });
    expect(got).toHaveLength(4);
    sub.close();
    feed.stop();
  });

  it('never delivers an event above the one published: what is logged but not yet durable waits for its own publish', async () => {
    const { clock, store, feed } = await setup();
    const got: FeedMessage[] = [];
    await feed.subscribe('rp', (await store.cursorRange()).latest, (m) => got.push(m));
    got.length = 0;
    const events = [];
    for (const id of ['a', 'b', 'c']) {
      await store.createTask(task(id, clock.now()));
      events.push((await store.endTask(id, 'completed', 'done', clock.now())).event!);
    }
    feed.publish(events[1]!);
    await new Promise((r) => setImmediate(r));
    expect(got.map((m) => m.taskIds[0])).toEqual(['a', 'b']);
    feed.publish(events[2]!);
    expect(got.map((m) => m.taskIds[0])).toEqual(['a', 'b', 'c']);
    feed.stop();
  });
});
