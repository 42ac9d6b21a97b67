import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/observability/metrics.js';

const NAMES = [
  'mayfly_tasks_begun_total',
  'mayfly_tasks_ended_total',
  'mayfly_tokens_issued_total',
  'mayfly_requests_denied_total',
  'mayfly_revocations_total',
  'mayfly_feed_subscribers',
  'mayfly_feed_lag_events',
  'mayfly_feed_events_total',
  'mayfly_feed_slow_subscribers_total',
  'mayfly_feed_buffered_bytes',
  'mayfly_key_state',
  'mayfly_key_age_seconds',
  'mayfly_key_promotion_blocked',
  'mayfly_policy_eval_seconds',
  'mayfly_policy_reloads_total',
  'mayfly_jwks_fetches_total',
  'mayfly_token_misuse_total',
  'mayfly_issuance_seconds',
  'mayfly_audit_write_errors_total',
];

describe('Metrics', () => {
  it('renders every broker metric in Prometheus text format', async () => {
    const m = new Metrics();
    const text = await m.render();
    for (const name of NAMES) expect(text).toContain(`# TYPE ${name} `);
    expect(m.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  });

  it('uses a private registry, so several instances coexist', async () => {
    const a = new Metrics();
    const b = new Metrics();
    a.tasksBegun.inc();
    expect(await a.render()).toContain('mayfly_tasks_begun_total 1');
    expect(await b.render()).toContain('mayfly_tasks_begun_total 0');
  });

  it('pre-initialises closed label sets and records labelled values', async () => {
    const m = new Metrics();
    m.taskEnded('lease_lapsed');
    m.misuse('replay');
    m.tokensIssued.inc({ audience: 'https://api.example.com' });
    m.requestsDenied.inc({ code: 'ERR_POLICY_DENIED' });
    m.observePolicyEval('builtin', 'allow', 42e-6);
    const text = await m.render();
    expect(text).toContain('mayfly_tasks_ended_total{reason="completed"} 0');
    expect(text).toContain('mayfly_tasks_ended_total{reason="lease_lapsed"} 1');
    expect(text).toContain('mayfly_token_misuse_total{kind="cnf_mismatch"} 0');
    expect(text).toContain('mayfly_token_misuse_total{kind="replay"} 1');
    expect(text).toContain('mayfly_feed_slow_subscribers_total{transport="sse"} 0');
    expect(text).toContain('mayfly_tokens_issued_total{audience="https://api.example.com"} 1');
    expect(text).toContain('mayfly_requests_denied_total{code="ERR_POLICY_DENIED"} 1');
    // µs-range buckets: 42 µs falls in the 50 µs bucket but not the 25 µs one.
    expect(text).toContain('mayfly_policy_eval_seconds_bucket{le="0.000025",engine="builtin",outcome="allow"} 0');
    expect(text).toContain('mayfly_policy_eval_seconds_bucket{le="0.00005",engine="builtin",outcome="allow"} 1');
  });

  it('keeps exactly one current state per key', async () => {
    const m = new Metrics();
    m.setKeyState('k1', 'next', 0, 10_000);
    m.setKeyState('k1', 'active', 0, 20_000);
    let text = await m.render();
    expect(text).toContain('mayfly_key_state{kid="k1",state="active"} 1');
    expect(text).not.toContain('state="next"');
    expect(text).toContain('mayfly_key_age_seconds{kid="k1"} 20');
    m.removeKey('k1');
    text = await m.render();
    expect(text).not.toContain('kid="k1"');
  });

  it('optionally adds process metrics', async () => {
    const m = new Metrics({ defaultMetrics: true });
    expect(await m.render()).toContain('mayfly_process_cpu_user_seconds_total');
  });
});
