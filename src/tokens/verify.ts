/**
 * Verifies a Mayfly access token: the same code the broker runs on what it
 * mints (mint, then verify), on Introspect, and in the verifier SDK.
 * Step one checks the header and signature; step two validates the claims as
 * a pure function of time.
 */
import type { KeyObject } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import { ACCESS_TOKEN_TYP, validateClaims, type MayflyClaims, type ValidateOptions } from './claims.js';
import { decodeJws, verifyJwsSignature, type DecodedJws, type JwsHeader } from './jws.js';

export interface VerifiedToken {
  header: JwsHeader;
  claims: MayflyClaims;
  /** The key that verified the signature (for a verifier's cache: still the key for this kid?). */
  key: KeyObject;
}

/** Resolves a key id to a public key, or undefined when the kid is unknown. */
export type KeyResolver = (kid: string) => KeyObject | undefined;

/** Verifies header (typ at+jwt, kid), signature and claims. Throws MayflyError. */
export function verifyMayflyToken(token: string, resolveKey: KeyResolver, options: ValidateOptions): VerifiedToken {
  return verifyDecodedMayflyToken(decodeJws(token), resolveKey, options);
}

/** `verifyMayflyToken` for a token already decoded with `decodeJws` (a verifier that looked at the payload first). */
export function verifyDecodedMayflyToken(jws: DecodedJws, resolveKey: KeyResolver, options: ValidateOptions): VerifiedToken {
  if (jws.header.typ !== ACCESS_TOKEN_TYP) throw mayflyError('ERR_JWT_INVALID', `token typ must be ${ACCESS_TOKEN_TYP}`);
  const kid = jws.header.kid;
  if (typeof kid !== 'string' || kid.length === 0) throw mayflyError('ERR_JWT_INVALID', 'token header has no kid');
  const key = resolveKey(kid);
  if (!key) throw mayflyError('ERR_KEY_UNKNOWN', 'token was signed by a key this verifier does not know', { kid });
  verifyJwsSignature(jws, key);
  return { header: jws.header, claims: validateClaims(jws.payload, options), key };
}
