/**
 * JWK Set parsing (RFC 7517 §5) for everything that verifies signatures:
 * OIDC issuer keys on the broker and the broker's own keys in the verifier
 * SDK. Unusable keys are dropped (and reported), never half-used.
 */
import type { KeyObject } from 'node:crypto';
import { mayflyError, type MayflyError } from '../core/errors.js';
import { isPlainObject, publicKeyFromJwk } from './jws.js';

/** A JSON Web Key Set document (RFC 7517 §5). */
export interface JwksDocument {
  keys: Record<string, unknown>[];
}

/** One usable verification key, with the `alg` its JWK names (if any). */
export interface JwkEntry {
  key: KeyObject;
  alg?: string;
}

/** Parses a JWKS document into usable verification keys by kid; unusable keys are dropped and reported. */
export function parseJwks(doc: unknown, report?: (err: MayflyError) => void, label = 'JWKS'): Map<string, JwkEntry[]> {
  if (!isPlainObject(doc) || !Array.isArray(doc['keys'])) throw mayflyError('ERR_UNAVAILABLE', `${label}: document has no "keys" array`);
  const out = new Map<string, JwkEntry[]>();
  const drop = (why: string, kid?: string): void => report?.(mayflyError('ERR_KEY_UNKNOWN', `${label}: ignored key${kid ? ` ${JSON.stringify(kid)}` : ''}: ${why}`, kid ? { kid } : undefined));
  for (const jwk of doc['keys'] as unknown[]) {
    if (!isPlainObject(jwk)) {
      drop('not a JSON object');
      continue;
    }
    const kid = typeof jwk['kid'] === 'string' && jwk['kid'].length > 0 ? jwk['kid'] : undefined;
    if (!kid) {
      drop('no kid (tokens are matched to keys by kid)');
      continue;
    }
    // RFC 8725 §3.1/§3.2: a JWKS is public; a symmetric key in it could be used as an HMAC secret.
    if (jwk['kty'] === 'oct') {
      drop('symmetric keys are not accepted', kid);
      continue;
    }
    // RFC 7517 §4.2/§4.3: only signature-verification keys.
    if (jwk['use'] !== undefined && jwk['use'] !== 'sig') {
      drop(`use is ${JSON.stringify(jwk['use'])}, not "sig"`, kid);
      continue;
    }
    if (jwk['key_ops'] !== undefined && !(Array.isArray(jwk['key_ops']) && jwk['key_ops'].includes('verify'))) {
      drop('key_ops does not include "verify"', kid);
      continue;
    }
    if (jwk['alg'] !== undefined && typeof jwk['alg'] !== 'string') {
      drop('alg is not a string', kid);
      continue;
    }
    let key: KeyObject;
    try {
      key = publicKeyFromJwk(jwk);
    } catch {
      drop('could not be imported', kid);
      continue;
    }
    const entry: JwkEntry = { key };
    if (typeof jwk['alg'] === 'string') entry.alg = jwk['alg'];
    const list = out.get(kid) ?? [];
    list.push(entry);
    out.set(kid, list);
  }
  return out;
}
