/**
 * A broker on the PostgreSQL store, and what it does when PostgreSQL goes
 * away mid-run: every call that needs the store fails closed with
 * ERR_UNAVAILABLE (gRPC UNAVAILABLE, HTTP 503), no token is handed out that
 * could not be recorded, /healthz reports the store degraded, and once the
 * server is back the same broker serves again without a restart.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { createDatabase, startPgCluster, type PgCluster } from '../helpers/postgres.js';
import { codeOf, startTestBroker, type TestBroker } from './helpers.js';

let pgc: PgCluster;
let tb: TestBroker;
let workload: BrokerClient;

beforeAll(async () => {
  // A server of our own: this test stops it.
  pgc = await startPgCluster();
  const url = await createDatabase(pgc.url, 'mayfly_down');
  tb = await startTestBroker({ configPatch: { store: { backend: 'postgres', url, connect_timeout_ms: 1000, statement_timeout_ms: 2000 } } });
  workload = tb.client();
});

afterAll(async () => {
  await tb?.stop();
  await pgc?.destroy();
});

async function waitFor(check: () => Promise<boolean>, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('broker on PostgreSQL', () => {
  it('serves the task lifecycle and reports the store healthy', async () => {
    const task = await workload.beginTask({ purpose: 'pg e2e', ttlSeconds: 600 });
    const tok = await workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 });
    expect(tok.token.split('.')).toHaveLength(3);
    await workload.completeTask(task.taskId);
    expect(await codeOf(workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 }))).toBe('ERR_TASK_NOT_ACTIVE');
    const h = await tb.http('/healthz');
    expect(h.status).toBe(200);
    expect(h.json).toMatchObject({ status: 'ok', checks: { store: { ok: true } } });
    expect(JSON.stringify(h.json)).not.toContain(pgc.password);
  });

  it('fails closed while PostgreSQL is down, reports degraded health, and recovers when it is back', async () => {
    const open = await workload.beginTask({ purpose: 'survives the outage', ttlSeconds: 600, leaseSeconds: 300 });
    const before = await workload.issueToken({ taskId: open.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 });
    await pgc.stop();

    expect(await codeOf(workload.issueToken({ taskId: open.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 }))).toBe('ERR_UNAVAILABLE');
    expect(await codeOf(workload.beginTask({ purpose: 'no store', ttlSeconds: 60 }))).toBe('ERR_UNAVAILABLE');
    expect(await codeOf(workload.completeTask(open.taskId))).toBe('ERR_UNAVAILABLE');
    expect(await codeOf(workload.renewTask(open.taskId, 300))).toBe('ERR_UNAVAILABLE');
    expect(await codeOf(workload.introspect(before.token))).toBe('ERR_UNAVAILABLE');
    // Over HTTP the same refusal is a 503 (OAuth temporarily_unavailable).
    const intro = await tb.http('/oauth2/introspect', { method: 'POST', cert: 'workload', form: { token: before.token } });
    expect(intro.status).toBe(503);
    expect(intro.json).toMatchObject({ error: 'temporarily_unavailable' });
    const h = await tb.http('/healthz');
    expect(h.status).toBe(200);
    expect(h.json).toMatchObject({ status: 'degraded', checks: { store: { ok: false } } });
    expect(String((h.json!['checks'] as Record<string, { detail: string }>)['store']!.detail)).toMatch(/PostgreSQL at 127\.0\.0\.1:\d+\/mayfly_down_\w+ unavailable/);
    expect(JSON.stringify(h.json)).not.toContain(pgc.password);
    // The refusals are audited.
    const denied = tb.audit().filter((r) => r['code'] === 'ERR_UNAVAILABLE');
    expect(denied.length).toBeGreaterThanOrEqual(2);

    await pgc.start();
    // The health probe notices without traffic.
    let last: unknown;
    await waitFor(async () => {
      last = (await tb.http('/healthz')).json;
      return ((last as { checks?: { store?: { ok?: boolean } } } | undefined)?.checks?.store?.ok) === true;
    }, 10_000).catch((e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(last)}`);
    });
    // Then the whole broker is healthy again: the LISTEN connection reconnects with a backoff capped at 5 s.
    await waitFor(async () => {
      last = (await tb.http('/healthz')).json;
      return ((last as { status?: string } | undefined)?.status) === 'ok';
    }, 15_000).catch((e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(last)}`);
    });
    const tok = await workload.issueToken({ taskId: open.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 });
    expect(tok.token.length).toBeGreaterThan(0);
    await workload.completeTask(open.taskId);
  });
});
