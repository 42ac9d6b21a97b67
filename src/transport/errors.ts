/**
 * The one place where MayflyError codes become wire errors: gRPC status codes
 * and OAuth error responses (RFC 6749 §5.2, RFC 8693 §2.2.2). Internal errors
 * never expose their message or cause.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { MayflyError, type ErrorCode, type ErrorKind } from '../core/errors.js';

const GRPC_BY_KIND: Record<ErrorKind, GrpcStatus> = {
  invalid_argument: GrpcStatus.INVALID_ARGUMENT,
  unauthenticated: GrpcStatus.UNAUTHENTICATED,
  permission_denied: GrpcStatus.PERMISSION_DENIED,
  not_found: GrpcStatus.NOT_FOUND,
  failed_precondition: GrpcStatus.FAILED_PRECONDITION,
  resource_exhausted: GrpcStatus.RESOURCE_EXHAUSTED,
  unavailable: GrpcStatus.UNAVAILABLE,
  internal: GrpcStatus.INTERNAL,
};

/** Message safe to send: internal errors are generic. */
export function publicMessage(err: MayflyError): string {
  return err.kind === 'internal' ? 'internal error' : err.message;
}

/** A gRPC ServiceError-shaped object for a MayflyError; the stable code travels in `mayfly-error-code` metadata. */
export function toGrpcStatus(e: unknown): { code: GrpcStatus; details: string; mayflyCode: ErrorCode } {
  const err = MayflyError.from(e);
  return { code: GRPC_BY_KIND[err.kind], details: `${err.code}: ${publicMessage(err)}`, mayflyCode: err.code };
}

export type OAuthErrorCode =
  | 'invalid_request'
  | 'invalid_client'
  | 'invalid_grant'
  | 'unauthorized_client'
  | 'unsupported_grant_type'
  | 'invalid_scope'
  | 'invalid_target'
  | 'invalid_token'
  | 'access_denied'
  | 'server_error'
  | 'temporarily_unavailable';

const OAUTH_BY_CODE: Partial<Record<ErrorCode, OAuthErrorCode>> = {
  ERR_AUDIENCE_INVALID: 'invalid_target',
  ERR_AUDIENCE_DENIED: 'invalid_target',
  ERR_SCOPE_INVALID: 'invalid_scope',
  ERR_SCOPE_DENIED: 'invalid_scope',
  ERR_NOT_AUTHORIZED_CLIENT: 'unauthorized_client',
  ERR_POLICY_DENIED: 'unauthorized_client',
  ERR_POLICY_ERROR: 'unauthorized_client',
  ERR_DELEGATION_DENIED: 'unauthorized_client',
  ERR_NOT_TASK_OWNER: 'invalid_grant',
  ERR_TASK_NOT_FOUND: 'invalid_grant',
  ERR_TASK_NOT_ACTIVE: 'invalid_grant',
};

const OAUTH_BY_KIND: Record<ErrorKind, OAuthErrorCode> = {
  invalid_argument: 'invalid_request',
  unauthenticated: 'invalid_grant',
  permission_denied: 'unauthorized_client',
  not_found: 'invalid_grant',
  failed_precondition: 'invalid_grant',
  resource_exhausted: 'temporarily_unavailable',
  unavailable: 'temporarily_unavailable',
  internal: 'server_error',
};

/** OAuth error body and HTTP status for a MayflyError. */
export function toOAuthError(e: unknown): { status: number; body: { error: OAuthErrorCode; error_description: string; mayfly_code: ErrorCode } } {
  const err = MayflyError.from(e);
  const error = OAUTH_BY_CODE[err.code] ?? OAUTH_BY_KIND[err.kind];
  const status =
    error === 'server_error' ? 500
    : error === 'temporarily_unavailable' ? (err.kind === 'resource_exhausted' ? 429 : 503)
    : error === 'invalid_client' ? 401
    : 400;
  return { status, body: { error, error_description: publicMessage(err), mayfly_code: err.code } };
}

/** HTTP status for non-OAuth JSON endpoints. */
export function toHttpStatus(e: unknown): number {
  const err = MayflyError.from(e);
  switch (err.kind) {
    case 'invalid_argument':
      return 400;
    case 'unauthenticated':
      return 401;
    case 'permission_denied':
      return 403;
    case 'not_found':
      return 404;
    case 'failed_precondition':
      return 409;
    case 'resource_exhausted':
      return 429;
    case 'unavailable':
      return 503;
    default:
      return 500;
  }
}

/** The error of non-OAuth JSON endpoints: HTTP status and body. The revocation feed's closing `error` event carries the same body. */
export function toJsonError(e: unknown): { status: number; body: { error: ErrorCode; message: string } } {
  const err = MayflyError.from(e);
  return { status: toHttpStatus(err), body: { error: err.code, message: publicMessage(err) } };
}
