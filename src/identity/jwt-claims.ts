/**
 * Pure validation of the registered JWT time and audience claims (RFC 7519
 * §4.1). Signature checks happen before this, elsewhere; this module only
 * looks at a decoded payload and an injected `now`.
 */
import { mayflyError } from '../core/errors.js';
import type { EpochMs } from '../core/types.js';

/** Options of validateJwtClaims. All times are injected; nothing here reads a clock. */
export interface JwtClaimsOptions {
  /** Current time, epoch ms. */
  now: EpochMs;
  /** Leeway applied to exp, nbf and iat, seconds. */
  clockSkewSeconds: number;
  /** Accepted audience(s): the token's `aud` must contain at least one of them. */
  audience: string | readonly string[];
  /** When set, `iss` must equal it exactly (no normalisation, no trailing-slash games). */
  issuer?: string;
  /** `exp` is always required; the field exists so call sites state it. */
  requireExp?: true;
  /** When set, `iat` is required and must be at most this many seconds old (plus skew). */
  maxTokenAgeSeconds?: number;
}

/** The checked time claims, converted to epoch ms. */
export interface ValidatedClaims {
  exp: EpochMs;
  nbf?: EpochMs;
  iat?: EpochMs;
  aud: string[];
  iss?: string;
}

function numericDate(payload: Record<string, unknown>, claim: string): number | undefined {
  const v = payload[claim];
  if (v === undefined) return undefined;
  // RFC 7519 §2: NumericDate is a JSON number of seconds (fractions allowed).
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw mayflyError('ERR_JWT_INVALID', `${claim} must be a NumericDate (seconds since the epoch)`, { claim });
  }
  return v;
}

/** Normalises `aud` (string or array of strings) to an array; throws ERR_JWT_INVALID if absent or malformed. */
export function audienceOf(payload: Record<string, unknown>): string[] {
  const aud = payload['aud'];
  if (aud === undefined) throw mayflyError('ERR_JWT_INVALID', 'aud is missing', { claim: 'aud' });
  if (typeof aud === 'string') return [aud];
  if (Array.isArray(aud) && aud.length > 0 && aud.every((a) => typeof a === 'string')) return aud as string[];
  throw mayflyError('ERR_JWT_INVALID', 'aud must be a string or a non-empty array of strings', { claim: 'aud' });
}

/**
 * Checks exp (required), nbf, iat, aud and iss of a decoded payload at `now`.
 * ERR_JWT_EXPIRED when exp has passed, ERR_JWT_INVALID for everything else;
 * messages name the claim and never echo the token.
 */
export function validateJwtClaims(payload: Record<string, unknown>, options: JwtClaimsOptions): ValidatedClaims {
  const accepted = typeof options.audience === 'string' ? [options.audience] : [...options.audience];
  if (accepted.length === 0 || accepted.some((a) => typeof a !== 'string' || a.length === 0)) {
    throw mayflyError('ERR_CONFIG_INVALID', 'no accepted audience configured', { field: 'audience' });
  }
  const skew = options.clockSkewSeconds;
  if (!Number.isFinite(skew) || skew < 0) throw mayflyError('ERR_CONFIG_INVALID', 'clockSkewSeconds must be a non-negative number', { field: 'clockSkewSeconds' });
  const now = options.now / 1000;

  const exp = numericDate(payload, 'exp');
  if (exp === undefined) throw mayflyError('ERR_JWT_INVALID', 'exp is missing', { claim: 'exp' });
  // RFC 7519 §4.1.4: the current time must be before exp.
  if (now >= exp + skew) throw mayflyError('ERR_JWT_EXPIRED', 'exp has passed: the token is expired', { claim: 'exp' });

  const nbf = numericDate(payload, 'nbf');
  if (nbf !== undefined && now + skew < nbf) throw mayflyError('ERR_JWT_INVALID', 'nbf is in the future: the token is not valid yet', { claim: 'nbf' });

  const iat = numericDate(payload, 'iat');
  if (iat !== undefined && iat > now + skew) throw mayflyError('ERR_JWT_INVALID', 'iat is in the future', { claim: 'iat' });
  if (options.maxTokenAgeSeconds !== undefined) {
    if (iat === undefined) throw mayflyError('ERR_JWT_INVALID', 'iat is missing (required because a maximum token age is configured)', { claim: 'iat' });
    if (now - iat > options.maxTokenAgeSeconds + skew) {
      throw mayflyError('ERR_JWT_INVALID', `iat is too old: the token was issued more than ${options.maxTokenAgeSeconds} s ago`, { claim: 'iat' });
    }
  }

  const aud = audienceOf(payload);
  if (!aud.some((a) => accepted.includes(a))) {
    const want = accepted.length === 1 ? `the broker's audience ${JSON.stringify(accepted[0])}` : `any of the broker's audiences ${JSON.stringify(accepted)}`;
    throw mayflyError('ERR_JWT_INVALID', `aud ${JSON.stringify(aud)} does not include ${want}`, { claim: 'aud' });
  }

  let iss: string | undefined;
  if (payload['iss'] !== undefined) {
    if (typeof payload['iss'] !== 'string') throw mayflyError('ERR_JWT_INVALID', 'iss must be a string', { claim: 'iss' });
    iss = payload['iss'];
  }
  if (options.issuer !== undefined) {
    if (iss === undefined) throw mayflyError('ERR_JWT_INVALID', 'iss is missing', { claim: 'iss' });
    if (iss !== options.issuer) throw mayflyError('ERR_JWT_INVALID', `iss ${JSON.stringify(iss)} is not the expected issuer ${JSON.stringify(options.issuer)}`, { claim: 'iss' });
  }

  const out: ValidatedClaims = { exp: exp * 1000, aud };
  if (nbf !== undefined) out.nbf = nbf * 1000;
  if (iat !== undefined) out.iat = iat * 1000;
  if (iss !== undefined) out.iss = iss;
  return out;
}
