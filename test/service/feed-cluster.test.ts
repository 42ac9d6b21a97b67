/**
 * The revocation feed across replicas sharing one PostgreSQL database.
 *
 * The central case: PostgreSQL transactions commit in any order, so a
 * revocation event with a smaller cursor can try to become visible after one
 * with a larger cursor. A subscriber that has seen the larger one and resumes
 * from its cursor would then never get the smaller one. Here the transaction
 * holding the smaller cursor is stalled after taking it (a trigger sleeps
 * inside it), a second replica commits a revocation meanwhile, and
 * subscribers on both replicas (one of them disconnecting and resuming from
 * its cursor on the other replica mid-way) must get both events, once each,
 * in cursor order.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { Identity } from '../../src/core/types.js';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { Authorizer } from '../../src/service/authorize.js';
import { FeedSubscriptions } from '../../src/service/subscriptions.js';
import { PgAckRegistry, PgListener, PgSubscriberRegistry, EVENTS_CHANNEL, pgNotify } from '../../src/store/postgres-cluster.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { ClusterAckGate, ClusterFeedRelay } from '../../src/service/feed-cluster.js';
import { callbackStream, RevocationFeed, type FeedMessage } from '../../src/service/feed.js';
import { task } from '../contracts/store.contract.js';
import { freshDatabase } from '../helpers/postgres.js';

const KEYSET = { version: 'v1', json: '{"keys":[]}', kids: ['kid-a'] };

interface Replica {
  store: PostgresStore;
  feed: RevocationFeed;
  relay: ClusterFeedRelay;
  listener: PgListener;
}

let url: string;
const open: Replica[] = [];

async function replica(): Promise<Replica> {
  const store = await PostgresStore.open({ url, poolMax: 4 });
  const feed = new RevocationFeed(store, systemClock, () => KEYSET, { heartbeatMs: 60_000, batch: 500, maxTokenTtlMs: 3_600_000 });
  await feed.start();
  const relay = new ClusterFeedRelay(store, feed, { pollIntervalMs: 60_000, batch: 500, notifyOthers: (c) => pgNotify(store.pool, EVENTS_CHANNEL, String(c)) });
  relay.start(feed.latestCursor());
  const listener = new PgListener(store.pool, { [EVENTS_CHANNEL]: () => void relay.wake() });
  await listener.start();
  const r = { store, feed, relay, listener };
  open.push(r);
  return r;
}

function collector() {
  const got: FeedMessage[] = [];
  return {
    got,
    send: (m: FeedMessage) => got.push(m),
    revokedTasks: () => got.filter((m) => m.kind === 'task').flatMap((m) => m.taskIds),
    cursors: () => got.filter((m) => m.kind === 'task').map((m) => m.cursor),
  };
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

beforeEach(async () => {
  url = await freshDatabase('mayfly_feed');
});
afterEach(async () => {
  for (const r of open.splice(0)) {
    await r.listener.stop();
    await r.relay.stop();
    r.feed.stop();
    await r.store.close();
  }
});

describe('revocation feed across replicas', () => {
  it('a revocation committed out of cursor order reaches live and cursor-resuming subscribers on every replica, once, in order', async () => {
    const a = await replica();
    const b = await replica();
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      // Inside any transaction that inserts an event with this reason: sleep, after the event has its cursor, before COMMIT.
      await admin.query(`
        CREATE FUNCTION stall_before_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.reason = 'stalled' THEN PERFORM pg_sleep(0.8); END IF; RETURN NEW; END $$;
        CREATE TRIGGER stall_before_commit AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION stall_before_commit();`);
      const now = Date.now();
      const t1 = task(`t1-${randomBytes(3).toString('hex')}`, { createdAt: now, expiresAt: now + 600_000 });
      const t2 = task(`t2-${randomBytes(3).toString('hex')}`, { createdAt: now, expiresAt: now + 600_000 });
      await a.store.createTask(t1);
      await a.store.createTask(t2);
      // Cursor 0 means "new subscriber" (snapshot); start from a real cursor.
      await a.store.appendEvent({ kind: 'keyset', at: now, taskIds: [], jtis: [], kid: 'v1', reason: 'key set changed', coversUntil: now });
      const start = (await a.store.cursorRange()).latest;
      expect(start).toBeGreaterThan(0);

      const liveA = collector();
      const liveB = collector();
      await a.feed.subscribe('rp-live-a', start, liveA.send);
      await b.feed.subscribe('rp-live-b', start, liveB.send);
      const moving = collector();
      const first = await b.feed.subscribe('rp-moving', start, moving.send);

      // Replica A: the transaction that takes the smaller cursor, held open.
      const slow = a.store.endTask(t1.id, 'completed', 'stalled', now).then((r) => {
        a.relay.publish(r.event!);
        return r;
      });
      await until('the stalled transaction to hold its cursor', async () => (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'`)).rowCount === 1);
      // Replica B: a second revocation begins and tries to commit while the first is still open.
      const fast = b.store.endTask(t2.id, 'completed', 'fast', now).then((r) => {
        b.relay.publish(r.event!);
        return r;
      });
      // While the smaller cursor is uncommitted, keep both replicas reading the log as hard as they can.
      const seenDuringStall: number[][] = [];
      for (let i = 0; i < 20; i++) {
        await Promise.all([a.relay.wake(), b.relay.wake()]);
        seenDuringStall.push(moving.cursors());
        await new Promise((r) => setTimeout(r, 15));
      }
      // The moving subscriber leaves replica B with whatever it has and resumes on replica A from its cursor.
      first.close();
      const resumeFrom = moving.got.filter((m) => m.kind !== 'heartbeat').reduce((c, m) => Math.max(c, m.cursor), start);
      const [r1, r2] = await Promise.all([slow, fast]);
      expect(r1.event!.cursor, 'the stalled transaction holds the smaller cursor').toBeLessThan(r2.event!.cursor);
      const resumed = collector();
      await a.feed.subscribe('rp-moving', resumeFrom, resumed.send);

      for (const live of [liveA, liveB]) {
        await until('both revocations at a live subscriber', () => live.revokedTasks().length >= 2);
        expect(live.revokedTasks()).toEqual([t1.id, t2.id]);
        expect(live.cursors()).toEqual([r1.event!.cursor, r2.event!.cursor]);
      }
      await until('the resumed subscriber to catch up', () => [...moving.revokedTasks(), ...resumed.revokedTasks()].length >= 2);
      // No gap and no duplicate across the move: exactly t1 then t2.
      expect([...moving.revokedTasks(), ...resumed.revokedTasks()]).toEqual([t1.id, t2.id]);
      // Nothing past the uncommitted smaller cursor was ever handed out.
      for (const seen of seenDuringStall) expect(seen.every((c) => c < r1.event!.cursor) || seen[0] === r1.event!.cursor).toBe(true);
    } finally {
      await admin.end();
    }
  });

  it('a task completed on one replica reaches a subscriber of another within milliseconds (NOTIFY wake-up, cursor read)', async () => {
    const a = await replica();
    const b = await replica();
    const now = Date.now();
    const n = 30;
    const ids = Array.from({ length: n }, (_, i) => `p${i}-${randomBytes(3).toString('hex')}`);
    for (const id of ids) await a.store.createTask(task(id, { createdAt: now, expiresAt: now + 600_000 }));
    const arrived = new Map<string, number>();
    await b.feed.subscribe('rp', (await b.store.cursorRange()).latest, (m) => {
      if (m.kind === 'task') for (const t of m.taskIds) arrived.set(t, performance.now());
    });
    const lat: number[] = [];
    for (const id of ids) {
      const r = await a.store.endTask(id, 'completed', 'done', Date.now());
      const t0 = performance.now();
      a.relay.publish(r.event!);
      await until(`task ${id} at replica B`, () => arrived.has(id), 2000);
      lat.push(arrived.get(id)! - t0);
    }
    lat.sort((x, y) => x - y);
    const p50 = lat[Math.floor(n * 0.5)]!;
    const p99 = lat[n - 1]!;
    console.log(`cross-replica propagation over ${n} completions: p50 ${p50.toFixed(1)} ms, max ${p99.toFixed(1)} ms`);
    // Functional bound only (the fallback poll here is 60 s): every event arrived by notification.
    expect(p99).toBeLessThan(2000);
  });

  it('key promotion counts acknowledgements of subscribers on every replica; a dead replica stops counting', async () => {
    const a = await replica();
    const b = await replica();
    const clock = { now: () => Date.now() };
    const gateA = new ClusterAckGate('replica-a', a.feed, new PgAckRegistry(a.store.pool), clock, { reportIntervalMs: 60_000, freshMs: 500 });
    const gateB = new ClusterAckGate('replica-b', b.feed, new PgAckRegistry(b.store.pool), clock, { reportIntervalMs: 60_000, freshMs: 500 });
    b.feed.noteKeySet({ version: 'v2', json: '{"keys":[]}', kids: ['kid-a', 'kid-next'] });
    await b.feed.subscribe('rp-on-b', 0, () => undefined);
    await gateB.report();
    // The subscriber on B has acknowledged nothing yet: A's gate holds promotion for it.
    expect(await gateA.gate('kid-next')).toEqual({ ready: false, laggards: ['rp-on-b'] });
    b.feed.ack('rp-on-b', 'v1');
    await gateB.report();
    expect((await gateA.gate('kid-next')).laggards).toEqual(['rp-on-b']);
    b.feed.ack('rp-on-b', 'v2');
    await gateB.report();
    expect(await gateA.gate('kid-next')).toEqual({ ready: true, laggards: [] });
    // Replica B stops reporting (dies): after freshMs its rows no longer hold promotion back.
    b.feed.ack('rp-on-b', 'v1');
    await gateB.report();
    expect((await gateA.gate('kid-next')).ready).toBe(false);
    await new Promise((r) => setTimeout(r, 600));
    expect(await gateA.gate('kid-next')).toEqual({ ready: true, laggards: [] });
    await gateA.stop();
    await gateB.stop();
  });

  it('an acknowledgement counts whichever replica receives it, and a subscriber name bound on one replica is bound on all', async () => {
    const a = await replica();
    const b = await replica();
    const clock = { now: () => Date.now() };
    const access = new Authorizer({ admins: [] });
    const subs = (r: Replica) => new FeedSubscriptions({ feed: r.feed, access, audit: new MemoryAuditSink(), shared: { registry: new PgSubscriberRegistry(r.store.pool), clock } });
    const [subsA, subsB] = [subs(a), subs(b)];
    const gateA = new ClusterAckGate('replica-a', a.feed, new PgAckRegistry(a.store.pool), clock, { reportIntervalMs: 60_000, freshMs: 5000 });
    const gateB = new ClusterAckGate('replica-b', b.feed, new PgAckRegistry(b.store.pool), clock, { reportIntervalMs: 60_000, freshMs: 5000 });
    for (const r of [a, b]) r.feed.noteKeySet({ version: 'v2', json: '{"keys":[]}', kids: ['kid-a', 'kid-next'] });
    const who = (id: string): { identity: Identity; requestId: string } => ({ identity: { kind: 'spiffe', id, method: 'x509-svid', claims: {} } as Identity, requestId: 'r' });
    const rp = 'spiffe://example.org/rp';
    const sink = { open: () => undefined, ...callbackStream(() => undefined) };
    // The relying party's stream (named rp-1, bound to its identity) is on replica A.
    await subsA.subscribe(who(rp), { subscriberId: 'rp-1', transport: 'grpc' }, sink);
    // Its default-named stream is on A too.
    await subsA.subscribe(who(rp), { transport: 'grpc' }, sink);
    await gateA.report();
    await gateB.report();
    expect((await gateB.gate('kid-next')).laggards).toEqual([rp, 'rp-1'].sort());
    // Its acknowledgements reach replica B (failover of unary calls, a DNS name or load balancer in front).
    await subsB.ack(who(rp), { subscriberId: 'rp-1', keysetVersion: 'v2' });
    await subsB.ack(who(rp), { keysetVersion: 'v2' });
    await gateA.report();
    expect(await gateB.gate('kid-next')).toEqual({ ready: true, laggards: [] });
    expect(await gateA.gate('kid-next')).toEqual({ ready: true, laggards: [] });
    // A later key needs a later acknowledgement: the shared one does not stand for every key.
    expect((await gateA.gate('kid-later')).laggards).toEqual([rp, 'rp-1'].sort());
    // The name rp-1 belongs to the relying party on every replica: another identity can neither take it on B nor ack under it.
    const other = who('spiffe://example.org/intruder');
    await expect(subsB.subscribe(other, { subscriberId: 'rp-1', transport: 'grpc' }, sink)).rejects.toMatchObject({ code: 'ERR_NOT_AUTHORIZED_CLIENT' });
    await expect(subsB.ack(other, { subscriberId: 'rp-1', keysetVersion: 'v2' })).rejects.toMatchObject({ code: 'ERR_NOT_AUTHORIZED_CLIENT' });
    await expect(subsA.ack(other, { subscriberId: 'rp-1', keysetVersion: 'v2' })).rejects.toMatchObject({ code: 'ERR_NOT_AUTHORIZED_CLIENT' });
    // An older acknowledgement arriving late does not replace a newer one.
    await new PgSubscriberRegistry(a.store.pool).ack('rp-1', rp, ['kid-a'], clock.now() - 60_000);
    expect((await gateA.gate('kid-next')).ready).toBe(true);
    await gateA.stop();
    await gateB.stop();
  });
});
