/**
 * BrokerClient results are plain data: what their types declare, no BigInt
 * and no protobuf message internals, so JSON.stringify works on them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevBroker, type DevBroker } from '../verifier/harness.js';

let env: DevBroker;
beforeAll(async () => {
  env = await startDevBroker();
});
afterAll(async () => {
  await env?.stop();
});

/** Every value in `v`, at any depth, is JSON data (string, number, boolean, null, array, plain object without `$` keys). */
function plainJson(v: unknown): boolean {
  if (v === null || ['string', 'number', 'boolean'].includes(typeof v)) return true;
  if (Array.isArray(v)) return v.every(plainJson);
  if (typeof v !== 'object' || Object.getPrototypeOf(v) !== Object.prototype) return false;
  return Object.entries(v as object).every(([k, x]) => !k.startsWith('$') && plainJson(x));
}

describe('BrokerClient returns plain objects', () => {
  it('introspect(): numbers and strings as declared, JSON.stringify round-trips', async () => {
    const wl = env.client('workload');
    const task = await wl.beginTask({ purpose: 'plain results', ttlSeconds: 600 });
    const issued = await wl.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
    const r = await env.client('relying-party').introspect(issued.token);
    expect(plainJson(r)).toBe(true);
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
    expect(r).toMatchObject({ active: true, aud: 'demo-api', scope: 'read', jti: issued.tokenId, taskId: task.taskId, sub: 'spiffe://example.org/demo/workload' });
    expect(typeof r.exp).toBe('number');
    expect(typeof r.iat).toBe('number');
    expect(r.exp).toBe(issued.expiresAt);
    expect(r.exp - r.iat).toBeGreaterThan(0);
    expect(JSON.parse(r.claimsJson)).toMatchObject({ exp: r.exp, iat: r.iat, tid: task.taskId });
    const inactive = await env.client('relying-party').introspect('not.a.token');
    expect(plainJson(inactive)).toBe(true);
    expect(inactive).toMatchObject({ active: false, reason: 'malformed', exp: 0 });
  });

  it('the other RPCs too (int64 fields become numbers)', async () => {
    const wl = env.client('workload');
    const task = await wl.beginTask({ purpose: 'plain results', ttlSeconds: 600, leaseSeconds: 30 });
    expect(typeof task.expiresAt).toBe('number');
    expect(typeof task.leaseExpiresAt).toBe('number');
    const issued = await wl.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
    const renewed = await wl.renewTask(task.taskId, 30);
    const done = await wl.completeTask(task.taskId);
    for (const r of [task, issued, renewed, done, await wl.ping()]) {
      expect(plainJson(r)).toBe(true);
      expect(JSON.parse(JSON.stringify(r))).toEqual(r);
    }
    expect(done.taskIds).toEqual([task.taskId]);
  });
});
