/**
 * Backpressure on the revocation feed, over real sockets: a subscriber that
 * stops reading (gRPC or server-sent events) is ended with
 * ERR_FEED_SUBSCRIBER_SLOW once its stream holds more than
 * feed.max_buffered_bytes, while the broker's buffer for it stays bounded and
 * healthy subscribers on the same broker get every event; a verifier cut off
 * that way reconnects and resumes from its cursor with no gap; a replay of a
 * long log to a reader that stalls waits for it instead of buffering the log.
 *
 * Revocations are published as the use-cases do (ended in the store, then
 * handed to the feed), many thousands of them: a stalled TCP peer absorbs
 * megabytes in kernel buffers before the broker's own writes back up, more
 * than RPC-driven load would produce in a test's time on a small machine.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import type { MayflyError } from '../../src/core/errors.js';
import { REPLAY_END_REASON } from '../../src/core/types.js';
import * as pb from '../../src/gen/mayfly/v1/broker_pb.js';
import { MayflyVerifier, type VerifierBrokerClient, type VerifierEvent } from '../../src/verifier/index.js';
import { task } from '../contracts/store.contract.js';
import { openSseFeed, pausableProxy, rawFeedStream, startTestBroker, until, type TestBroker } from './helpers.js';

const LIMIT = 64 * 1024;
/** What a stream may hold past the bound when it is measured: the message whose write crossed it. */
const SLACK = 2048;

const watchRequest = (cursor: number, subscriberId: string) => Buffer.from(toBinary(pb.WatchRevocationsRequestSchema, create(pb.WatchRevocationsRequestSchema, { cursor: BigInt(cursor), subscriberId })));

/** Task-event cursors of `events`, and whether they run without a gap from `after` + 1. */
function taskCursors(events: Array<{ kind: pb.RevocationEvent_Kind | string; cursor: bigint | number }>): number[] {
  return events.filter((e) => e.kind === pb.RevocationEvent_Kind.TASK || e.kind === 'task').map((e) => Number(e.cursor));
}
const consecutive = (cursors: number[], after: number, last: number) => cursors.length === last - after && cursors.every((c, i) => c === after + 1 + i);

describe('revocation feed backpressure', () => {
  let tb: TestBroker;
  let seq = 0;
  beforeAll(async () => {
    tb = await startTestBroker({ configPatch: { feed: { max_buffered_bytes: LIMIT } } });
  });
  afterAll(async () => {
    await tb?.stop();
  });
  // Streams closed by the previous test leave the feed when their close reaches the broker.
  beforeEach(async () => {
    expect(await until(() => tb.broker.feed.subscriberCount() === 0, 5000)).toBe(true);
  });

  /** Ends `n` tasks and publishes their events, as CompleteTask does; returns the last cursor. */
  async function revoke(n: number): Promise<number> {
    const { store, feed } = tb.broker;
    let last = feed.latestCursor();
    for (let i = 0; i < n; i++) {
      const now = Date.now();
      const id = `bp-task-${++seq}`;
      await store.createTask(task(id, { owner: 'spiffe://example.org/bp', createdAt: now, expiresAt: now + 3_600_000 }));
      const ev = (await store.endTask(id, 'completed', 'completed', now)).event!;
      feed.publish(ev);
      last = ev.cursor;
    }
    return last;
  }

  /**
   * Publishes in batches until `cut()` holds (or `max` events), recording the
   * most bytes any subscriber's stream held after each batch.
   */
  async function publishUntil(cut: () => boolean, max: number): Promise<{ last: number; published: number; most: number }> {
    let last = tb.broker.feed.latestCursor();
    let published = 0;
    let most = 0;
    while (!cut() && published < max) {
      last = await revoke(200);
      published += 200;
      most = Math.max(most, tb.broker.feed.maxBufferedBytes());
      await new Promise((r) => setImmediate(r));
    }
    most = Math.max(most, tb.broker.feed.maxBufferedBytes());
    return { last, published, most };
  }

  /** A healthy gRPC subscriber (BrokerClient) from `cursor`, collecting events. */
  function healthyGrpc(cursor: number, subscriberId: string) {
    const client = tb.client('relying-party');
    const events: pb.RevocationEvent[] = [];
    let ended: MayflyError | null | undefined;
    const call = client.watchRevocations({ cursor, subscriberId }, (e) => events.push(e), (err) => (ended = err));
    return { events, ended: () => ended, cancel: () => call.cancel() };
  }

  const slowCount = async (transport: string) => {
    const m = /^mayfly_feed_slow_subscribers_total\{transport="(\w+)"\} (\d+)$/gm;
    const text = await tb.broker.metrics.render();
    for (const [, t, n] of text.matchAll(m)) if (t === transport) return Number(n);
    return 0;
  };

  it('a gRPC subscriber that stops reading is ended with RESOURCE_EXHAUSTED / ERR_FEED_SUBSCRIBER_SLOW; its buffer stays bounded; others get every event', async () => {
    const feed = tb.broker.feed;
    const start = feed.latestCursor();
    const before = feed.slowSubscribers();
    const subs = 0;
    const stalled = rawFeedStream(tb, watchRequest(start, 'bp-stalled-grpc'), { paused: true });
    const healthy = healthyGrpc(start, 'bp-healthy-grpc');
    const healthySse = openSseFeed(tb, { cert: 'relying-party', lastEventId: String(start) });
    expect(await healthySse.ready).toBe(200);
    expect(await until(() => feed.subscriberCount() === subs + 3)).toBe(true);

    const { last, published, most } = await publishUntil(() => feed.slowSubscribers() > before, 20_000);
    expect(feed.slowSubscribers()).toBe(before + 1);
    // Far more was published than the bound, yet no stream ever held more than the bound.
    expect(published * 60).toBeGreaterThan(2 * LIMIT);
    expect(most).toBeLessThanOrEqual(LIMIT + SLACK);
    expect(feed.subscriberCount()).toBe(subs + 2);
    expect(await slowCount('grpc')).toBe(1);

    // Revocations keep coming; the healthy subscribers on both transports get every one, in order, and promptly.
    const end = await revoke(300);
    expect(await until(() => taskCursors(healthy.events).at(-1) === end && taskCursors(healthySse.events.map((e) => e.data as { kind: string; cursor: number })).at(-1) === end, 10_000)).toBe(true);
    expect(consecutive(taskCursors(healthy.events), start, end)).toBe(true);
    expect(consecutive(taskCursors(healthySse.events.map((e) => e.data as { kind: string; cursor: number })), start, end)).toBe(true);
    expect(healthy.ended()).toBeUndefined();
    expect(healthySse.closed()).toBe(false);

    // The stalled subscriber, once it reads again, gets what was queued for it (in order) and then the status.
    stalled.resume();
    const st = await stalled.status;
    expect(st).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, mayflyCode: 'ERR_FEED_SUBSCRIBER_SLOW' });
    expect(st.details).toMatch(/^ERR_FEED_SUBSCRIBER_SLOW: .*bp-stalled-grpc.*resume from your last cursor/);
    const got = taskCursors(stalled.messages.map((b) => fromBinary(pb.RevocationEventSchema, b)));
    expect(got.length).toBeGreaterThan(0);
    expect(got.length).toBeLessThan(last - start);
    expect(consecutive(got, start, got.at(-1)!)).toBe(true);
    stalled.close();
    healthy.cancel();
    healthySse.close();
  }, 120_000);

  it('an SSE subscriber that stops reading is ended with an `error` event carrying ERR_FEED_SUBSCRIBER_SLOW; others are unaffected', async () => {
    const feed = tb.broker.feed;
    const start = feed.latestCursor();
    const before = feed.slowSubscribers();
    const subs = 0;
    const stalled = openSseFeed(tb, { cert: 'relying-party', lastEventId: String(start), paused: true });
    // A second one that never reads again: its connection is dropped a while after the error, so it pins nothing.
    const gone = openSseFeed(tb, { cert: 'relying-party', lastEventId: String(start), paused: true });
    const healthy = healthyGrpc(start, 'bp-healthy-grpc-2');
    expect(await stalled.ready).toBe(200);
    expect(await gone.ready).toBe(200);
    expect(await until(() => feed.subscriberCount() === subs + 3)).toBe(true);

    // HTTP/1.1 has no flow control of its own: kernel socket buffers take megabytes before the broker's writes back up.
    const { most } = await publishUntil(() => feed.slowSubscribers() > before + 1, 80_000);
    expect(feed.slowSubscribers()).toBe(before + 2);
    expect(most).toBeLessThanOrEqual(LIMIT + SLACK);
    expect(await slowCount('sse')).toBe(2);
    const end = await revoke(100);
    expect(await until(() => taskCursors(healthy.events).at(-1) === end, 10_000)).toBe(true);
    expect(consecutive(taskCursors(healthy.events), start, end)).toBe(true);

    stalled.resume();
    expect(await until(() => stalled.closed(), 20_000)).toBe(true);
    const last = stalled.events.at(-1)!;
    expect(last.event).toBe('error');
    expect(last.data).toMatchObject({ error: 'ERR_FEED_SUBSCRIBER_SLOW' });
    expect(String(last.data['message'])).toMatch(/resume from your last cursor/);
    const got = stalled.events.filter((e) => e.event === 'task').map((e) => Number(e.id));
    expect(consecutive(got, start, got.at(-1)!)).toBe(true);
    // The one that never reads: the broker dropped its connection (a paused client cannot see that until it reads).
    const connections = () => new Promise<number>((resolve) => tb.broker.http.app.server.getConnections((_e, n) => resolve(n)));
    const t0 = Date.now();
    while ((await connections()) > 0 && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 100));
    expect(await connections()).toBe(0);
    gone.close();
    healthy.cancel();
  }, 180_000);

  it('a verifier whose process stalls is cut off, reconnects on its own and resumes from its cursor: every revocation, in order, no gap', async () => {
    const feed = tb.broker.feed;
    const proxy = await pausableProxy(tb.grpcAddr);
    const client = new BrokerClient({ address: proxy.address, ca: tb.ca, cert: readFileSync(join(tb.dir, 'relying-party.pem')), key: readFileSync(join(tb.dir, 'relying-party.key')) });
    // What the verifier's feed client hands it, recorded on the way.
    const seen: pb.RevocationEvent[] = [];
    const recording: VerifierBrokerClient = {
      watchRevocations: (req, onEvent, onEnd) =>
        client.watchRevocations(
          req,
          (e) => {
            seen.push(e);
            onEvent(e);
          },
          onEnd,
        ),
      ackKeySet: (s, v) => client.ackKeySet(s, v),
      reportMisuse: (k, t, d) => client.reportMisuse(k, t, d),
      introspect: (t) => client.introspect(t),
    };
    const events: VerifierEvent[] = [];
    const verifier = new MayflyVerifier({
      issuer: tb.issuer,
      audience: 'demo-api',
      jwks: { url: `${tb.httpUrl}/.well-known/jwks.json`, ca: tb.ca },
      feed: { client: recording, subscriberId: 'bp-verifier', maxSilenceMs: 120_000, backoff: { initialMs: 50, maxMs: 200 } },
      onEvent: (e) => events.push(e),
    });
    try {
      await verifier.start();
      const before = feed.slowSubscribers();
      const first = await revoke(50);
      expect(await until(() => verifier.stats().cursor === first)).toBe(true);

      proxy.pause();
      const { most } = await publishUntil(() => feed.slowSubscribers() > before, 20_000);
      expect(feed.slowSubscribers()).toBe(before + 1);
      expect(most).toBeLessThanOrEqual(LIMIT + SLACK);
      const more = await revoke(100);
      proxy.resume();

      expect(await until(() => verifier.stats().cursor === more, 20_000)).toBe(true);
      const cut = events.find((e) => e.type === 'feed.disconnected');
      expect(cut).toMatchObject({ type: 'feed.disconnected', error: expect.objectContaining({ code: 'ERR_FEED_SUBSCRIBER_SLOW' }) });
      expect(verifier.stats().reconnects).toBeGreaterThanOrEqual(1);
      expect(verifier.stats().synchronized).toBe(true);
      // Everything after the snapshot, exactly once and in cursor order, across the cut.
      const snapshot = seen.find((e) => e.kind === pb.RevocationEvent_Kind.SNAPSHOT)!;
      expect(consecutive(taskCursors(seen), Number(snapshot.cursor), more)).toBe(true);
      expect(seen.some((e) => e.kind === pb.RevocationEvent_Kind.KEYSET && e.reason === REPLAY_END_REASON)).toBe(true);
    } finally {
      verifier.close();
      client.close();
      await proxy.close();
    }
  }, 120_000);

  it('a replay of a long log to a reader that stalls waits for it to drain instead of buffering the log, then completes in order', async () => {
    const feed = tb.broker.feed;
    const from = await revoke(1); // a cursor inside the log: a resume (a replay), not a fresh snapshot
    const last = await revoke(6000);
    const reader = rawFeedStream(tb, watchRequest(from, 'bp-replay'), { paused: true });
    expect(await until(() => feed.subscriberCount() === 1)).toBe(true);
    // Give the replay every chance to write ahead; with the drain wait it parks after about a page.
    let most = 0;
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 50));
      most = Math.max(most, feed.maxBufferedBytes());
    }
    // 6 000 events of about 60 bytes each: the whole log would be ~360 KB; a page (500 events) is ~30 KB.
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThan(100 * 1024);
    // Live events during the parked replay are delivered after it, in order.
    const live = await revoke(700);
    reader.resume();
    const decoded = () => reader.messages.map((b) => fromBinary(pb.RevocationEventSchema, b));
    expect(await until(() => taskCursors(decoded()).at(-1) === live, 20_000)).toBe(true);
    const got = decoded();
    expect(consecutive(taskCursors(got), from, live)).toBe(true);
    const replayEnd = got.findIndex((e) => e.kind === pb.RevocationEvent_Kind.KEYSET && e.reason === REPLAY_END_REASON);
    expect(replayEnd).toBeGreaterThan(0);
    expect(Number(got[replayEnd]!.cursor)).toBeGreaterThanOrEqual(last);
    expect(feed.subscriberCount()).toBe(1);
    reader.close();
    expect(await until(() => feed.subscriberCount() === 0)).toBe(true);
  }, 120_000);

  it('a replay whose reader goes away while it waits for drain stops, and the subscriber leaves the feed', async () => {
    const feed = tb.broker.feed;
    const from = await revoke(1);
    await revoke(3000);
    const subs = 0;
    const reader = rawFeedStream(tb, watchRequest(from, 'bp-replay-gone'), { paused: true });
    expect(await until(() => feed.subscriberCount() === subs + 1 && feed.maxBufferedBytes() > 0)).toBe(true);
    reader.close();
    expect(await until(() => feed.subscriberCount() === subs)).toBe(true);
    // The broker still serves: a new subscriber gets a live event.
    const healthy = healthyGrpc(feed.latestCursor(), 'bp-after-gone');
    await until(() => healthy.events.length > 0);
    const end = await revoke(1);
    expect(await until(() => taskCursors(healthy.events).at(-1) === end)).toBe(true);
    healthy.cancel();
  }, 60_000);
});
