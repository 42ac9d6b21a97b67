/**
 * OPA as the broker's decision point, over real TLS sockets: every BeginTask
 * and IssueToken is decided by the wasm module on disk; replacing the file
 * changes decisions within a second without a restart; a broken module never
 * takes the broker down or opens it up.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { BrokerClient } from '../../src/client/broker-client.js';
import { startBroker, type RunningBroker } from '../../src/cli/broker.js';
import { devInit } from '../../src/cli/dev-init.js';
import { loadConfig } from '../../src/config/load.js';
import type { MayflyError } from '../../src/core/errors.js';
import { buildOpaWasm, type OpaWasmSpec } from '../helpers/opa-wasm/builder.js';

const allowRead: OpaWasmSpec = {
  rules: [
    { when: '"action":"begin_task"', then: { result: { allow: true, reasons: ['v1: tasks allowed'], max_ttl_seconds: 600 } } },
    { when: '"audience":"demo-api"', then: { result: { allow: true, reasons: ['v1: demo-api read'], scopes: ['read'], max_ttl_seconds: 120 } } },
  ],
  otherwise: { result: { allow: false, reasons: ['v1: nothing else'] } },
};

const denyDemo: OpaWasmSpec = {
  rules: [{ when: '"action":"begin_task"', then: { result: true } }],
  otherwise: { result: { allow: false, reasons: ['v2: demo-api is closed for maintenance'] } },
};

async function installPolicy(path: string, spec: OpaWasmSpec | Uint8Array): Promise<void> {
  const bytes = spec instanceof Uint8Array ? spec : await buildOpaWasm(spec);
  // Atomic replace, as a deploy tool would do.
  writeFileSync(`${path}.tmp`, bytes);
  renameSync(`${path}.tmp`, path);
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return (e as MayflyError).code;
  }
}

describe('broker with the OPA engine', () => {
  let dir: string;
  let broker: RunningBroker;
  let client: BrokerClient;
  let policyPath: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mayfly-opa-'));
    const { config } = devInit(dir);
    policyPath = join(dir, 'policy.wasm');
    await installPolicy(policyPath, allowRead);
    const doc = parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
    doc['log'] = { level: 'silent' };
    doc['policy'] = { engine: 'opa', opa: { policy_file: 'policy.wasm', entrypoint: 'mayfly/authz/decision', poll_interval_ms: 200, debounce_ms: 50 } };
    writeFileSync(config, stringify(doc));
    broker = await startBroker(loadConfig(config), { grpcListen: '127.0.0.1:0', httpListen: '127.0.0.1:0' });
    client = new BrokerClient({
      address: `127.0.0.1:${broker.grpc.address.port}`,
      ca: readFileSync(join(dir, 'ca.pem')),
      cert: readFileSync(join(dir, 'workload.pem')),
      key: readFileSync(join(dir, 'workload.key')),
    });
  });

  afterAll(async () => {
    client?.close();
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('decides every BeginTask and IssueToken with the wasm policy, and audits engine, revision and digest', async () => {
    const task = await client.beginTask({ purpose: 'opa run', ttlSeconds: 300 });
    const t = await client.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read', 'write'], ttlSeconds: 600 });
    expect(t.scopes).toEqual(['read']); // narrowed by the policy
    expect(Number(t.expiresAt) - Math.floor(Date.now() / 1000)).toBeLessThanOrEqual(121); // policy max TTL
    expect(await codeOf(client.issueToken({ taskId: task.taskId, audience: 'other-api', scopes: ['read'] }))).toBe('ERR_POLICY_DENIED');
    const records = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    const issued = records.filter((r) => r['event'] === 'token.issue');
    expect(issued.at(-2)!['decision']).toMatchObject({ engine: 'opa', allow: true, source: 'mayfly/authz/decision' });
    expect(issued.at(-1)!['decision']).toMatchObject({ engine: 'opa', allow: false, reasons: ['v1: nothing else'] });
    expect(issued.at(-1)!['decision'].revision).toMatch(/^[0-9a-f]{64}$/);
    expect(issued.at(-1)!['decision'].input_sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a new policy file changes decisions within a second, without a restart', async () => {
    const task = await client.beginTask({ purpose: 'reload', ttlSeconds: 300 });
    const before = broker.policy.revision();
    await installPolicy(policyPath, denyDemo);
    const started = Date.now();
    let code = 'ok';
    while (Date.now() - started < 3000) {
      code = await codeOf(client.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] }));
      if (code !== 'ok') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    const elapsed = Date.now() - started;
    console.log(`policy swap took effect after ${elapsed} ms`);
    expect(code).toBe('ERR_POLICY_DENIED');
    expect(elapsed).toBeLessThan(1000);
    expect(broker.policy.revision()).not.toBe(before);
  });

  it('a broken policy keeps the previous one serving, and health and audit say so', async () => {
    const task = await client.beginTask({ purpose: 'broken', ttlSeconds: 300 });
    const serving = broker.policy.revision();
    await installPolicy(policyPath, new Uint8Array(Buffer.from('this is not wasm')));
    const started = Date.now();
    while (broker.health().checks['policy']?.ok !== false && Date.now() - started < 3000) await new Promise((r) => setTimeout(r, 25));
    expect(broker.health()).toMatchObject({ status: 'degraded', checks: { policy: { ok: false } } });
    expect(broker.policy.revision()).toBe(serving);
    // Still deciding with the last good policy (v2 denies demo-api, allows tasks): neither down nor open.
    expect(await codeOf(client.beginTask({ purpose: 'still up' }))).toBe('ok');
    expect(await codeOf(client.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_POLICY_DENIED');
    const records = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.some((r) => r['event'] === 'policy.reload' && r['outcome'] === 'error')).toBe(true);
    // Fixing the file recovers.
    await installPolicy(policyPath, allowRead);
    const t0 = Date.now();
    while (broker.health().checks['policy']?.ok !== true && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 25));
    expect(await codeOf(client.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ok');
  });
});
