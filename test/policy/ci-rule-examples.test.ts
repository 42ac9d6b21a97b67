/**
 * The CI rule examples in the shipped files, read from those files: the
 * commented `ci-push` rule in policies/default-rules.yaml and the
 * `api-deploys-from-main` rule in docs/federation.md must allow the token
 * exchange a CI job makes (one decision, action `exchange`), and only for
 * the repository and branch they name.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { BuiltinEngine } from '../../src/policy/builtin.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { mkInput } from './fixtures.js';

const GH = 'https://token.actions.githubusercontent.com';

/** The commented example rule of default-rules.yaml, uncommented as its comment asks. */
function defaultRulesExample(): unknown {
  const text = readFileSync(new URL('../../policies/default-rules.yaml', import.meta.url), 'utf8');
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.includes('# Example for CI'));
  expect(start).toBeGreaterThan(0);
  const rule = lines.slice(start + 1).filter((l) => l.startsWith('  # ')).map((l) => l.replace(/^ {2}# /, ''));
  return parseYaml(`rules:\n${rule.map((l) => `  ${l}`).join('\n')}\n`);
}

function federationExample(): unknown {
  const text = readFileSync(new URL('../../docs/federation.md', import.meta.url), 'utf8');
  const block = /```yaml\n(rules:\n {2}- name: api-deploys-from-main[\s\S]*?)```/.exec(text);
  expect(block).not.toBeNull();
  return parseYaml(block![1]!);
}

const exchange = (claims: Record<string, unknown>, audience: string, scopes: string[]) =>
  mkInput({ kind: 'oidc', issuer: GH, action: 'exchange', audience, scopes, claims });

describe('CI rule examples allow the CI flow the README shows', () => {
  it('the commented ci-push rule in policies/default-rules.yaml allows the exchange', async () => {
    const dp = new DecisionPoint(BuiltinEngine.fromDocument(defaultRulesExample()));
    const ok = await dp.decide(exchange({ repository: 'my-org/my-repo', ref: 'refs/heads/main' }, 'https://deploy.example.com/prod', ['deploy']));
    expect(ok).toMatchObject({ allow: true, scopes: ['deploy'], max_ttl_seconds: 300 });
    const dev = await dp.decide(exchange({ repository: 'my-org/my-repo', ref: 'refs/heads/dev' }, 'https://deploy.example.com/prod', ['deploy']));
    expect(dev.allow).toBe(false);
  });

  it('api-deploys-from-main in docs/federation.md allows the exchange', async () => {
    const dp = new DecisionPoint(BuiltinEngine.fromDocument(federationExample()));
    const claims = { repository: 'acme/api', ref: 'refs/heads/main', environment: 'prod' };
    expect(await dp.decide(exchange(claims, 'https://deploy.acme.internal', ['deploy']))).toMatchObject({ allow: true, scopes: ['deploy'] });
    expect((await dp.decide(exchange({ ...claims, environment: 'staging' }, 'https://deploy.acme.internal', ['deploy']))).allow).toBe(false);
  });
});
