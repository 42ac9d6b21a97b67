/** Key administration for configured admins: rotation on demand and emergency revocation. */
import type { FastifyInstance } from 'fastify';
import type { RouteKit } from '../kit.js';

export function registerAdminRoutes(app: FastifyInstance, kit: RouteKit): void {
  const { deps } = kit;

  app.post('/admin/keys/rotate', async (req, reply) => {
    try {
      const ctx = await kit.authenticate(req, 'keys.rotate');
      const r = await deps.keyAdmin.rotate(ctx);
      return reply.send({ active_kid: r.activeKid, next_kid: r.nextKid, promotion_blocked_since: r.promotionBlockedSince });
    } catch (e) {
      return kit.fail(reply, 'keys.rotate', req, e, 'json');
    }
  });

  app.post('/admin/keys/:kid/revoke', async (req, reply) => {
    try {
      const ctx = await kit.authenticate(req, 'keys.revoke');
      const r = await deps.keyAdmin.revoke(ctx, { kid: (req.params as { kid?: string }).kid });
      return reply.send({ revoked_kid: r.kid, revoked_tokens: r.revokedTokens, active_kid: r.activeKid });
    } catch (e) {
      return kit.fail(reply, 'keys.revoke', req, e, 'json');
    }
  });
}
