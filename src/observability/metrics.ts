/**
 * Prometheus metrics of the broker. Each Metrics owns its own Registry
 * (never prom-client's global one) so tests, and several brokers in one
 * process, do not collide on metric names.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { KeyState } from '../core/types.js';

/** Why a task ended (label `reason` of mayfly_tasks_ended_total). */
export type TaskEndReason = 'completed' | 'expired' | 'revoked' | 'lease_lapsed';
/** Kinds of token misuse seen by the broker (label `kind` of mayfly_token_misuse_total). */
export type TokenMisuseKind = 'revoked_use' | 'cnf_mismatch' | 'replay';

const TASK_END_REASONS: readonly TaskEndReason[] = ['completed', 'expired', 'revoked', 'lease_lapsed'];
const MISUSE_KINDS: readonly TokenMisuseKind[] = ['revoked_use', 'cnf_mismatch', 'replay'];
const KEY_STATES: readonly KeyState[] = ['next', 'active', 'retiring', 'retired', 'revoked'];

/** Policy evaluation is expected in the tens of microseconds (builtin) to low milliseconds (OPA wasm). */
export const POLICY_EVAL_BUCKETS = [5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3];
/** Issuance covers verify + policy + sign + store write: sub-millisecond to tens of milliseconds. */
export const ISSUANCE_BUCKETS = [100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1];

export interface MetricsOptions {
  /** Also collect prom-client's process/runtime metrics (prefixed mayfly_). Default false. */
  defaultMetrics?: boolean;
}

export class Metrics {
  readonly registry: Registry;

  readonly tasksBegun: Counter;
  readonly tasksEnded: Counter<'reason'>;
  readonly tokensIssued: Counter<'audience'>;
  readonly requestsDenied: Counter<'code'>;
  readonly revocations: Counter<'kind'>;
  readonly feedSubscribers: Gauge;
  readonly feedLagEvents: Gauge;
  readonly feedEvents: Counter;
  readonly feedSlowSubscribers: Counter<'transport'>;
  readonly feedBufferedBytes: Gauge;
  readonly keyState: Gauge<'kid' | 'state'>;
  readonly keyAgeSeconds: Gauge<'kid'>;
  readonly keyPromotionBlocked: Gauge;
  readonly policyEvalSeconds: Histogram<'engine' | 'outcome'>;
  readonly policyReloads: Counter<'outcome'>;
  readonly jwksFetches: Counter<'source'>;
  readonly tokenMisuse: Counter<'kind'>;
  readonly issuanceSeconds: Histogram;
  readonly auditWriteErrors: Counter;

  constructor(options: MetricsOptions = {}) {
    const registry = new Registry();
    this.registry = registry;
    const registers = [registry];
    this.tasksBegun = new Counter({ name: 'mayfly_tasks_begun_total', help: 'Tasks begun.', registers });
    this.tasksEnded = new Counter({
      name: 'mayfly_tasks_ended_total',
      help: 'Tasks ended, by reason (completed, expired, revoked, lease_lapsed).',
      labelNames: ['reason'] as const,
      registers,
    });
    this.tokensIssued = new Counter({
      name: 'mayfly_tokens_issued_total',
      help: 'Access tokens issued, by audience.',
      labelNames: ['audience'] as const,
      registers,
    });
    this.requestsDenied = new Counter({
      name: 'mayfly_requests_denied_total',
      help: 'Requests denied, by stable error code.',
      labelNames: ['code'] as const,
      registers,
    });
    this.revocations = new Counter({
      name: 'mayfly_revocations_total',
      help: 'Revocation events appended, by kind (task, token, keyset, key).',
      labelNames: ['kind'] as const,
      registers,
    });
    this.feedSubscribers = new Gauge({ name: 'mayfly_feed_subscribers', help: 'Connected revocation feed subscribers.', registers });
    this.feedLagEvents = new Gauge({
      name: 'mayfly_feed_lag_events',
      help: 'Events the slowest feed subscriber is behind the latest cursor.',
      registers,
    });
    this.feedEvents = new Counter({ name: 'mayfly_feed_events_total', help: 'Revocation events delivered to feed subscribers.', registers });
    this.feedSlowSubscribers = new Counter({
      name: 'mayfly_feed_slow_subscribers_total',
      help: 'Feed streams ended because the subscriber fell more than feed.max_buffered_bytes behind (ERR_FEED_SUBSCRIBER_SLOW), by transport (grpc, sse).',
      labelNames: ['transport'] as const,
      registers,
    });
    this.feedBufferedBytes = new Gauge({
      name: 'mayfly_feed_buffered_bytes',
      help: 'Most bytes any feed subscriber stream holds unsent (bounded by feed.max_buffered_bytes).',
      registers,
    });
    this.keyState = new Gauge({
      name: 'mayfly_key_state',
      help: 'Signing key state: 1 for the current state of each kid.',
      labelNames: ['kid', 'state'] as const,
      registers,
    });
    this.keyAgeSeconds = new Gauge({
      name: 'mayfly_key_age_seconds',
      help: 'Age of each signing key.',
      labelNames: ['kid'] as const,
      registers,
    });
    this.keyPromotionBlocked = new Gauge({
      name: 'mayfly_key_promotion_blocked',
      help: '1 while promotion of the next key is delayed (e.g. relying parties have not fetched it yet).',
      registers,
    });
    this.policyEvalSeconds = new Histogram({
      name: 'mayfly_policy_eval_seconds',
      help: 'Policy evaluation latency, by engine and outcome.',
      labelNames: ['engine', 'outcome'] as const,
      buckets: POLICY_EVAL_BUCKETS,
      registers,
    });
    this.policyReloads = new Counter({
      name: 'mayfly_policy_reloads_total',
      help: 'Policy reloads, by outcome.',
      labelNames: ['outcome'] as const,
      registers,
    });
    this.jwksFetches = new Counter({
      name: 'mayfly_jwks_fetches_total',
      help: 'JWKS / trust bundle fetches, by source.',
      labelNames: ['source'] as const,
      registers,
    });
    this.tokenMisuse = new Counter({
      name: 'mayfly_token_misuse_total',
      help: 'Presented tokens that were revoked, bound to another key (cnf), or replayed.',
      labelNames: ['kind'] as const,
      registers,
    });
    this.issuanceSeconds = new Histogram({
      name: 'mayfly_issuance_seconds',
      help: 'End-to-end token issuance latency.',
      buckets: ISSUANCE_BUCKETS,
      registers,
    });
    this.auditWriteErrors = new Counter({
      name: 'mayfly_audit_write_errors_total',
      help: 'Audit records that could not be written (see audit sink health).',
      registers,
    });
    // Closed label sets start at 0 so alerts on rate() work before the first occurrence.
    for (const reason of TASK_END_REASONS) this.tasksEnded.inc({ reason }, 0);
    for (const kind of MISUSE_KINDS) this.tokenMisuse.inc({ kind }, 0);
    for (const transport of ['grpc', 'sse']) this.feedSlowSubscribers.inc({ transport }, 0);
    if (options.defaultMetrics === true) collectDefaultMetrics({ register: registry, prefix: 'mayfly_' });
  }

  /** Content-Type of `render()` for the /metrics response. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Prometheus text exposition of every metric. */
  async render(): Promise<string> {
    return this.registry.metrics();
  }

  /** Counts a task end with a reason from the closed set. */
  taskEnded(reason: TaskEndReason): void {
    this.tasksEnded.inc({ reason });
  }

  /** Counts a token misuse with a kind from the closed set. */
  misuse(kind: TokenMisuseKind): void {
    this.tokenMisuse.inc({ kind });
  }

  /** Sets a key's state gauge to 1 and clears its other states, so each kid has exactly one current state. */
  setKeyState(kid: string, state: KeyState, createdAtMs?: number, nowMs: number = Date.now()): void {
    for (const s of KEY_STATES) {
      if (s !== state) this.keyState.remove({ kid, state: s });
    }
    this.keyState.set({ kid, state }, 1);
    if (createdAtMs !== undefined) this.keyAgeSeconds.set({ kid }, Math.max(0, (nowMs - createdAtMs) / 1000));
  }

  /** Drops every series of a key that no longer exists, so retired kids do not linger forever. */
  removeKey(kid: string): void {
    for (const s of KEY_STATES) this.keyState.remove({ kid, state: s });
    this.keyAgeSeconds.remove({ kid });
  }

  /** Records one policy evaluation duration (seconds, µs resolution via the buckets). */
  observePolicyEval(engine: string, outcome: string, seconds: number): void {
    this.policyEvalSeconds.observe({ engine, outcome }, seconds);
  }
}
