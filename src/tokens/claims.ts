/**
 * Mayfly access-token claims (RFC 9068 JWT profile) and their validation.
 * Both functions are pure: time is an argument.
 */
import { mayflyError } from '../core/errors.js';

/** Claims the broker sets itself; policy-supplied claims can never override them. */
export const REGISTERED_CLAIMS = ['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'scope', 'cnf', 'act', 'tid', 'client_id', 'typ', 'mayfly'] as const;

/** The `typ` header of Mayfly tokens (RFC 9068 §2.1). */
export const ACCESS_TOKEN_TYP = 'at+jwt';

export interface ActorClaim {
  sub: string;
  act?: ActorClaim;
}

export interface MayflyClaims {
  iss: string;
  sub: string;
  aud: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  scope: string;
  client_id: string;
  tid: string;
  cnf?: { 'x5t#S256': string };
  /** RFC 8693 §4.1: the chain of actors for delegated tasks, current actor outermost. */
  act?: ActorClaim;
  mayfly?: {
    parent_tid?: string;
    tool?: string;
    args_digest?: string;
    single_use?: boolean;
    [k: string]: unknown;
  };
}

export interface ClaimsInput {
  issuer: string;
  subject: string;
  audience: string;
  scopes: string[];
  jti: string;
  taskId: string;
  issuedAtMs: number;
  expiresAtMs: number;
  certThumbprint?: string | null;
  actors?: string[];
  parentTaskId?: string | null;
  tool?: string | null;
  argsDigest?: string | null;
  singleUse?: boolean;
  extra?: Record<string, unknown>;
}

/** Builds the claim set of a token. Pure. */
export function buildClaims(i: ClaimsInput): MayflyClaims {
  const iat = Math.floor(i.issuedAtMs / 1000);
  const claims: MayflyClaims = {
    iss: i.issuer,
    sub: i.subject,
    aud: i.audience,
    iat,
    nbf: iat,
    exp: Math.floor(i.expiresAtMs / 1000),
    jti: i.jti,
    scope: i.scopes.join(' '),
    client_id: i.subject,
    tid: i.taskId,
  };
  if (i.certThumbprint) claims.cnf = { 'x5t#S256': i.certThumbprint };
  if (i.actors && i.actors.length > 0) claims.act = actorChain(i.actors);
  const mayfly: NonNullable<MayflyClaims['mayfly']> = { ...(i.extra ?? {}) };
  if (i.parentTaskId) mayfly.parent_tid = i.parentTaskId;
  if (i.tool) mayfly.tool = i.tool;
  if (i.argsDigest) mayfly.args_digest = i.argsDigest;
  if (i.singleUse) mayfly.single_use = true;
  if (Object.keys(mayfly).length > 0) claims.mayfly = mayfly;
  return claims;
}

/** RFC 8693 §4.1 nests prior actors inside the current one; `actors` is outermost (root) first. */
function actorChain(actors: string[]): ActorClaim {
  let chain: ActorClaim | undefined;
  for (const sub of actors) chain = chain ? { sub, act: chain } : { sub };
  return chain as ActorClaim;
}

/** Flattens an `act` claim to a list, current actor first. */
export function actorsOf(act: unknown): string[] {
  const out: string[] = [];
  let cur = act as ActorClaim | undefined;
  while (cur && typeof cur === 'object' && typeof cur.sub === 'string' && out.length < 32) {
    out.push(cur.sub);
    cur = cur.act;
  }
  return out;
}

export interface ValidateOptions {
  issuer: string;
  /** When set, `aud` must equal one of these. */
  audience?: string | readonly string[];
  now: number;
  clockSkewSeconds?: number;
  requiredScopes?: readonly string[];
}

/**
 * Validates Mayfly claims (RFC 9068 §4): iss exact, aud, exp/nbf with skew,
 * required claims present and well-typed, required scopes granted.
 */
export function validateClaims(payload: Record<string, unknown>, o: ValidateOptions): MayflyClaims {
  // One static read per claim (each with its own inline cache); a loop over the names made every read a
  // keyed lookup by a changing name. The loops below only name the claim that failed.
  const q = payload as { [K in keyof MayflyClaims]?: unknown };
  if (typeof q.iss !== 'string' || typeof q.sub !== 'string' || typeof q.aud !== 'string' || typeof q.jti !== 'string' || typeof q.tid !== 'string' || typeof q.scope !== 'string') {
    const c = STRING_CLAIMS.find((k) => typeof payload[k] !== 'string');
    throw mayflyError('ERR_JWT_INVALID', `token claim ${c} is missing or not a string`);
  }
  if (!isFiniteNumber(q.exp) || !isFiniteNumber(q.iat) || !isFiniteNumber(q.nbf)) {
    const c = NUMBER_CLAIMS.find((k) => !isFiniteNumber(payload[k]));
    throw mayflyError('ERR_JWT_INVALID', `token claim ${c} is missing or not a number`);
  }
  const p = payload as unknown as MayflyClaims;
  if (p.iss !== o.issuer) throw mayflyError('ERR_JWT_INVALID', `token issuer ${JSON.stringify(p.iss)} is not ${JSON.stringify(o.issuer)}`, { reason: 'wrong_issuer' });
  checkAudience(p, o.audience);
  checkTimeWindow(p, o.now, o.clockSkewSeconds ?? 0);
  if (o.requiredScopes) checkScopes(p.scope, o.requiredScopes);
  return p;
}

const STRING_CLAIMS = ['iss', 'sub', 'aud', 'jti', 'tid', 'scope'] as const;
const NUMBER_CLAIMS = ['exp', 'iat', 'nbf'] as const;
const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** The claims that change verdict with time or configuration; verifiers re-run these on every use of an already verified token. */
export type TimedClaims = Pick<MayflyClaims, 'aud' | 'exp' | 'nbf'>;

/** `aud` must be one of `audience` (when set). */
export function checkAudience(p: TimedClaims, audience: string | readonly string[] | undefined): void {
  if (audience === undefined) return;
  if (typeof audience === 'string' ? p.aud !== audience : !audience.includes(p.aud)) {
    throw mayflyError('ERR_JWT_INVALID', `token audience ${JSON.stringify(p.aud)} is not accepted here`);
  }
}

/** exp and nbf against `now` (ms) with `skewSeconds` of tolerance. */
export function checkTimeWindow(p: TimedClaims, now: number, skewSeconds: number): void {
  const sec = Math.floor(now / 1000);
  if (p.exp <= sec - skewSeconds) throw mayflyError('ERR_JWT_EXPIRED', 'token is expired');
  if (p.nbf > sec + skewSeconds) throw mayflyError('ERR_JWT_INVALID', 'token is not yet valid (nbf)', { reason: 'not_yet_valid' });
}

/** Every required scope must be in the space-separated `scope`. */
export function checkScopes(scope: string, required: readonly string[]): void {
  if (required.length === 0) return;
  const have = scope.split(' ');
  const missing = required.filter((s) => !have.includes(s));
  if (missing.length > 0) throw mayflyError('ERR_SCOPE_DENIED', `token lacks required scope(s): ${missing.join(' ')}`);
}
