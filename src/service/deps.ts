/** What the use-cases need from the outside, as narrow interfaces. */
import type { Decision, DecisionInput } from '../core/decision.js';
import type { AuditSink, Clock, Random, Store } from '../core/ports.js';
import type { Identity, RevocationEvent } from '../core/types.js';
import type { KeyManager } from '../tokens/keys.js';
import type { Authorizer } from './authorize.js';

/** The policy decision point (policy/decision-point.ts implements it). */
export interface Decider {
  decide(input: DecisionInput): Promise<Decision>;
}

/** Receives revocation events as soon as they are durable (the feed hub). */
export interface EventPublisher {
  publish(event: RevocationEvent): void;
}

/** Counters the use-cases report; the wiring maps them to Prometheus. */
export interface ServiceObserver {
  taskBegun?(): void;
  taskEnded?(reason: string, count: number): void;
  tokenIssued?(audience: string, latencyMs: number): void;
  denied?(code: string): void;
  revocation?(kind: string): void;
  misuse?(kind: 'revoked_use' | 'cnf_mismatch' | 'replay'): void;
  policyEval?(engine: string, allow: boolean, latencyUs: number): void;
}

export interface ServiceConfig {
  issuer: string;
  brokerId: string;
  clockSkewSeconds: number;
  tokens: { defaultTtlSeconds: number; maxTtlSeconds: number };
  tasks: { defaultTtlSeconds: number; maxTtlSeconds: number; maxDelegationDepth: number; maxLeaseSeconds: number };
  /** Identities allowed to call admin operations (RevokeIdentity). Exact ids. */
  admins: string[];
}

export interface ServiceDeps {
  store: Store;
  keys: KeyManager;
  policy: Decider;
  audit: AuditSink;
  clock: Clock;
  random: Random;
  config: ServiceConfig;
  events: EventPublisher;
  observer?: ServiceObserver;
  /** Who may do what; built from config.admins when absent. */
  access?: Authorizer;
}

/** Per-call context established by the transport. */
export interface CallContext {
  identity: Identity;
  requestId: string;
  peer?: string;
}
