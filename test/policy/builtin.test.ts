import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { BuiltinEngine, claimAt, DEFAULT_DENY_SOURCE } from '../../src/policy/builtin.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { compilePattern, globToRegExpSource } from '../../src/policy/patterns.js';
import { policySectionSchema } from '../../src/config/sections/policy.js';
import { mkInput, type InputOpts } from './fixtures.js';

const GH = 'https://token.actions.githubusercontent.com';

const RULES = {
  rules: [
    {
      name: 'demo',
      match: { spiffe: 'spiffe://example.org/demo/workload' },
      audiences: ['demo-api'],
      scopes: ['read', 'write'],
      max_ttl_seconds: 600,
      max_task_ttl_seconds: 3600,
      max_delegation_depth: 1,
    },
    {
      name: 'payments',
      match: { spiffe: ['glob:spiffe://example.org/payments/*', 're:spiffe://example\\.org/billing/v[0-9]+'] },
      actions: ['issue_token', 'exchange'],
      audiences: ['glob:https://api.example.com/**'],
      scopes: ['pay'],
      max_ttl_seconds: 120,
    },
    {
      name: 'ci-push',
      match: { oidc: { issuer: GH, claims: { repository: 'acme/app', ref: 'refs/heads/main', run_attempt: ['1', '2'], ephemeral: 'true' }, present: ['sha'] } },
      actions: ['begin_task', 'issue_token'],
      audiences: ['deploy'],
      scopes: ['deploy'],
      max_ttl_seconds: 300,
    },
  ],
};

const engine = BuiltinEngine.fromDocument(RULES);
const dp = new DecisionPoint(engine);
const ci = (claims: Record<string, unknown>, o: InputOpts = {}) =>
  mkInput({ kind: 'oidc', audience: 'deploy', scopes: ['deploy'], claims: { repository: 'acme/app', ref: 'refs/heads/main', run_attempt: 1, ephemeral: true, sha: 'abc', ...claims }, ...o });

describe('patterns', () => {
  it.each([
    ['spiffe://td/a/*', 'spiffe://td/a/b', true],
    ['spiffe://td/a/*', 'spiffe://td/a/b/c', false],
    ['spiffe://td/a/**', 'spiffe://td/a/b/c', true],
    ['spiffe://td/a/?', 'spiffe://td/a/x', true],
    ['spiffe://td/a.b/*', 'spiffe://td/aXb/c', false],
    ['refs/heads/*', 'refs/heads/main', true],
  ])('glob %s vs %s', (g, v, want) => {
    expect(new RegExp(globToRegExpSource(g)).test(v)).toBe(want);
    expect(compilePattern(`glob:${g}`, 'w').test(v)).toBe(want);
  });
  it('re: is anchored', () => {
    const p = compilePattern('re:a|b', 'w');
    expect([p.test('a'), p.test('b'), p.test('ab'), p.test('xa')]).toEqual([true, true, false, false]);
  });
  it('exact means exact', () => {
    expect(compilePattern('glob', 'w').test('glob')).toBe(true);
    expect(compilePattern('a*', 'w').test('ab')).toBe(false);
  });
});

describe('builtin rules', () => {
  const table: Array<[string, ReturnType<typeof mkInput>, Record<string, unknown>]> = [
    ['demo allows requested ∩ allowed', mkInput({ scopes: ['read', 'admin'] }), { allow: true, scopes: ['read'], max_ttl_seconds: 600, source: 'demo' }],
    ['begin_task without audience uses task ttl', mkInput({ action: 'begin_task', audience: undefined, scopes: [] }), { allow: true, scopes: [], max_ttl_seconds: 3600, source: 'demo' }],
    ['delegate within depth', mkInput({ action: 'delegate', depth: 0 }), { allow: true, source: 'demo' }],
    ['glob spiffe', mkInput({ id: 'spiffe://example.org/payments/api', audience: 'https://api.example.com/v1/charge', scopes: ['pay'] }), { allow: true, scopes: ['pay'], max_ttl_seconds: 120, source: 'payments' }],
    ['re spiffe', mkInput({ id: 'spiffe://example.org/billing/v2', audience: 'https://api.example.com/x', scopes: ['pay'], action: 'exchange' }), { allow: true, source: 'payments' }],
    ['oidc all claims (numbers and booleans as text)', ci({}), { allow: true, scopes: ['deploy'], max_ttl_seconds: 300, source: 'ci-push' }],
    ['oidc begin_task without audience', ci({}, { action: 'begin_task', audience: undefined, scopes: [] }), { allow: true, max_ttl_seconds: 300, source: 'ci-push' }],
    ['exchange that begins its task: token and task caps', mkInput({ action: 'exchange', scopes: ['read'] }), { allow: true, scopes: ['read'], max_ttl_seconds: 600, max_task_ttl_seconds: 3600, source: 'demo' }],
    ['exchange that begins its task: no task cap on the rule falls back to max_ttl_seconds', mkInput({ id: 'spiffe://example.org/payments/api', audience: 'https://api.example.com/v1/charge', scopes: ['pay'], action: 'exchange' }), { allow: true, max_ttl_seconds: 120, max_task_ttl_seconds: 120, source: 'payments' }],
  ];
  it('exchange for an existing task has no task cap', async () => {
    const d = await dp.decide(mkInput({ action: 'exchange', scopes: ['read'], depth: 0 }));
    expect(d).toMatchObject({ allow: true, max_ttl_seconds: 600 });
    expect(d.max_task_ttl_seconds).toBeUndefined();
  });
  it.each(table)('%s', async (_n, input, want) => {
    const d = await dp.decide(input);
    expect(d).toMatchObject({ ...want, engine: 'builtin', revision: engine.revision() });
  });

  it('empty scope intersection is a deny naming both sides', async () => {
    const d = await dp.decide(mkInput({ scopes: ['admin'] }));
    expect(d).toMatchObject({ allow: false, source: 'demo', reasons: ['rule "demo": none of the requested scopes [admin] are allowed (rule allows [read, write])'] });
  });

  it('SPIFFE deny names the closest rule and the audience', async () => {
    const d = await dp.decide(mkInput({ audience: 'other-api' }));
    expect(d).toMatchObject({ allow: false, source: DEFAULT_DENY_SOURCE });
    expect(d.reasons).toEqual(["no rule allows spiffe://example.org/demo/workload to issue_token for audience 'other-api' (closest rule \"demo\": audience 'other-api' not in [demo-api])"]);
  });

  it('SPIFFE deny for an unknown workload', async () => {
    const d = await dp.decide(mkInput({ id: 'spiffe://example.org/payments/a/b' }));
    expect(d.reasons[0]).toMatch(/^no rule allows spiffe:\/\/example.org\/payments\/a\/b .*closest rule "demo": SPIFFE ID does not match "spiffe:\/\/example.org\/demo\/workload"/);
  });

  it('action not allowed', async () => {
    const d = await dp.decide(mkInput({ id: 'spiffe://example.org/payments/api', action: 'delegate', audience: 'https://api.example.com/a', scopes: ['pay'] }));
    expect(d.reasons[0]).toContain(`closest rule "payments": action 'delegate' not in [issue_token, exchange]`);
  });

  it('delegation depth', async () => {
    const d = await dp.decide(mkInput({ action: 'delegate', depth: 1 }));
    expect(d.reasons[0]).toContain('delegation depth 2 exceeds max_delegation_depth 1');
  });

  it('OIDC deny names the failing claim of the closest rule', async () => {
    const d = await dp.decide(ci({ ref: 'refs/heads/dev' }));
    expect(d.allow).toBe(false);
    expect(d.reasons).toContain('rule "ci-push": claim ref "refs/heads/dev" does not match "refs/heads/main"');
    expect(d.reasons[0]).toMatch(/^no rule allows https:\/\/token.actions.githubusercontent.com#.* to issue_token for audience 'deploy'$/);
  });

  it('OIDC missing, non-scalar, absent-present claims and issuer', async () => {
    const d = await dp.decide(mkInput({ kind: 'oidc', issuer: 'https://evil', audience: 'deploy', scopes: ['deploy'], claims: { repository: ['acme/app'], run_attempt: 3 } }));
    expect(d.reasons).toEqual(expect.arrayContaining([
      'rule "ci-push": issuer "https://evil" does not match "https://token.actions.githubusercontent.com"',
      'rule "ci-push": claim repository is not a string, number or boolean',
      'rule "ci-push": claim ref is missing (want "refs/heads/main")',
      'rule "ci-push": claim run_attempt "3" does not match ["1", "2"]',
      'rule "ci-push": claim sha is not present',
    ]));
  });

  it('issue_token without audience is denied', async () => {
    const d = await dp.decide(mkInput({ audience: undefined }));
    expect(d.reasons[0]).toContain('no audience requested');
  });

  it('OIDC identity with no OIDC rules', async () => {
    const e = BuiltinEngine.fromDocument({ rules: [RULES.rules[0]] });
    const d = await new DecisionPoint(e).decide(ci({}));
    expect(d.reasons[0]).toMatch(/no rule matches OIDC identities/);
  });

  it('no rules at all denies', async () => {
    const d = await new DecisionPoint(BuiltinEngine.fromDocument({ rules: [] })).decide(mkInput());
    expect(d).toMatchObject({ allow: false, reasons: [expect.stringMatching(/no rules loaded/)] });
  });
});

describe('loading', () => {
  const bad: Array<[string, unknown, RegExp]> = [
    ['invalid regex names the rule', { rules: [{ ...RULES.rules[0], match: { spiffe: 're:(' } }] }, /rule "demo" match\.spiffe: invalid regular expression "re:\("/],
    ['empty match', { rules: [{ name: 'x', match: {}, max_ttl_seconds: 1 }] }, /rule "x" match: match needs "spiffe" or "oidc"/],
    ['unknown action', { rules: [{ name: 'x', match: { spiffe: 'a' }, actions: ['nuke'], max_ttl_seconds: 1 }] }, /rule "x" actions\.0/],
    ['unknown field', { rules: [{ name: 'x', match: { spiffe: 'a' }, max_ttl: 1, max_ttl_seconds: 1 }] }, /rule "x"/],
    ['duplicate names', { rules: [RULES.rules[0], RULES.rules[0]] }, /duplicate rule name "demo"/],
    ['not a document', 'rules', /policy rules/],
    ['missing required field, named without zod wording', { rules: [{ match: { spiffe: 'a' }, max_ttl_seconds: 1 }] }, /rules\[0\] name: is required \(string\)$/],
  ];
  it.each(bad)('%s', (_n, doc, re) => {
    try {
      BuiltinEngine.fromDocument(doc);
      expect.unreachable();
    } catch (err) {
      expect(isMayflyError(err, 'ERR_CONFIG_INVALID')).toBe(true);
      expect((err as Error).message).toMatch(re);
    }
  });

  it('max_ttl_seconds is optional: without it the decision carries no cap and the broker limits apply', async () => {
    const p = new DecisionPoint(BuiltinEngine.fromDocument({ rules: [{ name: 'open', match: { spiffe: 'spiffe://example.org/demo/workload' }, audiences: ['demo-api'], scopes: ['read'] }] }));
    const issue = await p.decide(mkInput({ scopes: ['read'] }));
    expect(issue).toMatchObject({ allow: true, scopes: ['read'] });
    expect(issue.max_ttl_seconds).toBeUndefined();
    const begin = await p.decide(mkInput({ action: 'begin_task', audience: undefined, scopes: [] }));
    expect(begin.allow).toBe(true);
    expect(begin.max_ttl_seconds).toBeUndefined();
  });

  it('revision is stable across formatting and key order', () => {
    const yamlText = 'rules:\n  - max_ttl_seconds: 60\n    name: a\n    match: {spiffe: x}\n';
    const jsonText = '{"rules":[{"name":"a","match":{"spiffe":"x"},"max_ttl_seconds":60}]}';
    expect(BuiltinEngine.fromText(yamlText).revision()).toBe(BuiltinEngine.fromText(jsonText).revision());
    expect(BuiltinEngine.fromText(yamlText).revision()).not.toBe(BuiltinEngine.fromText(jsonText.replace('60', '61')).revision());
  });

  it('YAML syntax errors are config errors', () => {
    expect(() => BuiltinEngine.fromText('rules: [')).toThrow(/cannot parse rules document/);
  });

  it('the shipped default rules load and allow only the demo workload', async () => {
    const e = await BuiltinEngine.fromFile(new URL('../../policies/default-rules.yaml', import.meta.url).pathname);
    const p = new DecisionPoint(e);
    expect(await p.decide(mkInput({ scopes: ['read', 'write'] }))).toMatchObject({ allow: true, scopes: ['read', 'write'], max_ttl_seconds: 600 });
    expect((await p.decide(mkInput({ id: 'spiffe://example.org/other' }))).allow).toBe(false);
  });

  it('policy section defaults and the opa requirement', () => {
    expect(policySectionSchema.parse({})).toEqual({ engine: 'builtin', timeout_ms: 250, builtin: { rules_file: 'policies/default-rules.yaml' } });
    const r = policySectionSchema.safeParse({ engine: 'opa' });
    expect(r.success).toBe(false);
    const opa = policySectionSchema.parse({ engine: 'opa', opa: { policy_file: 'p.tar.gz' } });
    expect(opa.opa).toEqual({ policy_file: 'p.tar.gz', entrypoint: 'mayfly/authz/decision', pool_size: 2, watch: true, poll_interval_ms: 1000, debounce_ms: 100, memory: { initial_pages: 5 } });
    expect(policySectionSchema.safeParse({ engine: 'opa', opa: { policy_file: 'p', entrypoint: 'data.x' } }).success).toBe(false);
  });

  it('default rules file parses as YAML text too', () => {
    expect(readFileSync(new URL('../../policies/default-rules.yaml', import.meta.url), 'utf8')).toContain('DEVELOPMENT DEFAULTS');
  });
});

describe('nested claims (Kubernetes kubernetes.io)', () => {
  const k8sClaims = {
    iss: 'https://kubernetes.default.svc.cluster.local',
    sub: 'system:serviceaccount:payments:api',
    'kubernetes.io': { namespace: 'payments', serviceaccount: { name: 'api', uid: 'u-1' } },
  };
  it.each([
    ['kubernetes.io.namespace', 'payments'],
    ['kubernetes.io.serviceaccount.name', 'api'],
    ['sub', 'system:serviceaccount:payments:api'],
    ['kubernetes.io.pod.name', undefined],
    ['kubernetes', undefined],
  ])('claimAt(%s)', (name, want) => {
    expect(claimAt(k8sClaims, name)).toBe(want);
  });

  it('rules match nested claims and name the one that failed', async () => {
    const engine = BuiltinEngine.fromText(`
rules:
  - name: payments-api
    match:
      oidc:
        issuer: https://kubernetes.default.svc.cluster.local
        claims:
          kubernetes.io.namespace: payments
          kubernetes.io.serviceaccount.name: api
    audiences: [db]
    scopes: [db.read]
    max_ttl_seconds: 300
`);
    const input = (claims: Record<string, unknown>) => ({
      version: 'mayfly.decision/v1' as const,
      identity: { kind: 'oidc' as const, id: `${k8sClaims.iss}#${k8sClaims.sub}`, issuer: k8sClaims.iss, method: 'oidc', claims },
      request: { action: 'issue_token' as const, audience: 'db', scopes: ['db.read'], ttl_seconds: 60, labels: {} },
      context: { time: 0, broker_id: 't', recent_issuance: { last_minute: 0, last_hour: 0 } },
    });
    expect((await engine.evaluate(input(k8sClaims))).output).toMatchObject({ allow: true, scopes: ['db.read'] });
    const other = { ...k8sClaims, 'kubernetes.io': { namespace: 'billing', serviceaccount: { name: 'api' } } };
    const denied = (await engine.evaluate(input(other))).output as { allow: boolean; reasons: string[] };
    expect(denied.allow).toBe(false);
    expect(denied.reasons.join(' ')).toMatch(/claim kubernetes\.io\.namespace "billing" does not match/);
  });
});
