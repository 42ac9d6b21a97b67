/**
 * JWT-SVID verification per the SPIFFE JWT-SVID standard (JWT-SVID.md).
 * Pure apart from reading the injected bundle source: the trust domain of the
 * token's `sub` selects the only keys that may verify it, so a key of trust
 * domain A can never vouch for an identity in trust domain B.
 */
import { mayflyError } from '../core/errors.js';
import type { EpochMs, Identity } from '../core/types.js';
import { decodeJws, verifyJwsSignature } from '../tokens/jws.js';
import { validateJwtClaims } from './jwt-claims.js';
import { parseSpiffeId } from './spiffe-id.js';
import type { JwtBundleSource } from './trust-source.js';

export type { JwtBundleSource };

/** JWT-SVID §2.1: RFC 7518 §3.3–3.5 only (RSA PKCS#1, ECDSA, RSA-PSS; no EdDSA, no HMAC, no none). */
export const JWT_SVID_ALGS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512'] as const;

/** Options of verifyJwtSvid. */
export interface JwtSvidOptions {
  /** The broker's audience(s); the token's `aud` must contain one (JWT-SVID §3.2). */
  audience: string | readonly string[];
  /** Current time, epoch ms. */
  now: EpochMs;
  /** Leeway for exp/nbf/iat, seconds. Default 60. */
  clockSkewSeconds?: number;
}

/** Verifies a compact JWT-SVID against the bundles of its subject's trust domain and returns the caller's Identity. */
export function verifyJwtSvid(token: string, bundles: JwtBundleSource, options: JwtSvidOptions): Identity {
  const jws = decodeJws(token);
  const { header, payload } = jws;

  if (!(JWT_SVID_ALGS as readonly string[]).includes(header.alg)) {
    throw mayflyError('ERR_JWT_INVALID', `JWT-SVID alg ${JSON.stringify(header.alg)} is not allowed (JWT-SVID §2.1)`, { field: 'alg' });
  }
  // JWT-SVID §2.3: typ is optional; if set it is JWT or JOSE.
  if (header.typ !== undefined && header.typ !== 'JWT' && header.typ !== 'JOSE') {
    throw mayflyError('ERR_JWT_INVALID', `JWT-SVID typ ${JSON.stringify(header.typ)} must be "JWT" or "JOSE" (JWT-SVID §2.3)`, { field: 'typ' });
  }
  // JWT-SVID §2.2 makes kid optional, but SPIFFE bundles publish JWT authorities by kid
  // (SPIFFE Trust Domain and Bundle §4.2.2) and go-spiffe rejects tokens without one; so do we.
  if (typeof header.kid !== 'string' || header.kid.length === 0) {
    throw mayflyError('ERR_JWT_INVALID', 'JWT-SVID header has no kid', { field: 'kid' });
  }

  // JWT-SVID §3.1: sub is the workload's SPIFFE ID. Parsed before the signature check only
  // to pick the trust domain whose keys may verify it; a forged sub fails the signature.
  const sub = payload['sub'];
  if (typeof sub !== 'string') throw mayflyError('ERR_JWT_INVALID', 'JWT-SVID sub is missing', { claim: 'sub' });
  const id = parseSpiffeId(sub);
  if (id.path === '') throw mayflyError('ERR_SPIFFE_ID_INVALID', 'JWT-SVID sub must name a workload, not only a trust domain (JWT-SVID §3.1)', { claim: 'sub' });

  const authorities = bundles.jwtAuthoritiesFor(id.trustDomain);
  if (authorities === undefined) {
    throw mayflyError('ERR_ISSUER_UNKNOWN', `trust domain ${JSON.stringify(id.trustDomain)} is not trusted for JWT-SVIDs`, { trustDomain: id.trustDomain });
  }
  const key = authorities.get(header.kid);
  if (key === undefined) {
    throw mayflyError('ERR_KEY_UNKNOWN', `kid ${JSON.stringify(header.kid)} is not a JWT authority of trust domain ${JSON.stringify(id.trustDomain)}`, {
      kid: header.kid,
      trustDomain: id.trustDomain,
    });
  }
  verifyJwsSignature(jws, key);

  // JWT-SVID §3.2/§3.3 and Appendix A: aud and exp are required.
  const checked = validateJwtClaims(payload, {
    now: options.now,
    clockSkewSeconds: options.clockSkewSeconds ?? 60,
    audience: options.audience,
    requireExp: true,
  });

  return {
    kind: 'spiffe',
    id: id.toString(),
    trustDomain: id.trustDomain,
    method: 'jwt-svid',
    claims: payload,
    credentialExpiresAt: checked.exp,
    source: id.trustDomain,
  };
}
