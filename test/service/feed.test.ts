import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type { MayflyError } from '../../src/core/errors.js';
import { REPLAY_END_REASON, type TaskRecord } from '../../src/core/types.js';
import { RevocationFeed, type FeedMessage, type SlowSubscriber } from '../../src/service/feed.js';
import { MemoryStore } from '../../src/store/memory.js';
import { WritableFeedStream } from '../../src/transport/feed-stream.js';

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

/** A subscriber's stream over a real Writable that takes nothing until release(): a reader that stopped reading. */
class StalledStream extends WritableFeedStream {
  readonly got: FeedMessage[] = [];
  ended: MayflyError | null | undefined;
  private held: Array<() => void> = [];

  constructor(highWaterMark: number) {
    const w = new Writable({ highWaterMark, write: (_chunk, _enc, cb) => void this.held.push(() => cb()) });
    super(w, ['close']);
  }

  get writable(): Writable {
    return this.out;
  }

  open(): void {}

  write(m: FeedMessage): boolean {
    this.got.push(m);
    return this.out.write(Buffer.from(JSON.stringify(m)));
  }

  bufferedBytes(): number {
    return this.out.writableLength;
  }

  end(err?: MayflyError): void {
    this.ended = err ?? null;
    this.out.destroy();
  }

  /** The reader takes everything written so far. */
  async release(): Promise<void> {
    while (this.held.length > 0) {
      for (const cb of this.held.splice(0)) cb();
      await new Promise((r) => setImmediate(r));
    }
  }
}

const tick = () => new Promise((r) => setImmediate(r));

describe('RevocationFeed backpressure', () => {
  it('a replay to a stream that reports a full buffer writes a page, then waits for drain before reading the next', async () => {
    const { feed, end } = await setup();
    const first = await end('t0');
    for (let i = 1; i <= 9; i++) await end(`t${i}`);
    const s = new StalledStream(1);
    let done = false;
    const subscribed = feed.subscribe('rp', first.cursor, s).then((sub) => ((done = true), sub));
    for (let i = 0; i < 5; i++) await tick();
    // One page (batch 2) written, nothing more while the reader does not read.
    expect(s.got.map((m) => m.taskIds[0])).toEqual(['t1', 't2']);
    expect(done).toBe(false);
    while (!done) {
      await s.release();
      await tick();
    }
    expect(s.got.filter((m) => m.kind === 'task').map((m) => m.taskIds[0])).toEqual(['t1', 't2', 't3', 't4', 't5', 't6', 't7', 't8', 't9']);
    expect(s.got.at(-1)).toMatchObject({ kind: 'keyset', reason: REPLAY_END_REASON });
    (await subscribed).close();
    feed.stop();
  });

  it('a stream that closes while its replay waits for drain: the replay stops, the subscriber leaves, no listener is left behind', async () => {
    const { feed, end } = await setup();
    const first = await end('t0');
    for (let i = 1; i <= 9; i++) await end(`t${i}`);
    const s = new StalledStream(1);
    const subscribed = feed.subscribe('rp', first.cursor, s);
    for (let i = 0; i < 5; i++) await tick();
    expect(feed.subscriberCount()).toBe(1);
    expect(s.writable.listenerCount('drain')).toBe(1);
    s.writable.destroy();
    const sub = await subscribed;
    expect(feed.subscriberCount()).toBe(0);
    expect(s.writable.listenerCount('drain')).toBe(0);
    expect(s.got.map((m) => m.taskIds[0])).toEqual(['t1', 't2']);
    sub.close();
    feed.stop();
  });

  it('live events during a parked replay: at most a page is held, the rest is read back from the log, none lost or repeated', async () => {
    const { feed, end } = await setup();
    const first = await end('t0');
    for (let i = 1; i <= 4; i++) await end(`t${i}`);
    const s = new StalledStream(1);
    let done = false;
    const subscribed = feed.subscribe('rp', first.cursor, s).then((sub) => ((done = true), sub));
    for (let i = 0; i < 5; i++) await tick();
    for (let i = 5; i <= 20; i++) await end(`t${i}`);
    const held = [...(feed as unknown as { subs: Set<{ pending: FeedMessage[] | null }> }).subs][0]!.pending!;
    expect(held.length).toBeLessThanOrEqual(2);
    while (!done) {
      await s.release();
      await tick();
    }
    await end('t21');
    const tasks = s.got.filter((m) => m.kind === 'task').map((m) => m.taskIds[0]);
    expect(tasks).toEqual(Array.from({ length: 21 }, (_, i) => `t${i + 1}`));
    (await subscribed).close();
    feed.stop();
  });

  it('a live subscriber whose stream holds more than maxBufferedBytes is ended with ERR_FEED_SUBSCRIBER_SLOW and reported once; others get every event', async () => {
    const clock = new ManualClock();
    const store = new MemoryStore();
    const slow: SlowSubscriber[] = [];
    const feed = new RevocationFeed(store, clock, keyset, { heartbeatMs: 60_000, batch: 2, maxTokenTtlMs: 3_600_000, maxBufferedBytes: 2000, onSlowSubscriber: (x) => slow.push(x) });
    await feed.start();
    const stalled = new StalledStream(500);
    const healthy: FeedMessage[] = [];
    await feed.subscribe('stalled-rp', 0, stalled, undefined, { identity: 'spiffe://example.org/rp', peer: '127.0.0.1:1', transport: 'grpc' });
    await feed.subscribe('healthy-rp', 0, (m) => healthy.push(m));
    for (let i = 0; i < 40; i++) {
      await store.createTask(task(`t${i}`, clock.now()));
      feed.publish((await store.endTask(`t${i}`, 'completed', 'done', clock.now())).event!);
    }
    expect(stalled.ended).toMatchObject({ code: 'ERR_FEED_SUBSCRIBER_SLOW', details: { subscriber_id: 'stalled-rp', limit_bytes: 2000 } });
    expect(stalled.got.length).toBeLessThan(40);
    expect(slow).toHaveLength(1);
    expect(slow[0]).toMatchObject({ subscriber: 'stalled-rp', identity: 'spiffe://example.org/rp', peer: '127.0.0.1:1', transport: 'grpc', limitBytes: 2000 });
    expect(slow[0]!.bufferedBytes).toBeGreaterThan(2000);
    expect(slow[0]!.bufferedBytes).toBeLessThan(2000 + 500);
    expect(feed.slowSubscribers()).toBe(1);
    expect(feed.subscriberCount()).toBe(1);
    expect(healthy.filter((m) => m.kind === 'task')).toHaveLength(40);
    feed.stop();
  });
});
