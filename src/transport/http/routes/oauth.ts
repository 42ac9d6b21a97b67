/** RFC 7662 introspection and RFC 7009 revocation; callers authenticate by mTLS or bearer. */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { mayflyError } from '../../../core/errors.js';
import type { CallContext } from '../../../service/deps.js';
import { bodyField, formBodyOnly, type RouteKit } from '../kit.js';

function requiredToken(body: unknown): string {
  const token = bodyField(body, 'token');
  if (!token) throw mayflyError('ERR_INVALID_ARGUMENT', 'token is required', { field: 'token' });
  return token;
}

type OAuthHandler = (ctx: CallContext, req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply>;

/**
 * An OAuth endpoint with client authentication: a caller that fails to
 * authenticate gets 401 invalid_client (RFC 6749 §5.2); any later failure is
 * an ordinary OAuth error.
 */
function oauthClientRoute(app: FastifyInstance, kit: RouteKit, path: string, route: string, handle: OAuthHandler): void {
  // RFC 7662 §2.1 / RFC 7009 §2.1: POST only; a GET is told so (405 with Allow) instead of a 404.
  app.get(path, async (_req, reply) =>
    reply.code(405).header('allow', 'POST').header('cache-control', 'no-store').send({ error: 'invalid_request', error_description: 'use POST with an application/x-www-form-urlencoded body', mayfly_code: 'ERR_INVALID_ARGUMENT' }),
  );
  app.post(path, { preHandler: formBodyOnly }, async (req, reply) => {
    let ctx: CallContext;
    try {
      ctx = await kit.authenticate(req, route);
    } catch (e) {
      return kit.fail(reply, route, req, e, 'oauth-client');
    }
    try {
      return await handle(ctx, req, reply);
    } catch (e) {
      return kit.fail(reply, route, req, e, 'oauth');
    }
  });
}

export function registerOAuthRoutes(app: FastifyInstance, kit: RouteKit): void {
  const { deps } = kit;

  // A task-token holder sees only its own task's tokens (README: authorization model).
  oauthClientRoute(app, kit, '/oauth2/introspect', 'introspect', async (ctx, req, reply) => {
    const res = await deps.broker.introspect(ctx, { token: requiredToken(req.body) });
    reply.header('cache-control', 'no-store');
    if (!res.active || !res.claims) return reply.send({ active: false, mayfly_reason: res.reason });
    return reply.send({ active: true, ...res.claims, token_type: 'Bearer' });
  });

  // RFC 7009: 200 for unknown tokens too.
  oauthClientRoute(app, kit, '/oauth2/revoke', 'revoke', async (ctx, req, reply) => {
    await deps.broker.revokeToken(ctx, { token: requiredToken(req.body) });
    return reply.header('cache-control', 'no-store').send({});
  });
}
