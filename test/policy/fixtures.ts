/** Decision inputs for policy tests. */
import { DECISION_CONTRACT_VERSION, type DecisionInput, type PolicyAction } from '../../src/core/decision.js';

export interface InputOpts {
  kind?: 'spiffe' | 'oidc';
  id?: string;
  issuer?: string;
  claims?: Record<string, unknown>;
  action?: PolicyAction;
  audience?: string | undefined;
  scopes?: string[];
  depth?: number;
}

/** A valid DecisionInput; defaults to the dev demo workload asking for read on demo-api. */
export function mkInput(o: InputOpts = {}): DecisionInput {
  const kind = o.kind ?? 'spiffe';
  const input: DecisionInput = {
    version: DECISION_CONTRACT_VERSION,
    identity: {
      kind,
      id: o.id ?? (kind === 'spiffe' ? 'spiffe://example.org/demo/workload' : `${o.issuer ?? 'https://token.actions.githubusercontent.com'}#repo:acme/app:ref:refs/heads/main`),
      method: kind === 'spiffe' ? 'x509-svid' : 'oidc',
      claims: o.claims ?? {},
    },
    request: {
      action: o.action ?? 'issue_token',
      scopes: o.scopes ?? ['read'],
      ttl_seconds: 300,
      labels: {},
    },
    context: { time: 1767225600, broker_id: 'test', recent_issuance: { last_minute: 0, last_hour: 0 } },
  };
  if (kind === 'spiffe') input.identity.trust_domain = 'example.org';
  else input.identity.issuer = o.issuer ?? 'https://token.actions.githubusercontent.com';
  const audience = 'audience' in o ? o.audience : 'demo-api';
  if (audience !== undefined) input.request.audience = audience;
  if (o.depth !== undefined) {
    input.task = { id: 't1', purpose: 'p', owner: input.identity.id, age_seconds: 1, deadline: 1767229200, tokens_issued: 0, parent_chain: [], depth: o.depth };
  }
  return input;
}
