/**
 * HTTP transport on fastify, same TLS certificate as gRPC: JWKS and discovery
 * (RFC 8414 / OIDC), RFC 8693 token exchange, RFC 7662 introspection, RFC
 * 7009 revocation, task completion with a task token, the revocation feed as
 * server-sent events, health and Prometheus metrics.
 */
import { parse as parseQuery } from 'node:querystring';
import type { TLSSocket } from 'node:tls';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { mayflyError, MayflyError } from '../../core/errors.js';
import type { AuditSink, Clock } from '../../core/ports.js';
import type { Identity } from '../../core/types.js';
import type { BrokerService } from '../../service/broker.js';
import { tokenHash } from '../../tokens/hashes.js';
import type { CallContext } from '../../service/deps.js';
import type { RevocationFeed } from '../../service/feed.js';
import * as v from '../../service/validate.js';
import type { KeyManager } from '../../tokens/keys.js';
import { publicMessage, toHttpStatus, toOAuthError } from '../errors.js';
import { bearerFrom, peerChain, type CallerAuthenticator, type TlsMaterial } from '../tls.js';

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt';
const TOKEN_TYPE_ID_TOKEN = 'urn:ietf:params:oauth:token-type:id_token';
const TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';

export interface HealthReport {
  status: 'ok' | 'degraded' | 'failing';
  checks: Record<string, { ok: boolean; detail?: string }>;
}

export interface HttpServerDeps {
  broker: BrokerService;
  feed: RevocationFeed;
  keys: KeyManager;
  auth: CallerAuthenticator;
  audit: AuditSink;
  clock: Clock;
  tls: TlsMaterial;
  issuer: string;
  /** Cache-Control max-age of the JWKS; the key lifecycle pre-publishes for at least this long. */
  jwksMaxAgeSeconds: number;
  requestId: () => string;
  health: () => HealthReport;
  metrics?: { contentType: string; render(): Promise<string> };
  onJwksFetch?: () => void;
  onError?: (route: string, err: MayflyError, requestId: string) => void;
  feedSubscribers?: string[];
  feedHeartbeatMs?: number;
  /** Identities allowed on /admin (exact ids). */
  admins?: string[];
  /** Emergency key revocation: revokes the key, its tokens, and publishes the change. */
  revokeKey?: (kid: string, ctx: CallContext) => Promise<{ revokedTokens: number; activeKid: string }>;
}

export interface HttpListener {
  address: { host: string; port: number };
  app: FastifyInstance;
  close(): Promise<void>;
}

const identityCache = new WeakMap<TLSSocket, { identity?: Identity; error?: MayflyError; at: number }>();

/** Builds the fastify app (exported for in-process `inject` tests). */
export function buildHttpApp(deps: HttpServerDeps): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 64 * 1024,
    https: {
      cert: deps.tls.cert,
      key: deps.tls.key,
      ...(deps.tls.clientCa && deps.tls.clientCa.length > 0 ? { ca: deps.tls.clientCa } : {}),
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
    },
    genReqId: () => deps.requestId(),
  });

  // OAuth endpoints take application/x-www-form-urlencoded (RFC 6749 §4.1.3); no plugin needed for that.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseQuery(body as string));
    } catch {
      done(mayflyError('ERR_INVALID_ARGUMENT', 'malformed form body'), undefined);
    }
  });

  const base = deps.issuer.replace(/\/$/, '');

  app.addHook('preHandler', async (req, reply) => {
    if (req.method === 'POST' && req.url.startsWith('/oauth2/')) {
      const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== 'application/x-www-form-urlencoded') {
        return reply.code(400).header('cache-control', 'no-store').send({ error: 'invalid_request', error_description: 'OAuth endpoints take application/x-www-form-urlencoded bodies (RFC 6749 §3.2)', mayfly_code: 'ERR_INVALID_ARGUMENT' });
      }
    }
  });

  /** Authenticates the caller by client certificate, else bearer token; audits failures. */
  const authenticate = async (req: FastifyRequest, route: string): Promise<CallContext> => {
    const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    try {
      const socket = req.raw.socket as TLSSocket;
      const now = deps.clock.now();
      if (typeof socket.getPeerCertificate === 'function') {
        let cached = identityCache.get(socket);
        if (!cached || now - cached.at > 30_000 || (cached.identity?.credentialExpiresAt ?? Infinity) <= now) {
          const chain = peerChain(socket);
          cached = { at: now };
          if (chain.length > 0) {
            try {
              cached.identity = deps.auth.fromCertificate(chain);
            } catch (e) {
              cached.error = MayflyError.from(e);
            }
          }
          identityCache.set(socket, cached);
        }
        if (cached.error) throw cached.error;
        if (cached.identity) return { identity: cached.identity, requestId: req.id, peer };
      }
      const token = bearerFrom(req.headers.authorization);
      if (!token) throw mayflyError('ERR_UNAUTHENTICATED', 'no client certificate or bearer token was presented');
      return { identity: await deps.auth.fromBearer(token), requestId: req.id, peer };
    } catch (e) {
      const err = MayflyError.from(e);
      deps.audit.write({ event: 'auth.failure', outcome: 'denied', request_id: req.id, peer, method: route, code: err.code, reason: err.message });
      throw err;
    }
  };

  const fail = (reply: FastifyReply, route: string, req: FastifyRequest, e: unknown, oauth: boolean, clientAuth = false) => {
    const err = MayflyError.from(e);
    deps.onError?.(route, err, req.id);
    reply.header('cache-control', 'no-store');
    if (oauth && clientAuth && err.kind === 'unauthenticated') {
      // RFC 7662 §2.3 / RFC 7009 §2.1 (RFC 6749 §5.2): the caller itself failed to authenticate.
      return reply.code(401).header('www-authenticate', 'Bearer, TLS').send({ error: 'invalid_client', error_description: publicMessage(err), mayfly_code: err.code });
    }
    if (oauth) {
      const o = toOAuthError(err);
      if (o.status === 401) reply.header('www-authenticate', 'Bearer');
      return reply.code(o.status).send(o.body);
    }
    return reply.code(toHttpStatus(err)).send({ error: err.code, message: publicMessage(err) });
  };

  app.setErrorHandler((error, req, reply) => {
    // Fastify's own rejections (body too large, bad JSON, bad content type) still get a stable code.
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    const code = status === 413 ? 'ERR_TOO_LARGE' : status >= 500 ? 'ERR_INTERNAL' : 'ERR_INVALID_ARGUMENT';
    const message = status >= 500 ? 'internal error' : (error as Error).message;
    if (req.url.startsWith('/oauth2/')) {
      return reply.code(status >= 500 ? 500 : 400).send({ error: status >= 500 ? 'server_error' : 'invalid_request', error_description: message, mayfly_code: code });
    }
    return reply.code(status).send({ error: code, message });
  });

  app.get('/.well-known/jwks.json', async (_req, reply) => {
    deps.onJwksFetch?.();
    const doc = deps.keys.jwks();
    reply.header('cache-control', `public, max-age=${deps.jwksMaxAgeSeconds}`);
    reply.header('etag', `"${doc.version}"`);
    reply.header('content-type', 'application/jwk-set+json');
    return reply.send(doc.json);
  });

  const metadata = () => ({
    issuer: deps.issuer,
    jwks_uri: `${base}/.well-known/jwks.json`,
    token_endpoint: `${base}/oauth2/token`,
    introspection_endpoint: `${base}/oauth2/introspect`,
    revocation_endpoint: `${base}/oauth2/revoke`,
    grant_types_supported: [TOKEN_EXCHANGE_GRANT],
    token_endpoint_auth_methods_supported: ['none', 'tls_client_auth'],
    introspection_endpoint_auth_methods_supported: ['tls_client_auth', 'bearer'],
    revocation_endpoint_auth_methods_supported: ['tls_client_auth', 'bearer'],
    response_types_supported: ['token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['ES256', 'EdDSA', 'RS256'],
    token_endpoint_auth_signing_alg_values_supported: ['ES256', 'EdDSA', 'RS256'],
    tls_client_certificate_bound_access_tokens: true,
    mayfly_task_completion_endpoint: `${base}/v1/tasks/complete`,
    mayfly_revocation_feed_endpoint: `${base}/v1/revocations`,
  });
  app.get('/.well-known/openid-configuration', async (_req, reply) => reply.header('cache-control', 'public, max-age=300').send(metadata()));
  app.get('/.well-known/oauth-authorization-server', async (_req, reply) => reply.header('cache-control', 'public, max-age=300').send(metadata()));

  app.get('/healthz', async (_req, reply) => {
    const h = deps.health();
    return reply.code(h.status === 'failing' ? 503 : 200).send(h);
  });

  if (deps.metrics) {
    const m = deps.metrics;
    app.get('/metrics', async (_req, reply) => reply.header('content-type', m.contentType).send(await m.render()));
  }

  // RFC 8693 token exchange: a subject token (JWT-SVID, OIDC token) for a task-scoped Mayfly token.
  app.post('/oauth2/token', async (req, reply) => {
    const route = 'token';
    const body = (req.body ?? {}) as Record<string, unknown>;
    try {
      const one = (k: string): string | undefined => {
        const val = body[k];
        if (Array.isArray(val)) throw mayflyError('ERR_INVALID_ARGUMENT', `parameter ${k} must appear once`, { field: k });
        return typeof val === 'string' && val !== '' ? val : undefined;
      };
      const grant = one('grant_type');
      if (grant !== TOKEN_EXCHANGE_GRANT) {
        return reply.code(400).header('cache-control', 'no-store').send({ error: 'unsupported_grant_type', error_description: `grant_type must be ${TOKEN_EXCHANGE_GRANT}` });
      }
      const subjectToken = one('subject_token');
      const subjectType = one('subject_token_type');
      if (!subjectToken) throw mayflyError('ERR_INVALID_ARGUMENT', 'subject_token is required', { field: 'subject_token' });
      if (!subjectType) throw mayflyError('ERR_INVALID_ARGUMENT', 'subject_token_type is required', { field: 'subject_token_type' });
      if (subjectType !== TOKEN_TYPE_JWT && subjectType !== TOKEN_TYPE_ID_TOKEN && subjectType !== TOKEN_TYPE_ACCESS) {
        throw mayflyError('ERR_INVALID_ARGUMENT', `subject_token_type ${subjectType} is not supported (use ${TOKEN_TYPE_JWT} or ${TOKEN_TYPE_ID_TOKEN})`, { field: 'subject_token_type' });
      }
      if (body['actor_token'] !== undefined) throw mayflyError('ERR_INVALID_ARGUMENT', 'actor_token is not supported; use delegated tasks', { field: 'actor_token' });
      const requestedType = one('requested_token_type');
      if (requestedType && requestedType !== TOKEN_TYPE_ACCESS && requestedType !== TOKEN_TYPE_JWT) {
        throw mayflyError('ERR_INVALID_ARGUMENT', `requested_token_type ${requestedType} is not supported`, { field: 'requested_token_type' });
      }
      const audience = one('audience') ?? one('resource');
      if (!audience) throw mayflyError('ERR_AUDIENCE_INVALID', 'audience or resource is required', { field: 'audience' });
      const scopes = v.scopeString(one('scope'));
      const ttl = one('requested_lifetime') ?? one('mayfly_ttl');
      const ttlSeconds = ttl === undefined ? undefined : /^\d{1,9}$/.test(ttl) ? Number(ttl) : NaN;
      if (Number.isNaN(ttlSeconds)) throw mayflyError('ERR_TTL_INVALID', 'requested_lifetime must be whole seconds', { field: 'requested_lifetime' });
      const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
      let identity: Identity;
      try {
        identity = await deps.auth.fromBearer(subjectToken);
      } catch (e) {
        const err = MayflyError.from(e);
        deps.audit.write({ event: 'auth.failure', outcome: 'denied', request_id: req.id, peer, method: route, code: err.code, reason: err.message, token_sha256: tokenHash(subjectToken) });
        throw err.kind === 'invalid_argument' ? mayflyError('ERR_JWT_INVALID', err.message) : err;
      }
      const ctx: CallContext = { identity, requestId: req.id, peer };
      let taskId = one('mayfly_task_id') ?? one('task_id');
      let expiresAt: number | undefined;
      if (!taskId) {
        const purpose = one('mayfly_purpose') ?? one('purpose') ?? `token exchange for ${audience}`;
        const task = await deps.broker.beginTask(ctx, { purpose, ttlSeconds: taskTtl(one('mayfly_task_ttl'), ttlSeconds), labels: { via: 'token-exchange' } });
        taskId = task.id;
        expiresAt = task.expiresAt;
      }
      const issued = await deps.broker.issueToken(ctx, { taskId, audience, scopes, ttlSeconds, action: 'exchange' });
      reply.header('cache-control', 'no-store').header('pragma', 'no-cache');
      return reply.send({
        access_token: issued.token,
        issued_token_type: TOKEN_TYPE_ACCESS,
        token_type: 'Bearer',
        expires_in: Math.max(0, Math.round((issued.expiresAt - deps.clock.now()) / 1000)),
        scope: issued.scopes.join(' '),
        mayfly_task_id: issued.taskId,
        ...(expiresAt ? { mayfly_task_expires_at: Math.floor(expiresAt / 1000) } : {}),
      });
    } catch (e) {
      return fail(reply, route, req, e, true);
    }
  });

  // RFC 7662. Callers authenticate (mTLS or bearer); a task-token holder sees only its own task's tokens.
  app.post('/oauth2/introspect', async (req, reply) => {
    let ctx: CallContext;
    try {
      ctx = await authenticate(req, 'introspect');
    } catch (e) {
      return fail(reply, 'introspect', req, e, true, true);
    }
    try {
      const token = formField(req.body, 'token');
      const res = await deps.broker.introspect(ctx, { token });
      reply.header('cache-control', 'no-store');
      if (!res.active || !res.claims) return reply.send({ active: false, mayfly_reason: res.reason });
      if (ctx.identity.method === 'task-token' && ctx.identity.claims['tid'] !== res.claims.tid) return reply.send({ active: false, mayfly_reason: 'not_visible' });
      return reply.send({ active: true, ...res.claims, token_type: 'Bearer' });
    } catch (e) {
      return fail(reply, 'introspect', req, e, true);
    }
  });

  // RFC 7009: 200 for unknown tokens too.
  app.post('/oauth2/revoke', async (req, reply) => {
    let ctx: CallContext;
    try {
      ctx = await authenticate(req, 'revoke');
    } catch (e) {
      return fail(reply, 'revoke', req, e, true, true);
    }
    try {
      await deps.broker.revokeToken(ctx, { token: formField(req.body, 'token') });
      return reply.header('cache-control', 'no-store').send({});
    } catch (e) {
      return fail(reply, 'revoke', req, e, true);
    }
  });

  // Completes the caller's task: with a task token as bearer, that token's task; over mTLS, the named task.
  app.post('/v1/tasks/complete', async (req, reply) => {
    try {
      const ctx = await authenticate(req, 'tasks.complete');
      const body = (req.body ?? {}) as Record<string, unknown>;
      const named = typeof body['task_id'] === 'string' ? body['task_id'] : undefined;
      const taskId = named ?? (ctx.identity.method === 'task-token' ? (ctx.identity.claims['tid'] as string) : undefined);
      if (!taskId) throw mayflyError('ERR_INVALID_ARGUMENT', 'task_id is required', { field: 'task_id' });
      const res = await deps.broker.completeTask(ctx, { taskId });
      return reply.send({ task_id: taskId, revoked_tokens: res.revokedTokens, task_ids: res.taskIds });
    } catch (e) {
      return fail(reply, 'tasks.complete', req, e, false);
    }
  });

  // The revocation feed as server-sent events; resume with Last-Event-ID or ?cursor=.
  app.get('/v1/revocations', async (req, reply) => {
    let ctx: CallContext;
    try {
      ctx = await authenticate(req, 'revocations');
      const allowed = deps.feedSubscribers ?? [];
      if (allowed.length > 0 && !allowed.includes(ctx.identity.id)) throw mayflyError('ERR_NOT_AUTHORIZED_CLIENT', `${ctx.identity.id} is not allowed to subscribe to the revocation feed`);
    } catch (e) {
      return fail(reply, 'revocations', req, e, false);
    }
    const q = req.query as Record<string, string | undefined>;
    const last = (req.headers['last-event-id'] as string | undefined) ?? q['cursor'] ?? '0';
    const cursor = /^\d{1,15}$/.test(last) ? Number(last) : 0;
    const subscriberId = (q['subscriber_id'] ?? ctx.identity.id).slice(0, 200);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.write(': mayfly revocation feed\n\n');
    deps.audit.write({ event: 'feed.subscribe', outcome: 'success', request_id: req.id, peer: ctx.peer, subscriber_id: subscriberId, cursor, transport: 'sse', identity: { kind: ctx.identity.kind, id: ctx.identity.id } });
    try {
      const sub = await deps.feed.subscribe(
        subscriberId,
        cursor,
        (m) => {
          const id = m.kind === 'heartbeat' ? '' : `id: ${m.cursor}\n`;
          res.write(`${id}event: ${m.kind}\ndata: ${JSON.stringify(m)}\n\n`);
        },
        () => res.end(),
      );
      req.raw.on('close', () => sub.close());
    } catch {
      res.end();
    }
  });

  app.post('/v1/keyset/ack', async (req, reply) => {
    try {
      const ctx = await authenticate(req, 'keyset.ack');
      const body = (req.body ?? {}) as Record<string, unknown>;
      const version = v.text('keyset_version', body['keyset_version'], 64);
      deps.feed.ack(v.text('subscriber_id', body['subscriber_id'], 200, false) || ctx.identity.id, version);
      return reply.send({});
    } catch (e) {
      return fail(reply, 'keyset.ack', req, e, false);
    }
  });

  // Admin: key rotation on demand and emergency revocation (mTLS as a configured admin).
  const admin = async (req: FastifyRequest, route: string): Promise<CallContext> => {
    const ctx = await authenticate(req, route);
    if (!(deps.admins ?? []).includes(ctx.identity.id) || ctx.identity.method === 'task-token') {
      deps.audit.write({ event: 'auth.failure', outcome: 'denied', request_id: req.id, peer: ctx.peer, method: route, code: 'ERR_NOT_AUTHORIZED_CLIENT', identity: { id: ctx.identity.id } });
      throw mayflyError('ERR_NOT_AUTHORIZED_CLIENT', `${ctx.identity.id} is not a configured admin`);
    }
    return ctx;
  };
  app.post('/admin/keys/rotate', async (req, reply) => {
    try {
      const ctx = await admin(req, 'keys.rotate');
      await deps.keys.rotate();
      deps.audit.write({ event: 'key.state', outcome: 'success', request_id: req.id, identity: { id: ctx.identity.id }, action: 'rotate requested' });
      const next = deps.keys.list().find((k) => k.state === 'next');
      return reply.send({ active_kid: deps.keys.active().info.kid, next_kid: next?.kid, promotion_blocked_since: deps.keys.promotionBlockedSince() });
    } catch (e) {
      return fail(reply, 'keys.rotate', req, e, false);
    }
  });
  app.post('/admin/keys/:kid/revoke', async (req, reply) => {
    try {
      const ctx = await admin(req, 'keys.revoke');
      if (!deps.revokeKey) throw mayflyError('ERR_UNAVAILABLE', 'key revocation is not wired');
      const kid = v.text('kid', (req.params as { kid?: string }).kid, 128);
      const r = await deps.revokeKey(kid, ctx);
      return reply.send({ revoked_kid: kid, revoked_tokens: r.revokedTokens, active_kid: r.activeKid });
    } catch (e) {
      return fail(reply, 'keys.revoke', req, e, false);
    }
  });

  return app;
}

function formField(body: unknown, k: string): string {
  const val = (body as Record<string, unknown> | undefined)?.[k];
  if (typeof val !== 'string' || val === '') throw mayflyError('ERR_INVALID_ARGUMENT', `${k} is required`, { field: k });
  return val;
}

function taskTtl(raw: string | undefined, tokenTtl: number | undefined): number | undefined {
  if (raw === undefined) return tokenTtl;
  if (!/^\d{1,9}$/.test(raw)) throw mayflyError('ERR_TTL_INVALID', 'mayfly_task_ttl must be whole seconds', { field: 'mayfly_task_ttl' });
  return Number(raw);
}

/** Starts the HTTPS listener. */
export async function startHttpServer(deps: HttpServerDeps, host: string, port: number): Promise<HttpListener> {
  const app = buildHttpApp(deps);
  await app.listen({ host, port });
  const addr = app.server.address();
  return {
    address: { host, port: typeof addr === 'object' && addr ? addr.port : port },
    app,
    close: async () => {
      app.server.closeAllConnections?.();
      await app.close();
    },
  };
}
