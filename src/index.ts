/**
 * The `mayfly` package entry: the two SDKs and the shared error type. The
 * broker itself runs from the `mayfly` command; `mayfly/client` and
 * `mayfly/verifier` are the narrower entry points.
 */
export * from './client/index.js';
export { MayflyVerifier, certificateThumbprint, actorsOf, type MayflyVerifierOptions, type VerifyOptions, type VerifierStats, type VerifierEvent, type MayflyClaims } from './verifier/index.js';
export { ERROR_CODES, type ErrorKind } from './core/errors.js';
export { DECISION_CONTRACT_VERSION, type DecisionInput, type DecisionOutput } from './core/decision.js';
