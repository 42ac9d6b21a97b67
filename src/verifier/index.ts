/**
 * Mayfly verifier SDK for relying parties (`mayfly/verifier`).
 *
 *   const v = new MayflyVerifier({ issuer, audience: 'demo-api', jwks: { url, ca }, feed: { client, subscriberId: 'api-1' } });
 *   await v.start();
 *   const claims = await v.verify(bearer, { requiredScopes: ['read'], clientCertDer });
 */
export {
  MayflyVerifier,
  certificateThumbprint,
  type MayflyVerifierOptions,
  type VerifyOptions,
  type VerifierStats,
  type VerifierEvent,
  type VerifierBrokerClient,
  type MisuseKind,
} from './verifier.js';
export { MayflyError, isMayflyError, type ErrorCode } from '../core/errors.js';
export type { MayflyClaims, ActorClaim } from '../tokens/claims.js';
export { actorsOf } from '../tokens/claims.js';
