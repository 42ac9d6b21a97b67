/**
 * Signing-key material shared by every KeyStore adapter: generation with
 * node:crypto, RFC 7638 thumbprints as kids, public JWK export, the allowed
 * state transitions, and the local Signer.
 */
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import type { Signer } from '../core/ports.js';
import type { KeyInfo, KeyState, SigningAlg } from '../core/types.js';
import { keyStrengthProblem } from '../core/key-policy.js';
import { keyFitsAlg, rawSign } from './jws.js';

/** Algorithms a KeyStore can generate keys for. */
export const SIGNING_ALGS: readonly SigningAlg[] = ['ES256', 'EdDSA', 'RS256'];

/** A freshly generated or decrypted key pair with its identifiers. */
export interface KeyMaterial {
  kid: string;
  alg: SigningAlg;
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: Record<string, string>;
}

/** RFC 7638 §3.2: the required members of each key type, in lexicographic order. */
const THUMBPRINT_MEMBERS: Record<string, readonly string[]> = {
  EC: ['crv', 'kty', 'x', 'y'],
  OKP: ['crv', 'kty', 'x'],
  RSA: ['e', 'kty', 'n'],
};

/** Generates a new key pair for `alg` (P-256, Ed25519 or RSA-2048). */
export function generateKeyMaterial(alg: SigningAlg): KeyMaterial {
  let pair: { privateKey: KeyObject; publicKey: KeyObject };
  switch (alg) {
    case 'ES256':
      pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      break;
    case 'EdDSA':
      pair = generateKeyPairSync('ed25519');
      break;
    case 'RS256':
      pair = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });
      break;
    default:
      throw mayflyError('ERR_INVALID_ARGUMENT', `unsupported signing algorithm ${JSON.stringify(alg)}; use one of ${SIGNING_ALGS.join(', ')}`);
  }
  return materialFromPrivateKey(alg, pair.privateKey);
}

/** Derives public key, JWK and kid from a private key; ERR_KEYSTORE if the key does not fit `alg`. */
export function materialFromPrivateKey(alg: SigningAlg, privateKey: KeyObject): KeyMaterial {
  const publicKey = createPublicKey(privateKey);
  if (!keyFitsAlg(publicKey, alg)) throw mayflyError('ERR_KEYSTORE', `key does not fit algorithm ${alg}`);
  const weak = keyStrengthProblem(publicKey);
  if (weak !== null) throw mayflyError('ERR_KEYSTORE', `signing key is below the key-strength policy: ${weak}`);
  const publicJwk = publicJwkOf(publicKey, alg);
  return { kid: publicJwk['kid']!, alg, privateKey, publicKey, publicJwk };
}

/** base64url SHA-256 JWK thumbprint (RFC 7638) of a public JWK. */
export function jwkThumbprint(jwk: Record<string, unknown>): string {
  const kty = jwk['kty'];
  const members = typeof kty === 'string' ? THUMBPRINT_MEMBERS[kty] : undefined;
  if (!members) throw mayflyError('ERR_KEYSTORE', `cannot compute a thumbprint for key type ${JSON.stringify(kty)}`);
  const canonical: Record<string, unknown> = {};
  for (const m of members) {
    if (typeof jwk[m] !== 'string') throw mayflyError('ERR_KEYSTORE', `JWK is missing member ${m}`);
    canonical[m] = jwk[m];
  }
  return createHash('sha256').update(JSON.stringify(canonical)).digest('base64url');
}

/** Public JWK with exactly the key members plus `kid` (its thumbprint), `alg` and `use: "sig"`. */
export function publicJwkOf(publicKey: KeyObject, alg: SigningAlg): Record<string, string> {
  const raw = publicKey.export({ format: 'jwk' }) as Record<string, unknown>;
  const members = THUMBPRINT_MEMBERS[String(raw['kty'])];
  if (!members) throw mayflyError('ERR_KEYSTORE', `unsupported key type ${String(raw['kty'])}`);
  const jwk: Record<string, string> = {};
  for (const m of members) jwk[m] = String(raw[m]);
  return { ...jwk, kid: jwkThumbprint(jwk), alg, use: 'sig' };
}

/**
 * Allowed lifecycle moves (see tokens/keys.ts): nothing goes back to `next`,
 * `revoked` is final, `retired` may only be revoked. Same-state is a no-op.
 */
const TRANSITIONS: Record<KeyState, readonly KeyState[]> = {
  next: ['active', 'retiring', 'retired', 'revoked'],
  active: ['retiring', 'retired', 'revoked'],
  retiring: ['active', 'retired', 'revoked'],
  retired: ['revoked'],
  revoked: [],
};

/** Throws ERR_INVALID_ARGUMENT unless a key may move from `from` to `to`. */
export function checkTransition(kid: string, from: KeyState, to: KeyState): void {
  if (from === to) return;
  if (!TRANSITIONS[from]?.includes(to)) {
    throw mayflyError('ERR_INVALID_ARGUMENT', `key ${kid} cannot move from ${from} to ${to}`, { kid, from, to });
  }
}

/** States in which a key may still sign. Retired and revoked keys are unpublished: a token they signed would not verify anywhere. */
export function canSign(state: KeyState): boolean {
  return state !== 'retired' && state !== 'revoked';
}

/**
 * A local Signer over a cached private KeyObject. `currentState` is read at
 * every signature so a key revoked after the signer was handed out refuses
 * to sign (fail closed).
 */
export function localSigner(kid: string, alg: SigningAlg, privateKey: KeyObject, currentState: () => KeyState | undefined): Signer {
  return {
    kid,
    alg,
    sign(signingInput: Buffer): Buffer {
      const state = currentState();
      if (state === undefined || !canSign(state)) {
        throw mayflyError('ERR_KEYSTORE', `key ${kid} is ${state ?? 'no longer loaded'} and can no longer sign`, { kid });
      }
      return rawSign(alg, signingInput, privateKey);
    },
  };
}

/** A copy of a key's info that callers may change without touching the store's own record. */
export function copyInfo(i: KeyInfo): KeyInfo {
  return { ...i, publicJwk: { ...i.publicJwk } };
}
