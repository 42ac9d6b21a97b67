/**
 * Minting: sign the claims with the active key, then verify the result with
 * the relying parties' code path before anyone sees it (fail closed).
 */
import type { KeyObject } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import type { Signer } from '../core/ports.js';
import { ACCESS_TOKEN_TYP, type MayflyClaims } from './claims.js';
import { signingInputOf } from './jws.js';
import { verifyMayflyToken } from './verify.js';

/** Signs `claims` with `signer` and verifies the token with `publicKey`. */
export function mintToken(claims: MayflyClaims, signer: Signer, publicKey: KeyObject, now: number): string {
  const signingInput = signingInputOf({ alg: signer.alg, typ: ACCESS_TOKEN_TYP, kid: signer.kid }, claims);
  const token = `${signingInput}.${signer.sign(Buffer.from(signingInput)).toString('base64url')}`;
  try {
    verifyMayflyToken(token, (kid) => (kid === signer.kid ? publicKey : undefined), {
      issuer: claims.iss,
      audience: claims.aud,
      now,
    });
  } catch (cause) {
    throw mayflyError('ERR_INTERNAL', 'minted token failed self-verification; not returned', undefined, cause);
  }
  return token;
}
