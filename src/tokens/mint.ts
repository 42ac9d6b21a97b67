/**
 * Minting: sign the claims with the active key, then check the result with
 * the relying parties' code path before anyone sees it (fail closed).
 *
 * The signature is verified in full on the first token of each signer (per
 * signer object and public key: a rotation, a reload or a new key store
 * handle starts over); every token, the first included, has its header and
 * claims decoded back from the compact form and validated. What skipping
 * the per-token signature check gives up is written down in docs/durability.md
 * ("Mint, then verify").
 */
import type { KeyObject } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import type { Signer } from '../core/ports.js';
import { ACCESS_TOKEN_TYP, validateClaims, type MayflyClaims } from './claims.js';
import { decodeJws, signingInputOf } from './jws.js';
import { verifyMayflyToken } from './verify.js';

/** Signers whose signature has verified under this public key at least once in this process. */
const verifiedSigners = new WeakMap<Signer, KeyObject>();

/** Signs `claims` with `signer` and checks the token against `publicKey` (signature: once per signer and key). */
export function mintToken(claims: MayflyClaims, signer: Signer, publicKey: KeyObject, now: number): string {
  const signingInput = signingInputOf({ alg: signer.alg, typ: ACCESS_TOKEN_TYP, kid: signer.kid }, claims);
  const token = `${signingInput}.${signer.sign(Buffer.from(signingInput)).toString('base64url')}`;
  const options = { issuer: claims.iss, audience: claims.aud, now };
  try {
    if (verifiedSigners.get(signer) === publicKey) {
      checkMintedClaims(token, signer.kid, options);
    } else {
      verifyMayflyToken(token, (kid) => (kid === signer.kid ? publicKey : undefined), options);
      verifiedSigners.set(signer, publicKey);
    }
  } catch (cause) {
    throw mayflyError('ERR_INTERNAL', 'minted token failed self-verification; not returned', undefined, cause);
  }
  return token;
}

/** Everything verifyMayflyToken checks except the signature: the compact form decodes, header typ and kid, claims. */
function checkMintedClaims(token: string, kid: string, options: { issuer: string; audience: string; now: number }): void {
  const jws = decodeJws(token);
  if (jws.header.typ !== ACCESS_TOKEN_TYP) throw mayflyError('ERR_JWT_INVALID', `token typ must be ${ACCESS_TOKEN_TYP}`);
  if (jws.header.kid !== kid) throw mayflyError('ERR_JWT_INVALID', 'token header kid is not the signer\'s');
  if (jws.signature.length === 0) throw mayflyError('ERR_JWT_SIGNATURE', 'signature verification failed');
  validateClaims(jws.payload, options);
}
