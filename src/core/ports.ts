/**
 * Ports: the interfaces the service layer depends on, and the one the
 * transports depend on to learn who is calling. Adapters live in store/,
 * tokens/, policy/, audit/ and service/; each storage-like port has a
 * contract suite in test/contracts that every adapter passes.
 */
import type { DecisionInput } from './decision.js';
import type {
  AuditHead,
  EpochMs,
  Identity,
  KeyInfo,
  KeyState,
  RevocationEvent,
  SigningAlg,
  TaskEndResult,
  TaskRecord,
  TaskStatus,
  TokenRecord,
} from './types.js';

/** Wall clock, injected so validators and tests control time. */
export interface Clock {
  now(): EpochMs;
}

/** The client certificate presented with a bearer token, for certificate-bound tokens (RFC 8705). */
export interface CertificateBinding {
  /** base64url SHA-256 of the verified client certificate (x5t#S256); undefined without one. */
  certThumbprint?: string;
  /** Why the presented client certificate did not verify, if it did not. */
  certificateError?: string;
}

/**
 * Proves who a caller is from what it presented. Implemented in
 * service/authenticate.ts; the transports hand it what they received and
 * never verify a credential themselves. Every method throws a MayflyError of
 * kind `unauthenticated` (or `invalid_argument` for a malformed credential).
 */
export interface CallerAuthenticator {
  /** Identity from a client certificate chain (leaf first, DER). */
  fromCertificate(chainDer: Buffer[]): Identity;
  /**
   * Identity from a bearer credential: JWT-SVID, OIDC token or Mayfly task token.
   * `binding` is the client certificate on the same connection (RFC 8705
   * proof of possession for a certificate-bound task token).
   */
  fromBearer(token: string, binding?: CertificateBinding): Promise<Identity>;
}

/** Randomness, injected for the same reason. */
export interface Random {
  bytes(n: number): Buffer;
}

/** Snapshot of revocations that still cover unexpired tokens (for feed resume past retention). */
export interface RevocationSnapshot {
  cursor: number;
  taskIds: string[];
  jtis: string[];
  kids: string[];
}

/**
 * Durable state: tasks, token records and the revocation log. Every method
 * that ends or revokes something is atomic and durable before it resolves.
 */
export interface Store {
  /**
   * Inserts a task. An active child is inserted only if its parent is active
   * at that moment, checked in the same atomic step as the insert (the
   * parent may be ending concurrently, on this broker or another):
   * ERR_TASK_NOT_ACTIVE if the parent has ended, ERR_TASK_NOT_FOUND if it does
   * not exist. Either the insert comes first, and a concurrent endTask of
   * the parent ends the child with it, or the end comes first, and the
   * insert is refused: never an active child under an ended parent.
   */
  createTask(task: TaskRecord): Promise<void>;
  getTask(id: string): Promise<TaskRecord | null>;
  /** Direct children and all further descendants of a task, excluding the task itself. */
  getDescendants(id: string): Promise<TaskRecord[]>;
  /** Extends the lease of an active task; false if the task is not active. */
  renewLease(id: string, leaseExpiresAt: EpochMs): Promise<boolean>;
  /**
   * Records an issued token and increments its task's tokensIssued, atomically.
   * Throws ERR_TASK_NOT_FOUND for an unknown task and ERR_TASK_NOT_ACTIVE if the
   * task has ended (so a token minted while its task ends is never left unrevoked:
   * the caller must not hand it out).
   */
  recordToken(token: TokenRecord): Promise<void>;
  getToken(jti: string): Promise<TokenRecord | null>;
  /**
   * Ends an active task and all its active descendants in one durable step:
   * sets their status, revokes their unrevoked tokens, and appends one
   * revocation event (kind task) unless nothing was active.
   * Descendants get status `revoked`; the event's coversUntil is the latest
   * expiresAt among the ended tasks. Unknown id: ERR_TASK_NOT_FOUND; a task
   * that is not active: `{ taskIds: [], revokedTokens: 0, event: null }`.
   */
  endTask(id: string, status: Exclude<TaskStatus, 'active'>, reason: string, now: EpochMs): Promise<TaskEndResult>;
  /** Ends every active task owned by `owner` (and their descendants). */
  endTasksOfOwner(owner: string, reason: string, now: EpochMs): Promise<TaskEndResult>;
  /** Revokes a single token; null if it is unknown or already revoked. */
  revokeToken(jti: string, reason: string, now: EpochMs): Promise<RevocationEvent | null>;
  /** Revokes every unexpired token signed by `kid` and appends a kind-key event. */
  revokeTokensByKid(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent>;
  /**
   * Finishes the emergency revocation of `kid` if it is unfinished, so that
   * it can be retried on every lifecycle tick without announcing anything
   * twice: does what revokeTokensByKid does and returns its event when an
   * unexpired token signed by `kid` is not revoked yet, or when unexpired
   * tokens of `kid` exist and no kind-key event for `kid` is in the log (the
   * revocation's own event is the durable mark that it was finished). Else
   * changes nothing and returns null. Atomic with respect to itself and
   * revokeTokensByKid for the same kid, on every broker sharing the store.
   */
  finishKeyRevocation(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent | null>;
  /** Appends a free-standing event (kind keyset) and returns it with its cursor. */
  appendEvent(event: Omit<RevocationEvent, 'cursor'>): Promise<RevocationEvent>;
  /** Events with cursor > `cursor`, oldest first, at most `limit`. */
  eventsSince(cursor: number, limit: number): Promise<RevocationEvent[]>;
  /**
   * Lowest cursor still retained (0 when none was ever pruned; latest + 1 when
   * every event was pruned) and the latest cursor ever handed out (never reused).
   */
  cursorRange(): Promise<{ oldest: number; latest: number }>;
  /**
   * Everything revoked that may still matter at `now`: ended tasks not yet
   * past their deadline, revoked unexpired tokens not already covered by an
   * ended task, kids of key events still covering, and the latest cursor.
   */
  revocationSnapshot(now: EpochMs): Promise<RevocationSnapshot>;
  /** Active tasks whose deadline or lease has passed at `now`. */
  dueTasks(now: EpochMs, limit: number): Promise<TaskRecord[]>;
  /** Number of unexpired tokens signed by each kid at `now`. */
  liveTokensByKid(now: EpochMs): Promise<Record<string, number>>;
  /** Deletes ended/expired tasks and tokens and events that no longer cover anything. Returns rows removed. */
  gc(now: EpochMs, graceMs: number): Promise<number>;
  /**
   * Records the audit chain head of broker `head.brokerId` (replacing the
   * previous one; durable before it resolves). gc never removes it.
   */
  putAuditHead(head: AuditHead): Promise<void>;
  /** The head last recorded for that broker, or null. */
  getAuditHead(brokerId: string): Promise<AuditHead | null>;
  close(): Promise<void>;
}

/** What Coordinator.runExclusive did. */
export type ExclusiveRun<T> = { ran: true; value: T } | { ran: false };

/**
 * Runs cluster-wide jobs (lease sweeper, GC, key promotion) on exactly one
 * broker at a time. A broker that takes a job keeps it while it lives, so the
 * job runs once per tick across the cluster; when that broker dies another
 * takes the job over on its next tick. Single-process backends are always
 * the leader.
 */
export interface Coordinator {
  /** Runs `fn` if this broker holds (or can take) `job`; `{ ran: false }` without running when another broker holds it. */
  runExclusive<T>(job: string, fn: () => Promise<T>): Promise<ExclusiveRun<T>>;
  /** Jobs this broker currently holds (for health and tests). */
  held(): string[];
  /** Releases every job. */
  close(): Promise<void>;
}

/** Signs with one key. Local keys sign synchronously (the hot path). */
export interface Signer {
  readonly kid: string;
  readonly alg: SigningAlg;
  sign(signingInput: Buffer): Buffer;
}

/** Key material at rest: encrypted, behind this port so a KMS/HSM backend can replace it. */
export interface KeyStore {
  /** Generates and persists a new key in the given state. */
  create(alg: SigningAlg, state: KeyState, now: EpochMs): Promise<KeyInfo>;
  list(): Promise<KeyInfo[]>;
  setState(kid: string, state: KeyState, now: EpochMs): Promise<void>;
  /** Raises the key's lastTokenExpiresAt to at least `exp` (persisted lazily is allowed; never lowered). */
  noteTokenExpiry(kid: string, exp: EpochMs): void;
  signer(kid: string): Promise<Signer>;
  /**
   * Records that an operator asked to rotate away from `activeKid` (`keys rotate`),
   * durably before resolving, so whichever broker runs the key lifecycle next
   * completes it, even if the one that took the request dies first. Ignored
   * when `activeKid` is not the active key; a repeated request keeps the first
   * time. The request ends when that key leaves `active` (setState).
   */
  requestRotation(activeKid: string, at: EpochMs): Promise<void>;
  /** The pending rotation request: rotate away from `kid` (still active), asked at `at`; null if none. */
  rotationRequest(): Promise<RotationRequest | null>;
  close(): Promise<void>;
}

/** A pending `keys rotate` (KeyStore.requestRotation). */
export interface RotationRequest {
  kid: string;
  at: EpochMs;
}

/** What an engine returns before the decision point checks it. */
export interface EngineResult {
  /** The raw decision document (object or boolean); validated by the decision point. */
  output: unknown;
  /** Which rule or entrypoint produced it. */
  source: string;
}

/** A policy engine behind the decision contract. */
export interface PolicyEngine {
  readonly name: string;
  /**
   * True if evaluate() does all its work before returning (its promise is
   * already settled): no timer can pre-empt it, so the decision point
   * judges its deadline by the measured latency alone instead of arming one.
   */
  readonly synchronous?: boolean;
  /** SHA-256 (hex) of the policy currently loaded. */
  revision(): string;
  evaluate(input: DecisionInput): Promise<EngineResult>;
  close(): Promise<void>;
}

export type AuditEvent =
  | 'task.begin'
  | 'task.complete'
  | 'task.expire'
  | 'task.revoke'
  | 'task.renew'
  | 'token.issue'
  | 'token.exchange'
  | 'token.introspect'
  | 'token.revoke'
  | 'token.misuse'
  | 'identity.revoke'
  | 'auth.failure'
  | 'request.invalid'
  | 'key.create'
  | 'key.state'
  | 'key.revoke'
  | 'key.promotion_delayed'
  | 'policy.reload'
  | 'feed.subscribe'
  | 'keyset.ack'
  | 'broker.start'
  | 'broker.stop';

/** One audit record before chaining. Never contains a raw token or private key. */
export interface AuditEntry {
  event: AuditEvent;
  outcome: 'success' | 'denied' | 'error';
  /** Request id, so logs and audit correlate. */
  request_id?: string;
  /** Stable error code on failure. */
  code?: string;
  reason?: string;
  identity?: { kind?: string; id?: string; method?: string; cert_sha256?: string; source?: string };
  peer?: string;
  task_id?: string;
  jti?: string;
  /** SHA-256 (hex) of a token that was presented, never the token itself. */
  token_sha256?: string;
  decision?: {
    engine: string;
    revision: string;
    source: string;
    input_sha256: string;
    allow: boolean;
    reasons: string[];
    latency_us: number;
  };
  [field: string]: unknown;
}

/** Append-only audit log. `write` must not throw on the request path; failures surface through health. */
export interface AuditSink {
  write(entry: AuditEntry): void;
  /**
   * Appends like write(), and resolves once the record is written or rejects
   * if it could not be, so a use-case never answers a request whose record
   * is missing. Records confirmed in one event-loop turn share one write.
   * Optional: a sink without it is written with write().
   */
  writeConfirmed?(entry: AuditEntry): Promise<void>;
  close(): Promise<void>;
}

/** One subscriber's acknowledged key set, as a replica reports it. */
export interface SubscriberAck {
  subscriber: string;
  /** Kids of the key set it acknowledged ([] if none yet). */
  kids: string[];
}

/** Shared record of every replica's live subscribers and what they acknowledged (PostgreSQL table). */
export interface AckRegistry {
  /** Replaces this replica's rows with `acks`, stamped `now`. */
  report(replica: string, acks: SubscriberAck[], now: number): Promise<void>;
  /**
   * Subscribers, on any replica reported within `freshMs` of `now`, that
   * acknowledged a key set containing `kid` neither to the replica holding
   * their stream (its report) nor to any replica (SubscriberRegistry.ack).
   */
  laggards(kid: string, now: number, freshMs: number): Promise<string[]>;
  /** Removes this replica's rows (clean shutdown). */
  forget(replica: string): Promise<void>;
}

/**
 * Feed subscriber names shared by every replica (PostgreSQL): which identity
 * each name is bound to, and the key set it last acknowledged. A verifier's
 * stream and its acknowledgements may reach different replicas (failover, a
 * DNS name or load balancer spreading calls), so neither may live in one
 * replica's memory.
 */
export interface SubscriberRegistry {
  /**
   * Binds `subscriber` to `identity` unless it is bound already, and returns
   * the identity it is bound to after the call; null when it is unbound and
   * `max` names are bound already.
   */
  bind(subscriber: string, identity: string, max: number): Promise<string | null>;
  /** The identity `subscriber` is bound to, if any. */
  owner(subscriber: string): Promise<string | undefined>;
  /** Records that `subscriber` holds a key set with `kids` (acknowledged at `at`; an older acknowledgement never replaces a newer one). */
  ack(subscriber: string, identity: string, kids: string[], at: number): Promise<void>;
}
