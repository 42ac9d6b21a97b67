/**
 * RFC 8693 token exchange at POST /oauth2/token: a subject token (JWT-SVID,
 * OIDC token, task token) for a task-scoped Mayfly token. This parses the
 * form, authenticates the subject token, and calls the exchange use-case.
 */
import type { FastifyInstance } from 'fastify';
import { mayflyError } from '../../../core/errors.js';
import * as v from '../../../service/validate.js';
import type { ExchangedToken } from '../../../service/broker.js';
import { isFormBody, refuseNonFormBody, type RouteKit } from '../kit.js';

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt';
const TOKEN_TYPE_ID_TOKEN = 'urn:ietf:params:oauth:token-type:id_token';
const TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
const SUBJECT_TOKEN_TYPES = new Set([TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS]);
const ISSUED_TOKEN_TYPES = new Set([TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT]);

type Form = Record<string, unknown>;

/** What fastify sends for a JSON object, kept for the body this route writes itself. */
const JSON_TYPE = 'application/json; charset=utf-8';

/**
 * The RFC 8693 §2.2.1 response, as JSON.stringify would write the object
 * {access_token, issued_token_type, token_type, expires_in, scope,
 * mayfly_task_id[, mayfly_task_expires_at]} (same members, same order, same
 * bytes), without building that object and handing it to the serializer.
 */
export function tokenResponse(issued: ExchangedToken, expiresIn: number): string {
  let out = `{"access_token":${JSON.stringify(issued.token)},"issued_token_type":"${TOKEN_TYPE_ACCESS}","token_type":"Bearer","expires_in":${expiresIn},"scope":${JSON.stringify(issued.scopes.join(' '))},"mayfly_task_id":${JSON.stringify(issued.taskId)}`;
  if (issued.taskExpiresAt) out += `,"mayfly_task_expires_at":${Math.floor(issued.taskExpiresAt / 1000)}`;
  return `${out}}`;
}

/** A form parameter that may appear at most once. */
function one(form: Form, k: string): string | undefined {
  const val = form[k];
  if (Array.isArray(val)) throw mayflyError('ERR_INVALID_ARGUMENT', `parameter ${k} must appear once`, { field: k });
  return typeof val === 'string' && val !== '' ? val : undefined;
}

/** The RFC 8693 request, checked as far as the protocol goes; the use-case validates the rest. */
function parseExchangeForm(form: Form) {
  const subjectToken = one(form, 'subject_token');
  const subjectType = one(form, 'subject_token_type');
  if (!subjectToken) throw mayflyError('ERR_INVALID_ARGUMENT', 'subject_token is required', { field: 'subject_token' });
  if (!subjectType) throw mayflyError('ERR_INVALID_ARGUMENT', 'subject_token_type is required', { field: 'subject_token_type' });
  if (!SUBJECT_TOKEN_TYPES.has(subjectType)) {
    throw mayflyError('ERR_INVALID_ARGUMENT', `subject_token_type ${subjectType} is not supported (use ${TOKEN_TYPE_JWT} or ${TOKEN_TYPE_ID_TOKEN})`, { field: 'subject_token_type' });
  }
  if (form['actor_token'] !== undefined) throw mayflyError('ERR_INVALID_ARGUMENT', 'actor_token is not supported; use delegated tasks', { field: 'actor_token' });
  const requestedType = one(form, 'requested_token_type');
  if (requestedType && !ISSUED_TOKEN_TYPES.has(requestedType)) {
    throw mayflyError('ERR_INVALID_ARGUMENT', `requested_token_type ${requestedType} is not supported`, { field: 'requested_token_type' });
  }
  const audience = one(form, 'audience') ?? one(form, 'resource');
  if (!audience) throw mayflyError('ERR_AUDIENCE_INVALID', 'audience or resource is required', { field: 'audience' });
  const scopes = v.scopeString(one(form, 'scope'));
  const ttlSeconds = v.wholeSeconds('requested_lifetime', one(form, 'requested_lifetime') ?? one(form, 'mayfly_ttl'));
  const taskTtlSeconds = v.wholeSeconds('mayfly_task_ttl', one(form, 'mayfly_task_ttl'));
  const taskId = one(form, 'mayfly_task_id') ?? one(form, 'task_id');
  const purpose = one(form, 'mayfly_purpose') ?? one(form, 'purpose');
  return { subjectToken, params: { taskId, audience, scopes, ttlSeconds, taskTtlSeconds, purpose } };
}

export function registerTokenExchangeRoute(app: FastifyInstance, kit: RouteKit): void {
  const { deps } = kit;
  // RFC 6749 §3.2: the token endpoint takes POST only; say so instead of a 404.
  app.get('/oauth2/token', async (_req, reply) =>
    reply.code(405).header('allow', 'POST').header('cache-control', 'no-store').send({ error: 'invalid_request', error_description: 'use POST with an application/x-www-form-urlencoded body', mayfly_code: 'ERR_INVALID_ARGUMENT' }),
  );
  // The body type is checked first thing in the handler (as formBodyOnly does for the other OAuth routes, without a hook round on the hot path).
  app.post('/oauth2/token', async (req, reply) => {
    if (!isFormBody(req)) return refuseNonFormBody(reply);
    const route = 'token';
    const form = (req.body ?? {}) as Form;
    try {
      if (one(form, 'grant_type') !== TOKEN_EXCHANGE_GRANT) {
        return reply.code(400).header('cache-control', 'no-store').send({ error: 'unsupported_grant_type', error_description: `grant_type must be ${TOKEN_EXCHANGE_GRANT}` });
      }
      const { subjectToken, params } = parseExchangeForm(form);
      // A certificate-bound task token as subject comes with its certificate on this connection (RFC 8705).
      const ctx = await deps.authentication.subject(subjectToken, { requestId: req.id, peer: kit.peer(req), method: route }, kit.presented(req));
      const issued = await deps.broker.exchange(ctx, params);
      return reply
        .header('cache-control', 'no-store')
        .header('pragma', 'no-cache')
        .type(JSON_TYPE)
        .send(tokenResponse(issued, Math.max(0, Math.round((issued.expiresAt - deps.clock.now()) / 1000))));
    } catch (e) {
      return kit.fail(reply, route, req, e, 'oauth');
    }
  });
}
