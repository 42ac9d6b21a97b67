/** Public documents: JWKS, OAuth/OIDC discovery metadata, health and metrics. */
import type { FastifyInstance } from 'fastify';
import type { HttpServerDeps } from '../kit.js';
import { TOKEN_EXCHANGE_GRANT } from './token-exchange.js';

export function registerDiscoveryRoutes(app: FastifyInstance, deps: HttpServerDeps): void {
  app.get('/.well-known/jwks.json', async (req, reply) => {
    deps.onJwksFetch?.();
    const doc = deps.keys.jwks();
    reply.header('cache-control', `public, max-age=${deps.jwksMaxAgeSeconds}`);
    reply.header('etag', `"${doc.version}"`);
    // RFC 9110 §13.1.2: a cache holding this key set revalidates without the body.
    const inm = req.headers['if-none-match'];
    if (typeof inm === 'string' && inm.split(',').some((t) => t.trim().replace(/^W\//, '') === `"${doc.version}"` || t.trim() === '*')) return reply.code(304).send();
    reply.header('content-type', 'application/jwk-set+json');
    return reply.send(doc.json);
  });

  const metadata = serverMetadata(deps.issuer);
  app.get('/.well-known/openid-configuration', async (_req, reply) => reply.header('cache-control', 'public, max-age=300').send(metadata));
  app.get('/.well-known/oauth-authorization-server', async (_req, reply) => reply.header('cache-control', 'public, max-age=300').send(metadata));

  app.get('/healthz', async (_req, reply) => {
    const h = deps.health();
    return reply.code(h.status === 'failing' ? 503 : 200).send(h);
  });

  if (deps.metrics) {
    const m = deps.metrics;
    app.get('/metrics', async (_req, reply) => reply.header('content-type', m.contentType).send(await m.render()));
  }
}

/** RFC 8414 / OIDC discovery document. */
function serverMetadata(issuer: string): Record<string, unknown> {
  const base = issuer.replace(/\/$/, '');
  return {
    issuer,
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
  };
}
