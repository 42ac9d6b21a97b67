/**
 * Wiring of what makes several brokers on one PostgreSQL database one
 * cluster (docs/clustering.md): the revocation-feed relay that serves every
 * replica's revocations from the shared event log, the LISTEN connection
 * that wakes it and the key manager when another replica commits, and the
 * promotion gate over every replica's feed subscribers.
 */
import type pg from 'pg';
import type { Clock, Store } from '../core/ports.js';
import type { MayflyError } from '../core/errors.js';
import type { Logger } from '../observability/logger.js';
import { ClusterAckGate, ClusterFeedRelay } from '../service/feed-cluster.js';
import type { RevocationFeed } from '../service/feed.js';
import { EVENTS_CHANNEL, PgAckRegistry, PgListener, pgNotify } from '../store/postgres-cluster.js';
import type { KeyManager } from '../tokens/keys.js';
import { KEYS_CHANNEL } from '../tokens/keystore-postgres.js';

export interface ClusterOptions {
  replica: string;
  pool: pg.Pool;
  store: Store;
  feed: RevocationFeed;
  keys: KeyManager;
  clock: Clock;
  log: Pick<Logger, 'warn' | 'error'>;
  /** Fallback poll of the event log and the key set when notifications are lost (ms). */
  pollIntervalMs: number;
  /** How often this replica reports its subscribers' acknowledgements (ms). */
  ackReportMs: number;
  /** Called when an event from the log reaches this replica's feed (for the propagation metric). */
  onDelivered?: (originAt: number) => void;
}

export interface ClusterSync {
  /** Where the service and the wiring publish committed events. */
  relay: ClusterFeedRelay;
  gate: ClusterAckGate;
  listening(): boolean;
  stop(): Promise<void>;
}

/** Starts the relay, the listener and the acknowledgement reports; installs the cluster promotion gate. */
export async function startClusterSync(o: ClusterOptions): Promise<ClusterSync> {
  let lastErr = '';
  const onError = (e: MayflyError) => {
    // Once per kind of failure (its code), not on every poll while PostgreSQL is down.
    if (e.code === lastErr) return;
    lastErr = e.code;
    o.log.warn({ code: e.code, err: e.message }, 'cluster sync failed; retrying');
  };
  const relay = new ClusterFeedRelay(o.store, o.feed, {
    pollIntervalMs: o.pollIntervalMs,
    batch: 500,
    beforeKeyEvent: () => o.keys.sync(),
    notifyOthers: (cursor) => pgNotify(o.pool, EVENTS_CHANNEL, String(cursor)),
    onError,
    ...(o.onDelivered ? { onDelivered: (e) => o.onDelivered!(e.at) } : {}),
  });
  relay.start(o.feed.latestCursor());
  const syncKeys = () => {
    o.keys.sync().catch((e: unknown) => onError(e as MayflyError));
  };
  const listener = new PgListener(o.pool, { [EVENTS_CHANNEL]: () => void relay.wake(), [KEYS_CHANNEL]: syncKeys }, onError);
  await listener.start();
  const gate = new ClusterAckGate(o.replica, o.feed, new PgAckRegistry(o.pool), o.clock, {
    reportIntervalMs: o.ackReportMs,
    // A replica that missed three reports is taken for dead: its subscribers fail over and report again elsewhere.
    freshMs: 3 * o.ackReportMs + 1000,
    onError,
  });
  gate.start();
  o.keys.setPromotionGate(gate.gate);
  return {
    relay,
    gate,
    listening: () => listener.listening(),
    stop: async () => {
      await listener.stop();
      await relay.stop();
      await gate.stop();
    },
  };
}
