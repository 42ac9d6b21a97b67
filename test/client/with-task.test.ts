/**
 * withTask / beginTask against a real broker: completion on return and on
 * throw, the token cache, lease heartbeats, delegation, `await using`.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { codeOf, startDevBroker, type DevBroker } from '../verifier/harness.js';
import { asyncDisposeSymbol, beginTask, withTask, type TaskBrokerClient, type TaskHandle } from '../../src/client/index.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { MayflyVerifier } from '../../src/verifier/index.js';

let env: DevBroker;
let wl: BrokerClient;
let rp: BrokerClient;
let v: MayflyVerifier;
beforeAll(async () => {
  env = await startDevBroker();
  wl = env.client('workload');
  rp = env.client('relying-party');
  v = env.verifier('rp-client-tests');
  await v.start();
});
afterAll(async () => {
  await env?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('withTask', () => {
  it('completes the task when fn returns: its tokens become inactive', async () => {
    let token = '';
    let id = '';
    const out = await withTask({ client: wl, purpose: 'returns', ttlSeconds: 600 }, async (task) => {
      id = task.id;
      token = await task.token('demo-api', { scopes: ['read'] });
      expect((await rp.introspect(token)).active).toBe(true);
      expect((await v.verify(token, { clientCertDer: env.leafDer('workload') })).tid).toBe(task.id);
      return 42;
    });
    expect(out).toBe(42);
    const intro = await rp.introspect(token);
    expect(intro.active).toBe(false);
    expect(intro.reason).toBe('revoked');
    expect(await codeOf(wl.issueToken({ taskId: id, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_TASK_NOT_ACTIVE');
  });

  it('completes the task when fn throws and rethrows the original error', async () => {
    let token = '';
    const boom = new Error('boom');
    await expect(
      withTask({ client: wl, purpose: 'throws' }, async (task) => {
        token = await task.token('demo-api', { scopes: ['read'] });
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect((await rp.introspect(token)).active).toBe(false);
  });

  it('a completion failure is reported, and never replaces the error fn threw', async () => {
    const onError = vi.fn();
    const failing: TaskBrokerClient = {
      beginTask: wl.beginTask.bind(wl),
      issueToken: wl.issueToken.bind(wl),
      renewTask: wl.renewTask.bind(wl),
      completeTask: async () => {
        throw Object.assign(new Error('broker down'), { code: 'ERR_UNAVAILABLE' });
      },
    };
    const boom = new Error('original');
    await expect(withTask({ client: failing, purpose: 'completion fails', onError }, async () => Promise.reject(boom))).rejects.toBe(boom);
    expect(onError).toHaveBeenCalledTimes(1);
    expect(String(onError.mock.calls[0]![0])).toMatch(/completing task .* failed/);
    // When fn succeeded, its result still comes back.
    expect(await withTask({ client: failing, purpose: 'completion fails', onError }, async () => 'result')).toBe('result');
    expect(onError).toHaveBeenCalledTimes(2);
  });

  it('caches tokens per (audience, scopes) and refreshes when < 20% of the lifetime is left', async () => {
    await withTask({ client: wl, purpose: 'cache', ttlSeconds: 600 }, async (task) => {
      const a = await task.token('demo-api', { scopes: ['read', 'write'] });
      expect(await task.token('demo-api', { scopes: ['write', 'read'] })).toBe(a);
      const [c1, c2] = await Promise.all([task.token('demo-api', { scopes: ['read'] }), task.token('demo-api', { scopes: ['read'] })]);
      expect(c1).toBe(c2); // single flight
      expect(c1).not.toBe(a);
      // Single-use tokens are never cached.
      const s1 = await task.token('demo-api', { scopes: ['read'], singleUse: true });
      expect(await task.token('demo-api', { scopes: ['read'], singleUse: true })).not.toBe(s1);

      const t0 = Date.now();
      const short = await task.issue('demo-api', { scopes: ['read'], ttlSeconds: 3 });
      expect((await task.issue('demo-api', { scopes: ['read'], ttlSeconds: 3 })).token).toBe(short.token);
      const lifetime = short.expiresAt - t0;
      await sleep(Math.max(0, short.expiresAt - lifetime * 0.1 - Date.now()));
      const refreshed = await task.issue('demo-api', { scopes: ['read'], ttlSeconds: 3 });
      expect(refreshed.token).not.toBe(short.token);
      expect(refreshed.expiresAt).toBeGreaterThan(short.expiresAt);
    });
  });

  it('heartbeats keep a 2 s-lease task alive for 5 s', async () => {
    let token = '';
    await withTask({ client: wl, purpose: 'long job', leaseSeconds: 2, ttlSeconds: 600 }, async (task) => {
      token = await task.token('demo-api', { scopes: ['read'] });
      await sleep(5000);
      expect(task.ended).toBe(false);
      expect((await rp.introspect(token)).active).toBe(true);
      expect(await codeOf(v.verify(token, { clientCertDer: env.leafDer('workload') }))).toBe('OK');
      expect(await task.token('demo-api', { scopes: ['read'] })).toBe(token);
    });
    expect((await rp.introspect(token)).active).toBe(false);
  });

  it('without heartbeats the same lease lapses', async () => {
    const t = await wl.beginTask({ purpose: 'no heartbeat', leaseSeconds: 2, ttlSeconds: 600 });
    const { token } = await wl.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    await sleep(2600);
    expect((await rp.introspect(token)).active).toBe(false);
  });
});

describe('beginTask', () => {
  it('is disposable with await using (Symbol.asyncDispose or its polyfill key)', async () => {
    expect(asyncDisposeSymbol).toBe((Symbol as { asyncDispose?: symbol }).asyncDispose ?? Symbol.for('Symbol.asyncDispose'));
    let token = '';
    {
      await using task = await beginTask({ client: wl, purpose: 'await using' });
      token = await task.token('demo-api', { scopes: ['read'] });
      expect((await rp.introspect(token)).active).toBe(true);
    }
    expect((await rp.introspect(token)).active).toBe(false);
    const handle = await beginTask({ client: wl, purpose: 'explicit dispose' });
    const t2 = await handle.token('demo-api', { scopes: ['read'] });
    await (handle as unknown as Record<symbol, () => Promise<void>>)[asyncDisposeSymbol]!();
    await handle.complete(); // idempotent
    expect((await rp.introspect(t2)).active).toBe(false);
    expect(await codeOf(handle.token('demo-api'))).toBe('ERR_TASK_NOT_ACTIVE');
  });

  it('child() delegates; completing the parent completes open children first', async () => {
    const parent = await beginTask({ client: wl, purpose: 'parent', scopes: ['read', 'write'] });
    const child: TaskHandle = await parent.child({ purpose: 'sub-agent', scopes: ['read'], actor: 'agent-x' });
    const token = await child.token('demo-api', { scopes: ['read'] });
    const claims = await v.verify(token, { clientCertDer: env.leafDer('workload') });
    expect(claims.mayfly?.parent_tid).toBe(parent.id);
    expect(claims.act?.sub).toBe('agent-x');
    await parent.complete();
    expect(child.ended).toBe(true);
    expect((await rp.introspect(token)).active).toBe(false);
    const audit = env.auditLines().filter((r) => r['event'] === 'task.complete' && (r['task_id'] === child.id || r['task_id'] === parent.id));
    expect(audit.map((r) => r['task_id'])).toEqual([child.id, parent.id]);
  });
});
