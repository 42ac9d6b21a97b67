/**
 * Signing keys and the revocation feed, which need each other: the feed
 * carries the key set, and key promotion waits for the feed's subscribers.
 * On a shared PostgreSQL store, the cluster sync relays events between
 * replicas and the key set is shared.
 */
import type { LoadedConfig } from '../config/load.js';
import type { AuditSink, Clock, KeyStore, Store } from '../core/ports.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { EventPublisher } from '../service/deps.js';
import { RevocationFeed } from '../service/feed.js';
import { PostgresStore } from '../store/postgres.js';
import { KeyManager, type KeyManagerEvents } from '../tokens/keys.js';
import { PostgresKeyStore } from '../tokens/keystore-postgres.js';
import type { Cleanups } from './cleanups.js';
import { startClusterSync, type ClusterSync } from './cluster.js';
import { openKeyStore } from './keystore.js';

interface KeysContext {
  clock: Clock;
  log: Logger;
  audit: AuditSink;
  metrics: Metrics;
  store: Store;
  env: NodeJS.ProcessEnv;
  dataDir: string;
  cleanups: Cleanups;
}

export interface KeysAndFeed {
  keys: KeyManager;
  feed: RevocationFeed;
  /** Where the use-cases publish committed revocation events. */
  events: EventPublisher;
  /** The sync with other replicas on a shared store; null for a single broker. */
  cluster: ClusterSync | null;
}

export async function buildKeysAndFeed(loaded: LoadedConfig, x: KeysContext): Promise<KeysAndFeed> {
  const { config: c, baseDir } = loaded;
  const { clock, log, store, cleanups } = x;
  const pool = store instanceof PostgresStore ? store.pool : undefined;
  const keyStore: KeyStore = await openKeyStore(c, x.dataDir, baseDir, x.env, log, pool);
  cleanups.push(() => keyStore.close());
  let feed: RevocationFeed | null = null;
  // Single broker: events go straight to the feed. Cluster: through the relay, which reads them back from the shared log in cursor order.
  let cluster: ClusterSync | null = null;
  const publish = (ev: Parameters<EventPublisher['publish']>[0]) => (cluster ? cluster.relay.publish(ev) : feed?.publish(ev));
  const keys = new KeyManager(
    keyStore,
    clock,
    {
      alg: c.keys.alg,
      rotationPeriodMs: c.keys.rotation_period_seconds * 1000,
      prePublishMs: c.keys.pre_publish_seconds * 1000,
      skewMs: c.clock_skew_seconds * 1000,
      maxPromotionWaitMs: c.keys.max_promotion_wait_seconds * 1000,
      // Shared key set: lifecycle changes under the cluster lock, other replicas follow (docs/clustering.md).
      ...(keyStore instanceof PostgresKeyStore ? { cluster: keyStore } : {}),
    },
    keyHooks(loaded, x, () => feed, publish),
  );
  await keys.init();
  feed = new RevocationFeed(store, clock, () => keys.jwks(), {
    heartbeatMs: c.feed.heartbeat_ms,
    batch: 500,
    maxTokenTtlMs: c.tokens.max_ttl_seconds * 1000,
    maxBufferedBytes: c.feed.max_buffered_bytes,
    onSlowSubscriber: (s) => {
      x.metrics.feedSlowSubscribers.inc({ transport: s.transport ?? 'other' });
      log.warn(
        { code: 'ERR_FEED_SUBSCRIBER_SLOW', subscriber_id: s.subscriber, identity: s.identity, peer: s.peer, request_id: s.requestId, transport: s.transport, buffered_bytes: s.bufferedBytes, limit_bytes: s.limitBytes, cursor: s.cursor },
        'revocation feed subscriber too slow: stream ended, it resumes from its cursor',
      );
    },
  });
  await feed.start();
  const started = feed;
  cleanups.push(() => started.stop());
  keys.setPromotionGate(feed.gate);
  if (pool && keyStore instanceof PostgresKeyStore) {
    const sync = await startClusterSync({
      replica: c.broker_id,
      pool,
      store,
      feed,
      keys,
      clock,
      log,
      pollIntervalMs: Math.min(1000, c.keys.check_interval_ms),
      ackReportMs: Math.min(1000, c.feed.heartbeat_ms),
    });
    cluster = sync;
    cleanups.push(() => sync.stop());
  }
  return { keys, feed, events: { publish }, cluster };
}

/** What the broker does on key lifecycle changes: tell the feed, record the key-set event, audit, count and log. */
function keyHooks(loaded: LoadedConfig, { clock, log, audit, metrics, store }: KeysContext, feed: () => RevocationFeed | null, publish: EventPublisher['publish']): KeyManagerEvents {
  const c = loaded.config;
  let lastDelay = '';
  return {
    onKeySetChange: (version, json, origin) => {
      const f = feed();
      if (!f) return;
      const kids = (JSON.parse(json) as { keys: { kid: string }[] }).keys.map((k) => k.kid);
      f.noteKeySet({ version, json, kids });
      // The replica that changed the key set records the event; the others deliver it from the shared log.
      if (origin === 'cluster') return;
      void store
        .appendEvent({ kind: 'keyset', at: clock.now(), taskIds: [], jtis: [], kid: version, reason: 'key set changed', coversUntil: clock.now() + c.keys.max_promotion_wait_seconds * 1000 })
        .then((ev) => publish(ev))
        .catch((e) => log.error({ err: (e as Error).message }, 'could not record key-set change'));
    },
    onStateChange: (info, from, origin) => {
      metrics.setKeyState(info.kid, info.state, info.createdAt, clock.now());
      // Audited by the replica that made the change.
      if (origin === 'local') audit.write({ event: from === null ? 'key.create' : 'key.state', outcome: 'success', kid: info.kid, from: from ?? undefined, to: info.state });
    },
    onPromotionDelayed: (kid, laggards, waited) => {
      metrics.keyPromotionBlocked.set(1);
      // Once per next key and set of laggards, not on every lifecycle tick.
      const what = `${kid} ${laggards.join(',')}`;
      if (what === lastDelay) return;
      lastDelay = what;
      audit.write({ event: 'key.promotion_delayed', outcome: 'success', kid, laggards, waited_ms: waited });
      log.warn({ kid, laggards, waited_ms: waited }, 'key promotion waits for feed subscribers to acknowledge the next key');
    },
  };
}
