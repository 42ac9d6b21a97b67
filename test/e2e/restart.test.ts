/**
 * Durability across a restart: a broker on the same directory (SQLite store,
 * file keystore, audit log) keeps revocations, live tasks and its signing key.
 */
import { afterAll, expect, it } from 'vitest';
import { verifyAuditLog } from '../../src/audit/verify-chain.js';
import { codeOf, startTestBroker, type TestBroker } from './helpers.js';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';

let second: TestBroker | undefined;

afterAll(async () => {
  await second?.stop();
});

it('revocations, live tasks and the signing key survive a restart', async () => {
  const first = await startTestBroker();
  const dir = first.dir;
  let c = first.client();

  const done = await c.beginTask({ purpose: 'finished before restart' });
  const revoked = await c.issueToken({ taskId: done.taskId, audience: 'demo-api', scopes: ['read'] });
  expect((await c.completeTask(done.taskId)).revokedTokens).toBe(1);

  const open = await c.beginTask({ purpose: 'still running across restart', ttlSeconds: 1800 });
  const liveToken = await c.issueToken({ taskId: open.taskId, audience: 'demo-api', scopes: ['read', 'write'] });
  const kid = first.broker.keys.active().info.kid;
  const jwksBefore = (await first.http('/.well-known/jwks.json')).json;
  const keysCreated = first.audit().filter((rec) => rec['event'] === 'key.create').length;
  expect(keysCreated).toBe(2); // active + pre-published next

  await first.stop({ keepDir: true });

  second = await startTestBroker({ dir });
  expect(second.dir).toBe(dir);
  c = second.client();
  // New listeners (fresh ephemeral ports), same state.
  expect(second.broker.grpc.address.port).toBeGreaterThan(0);
  expect(second.broker.keys.active().info.kid).toBe(kid);
  expect((await second.http('/.well-known/jwks.json')).json).toEqual(jwksBefore);

  const r = await c.introspect(revoked.token);
  expect(r.active).toBe(false);
  expect(r.reason).toBe('revoked');
  expect(await codeOf(c.issueToken({ taskId: done.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_TASK_NOT_ACTIVE');

  const live = await c.introspect(liveToken.token);
  expect(live.active).toBe(true);
  expect(live.taskId).toBe(open.taskId);
  const more = await c.issueToken({ taskId: open.taskId, audience: 'demo-api', scopes: ['write'] });
  expect(more.scopes).toEqual(['write']);
  expect((await c.completeTask(open.taskId)).revokedTokens).toBe(2);
  expect((await c.introspect(liveToken.token)).reason).toBe('revoked');
  expect((await c.introspect(more.token)).reason).toBe('revoked');

  // One audit chain across both runs: two starts, one stop so far, still verifying.
  const events = second.audit().map((rec) => rec['event']);
  expect(events.filter((e) => e === 'broker.start')).toHaveLength(2);
  expect(events.filter((e) => e === 'broker.stop')).toHaveLength(1);
  expect(events.filter((e) => e === 'key.create')).toHaveLength(keysCreated);
  const v = verifyAuditLog(readFileSync(join(dir, 'audit.log'), 'utf8'));
  expect(v.ok, JSON.stringify(v.firstBroken)).toBe(true);
});
