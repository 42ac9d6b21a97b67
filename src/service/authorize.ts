/**
 * Who may do what: the one authorization module every transport reaches
 * through the use-cases. A caller has one or more kinds, derived from its
 * verified identity and the configuration; each operation lists the kinds
 * allowed to perform it. Rules that depend on a task or a token (ownership,
 * task-token narrowing, introspection visibility) live here too, so the
 * README's authorization model has one home in code.
 */
import { mayflyError } from '../core/errors.js';
import type { Identity, TaskRecord } from '../core/types.js';

/**
 * - `task-token`: holds a Mayfly task token as its bearer credential; limited to that token's task.
 * - `admin`: a configured admin identity proven by its own credential (never by a task token).
 * - `feed-subscriber`: a relying party: may read the revocation feed, acknowledge key sets and report
 *   misuse. A configured `feed.subscribers` identity, or any identity proven by its own credential
 *   when none are configured; never a task-token holder (a task token speaks for one task, not for a
 *   relying party).
 * - `workload`: any identity proven by its own credential (X.509-SVID, JWT-SVID, OIDC token).
 */
export type CallerKind = 'task-token' | 'admin' | 'feed-subscriber' | 'workload';

/** Operations gated by caller kind alone (task-level rules are the methods below). */
export type Operation = 'admin' | 'feed.subscribe' | 'keyset.ack' | 'misuse.report';

interface Rule {
  allowed: readonly CallerKind[];
  refusal: (id: string) => string;
}

/** The table: operation -> caller kinds allowed. */
export const RULES: Readonly<Record<Operation, Rule>> = {
  admin: { allowed: ['admin'], refusal: (id) => `${id} is not a configured admin` },
  'feed.subscribe': { allowed: ['feed-subscriber'], refusal: (id) => `${id} is not allowed to subscribe to the revocation feed` },
  // Acknowledgements gate key promotion and misuse reports raise alerts: relying parties only.
  'keyset.ack': { allowed: ['feed-subscriber'], refusal: (id) => `${id} may not acknowledge key sets: only feed subscribers, by their own credential` },
  'misuse.report': { allowed: ['feed-subscriber'], refusal: (id) => `${id} may not report misuse: only feed subscribers (relying parties), by their own credential` },
};

export interface AuthorizationConfig {
  /** Admin identities (exact ids). */
  admins: readonly string[];
  /** Revocation feed subscribers (exact ids); empty = any authenticated caller. */
  feedSubscribers?: readonly string[];
}

export class Authorizer {
  private readonly admins: ReadonlySet<string>;
  private readonly subscribers: ReadonlySet<string>;

  constructor(config: AuthorizationConfig) {
    this.admins = new Set(config.admins);
    this.subscribers = new Set(config.feedSubscribers ?? []);
  }

  /** The kinds a verified caller has. */
  kindsOf(identity: Identity): Set<CallerKind> {
    const kinds = new Set<CallerKind>();
    const byTaskToken = identity.method === 'task-token';
    kinds.add(byTaskToken ? 'task-token' : 'workload');
    if (!byTaskToken && this.admins.has(identity.id)) kinds.add('admin');
    if (!byTaskToken && (this.subscribers.size === 0 || this.subscribers.has(identity.id))) kinds.add('feed-subscriber');
    return kinds;
  }

  /** True when the caller may perform `op`. */
  allows(op: Operation, identity: Identity): boolean {
    const kinds = this.kindsOf(identity);
    return RULES[op].allowed.some((k) => kinds.has(k));
  }

  /** Throws ERR_NOT_AUTHORIZED_CLIENT unless the caller may perform `op`. */
  require(op: Operation, identity: Identity): void {
    if (!this.allows(op, identity)) throw mayflyError('ERR_NOT_AUTHORIZED_CLIENT', RULES[op].refusal(identity.id));
  }

  /** The owner may act on its tasks; a task-token holder only on that token's task. */
  mayActOnTask(identity: Identity, task: TaskRecord): boolean {
    if (identity.id !== task.owner) return false;
    if (identity.method === 'task-token') return identity.claims['tid'] === task.id;
    return true;
  }

  /** A task-token holder may only start child tasks of its own task. */
  requireMayStartTask(identity: Identity, parentId: string | null): void {
    if (identity.method === 'task-token' && parentId !== identity.claims['tid']) {
      throw mayflyError('ERR_NOT_AUTHORIZED_CLIENT', 'a task token may only start child tasks of its own task');
    }
  }

  /** A task token can only be exchanged for a narrower one: same audience, a subset of its scopes. */
  requireNarrowing(identity: Identity, audience: string, requested: readonly string[]): void {
    if (identity.method !== 'task-token') return;
    const held = String(identity.claims['scope'] ?? '').split(' ').filter(Boolean);
    if (audience !== identity.claims['aud']) throw mayflyError('ERR_AUDIENCE_DENIED', 'a task token can only be exchanged for a token of its own audience');
    const wider = requested.filter((sc) => !held.includes(sc));
    if (wider.length > 0) throw mayflyError('ERR_SCOPE_DENIED', `a task token cannot widen its scopes; not held: ${wider.join(' ')}`);
  }

  /** Whether introspection may show the caller the claims of a token of task `tid`: a task-token holder sees only its own task's. */
  maySeeTokenOf(identity: Identity, tid: string): boolean {
    return identity.method !== 'task-token' || identity.claims['tid'] === tid;
  }
}
