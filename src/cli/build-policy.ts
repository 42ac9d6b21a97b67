/** The policy engine the config asks for (built-in rules or OPA wasm) behind the decision point. */
import type { LoadedConfig } from '../config/load.js';
import { resolvePath } from '../config/load.js';
import type { AuditSink, Clock, PolicyEngine } from '../core/ports.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { BuiltinEngine } from '../policy/builtin.js';
import { DecisionPoint } from '../policy/decision-point.js';
import { OpaEngine } from '../policy/opa.js';
import type { Cleanups } from './cleanups.js';

interface PolicyContext {
  clock: Clock;
  log: Logger;
  audit: AuditSink;
  metrics: Metrics;
  cleanups: Cleanups;
}

export async function buildPolicy(loaded: LoadedConfig, x: PolicyContext): Promise<{ engine: PolicyEngine; decider: DecisionPoint }> {
  const { config: c, baseDir } = loaded;
  const engine = c.policy.engine === 'opa' ? await loadOpa(loaded, x) : await BuiltinEngine.fromFile(resolvePath(baseDir, c.policy.builtin.rules_file));
  x.cleanups.push(() => engine.close());
  return { engine, decider: new DecisionPoint(engine, { timeoutMs: c.policy.timeout_ms }) };
}

/** OPA with hot reload: every reload is counted, audited and logged; a failed one keeps the previous policy serving. */
async function loadOpa({ config: c, baseDir }: LoadedConfig, { clock, log, audit, metrics, cleanups }: PolicyContext): Promise<OpaEngine> {
  const o = c.policy.opa!;
  const opa = await OpaEngine.load({
    policyFile: resolvePath(baseDir, o.policy_file),
    entrypoint: o.entrypoint,
    ...(o.data_file ? { dataFile: resolvePath(baseDir, o.data_file) } : {}),
    poolSize: o.pool_size,
    memory: { initialPages: o.memory.initial_pages, ...(o.memory.maximum_pages ? { maximumPages: o.memory.maximum_pages } : {}) },
    ...(o.canary_input ? { canaryInput: o.canary_input as never } : {}),
    pollIntervalMs: o.poll_interval_ms,
    debounceMs: o.debounce_ms,
    clock,
    onReload: (ev) => {
      metrics.policyReloads.inc({ outcome: ev.ok ? 'success' : 'failure' });
      audit.write({ event: 'policy.reload', outcome: ev.ok ? 'success' : 'error', revision: ev.revision, reason: ev.error });
      if (ev.ok) log.info({ revision: ev.revision }, 'policy reloaded');
      else log.error({ err: ev.error }, 'policy reload failed; the previous policy keeps serving');
    },
  });
  if (o.watch) cleanups.push(opa.watch());
  return opa;
}
