/**
 * The policy decision contract, version 1. Every engine (built-in rules, OPA
 * wasm) receives a DecisionInput and must produce a DecisionOutput; the
 * service layer treats anything else as a deny (fail closed). JSON Schemas of
 * both documents live in docs/policy/; keep them in step with these types.
 */

export const DECISION_CONTRACT_VERSION = 'mayfly.decision/v1';

export type PolicyAction = 'begin_task' | 'issue_token' | 'exchange' | 'delegate';

export interface DecisionInput {
  version: typeof DECISION_CONTRACT_VERSION;
  identity: {
    kind: 'spiffe' | 'oidc';
    id: string;
    trust_domain?: string;
    issuer?: string;
    method: string;
    claims: Record<string, unknown>;
    cert_sha256?: string;
  };
  request: {
    action: PolicyAction;
    audience?: string;
    scopes: string[];
    ttl_seconds: number;
    /** exchange that begins its own task: the requested lifetime of that task. */
    task_ttl_seconds?: number;
    purpose?: string;
    labels: Record<string, string>;
    tool?: string;
    args_digest?: string;
  };
  task?: {
    id: string;
    purpose: string;
    owner: string;
    age_seconds: number;
    deadline: number; // epoch seconds
    tokens_issued: number;
    parent_chain: string[]; // task ids from the root to the parent
    depth: number;
  };
  context: {
    time: number; // epoch seconds
    peer?: string;
    broker_id: string;
    recent_issuance: { last_minute: number; last_hour: number };
  };
}

export interface DecisionOutput {
  allow: boolean;
  reasons: string[];
  /** Upper bound on the TTL of what is granted, seconds. */
  max_ttl_seconds?: number;
  /**
   * exchange that begins its own task: upper bound on that task's TTL, seconds.
   * Absent: max_ttl_seconds bounds the task too.
   */
  max_task_ttl_seconds?: number;
  /** Granted scopes; must be a subset of request.scopes. */
  scopes?: string[];
  /** Extra claims, embedded under the namespaced `mayfly` claim; never overriding registered claims. */
  claims?: Record<string, unknown>;
}

/** A checked decision plus where it came from, for audit and the explain command. */
export interface Decision extends DecisionOutput {
  engine: string;
  /** SHA-256 of the policy source (rules document or wasm module). */
  revision: string;
  /** Which rule or entrypoint produced the decision. */
  source: string;
  /** Evaluation latency in microseconds. */
  latencyUs: number;
}
