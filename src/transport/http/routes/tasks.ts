/** Task completion over HTTPS: with a task token as bearer, that token's task; over mTLS, the named task. */
import type { FastifyInstance } from 'fastify';
import { mayflyError } from '../../../core/errors.js';
import type { RouteKit } from '../kit.js';

export function registerTaskRoutes(app: FastifyInstance, kit: RouteKit): void {
  app.post('/v1/tasks/complete', async (req, reply) => {
    try {
      const ctx = await kit.authenticate(req, 'tasks.complete');
      const body = (req.body ?? {}) as Record<string, unknown>;
      const named = typeof body['task_id'] === 'string' ? body['task_id'] : undefined;
      const taskId = named ?? (ctx.identity.method === 'task-token' ? (ctx.identity.claims['tid'] as string) : undefined);
      if (!taskId) throw mayflyError('ERR_INVALID_ARGUMENT', 'task_id is required', { field: 'task_id' });
      const res = await kit.deps.broker.completeTask(ctx, { taskId });
      return reply.send({ task_id: taskId, revoked_tokens: res.revokedTokens, task_ids: res.taskIds });
    } catch (e) {
      return kit.fail(reply, 'tasks.complete', req, e, 'json');
    }
  });
}
