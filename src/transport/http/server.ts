/**
 * HTTP transport on fastify, same TLS certificate as gRPC: JWKS and discovery
 * (RFC 8414 / OIDC), RFC 8693 token exchange, RFC 7662 introspection, RFC
 * 7009 revocation, task completion with a task token, the revocation feed as
 * server-sent events, key administration, health and Prometheus metrics.
 * This file sets up the app; each group of routes is in routes/.
 */
import { parse as parseQuery } from 'node:querystring';
import type { TLSSocket } from 'node:tls';
import Fastify, { type FastifyInstance } from 'fastify';
import { mayflyError } from '../../core/errors.js';
import { PeerRegistry } from '../tls.js';
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

/** OAuth endpoints take application/x-www-form-urlencoded (RFC 6749 §4.1.3) and nothing else; no plugin needed for that. */
function acceptOAuthForms(app: FastifyInstance): void {
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseQuery(body as string));
    } catch {
      done(mayflyError('ERR_INVALID_ARGUMENT', 'malformed form body'), undefined);
    }
  });
  app.addHook('preHandler', async (req, reply) => {
    if (req.method === 'POST' && req.url.startsWith('/oauth2/')) {
      const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== 'application/x-www-form-urlencoded') {
        return reply.code(400).header('cache-control', 'no-store').send({ error: 'invalid_request', error_description: 'OAuth endpoints take application/x-www-form-urlencoded bodies (RFC 6749 §3.2)', mayfly_code: 'ERR_INVALID_ARGUMENT' });
      }
    }
  });
}

/** Fastify's own rejections (body too large, bad JSON, bad content type) still get a stable code. */
function answerFrameworkErrors(app: FastifyInstance): void {
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
