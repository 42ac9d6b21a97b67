/**
 * HTTP transport on fastify, same TLS certificate as gRPC: JWKS and discovery
 * (RFC 8414 / OIDC), RFC 8693 token exchange, RFC 7662 introspection, RFC
 * 7009 revocation, task completion with a task token, the revocation feed as
 * server-sent events, key administration, health and Prometheus metrics.
 * This file sets up the app; each group of routes is in routes/.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { mayflyError } from '../../core/errors.js';
import { PeerRegistry } from '../tls.js';
import { parseForm } from './form.js';
import { routeKit, type HttpServerDeps } from './kit.js';
import { registerAdminRoutes } from './routes/admin.js';
import { registerDiscoveryRoutes } from './routes/discovery.js';
import { registerFeedRoutes } from './routes/feed.js';
import { registerOAuthRoutes } from './routes/oauth.js';
import { registerTaskRoutes } from './routes/tasks.js';
import { registerTokenExchangeRoute } from './routes/token-exchange.js';

export type { HealthReport, HttpServerDeps } from './kit.js';
export { TOKEN_EXCHANGE_GRANT } from './routes/token-exchange.js';

export interface HttpListener {
  address: { host: string; port: number };
  app: FastifyInstance;
  close(): Promise<void>;
}

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
    // Errors fastify and Node answer before any route runs get our error shape too.
    frameworkErrors: answerRoutingError,
    clientErrorHandler: answerClientError,
  });
  const peers = new PeerRegistry(deps.auth, deps.clock);
  app.server.on('secureConnection', (socket: TLSSocket) => peers.attach(socket));
  acceptOAuthForms(app);
  answerFrameworkErrors(app);

  const kit = routeKit(deps, peers);
  registerDiscoveryRoutes(app, deps);
  registerTokenExchangeRoute(app, kit);
  registerOAuthRoutes(app, kit);
  registerTaskRoutes(app, kit);
  registerFeedRoutes(app, kit);
  registerAdminRoutes(app, kit);
  return app;
}

/** The OAuth endpoints' body type, parsed here (no plugin needed); each OAuth POST route refuses any other type (kit.ts formBodyOnly). */
function acceptOAuthForms(app: FastifyInstance): void {
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseForm(body as string));
    } catch {
      done(mayflyError('ERR_INVALID_ARGUMENT', 'malformed form body'), undefined);
    }
  });
}

/** Our JSON error body for a request no route handled: `{error: <code>, message}`. */
function errorBody(code: string, message: string): string {
  return JSON.stringify({ error: code, message });
}

/** Routing failures fastify detects before any route runs: an over-long path parameter (414) or a malformed URL (400). */
function answerRoutingError(error: Error & { code?: string }, _req: FastifyRequest, reply: FastifyReply): void {
  reply.header('cache-control', 'no-store').type('application/json');
  if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    void reply.code(414).send(errorBody('ERR_TOO_LARGE', 'a path parameter is longer than this broker accepts'));
    return;
  }
  void reply.code(400).send(errorBody('ERR_INVALID_ARGUMENT', 'the request URL is malformed'));
}

/**
 * Requests Node's HTTP parser refuses before fastify sees them (headers over
 * the size limit, a timeout, bytes that are not HTTP): answered here in our
 * shape instead of Node's or fastify's own body, then the connection closes.
 */
function answerClientError(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, reason, code, message] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request Header Fields Too Large', 'ERR_TOO_LARGE', 'request headers are larger than this broker accepts (a bearer token is at most 16 KiB)']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout', 'ERR_INVALID_ARGUMENT', 'the request was not received in time']
        : [400, 'Bad Request', 'ERR_INVALID_ARGUMENT', 'the request is not valid HTTP'];
  const body = errorBody(code, message);
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** Fastify's own rejections (body too large, bad JSON, bad content type) and unknown routes still get a stable code. */
function answerFrameworkErrors(app: FastifyInstance): void {
  app.setNotFoundHandler((req, reply) => {
    const message = `no route ${req.method} ${req.url.split('?')[0]!.slice(0, 200)}`;
    if (req.url.startsWith('/oauth2/')) {
      return reply.code(404).header('cache-control', 'no-store').send({ error: 'invalid_request', error_description: message, mayfly_code: 'ERR_ROUTE_NOT_FOUND' });
    }
    return reply.code(404).header('cache-control', 'no-store').send({ error: 'ERR_ROUTE_NOT_FOUND', message });
  });
  app.setErrorHandler((error, req, reply) => {
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    const code = status === 413 ? 'ERR_TOO_LARGE' : status >= 500 ? 'ERR_INTERNAL' : 'ERR_INVALID_ARGUMENT';
    const message = status >= 500 ? 'internal error' : (error as Error).message;
    if (req.url.startsWith('/oauth2/')) {
      return reply.code(status >= 500 ? 500 : 400).send({ error: status >= 500 ? 'server_error' : 'invalid_request', error_description: message, mayfly_code: code });
    }
    return reply.code(status).send({ error: code, message });
  });
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
