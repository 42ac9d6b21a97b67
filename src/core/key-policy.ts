/**
 * The one key-strength policy for every public key Mayfly accepts: X.509-SVID
 * leaf, intermediate and root keys, JWT-SVID bundle keys, OIDC issuer JWKS
 * keys and the broker's own token keys. Pure: a KeyObject in, a verdict out.
 *
 * Accepted: RSA (PKCS#1 v1.5 or PSS) with a modulus of 2048 to 16384 bits and
 * an odd public exponent of at least 3; EC on P-256, P-384 or P-521; Ed25519
 * and Ed448. Everything else (RSA below 2048, other curves, DSA, DH, X25519)
 * is refused with ERR_KEY_WEAK. The upper RSA bound keeps a hostile key from
 * making each verification arbitrarily slow.
 */
import type { KeyObject } from 'node:crypto';
import { mayflyError } from './errors.js';

/** The policy's figures, for messages and docs. */
export const KEY_POLICY = {
  minRsaBits: 2048,
  maxRsaBits: 16384,
  /** Node's names of the accepted EC curves, with their JOSE names. */
  ecCurves: { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' } as Readonly<Record<string, string>>,
  edwards: ['ed25519', 'ed448'] as readonly string[],
} as const;

/** Why `key` falls short of the policy, or null when it is acceptable. */
export function keyStrengthProblem(key: KeyObject): string | null {
  if (key.type === 'secret') return 'symmetric keys are not accepted';
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  switch (t) {
    case 'rsa':
    case 'rsa-pss': {
      const bits = d.modulusLength ?? 0;
      if (bits < KEY_POLICY.minRsaBits) return `RSA key of ${bits} bits; at least ${KEY_POLICY.minRsaBits} are required`;
      if (bits > KEY_POLICY.maxRsaBits) return `RSA key of ${bits} bits; at most ${KEY_POLICY.maxRsaBits} are accepted`;
      const e = d.publicExponent;
      if (e !== undefined && (e < 3n || e % 2n === 0n)) return `RSA public exponent ${e} is not an odd number of at least 3`;
      return null;
    }
    case 'ec': {
      const curve = d.namedCurve;
      if (curve !== undefined && KEY_POLICY.ecCurves[curve] !== undefined) return null;
      return `EC key on curve ${curve ?? 'unknown'}; only P-256, P-384 and P-521 are accepted`;
    }
    default:
      if (t !== undefined && KEY_POLICY.edwards.includes(t)) return null;
      return `${t ?? 'unknown'} keys are not accepted; use RSA (2048+ bits), EC P-256/P-384/P-521 or Ed25519`;
  }
}

/** Throws ERR_KEY_WEAK, naming `role` (e.g. "leaf certificate"), when `key` falls short of the policy. */
export function assertKeyStrength(key: KeyObject, role: string, details?: Record<string, string>): void {
  const problem = keyStrengthProblem(key);
  if (problem !== null) throw mayflyError('ERR_KEY_WEAK', `${role}: ${problem}`, { ...details, role });
}
