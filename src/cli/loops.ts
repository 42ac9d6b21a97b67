/** Background loops: deadlines and leases, key lifecycle, garbage collection, audit checkpoints, gauges. */
import type { LoadedConfig } from '../config/load.js';
import type { Clock, Coordinator, Store } from '../core/ports.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { BrokerService } from '../service/broker.js';
import type { RevocationFeed } from '../service/feed.js';
import type { KeyManager } from '../tokens/keys.js';
import type { Cleanups } from './cleanups.js';

export interface LoopParts {
  service: BrokerService;
  keys: KeyManager;
  feed: RevocationFeed;
  store: Store;
  coordinator: Coordinator;
  sealer: { seal(why: 'periodic'): Promise<unknown> };
  metrics: Metrics;
  clock: Clock;
  log: Logger;
  cleanups: Cleanups;
}

export function startLoops({ config: c }: LoadedConfig, p: LoopParts): void {
  const { keys, feed, store, metrics, clock, log } = p;
  /** Runs `fn` every `ms`, never overlapping itself; stopped with the broker. */
  const every = (ms: number, fn: () => Promise<unknown>, what: string) => {
    let running = false;
    const t = setInterval(() => {
      if (running) return;
      running = true;
      fn()
        .catch((e) => log.error({ err: (e as Error).message }, `${what} failed`))
        .finally(() => (running = false));
    }, ms);
    t.unref();
    p.cleanups.push(() => clearInterval(t));
  };
  /** A job that must run on one broker of the cluster per tick (see Coordinator). */
  const exclusive = (job: string, fn: () => Promise<unknown>) => () => p.coordinator.runExclusive(job, fn);

  every(c.tasks.sweep_interval_ms, exclusive('tasks.sweep', () => p.service.expireDue()), 'deadline/lease sweep');
  every(c.keys.check_interval_ms, async () => {
    await keys.tick();
    if (keys.promotionBlockedSince() === null) metrics.keyPromotionBlocked.set(0);
    for (const k of keys.list()) metrics.setKeyState(k.kid, k.state, k.createdAt, clock.now());
  }, 'key lifecycle');
  every(c.store.gc_interval_seconds * 1000, exclusive('store.gc', () => store.gc(clock.now(), c.store.gc_grace_seconds * 1000)), 'garbage collection');
  every(c.audit.checkpoint_interval_seconds * 1000, () => p.sealer.seal('periodic'), 'audit checkpoint');
  every(1000, async () => {
    metrics.feedSubscribers.set(feed.subscriberCount());
    metrics.feedLagEvents.set(feed.maxLag());
    metrics.feedBufferedBytes.set(feed.maxBufferedBytes());
  }, 'feed gauges');
}
