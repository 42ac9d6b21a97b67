/**
 * The revocation feed hub. Durable events come from the Store (each with a
 * cursor); this hub fans them out to live subscribers, replays from a cursor
 * on resume, sends a snapshot when the cursor is older than retention, sends
 * heartbeats, and tracks which key-set version each subscriber acknowledged
 * (the promotion gate of the key lifecycle).
 */
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

export interface FeedOptions {
  heartbeatMs: number;
  /** Replay page size. */
  batch: number;
  /** Longest token lifetime: a snapshot's revocations cover tokens until at most now + this. */
  maxTokenTtlMs: number;
}

interface Subscriber {
  id: string;
  send: (m: FeedMessage) => void;
  end?: () => void;
  /** Buffer for live events while the backlog is replayed. */
  pending: FeedMessage[] | null;
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

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly keyset: () => KeySetView,
    private readonly options: FeedOptions = { heartbeatMs: 5000, batch: 500, maxTokenTtlMs: 3_600_000 },
  ) {}

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
    for (const s of this.subs) s.end?.();
    this.subs.clear();
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
   */
  async subscribe(subscriberId: string, cursor: number, send: (m: FeedMessage) => void, end?: () => void): Promise<Subscription> {
    const sub: Subscriber = { id: subscriberId, send, ...(end ? { end } : {}), pending: [], lastCursor: cursor, connectedAt: this.clock.now() };
    this.subs.add(sub);
    try {
      const range = await this.store.cursorRange();
      const ks = this.keyset();
      if (cursor === 0 || cursor < range.oldest - 1 || cursor > range.latest) {
        const snap = await this.store.revocationSnapshot(this.clock.now());
        const now = this.clock.now();
        sub.send({ kind: 'snapshot', cursor: snap.cursor, at: now, taskIds: snap.taskIds, jtis: snap.jtis, kid: ks.version, reason: cursor === 0 ? 'initial' : 'cursor outside retention', kids: snap.kids, jwksJson: ks.json, coversUntil: now + this.options.maxTokenTtlMs });
        sub.lastCursor = snap.cursor;
      } else {
        let from = cursor;
        for (;;) {
          const page = await this.store.eventsSince(from, this.options.batch);
          for (const e of page) sub.send(this.toMessage(e));
          if (page.length > 0) from = page[page.length - 1]!.cursor;
          if (page.length < this.options.batch) break;
        }
        sub.lastCursor = from;
        // Tell the subscriber the current key set even if no keyset event was replayed.
        sub.send({ kind: 'keyset', cursor: from, at: this.clock.now(), taskIds: [], jtis: [], kid: ks.version, reason: REPLAY_END_REASON, kids: ks.kids, jwksJson: ks.json, coversUntil: 0 });
      }
      const pending = sub.pending ?? [];
      sub.pending = null;
      for (const m of pending) this.deliver(sub, m);
    } catch (e) {
      this.subs.delete(sub);
      throw e;
    }
    return { close: () => this.subs.delete(sub) };
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

  private deliver(s: Subscriber, m: FeedMessage): void {
    if (s.pending) {
      s.pending.push(m);
      return;
    }
    if (m.cursor <= s.lastCursor && m.kind !== 'heartbeat' && m.kind !== 'keyset') return;
    if (m.kind !== 'heartbeat') s.lastCursor = Math.max(s.lastCursor, m.cursor);
    s.send(m);
  }

  private heartbeat(): void {
    const m: FeedMessage = { kind: 'heartbeat', cursor: this.latest, at: this.clock.now(), taskIds: [], jtis: [], kid: '', reason: '', kids: [], jwksJson: '', coversUntil: 0 };
    for (const s of this.subs) if (!s.pending) s.send(m);
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
