/** Domain types shared by every layer. Pure data: no behaviour, no I/O. */

/** Milliseconds since the Unix epoch. All times inside Mayfly are epoch ms. */
export type EpochMs = number;

/** A verified caller. Produced only by the identity verifiers. */
export interface Identity {
  kind: 'spiffe' | 'oidc';
  /**
   * Stable identifier that becomes the token's `sub`: the SPIFFE ID, or for
   * OIDC `<issuer>#<sub>`.
   */
  id: string;
  /** SPIFFE trust domain (kind spiffe). */
  trustDomain?: string;
  /** OIDC issuer URL (kind oidc). */
  issuer?: string;
  /** How the identity was proven. */
  method: 'x509-svid' | 'jwt-svid' | 'oidc' | 'task-token';
  /** Verified claims of the presented credential (JWT claims; for X.509 a small summary). */
  claims: Record<string, unknown>;
  /** base64url SHA-256 of the leaf certificate DER when the caller used mTLS (RFC 8705 x5t#S256). */
  certThumbprint?: string;
  /** Credential expiry, when known; the broker never issues past it for bearer-proven identities. */
  credentialExpiresAt?: EpochMs;
  /** Name of the federation config entry (issuer preset or trust domain) that verified it. */
  source?: string;
}

export type TaskStatus = 'active' | 'completed' | 'expired' | 'revoked';

/**
 * The identity that began a task, as it was verified then (never a task
 * token). Kept with the task so that a task-token holder is judged by policy
 * as the identity it speaks for, with its issuer, trust domain and claims,
 * which a task token does not carry.
 */
export interface TaskOwnerIdentity {
  kind: Identity['kind'];
  id: string;
  method: Exclude<Identity['method'], 'task-token'>;
  trustDomain?: string;
  issuer?: string;
  claims: Record<string, unknown>;
  source?: string;
}

export interface TaskRecord {
  id: string;
  /** Identity.id of the owner. */
  owner: string;
  ownerKind: Identity['kind'];
  purpose: string;
  labels: Record<string, string>;
  createdAt: EpochMs;
  /** Hard deadline: no token of the task may outlive it. */
  expiresAt: EpochMs;
  /** Lease: when set, the task is revoked by the broker if not renewed before this time. */
  leaseExpiresAt: EpochMs | null;
  status: TaskStatus;
  endedAt: EpochMs | null;
  endReason: string | null;
  /** Delegation: the parent task id, root task id and depth (root = 0). */
  parentId: string | null;
  rootId: string;
  depth: number;
  /** Ceiling on scopes for tokens of this task and its children (null = decided by policy alone). */
  scopeCeiling: string[] | null;
  /** Actor chain for delegated tasks, outermost first (RFC 8693 act). */
  actors: string[];
  tokensIssued: number;
  /** Who began the task (for a child begun with a task token: its root's beginner). Absent on tasks stored before it was recorded. */
  ownerIdentity?: TaskOwnerIdentity;
}

export interface TokenRecord {
  jti: string;
  taskId: string;
  kid: string;
  sub: string;
  audience: string;
  scopes: string[];
  issuedAt: EpochMs;
  expiresAt: EpochMs;
  certThumbprint: string | null;
  singleUse: boolean;
  tool: string | null;
  argsDigest: string | null;
  revokedAt: EpochMs | null;
}

/** One entry of the revocation feed. `cursor` is strictly increasing. */
export interface RevocationEvent {
  cursor: number;
  kind: 'task' | 'token' | 'keyset' | 'key';
  at: EpochMs;
  /** Task ids revoked (a task and all its descendants). */
  taskIds: string[];
  /** Token ids revoked. */
  jtis: string[];
  /** For kind key: the revoked key id. For keyset: the new key-set version. */
  kid: string | null;
  reason: string;
  /** After this time nothing the event covers can still be valid; the event may be pruned. */
  coversUntil: EpochMs;
}

/** The result of ending a task (complete, revoke, lease lapse, deadline). */
export interface TaskEndResult {
  taskIds: string[];
  revokedTokens: number;
  event: RevocationEvent | null;
}

export type KeyState = 'next' | 'active' | 'retiring' | 'retired' | 'revoked';
export type SigningAlg = 'ES256' | 'EdDSA' | 'RS256';

/** Public view of a signing key (never the private part). */
export interface KeyInfo {
  kid: string;
  alg: SigningAlg;
  state: KeyState;
  createdAt: EpochMs;
  stateSince: EpochMs;
  /** Public JWK (kty, crv, x, y / n, e), without `d`. */
  publicJwk: Record<string, string>;
  /** When the last token signed by this key expires (retiring → retired is allowed after this + skew). */
  lastTokenExpiresAt: EpochMs | null;
}

/**
 * The audit chain's head as the broker last sealed it: the seq and hash of a
 * signed `audit.checkpoint` record, kept in the Store so that whoever can
 * rewrite the audit log file cannot also quietly move the head back.
 */
export interface AuditHead {
  /** broker_id of the log this head belongs to (several brokers may share one database). */
  brokerId: string;
  seq: number;
  hash: string;
  /** When the checkpoint was written. */
  at: EpochMs;
}

/** Reason of the feed's keyset message that closes a replay: from there on the subscriber is caught up. */
export const REPLAY_END_REASON = 'current';
