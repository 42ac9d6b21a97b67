/** Keeps docs/federation.md honest: its rule examples compile, and the GitHub one allows a verified GitHub-shaped identity. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DECISION_CONTRACT_VERSION, type DecisionInput } from '../../src/core/decision.js';
import type { Identity } from '../../src/core/types.js';
import { OidcVerifier } from '../../src/identity/oidc.js';
import { issuerConfigFromPreset } from '../../src/identity/oidc-presets.js';
import { compileRules, evaluateRules, parseRulesText } from '../../src/policy/builtin.js';
import type { JwsAlg } from '../../src/tokens/jws.js';
import { makeSelfSignedCert } from '../helpers/https-jwks.js';
import { TestIssuer } from '../helpers/test-issuer.js';

const NOW = Date.UTC(2026, 0, 1);
const doc = readFileSync(new URL('../../docs/federation.md', import.meta.url), 'utf8');
const ruleBlocks = [...doc.matchAll(/```yaml\n(rules:[\s\S]*?)```/g)].map((m) => m[1]!);

function input(identity: Identity, scopes: string[]): DecisionInput {
  return {
    version: DECISION_CONTRACT_VERSION,
    identity: { kind: identity.kind, id: identity.id, issuer: identity.issuer, method: identity.method, claims: identity.claims },
    request: { action: 'issue_token', audience: 'https://deploy.acme.internal', scopes, ttl_seconds: 300, labels: {} },
    context: { time: NOW / 1000, broker_id: 'mayfly', recent_issuance: { last_minute: 0, last_hour: 0 } },
  };
}

describe('docs/federation.md', () => {
  it('has rule examples, and each compiles with the built-in engine', () => {
    expect(ruleBlocks.length).toBeGreaterThanOrEqual(4);
    for (const block of ruleBlocks) expect(() => compileRules(parseRulesText(block))).not.toThrow();
  });

  it('the GitHub prod-deploy example allows a verified GitHub token and denies another environment', async () => {
    const gh = new TestIssuer(makeSelfSignedCert());
    const key = gh.addKey('RS256', { publish: false });
    const cfg = issuerConfigFromPreset('github-actions', { name: 'github', audiences: ['mayfly'], jwks: { jwks: { keys: [key.jwk] } } });
    const verifier = new OidcVerifier([{ ...cfg, allowedAlgs: cfg.allowedAlgs as JwsAlg[] }]);
    const iss = 'https://token.actions.githubusercontent.com';
    const rules = compileRules(parseRulesText(ruleBlocks.find((b) => b.includes('github-prod-deploy'))!));

    const prod = await verifier.verify(gh.mint({ kid: key.kid, nowMs: NOW, claims: { iss } }), NOW);
    const allowed = evaluateRules(rules, input(prod, ['deploy']));
    expect(allowed.source).toBe('github-prod-deploy');
    expect(allowed.output.allow).toBe(true);

    const staging = await verifier.verify(gh.mint({ kid: key.kid, nowMs: NOW, claims: { iss, environment: 'staging', sub: 'repo:acme/api:environment:staging' } }), NOW);
    expect(evaluateRules(rules, input(staging, ['deploy'])).output.allow).toBe(false);
    verifier.close();
  });
});
