/**
 * The revocation feed when several replicas share one Store (PostgreSQL).
 *
 * Every replica serves the whole cluster's revocations, not just its own:
 * the store's event log, read by cursor, is the single truth, and a replica
 * delivers to its subscribers exactly what `eventsSince` returns, in cursor
 * order. A local event (a task completed here) and a notification from
 * another replica (PostgreSQL NOTIFY after its commit) are only wake-ups that
 * make the relay read the log at once; a slow interval poll covers a lost
 * notification or a dropped LISTEN connection. Because the store never hands
 * out a cursor past an event that has not committed yet (docs/clustering.md),
 * and the relay never advances past what it read, a subscriber resuming from
 * its cursor on any replica gets no gap and no duplicate.
 *
 * Key-set acknowledgements from subscribers on every replica gate key
 * promotion: each replica reports its live subscribers' acknowledged key sets
 * to a shared registry, and the gate asks the registry who still lags.
 */
import { isMayflyError, mayflyError, type MayflyError } from '../core/errors.js';
import type { AckRegistry, Clock, Store, SubscriberAck } from '../core/ports.js';
import type { RevocationEvent } from '../core/types.js';
import type { EventPublisher } from './deps.js';
import type { RevocationFeed } from './feed.js';

// The registry is a port (core/ports.ts); re-exported here for its users.
export type { AckRegistry, SubscriberAck };

export interface ClusterRelayOptions {
  /** Fallback poll of the event log when no notification arrives (ms). */
  pollIntervalMs: number;
  /** Events read per page. */
  batch: number;
  /** Runs before a key or key-set event is delivered, so the JWKS it carries is this replica's current one (KeyManager.sync). */
  beforeKeyEvent?: () => Promise<void>;
  /** Tells the other replicas that an event committed here (NOTIFY). */
  notifyOthers?: (cursor: number) => Promise<void>;
  onError?: (err: MayflyError) => void;
  /** Called with each event as it is delivered here (origin time → delivery, for metrics). */
  onDelivered?: (event: RevocationEvent) => void;
}

/** Feeds the local RevocationFeed from the shared event log; the service publishes into it. */
export class ClusterFeedRelay implements EventPublisher {
  private cursor = 0;
  private running: Promise<void> | null = null;
  private again = false;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly feed: Pick<RevocationFeed, 'publish'>,
    private readonly options: ClusterRelayOptions,
  ) {}

  /** Starts from `cursor` (the feed's latest at start) and polls every pollIntervalMs. */
  start(cursor: number): void {
    this.cursor = cursor;
    this.timer = setInterval(() => this.wake(), this.options.pollIntervalMs);
    this.timer.unref();
  }

  /** The last cursor delivered to the local feed. */
  delivered(): number {
    return this.cursor;
  }

  /** An event committed on this replica: read the log now, and wake the others. */
  publish(event: RevocationEvent): void {
    this.wake();
    this.options.notifyOthers?.(event.cursor).catch((e: unknown) => this.fail(e));
  }

  /** Reads the log now (coalesced: one reader at a time, re-run once if woken meanwhile). */
  wake(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.drain();
        } catch (e) {
          this.fail(e);
          break;
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async drain(): Promise<void> {
    for (;;) {
      const page = await this.store.eventsSince(this.cursor, this.options.batch);
      for (const e of page) {
        if (this.stopped) return;
        if (e.cursor <= this.cursor) continue;
        if ((e.kind === 'key' || e.kind === 'keyset') && this.options.beforeKeyEvent) await this.options.beforeKeyEvent();
        this.feed.publish(e);
        this.cursor = e.cursor;
        this.options.onDelivered?.(e);
      }
      if (page.length < this.options.batch) return;
    }
  }

  private fail(e: unknown): void {
    this.options.onError?.(isMayflyError(e) ? e : mayflyError('ERR_STORE', `revocation feed relay: ${(e as Error).message}`, undefined, e));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running?.catch(() => undefined);
  }
}


/**
 * Promotion gate over every replica's subscribers. A replica that died stops
 * reporting; its rows stop counting after `freshMs`, as its subscribers fail
 * over and reappear under a live replica.
 */
export class ClusterAckGate {
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly replica: string,
    private readonly feed: Pick<RevocationFeed, 'ackedKeySets'>,
    private readonly registry: AckRegistry,
    private readonly clock: Clock,
    private readonly options: { reportIntervalMs: number; freshMs: number; onError?: (err: MayflyError) => void },
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.report().catch((e: unknown) => this.options.onError?.(isMayflyError(e) ? e : mayflyError('ERR_STORE', `feed acknowledgements: ${(e as Error).message}`, undefined, e)));
    }, this.options.reportIntervalMs);
    this.timer.unref();
  }

  /** Writes this replica's live subscribers and their acknowledged key sets. */
  report(): Promise<void> {
    return this.registry.report(this.replica, this.feed.ackedKeySets(), this.clock.now());
  }

  /** The KeyManager promotion gate. */
  readonly gate = async (kid: string): Promise<{ ready: boolean; laggards: string[] }> => {
    await this.report();
    const laggards = await this.registry.laggards(kid, this.clock.now(), this.options.freshMs);
    return { ready: laggards.length === 0, laggards };
  };

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.registry.forget(this.replica).catch(() => undefined);
  }
}
