/**
 * The one error type of Mayfly. Every failure that can reach a caller is a
 * MayflyError with a code from the closed set below; the transport layer maps
 * the code's `kind` to a gRPC status and an OAuth error in one place
 * (src/transport/errors.ts). Messages are written for the operator or caller
 * to act on and never carry secrets or internals.
 */

/** Broad classes that decide the wire status. */
export type ErrorKind =
  | 'invalid_argument'
  | 'unauthenticated'
  | 'permission_denied'
  | 'not_found'
  | 'failed_precondition'
  | 'resource_exhausted'
  | 'unavailable'
  | 'internal';

/** Closed set of stable error codes, each bound to its kind. */
export const ERROR_CODES = {
  // Bad input from the caller.
  ERR_INVALID_ARGUMENT: 'invalid_argument',
  ERR_TTL_INVALID: 'invalid_argument',
  ERR_AUDIENCE_INVALID: 'invalid_argument',
  ERR_SCOPE_INVALID: 'invalid_argument',
  ERR_TOO_LARGE: 'invalid_argument',
  // Command-line and operator input (the CLI's one error line).
  ERR_USAGE: 'invalid_argument',
  ERR_FILE_NOT_FOUND: 'invalid_argument',
  ERR_FILE_ACCESS: 'invalid_argument',
  ERR_PEM_INVALID: 'invalid_argument',
  ERR_TLS_KEY_MISMATCH: 'invalid_argument',
  ERR_LISTEN_ADDRESS_INVALID: 'invalid_argument',
  ERR_ADDRESS_IN_USE: 'unavailable',
  // Who is asking could not be established.
  ERR_UNAUTHENTICATED: 'unauthenticated',
  ERR_SPIFFE_ID_INVALID: 'unauthenticated',
  ERR_SVID_INVALID: 'unauthenticated',
  ERR_JWT_INVALID: 'unauthenticated',
  ERR_JWT_EXPIRED: 'unauthenticated',
  ERR_JWT_SIGNATURE: 'unauthenticated',
  ERR_ISSUER_UNKNOWN: 'unauthenticated',
  ERR_KEY_UNKNOWN: 'unauthenticated',
  /** A presented or fetched key is below the key-strength policy (core/key-policy.ts). */
  ERR_KEY_WEAK: 'unauthenticated',
  // Authenticated but not allowed.
  ERR_POLICY_DENIED: 'permission_denied',
  ERR_POLICY_ERROR: 'permission_denied',
  ERR_NOT_TASK_OWNER: 'permission_denied',
  ERR_SCOPE_DENIED: 'permission_denied',
  ERR_AUDIENCE_DENIED: 'permission_denied',
  ERR_DELEGATION_DENIED: 'permission_denied',
  ERR_NOT_AUTHORIZED_CLIENT: 'permission_denied',
  // State.
  ERR_TASK_NOT_FOUND: 'not_found',
  ERR_KEY_NOT_FOUND: 'not_found',
  /** No HTTP route at that path. */
  ERR_ROUTE_NOT_FOUND: 'not_found',
  ERR_TASK_NOT_ACTIVE: 'failed_precondition',
  ERR_TOKEN_REVOKED: 'failed_precondition',
  ERR_TOKEN_REPLAYED: 'failed_precondition',
  ERR_RATE_LIMITED: 'resource_exhausted',
  /** A revocation-feed subscriber fell too far behind (its stream held more than feed.max_buffered_bytes): its stream is ended; it resumes from its cursor. */
  ERR_FEED_SUBSCRIBER_SLOW: 'resource_exhausted',
  // Operator-side problems.
  ERR_CONFIG_INVALID: 'internal',
  ERR_KEYSTORE: 'internal',
  ERR_STORE: 'internal',
  ERR_UNAVAILABLE: 'unavailable',
  ERR_INTERNAL: 'internal',
} as const satisfies Record<string, ErrorKind>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Structured, safe-to-expose details (field names, rule names, claim names; never secrets). */
export type ErrorDetails = Record<string, string | number | boolean | string[] | undefined>;

export class MayflyError extends Error {
  readonly code: ErrorCode;
  readonly details: ErrorDetails | undefined;
  override readonly cause: unknown;

  constructor(code: ErrorCode, message: string, options: { details?: ErrorDetails; cause?: unknown } = {}) {
    super(message);
    this.name = 'MayflyError';
    this.code = code;
    this.details = options.details;
    this.cause = options.cause;
  }

  get kind(): ErrorKind {
    return ERROR_CODES[this.code];
  }

  /** Turns anything thrown into a MayflyError; unknown throwables become ERR_INTERNAL with a generic message. */
  static from(err: unknown): MayflyError {
    if (err instanceof MayflyError) return err;
    return new MayflyError('ERR_INTERNAL', 'internal error', { cause: err });
  }
}

/** Shorthand constructor used across the code base. */
export function mayflyError(code: ErrorCode, message: string, details?: ErrorDetails, cause?: unknown): MayflyError {
  return new MayflyError(code, message, { details, cause });
}

/**
 * A refusal that is a verdict on its input (a revoked token), not a fault,
 * built without a stack trace: capturing one costs about 10 µs, several times
 * the check that reached the verdict, and a verifier reaches it for every
 * caller still holding a token right after its revocation. The message and
 * details say everything the stack would not.
 */
export function verdictError(code: ErrorCode, message: string, details?: ErrorDetails): MayflyError {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new MayflyError(code, message, { details });
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** True if `v` is a MayflyError with the given code. */
export function isMayflyError(v: unknown, code?: ErrorCode): v is MayflyError {
  return v instanceof MayflyError && (code === undefined || v.code === code);
}
