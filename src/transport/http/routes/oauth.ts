/** RFC 7662 introspection and RFC 7009 revocation; callers authenticate by mTLS or bearer. */
import type { FastifyInstance } from 'fastify';
import { mayflyError } from '../../../core/errors.js';
import type { CallContext } from '../../../service/deps.js';
import { bodyField, type RouteKit } from '../kit.js';

function requiredToken(body: unknown): string {
  const token = bodyField(body, 'token');
  if (!token) throw mayflyError('ERR_INVALID_ARGUMENT', 'token is required', { field: 'token' });
  return token;
}

export function registerOAuthRoutes(app: FastifyInstance, kit: RouteKit): void {
  const { deps } = kit;

  // A task-token holder sees only its own task's tokens (README: authorization model).
  app.post('/oauth2/introspect', async (req, reply) => {
    let ctx: CallContext;
    try {
      ctx = await kit.authenticate(req, 'introspect');
    } catch (e) {
      return kit.fail(reply, 'introspect', req, e, 'oauth-client');
    }
    try {
      const res = await deps.broker.introspect(ctx, { token: requiredToken(req.body) });
      reply.header('cache-control', 'no-store');
      if (!res.active || !res.claims) return reply.send({ active: false, mayfly_reason: res.reason });
      return reply.send({ active: true, ...res.claims, token_type: 'Bearer' });
    } catch (e) {
      return kit.fail(reply, 'introspect', req, e, 'oauth');
    }
  });

  // RFC 7009: 200 for unknown tokens too.
  app.post('/oauth2/revoke', async (req, reply) => {
    let ctx: CallContext;
    try {
      ctx = await kit.authenticate(req, 'revoke');
    } catch (e) {
      return kit.fail(reply, 'revoke', req, e, 'oauth-client');
    }
    try {
      await deps.broker.revokeToken(ctx, { token: requiredToken(req.body) });
      return reply.header('cache-control', 'no-store').send({});
    } catch (e) {
      return kit.fail(reply, 'revoke', req, e, 'oauth');
    }
  });
}
