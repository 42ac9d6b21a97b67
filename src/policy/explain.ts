/**
 * `mayfly policy eval`: run one input through an engine exactly as the
 * broker would (same DecisionPoint, same checks) and report why.
 */
import type { DecisionInput } from '../core/decision.js';
import type { PolicyEngine } from '../core/ports.js';
import { DecisionPoint, type DecisionPointOptions } from './decision-point.js';
import { decisionInputDigest } from './digest.js';

/** The decision and everything needed to understand it. */
export interface Explanation {
  decision: 'allow' | 'deny';
  reasons: string[];
  /** Rule name (built-in) or entrypoint (OPA). */
  source: string;
  engine: string;
  revision: string;
  latencyUs: number;
  scopes?: string[];
  max_ttl_seconds?: number;
  claims?: Record<string, unknown>;
  /** SHA-256 of the canonical input, as the audit record stores it. */
  input_sha256: string;
}

/** Evaluates `input` through a DecisionPoint over `engine`; never throws for engine failures. */
export async function explain(engine: PolicyEngine, input: DecisionInput, options: DecisionPointOptions = {}): Promise<Explanation> {
  const d = await new DecisionPoint(engine, options).decide(input);
  const out: Explanation = {
    decision: d.allow ? 'allow' : 'deny',
    reasons: d.reasons,
    source: d.source,
    engine: d.engine,
    revision: d.revision,
    latencyUs: d.latencyUs,
    input_sha256: decisionInputDigest(input),
  };
  if (d.scopes !== undefined) out.scopes = d.scopes;
  if (d.max_ttl_seconds !== undefined) out.max_ttl_seconds = d.max_ttl_seconds;
  if (d.claims !== undefined) out.claims = d.claims;
  return out;
}

/** Human-readable multi-line rendering for the CLI. */
export function formatExplanation(e: Explanation): string {
  const lines = [
    `decision: ${e.decision.toUpperCase()}`,
    `source:   ${e.source} (${e.engine} ${e.revision.slice(0, 12)})`,
    `latency:  ${e.latencyUs} µs`,
  ];
  if (e.scopes) lines.push(`scopes:   ${e.scopes.join(' ') || '(none)'}`);
  if (e.max_ttl_seconds !== undefined) lines.push(`max ttl:  ${e.max_ttl_seconds} s`);
  if (e.claims) lines.push(`claims:   ${JSON.stringify(e.claims)}`);
  for (const r of e.reasons) lines.push(`  - ${r}`);
  return lines.join('\n');
}
