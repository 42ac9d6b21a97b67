/**
 * The revocation feed hub. Durable events come from the Store (each with a
 * cursor); this hub fans them out to live subscribers, replays from a cursor
 * on resume, sends a snapshot when the cursor is older than retention, sends
 * heartbeats, and tracks which key-set version each subscriber acknowledged
 * (the promotion gate of the key lifecycle).
 */
import { mayflyError, type MayflyError } from '../core/errors.js';
import type { Clock, Store } from '../core/ports.js';
import { REPLAY_END_REASON, type RevocationEvent } from '../core/types.js';
import type { EventPublisher } from './deps.js';

export type FeedKind = 'task' | 'token' | 'keyset' | 'key' | 'snapshot' | 'heartbeat';

export interface FeedMessage {
  kind: FeedKind;
  cursor: number;
  at: number;
  taskIds: string[];
  jtis: string[];
  kid: string;
  reason: string;
  kids: string[];
  jwksJson: string;
  /** Epoch ms after which nothing this message revokes can still be valid; 0 for heartbeats and key sets. */
  coversUntil: number;
}

export interface KeySetView {
  version: string;
  json: string;
  kids: string[];
}

/**
 * One subscriber's stream, as the transport (gRPC or server-sent events)
 * carries it: Node's writable-stream backpressure, seen from the hub.
 */
export interface FeedStream {
  /** Queues one message; false once the stream holds more than its high-water mark (as Writable.write). */
  write(m: FeedMessage): boolean;
  /** Bytes queued for the subscriber that it has not taken yet. Read only after write() returned false. */
  bufferedBytes(): number;
  /** Resolves true at the stream's next 'drain', false if it closes first. */
  drained(): Promise<boolean>;
  /** Calls `fn` once when the stream closes (at once if it has). */
  onClose(fn: () => void): void;
  /** Ends the stream: normally, or with `err` (the transport maps it to its wire error). */
  end(err?: MayflyError): void;
}

/** A stream that takes every message at once (in-process subscribers: tests, tools). */
export function callbackStream(send: (m: FeedMessage) => void, end?: () => void): FeedStream {
  return {
    write: (m) => {
      send(m);
      return true;
    },
    bufferedBytes: () => 0,
    drained: () => Promise.resolve(true),
    onClose: () => undefined,
    end: () => end?.(),
  };
}

/** Who is behind a subscription, for the log line of a subscriber cut off as too slow (never a token). */
export interface FeedCaller {
  identity: string;
  peer?: string;
  requestId?: string;
  transport?: string;
}

/** What the hub reports when it ends a subscriber's stream for holding more than maxBufferedBytes. */
export interface SlowSubscriber extends FeedCaller {
  subscriber: string;
  bufferedBytes: number;
  limitBytes: number;
  /** The last cursor sent to it: it resumes from its own last cursor and misses nothing. */
  cursor: number;
}

export interface FeedOptions {
  heartbeatMs: number;
  /** Replay page size; also how many live events a replaying subscriber holds before it rereads them from the log. */
  batch: number;
  /** Longest token lifetime: a snapshot's revocations cover tokens until at most now + this. */
  maxTokenTtlMs: number;
  /** A subscriber whose stream holds more than this many unsent bytes is ended with ERR_FEED_SUBSCRIBER_SLOW (default 1 MiB). */
  maxBufferedBytes?: number;
  /** Called once for each subscriber ended as too slow (metric, log). */
  onSlowSubscriber?: (s: SlowSubscriber) => void;
}

export const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024;

interface Subscriber {
  id: string;
  stream: FeedStream;
  caller: FeedCaller | undefined;
  /** Buffer for live events while the backlog is replayed (at most `batch`; see `behind`). */
  pending: FeedMessage[] | null;
  /** Live events were dropped from `pending` during the replay: the replay rereads them from the log. */
  behind: boolean;
  /** The stream closed or was ended: nothing more is written to it. */
  gone: boolean;
  lastCursor: number;
  connectedAt: number;
}

export interface Subscription {
  close(): void;
}

export class RevocationFeed implements EventPublisher {
  private readonly subs = new Set<Subscriber>();
  private readonly acks = new Map<string, string>();
  private readonly versionKids = new Map<string, Set<string>>();
  /** Highest cursor delivered to subscribers (events go out in cursor order, see publish). */
  private latest = 0;
  private timer: NodeJS.Timeout | null = null;
  /** A read of the log below an early event, and the events published meanwhile. */
  private filling: Promise<void> | null = null;
  private early: RevocationEvent[] = [];
  private readonly limitBytes: number;
  /** Subscribers ended as too slow since start. */
  private slowCount = 0;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly keyset: () => KeySetView,
    private readonly options: FeedOptions = { heartbeatMs: 5000, batch: 500, maxTokenTtlMs: 3_600_000 },
  ) {
    this.limitBytes = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
  }

  /** Starts heartbeats; reads the latest cursor. */
  async start(): Promise<void> {
    this.latest = (await this.store.cursorRange()).latest;
    this.noteKeySet(this.keyset());
    this.timer = setInterval(() => this.heartbeat(), this.options.heartbeatMs);
    this.timer.unref();
  }

  /** Stops heartbeats and ends every subscriber's stream, so shutdown does not wait on them. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const subs = [...this.subs];
    this.subs.clear();
    for (const s of subs) {
      s.gone = true;
      s.stream.end();
    }
  }

  /**
   * Called with each durable event. Fans out at once (the propagation path),
   * in cursor order: subscribers, and verifiers resuming from a cursor, take
   * a cursor as "everything up to here", so an event must never reach them
   * after one with a higher cursor. Use-cases publish when their own write is
   * durable, and two of them can finish in either order (a CompleteTask and a
   * key-set change, say). An event that arrives ahead of the next cursor is
   * therefore preceded by what the log holds below it: its durability covers
   * those too (one store: cursors follow commit order, and the WAL fsync or
   * commit that made it durable covered every earlier commit). Their own
   * publish calls, when they come, find them delivered and do nothing.
   */
  publish(event: RevocationEvent): void {
    if (this.filling) {
      this.early.push(event);
      return;
    }
    if (event.cursor <= this.latest) return;
    if (event.cursor === this.latest + 1) {
      this.send(event);
      return;
    }
    this.filling = this.fillBelow(event).finally(() => {
      this.filling = null;
      const early = this.early.sort((a, b) => a.cursor - b.cursor);
      this.early = [];
      for (const e of early) this.publish(e);
    });
  }

  /** Delivers the logged events between the last delivered cursor and `event`, then `event`. */
  private async fillBelow(event: RevocationEvent): Promise<void> {
    try {
      while (this.latest < event.cursor - 1) {
        const page = await this.store.eventsSince(this.latest, this.options.batch);
        const below = page.filter((e) => e.cursor < event.cursor);
        for (const e of below) this.send(e);
        if (below.length < page.length || page.length < this.options.batch) break;
      }
    } catch {
      // The log could not be read: deliver the event itself. Subscribers missing the earlier ones find them on
      // their next resume (a store that cannot be read also fails the writes that would publish more).
    }
    this.send(event);
  }

  private send(event: RevocationEvent): void {
    if (event.cursor <= this.latest) return;
    this.latest = event.cursor;
    const msg = this.toMessage(event);
    for (const s of this.subs) this.deliver(s, msg);
  }

  /** Remembers which kids a key-set version contains (for the promotion gate). */
  noteKeySet(view: KeySetView): void {
    this.versionKids.set(view.version, new Set(view.kids));
    if (this.versionKids.size > 64) this.versionKids.delete(this.versionKids.keys().next().value as string);
  }

  /**
   * Subscribes from `cursor` (0 = fresh). Replays what the subscriber missed,
   * or a snapshot of live revocations if the cursor predates retention, then
   * streams live events. Never drops an event between replay and live.
   *
   * Backpressure: the replay writes a page, and when the stream reports a
   * full buffer it waits for the stream to drain before reading the next
   * page, so a slow reader never makes the broker buffer the whole log.
   * Live events arriving meanwhile are held (at most a page of them; past
   * that the replay reads them back from the log instead). Once live, a
   * stream holding more than `maxBufferedBytes` is ended with
   * ERR_FEED_SUBSCRIBER_SLOW; its subscriber resumes from its last cursor.
   * If the stream closes during the replay, the replay stops and the
   * returned subscription is already closed.
   */
  async subscribe(subscriberId: string, cursor: number, out: FeedStream | ((m: FeedMessage) => void), end?: () => void, caller?: FeedCaller): Promise<Subscription> {
    const stream = typeof out === 'function' ? callbackStream(out, end) : out;
    const sub: Subscriber = { id: subscriberId, stream, caller, pending: [], behind: false, gone: false, lastCursor: cursor, connectedAt: this.clock.now() };
    const close = () => {
      sub.gone = true;
      this.subs.delete(sub);
    };
    this.subs.add(sub);
    stream.onClose(close);
    try {
      const range = await this.store.cursorRange();
      const ks = this.keyset();
      let from = cursor;
      const replay = !(cursor === 0 || cursor < range.oldest - 1 || cursor > range.latest);
      if (!replay && !sub.gone) {
        const snap = await this.store.revocationSnapshot(this.clock.now());
        if (sub.gone) return { close };
        const now = this.clock.now();
        const full = !stream.write({ kind: 'snapshot', cursor: snap.cursor, at: now, taskIds: snap.taskIds, jtis: snap.jtis, kid: ks.version, reason: cursor === 0 ? 'initial' : 'cursor outside retention', kids: snap.kids, jwksJson: ks.json, coversUntil: now + this.options.maxTokenTtlMs });
        from = snap.cursor;
        if (full && !(await this.drained(sub))) return { close };
      }
      // The log after the snapshot is normally empty, and read only when live events were dropped meanwhile.
      if (replay || sub.behind) from = await this.replay(sub, from);
      if (sub.gone) return { close };
      sub.lastCursor = from;
      if (replay) {
        // Tell the subscriber the current key set even if no keyset event was replayed.
        const k = this.keyset();
        stream.write({ kind: 'keyset', cursor: from, at: this.clock.now(), taskIds: [], jtis: [], kid: k.version, reason: REPLAY_END_REASON, kids: k.kids, jwksJson: k.json, coversUntil: 0 });
      }
      const pending = sub.pending ?? [];
      sub.pending = null;
      for (const m of pending) this.deliver(sub, m);
    } catch (e) {
      close();
      throw e;
    }
    return { close };
  }

  /**
   * Writes the log after `from` to the subscriber, a page at a time, waiting
   * for the stream to drain whenever a write reports a full buffer. Returns
   * the last cursor written (stops early, quietly, if the stream goes away).
   */
  private async replay(sub: Subscriber, from: number): Promise<number> {
    for (;;) {
      const page = await this.store.eventsSince(from, this.options.batch);
      if (sub.gone) return from;
      let full = false;
      for (const e of page) if (!sub.stream.write(this.toMessage(e))) full = true;
      if (page.length > 0) from = page[page.length - 1]!.cursor;
      if (full && !(await this.drained(sub))) return from;
      if (page.length === this.options.batch) continue;
      // Live events were dropped while this page was read or drained: they are in the log, read on.
      if (!sub.behind) return from;
      sub.behind = false;
    }
  }

  /** Waits for the subscriber's stream to drain; false if it closed (or was ended) first. */
  private async drained(sub: Subscriber): Promise<boolean> {
    if (sub.gone) return false;
    const ok = await sub.stream.drained();
    return ok && !sub.gone;
  }

  /** The kids of a key-set version this replica has published, if it knows the version. */
  kidsOf(version: string): string[] | undefined {
    const kids = this.versionKids.get(version);
    return kids ? [...kids] : undefined;
  }

  /** Records the key-set version a subscriber holds. */
  ack(subscriberId: string, version: string): void {
    this.acks.set(subscriberId, version);
  }

  /** Each live subscriber with the kids of the key set it last acknowledged (shared with other replicas for the promotion gate). */
  ackedKeySets(): { subscriber: string; kids: string[] }[] {
    const out = new Map<string, string[]>();
    for (const s of this.subs) {
      const v = this.acks.get(s.id);
      out.set(s.id, v ? [...(this.versionKids.get(v) ?? [])] : []);
    }
    return [...out].map(([subscriber, kids]) => ({ subscriber, kids }));
  }

  /** Promotion gate: every live subscriber has acknowledged a key set containing `kid`. */
  readonly gate = (kid: string): { ready: boolean; laggards: string[] } => {
    const laggards: string[] = [];
    for (const s of this.subs) {
      const v = this.acks.get(s.id);
      if (!v || !this.versionKids.get(v)?.has(kid)) laggards.push(s.id);
    }
    return { ready: laggards.length === 0, laggards: [...new Set(laggards)] };
  };

  /** Number of live subscribers. */
  subscriberCount(): number {
    return this.subs.size;
  }

  /** Largest cursor gap between the feed and any subscriber. */
  maxLag(): number {
    let lag = 0;
    for (const s of this.subs) lag = Math.max(lag, this.latest - s.lastCursor);
    return lag;
  }

  latestCursor(): number {
    return this.latest;
  }

  /** Subscribers ended as too slow since start. */
  slowSubscribers(): number {
    return this.slowCount;
  }

  /** The most bytes any subscriber's stream (live or replaying) holds unsent (0 when every stream keeps up). */
  maxBufferedBytes(): number {
    let most = 0;
    for (const s of this.subs) most = Math.max(most, s.stream.bufferedBytes());
    return most;
  }

  private deliver(s: Subscriber, m: FeedMessage): void {
    if (s.pending) {
      // A replay in progress: hold at most a page of live events; past that, drop them and let the replay read them from the log.
      if (s.pending.length >= this.options.batch) {
        s.pending.length = 0;
        s.behind = true;
      }
      s.pending.push(m);
      return;
    }
    if (m.cursor <= s.lastCursor && m.kind !== 'heartbeat' && m.kind !== 'keyset') return;
    if (m.kind !== 'heartbeat') s.lastCursor = Math.max(s.lastCursor, m.cursor);
    if (!s.stream.write(m)) this.pressure(s);
  }

  /** A write reported a full buffer: end the stream if it holds more than the bound (the common case never gets here). */
  private pressure(s: Subscriber): void {
    const bytes = s.stream.bufferedBytes();
    if (bytes <= this.limitBytes) return;
    this.subs.delete(s);
    s.gone = true;
    this.slowCount++;
    const limit = this.limitBytes;
    this.options.onSlowSubscriber?.({ subscriber: s.id, ...s.caller, identity: s.caller?.identity ?? s.id, bufferedBytes: bytes, limitBytes: limit, cursor: s.lastCursor });
    s.stream.end(
      mayflyError('ERR_FEED_SUBSCRIBER_SLOW', `revocation feed subscriber ${JSON.stringify(s.id)} fell behind: its stream held ${bytes} unsent bytes (limit ${limit}); resume from your last cursor`, {
        subscriber_id: s.id,
        buffered_bytes: bytes,
        limit_bytes: limit,
      }),
    );
  }

  private heartbeat(): void {
    const m: FeedMessage = { kind: 'heartbeat', cursor: this.latest, at: this.clock.now(), taskIds: [], jtis: [], kid: '', reason: '', kids: [], jwksJson: '', coversUntil: 0 };
    for (const s of this.subs) if (!s.pending && !s.stream.write(m)) this.pressure(s);
  }

  private toMessage(e: RevocationEvent): FeedMessage {
    const keysetJson = e.kind === 'keyset' || e.kind === 'key' ? this.keyset() : null;
    return {
      kind: e.kind,
      cursor: e.cursor,
      at: e.at,
      taskIds: e.taskIds,
      jtis: e.jtis,
      kid: e.kid ?? '',
      reason: e.reason,
      kids: keysetJson?.kids ?? [],
      jwksJson: keysetJson?.json ?? '',
      coversUntil: e.kind === 'keyset' ? 0 : e.coversUntil,
    };
  }
}
