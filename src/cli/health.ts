/** What /healthz reports: keys, key promotion, audit, policy, the cluster sync and (when it can fail) the store. */
import type { Clock, PolicyEngine } from '../core/ports.js';
import { OpaEngine } from '../policy/opa.js';
import type { KeyManager } from '../tokens/keys.js';
import type { HealthReport } from '../transport/http/server.js';

export interface HealthSources {
  clock: Clock;
  keys: KeyManager;
  audit: { health(): { ok: boolean; errors: number } };
  engine: PolicyEngine;
  store?: () => { ok: boolean; detail: string };
  cluster?: { listening(): boolean; relay: { delivered(): number } } | null;
}

/** Failing when audit cannot be written; degraded when anything else is not ok. */
export function healthReport({ clock, keys, audit, engine, store, cluster }: HealthSources): HealthReport {
  const checks: HealthReport['checks'] = {};
  const now = clock.now();
  checks['keys'] = keys.overdue(now) ? { ok: false, detail: 'active key is overdue for rotation' } : { ok: true };
  const blocked = keys.promotionBlockedSince();
  checks['key_promotion'] = blocked !== null ? { ok: false, detail: `next key promotion blocked for ${Math.round((now - blocked) / 1000)}s by unacknowledged subscribers` } : { ok: true };
  const ah = audit.health();
  checks['audit'] = ah.ok ? { ok: true } : { ok: false, detail: `audit write errors: ${ah.errors}` };
  if (engine instanceof OpaEngine) {
    const h = engine.health();
    checks['policy'] = h.ok ? { ok: true, detail: `revision ${h.revision}` } : { ok: false, detail: `last reload failed: ${h.lastError}; serving revision ${h.revision}` };
  } else checks['policy'] = { ok: true, detail: `builtin revision ${engine.revision()}` };
  // Cluster: without the LISTEN connection, other replicas' revocations and key changes arrive by the 1 s poll only.
  if (cluster) checks['cluster_sync'] = cluster.listening() ? { ok: true, detail: `feed cursor ${cluster.relay.delivered()}` } : { ok: false, detail: 'not listening for other replicas (PostgreSQL LISTEN down): their revocations arrive by polling, up to 1 s late' };
  if (store) {
    const sh = store();
    checks['store'] = sh.ok ? { ok: true, detail: sh.detail } : { ok: false, detail: sh.detail };
  }
  const failing = !ah.ok;
  const degraded = Object.values(checks).some((x) => !x.ok);
  return { status: failing ? 'failing' : degraded ? 'degraded' : 'ok', checks };
}
