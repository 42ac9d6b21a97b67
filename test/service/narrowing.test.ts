/**
 * Task-token narrowing for every kind of identity: the identity that began
 * the task, with its issuer, trust domain and claims, is carried with the
 * task and is what policy judges when the task's own token asks for a
 * narrower one. Rules match an OIDC task by issuer and claims, which a task
 * token does not carry (this is what failed before). X.509-SVID tasks get
 * certificate-bound tokens, which are no bearer credential at all.
 */
import { describe, expect, it } from 'vitest';
import { ManualClock, systemRandom } from '../../src/core/clock.js';
import type { Identity } from '../../src/core/types.js';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { BuiltinEngine } from '../../src/policy/builtin.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { BrokerService } from '../../src/service/broker.js';
import { MemoryStore } from '../../src/store/memory.js';
import { KeyManager } from '../../src/tokens/keys.js';
import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';

const GHA = 'https://token.actions.githubusercontent.com';
const RULES = `
rules:
  - name: spiffe-workload
    match: { spiffe: "spiffe://example.org/demo/workload" }
    audiences: [demo-api]
    scopes: [read, write]
    max_ttl_seconds: 600
    max_task_ttl_seconds: 3600
  - name: gha-api
    match: { oidc: { issuer: "${GHA}", claims: { repository: "acme/api", environment: prod } } }
    audiences: [demo-api]
    scopes: [read, write]
    max_ttl_seconds: 600
    max_task_ttl_seconds: 3600
`;

const x509: Identity = { kind: 'spiffe', id: 'spiffe://example.org/demo/workload', trustDomain: 'example.org', method: 'x509-svid', claims: {}, certThumbprint: 'thumb-1', source: 'example.org' };
const jwtSvid: Identity = { kind: 'spiffe', id: 'spiffe://example.org/demo/workload', trustDomain: 'example.org', method: 'jwt-svid', claims: { sub: 'spiffe://example.org/demo/workload', aud: ['mayfly'] }, source: 'example.org' };
const oidc: Identity = { kind: 'oidc', id: `${GHA}#repo:acme/api:environment:prod`, issuer: GHA, method: 'oidc', claims: { sub: 'repo:acme/api:environment:prod', repository: 'acme/api', environment: 'prod' }, source: 'gha' };

async function setup() {
  const clock = new ManualClock(Date.UTC(2026, 10, 21, 12, 0, 0));
  const store = new MemoryStore();
  const keys = new KeyManager(new MemoryKeyStore(), clock, { alg: 'ES256', rotationPeriodMs: 86_400_000, prePublishMs: 600_000, skewMs: 60_000, maxPromotionWaitMs: 3_600_000 });
  await keys.init();
  const service = new BrokerService({
    store,
    keys,
    policy: new DecisionPoint(BuiltinEngine.fromText(RULES)),
    audit: new MemoryAuditSink({ brokerId: 'test', clock }),
    clock,
    random: systemRandom,
    events: { publish: () => undefined },
    config: {
      issuer: 'https://mayfly.test',
      brokerId: 'test',
      clockSkewSeconds: 0,
      tokens: { defaultTtlSeconds: 300, maxTtlSeconds: 3600 },
      tasks: { defaultTtlSeconds: 900, maxTtlSeconds: 86_400, maxDelegationDepth: 2, maxLeaseSeconds: 3600 },
      admins: [],
    },
  });
  return { service, store };
}

const ctx = (identity: Identity) => ({ identity, requestId: 'r', peer: '127.0.0.1:1' });

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return (e as { code: string }).code;
  }
}

describe.each([
  ['JWT-SVID', jwtSvid],
  ['OIDC', oidc],
])('narrowing with the task token of a %s task', (_name, owner) => {
  it('carries the beginning identity with the task, and policy judges the task token as it', async () => {
    const { service, store } = await setup();
    const task = await service.beginTask(ctx(owner), { purpose: 'ci job', scopes: ['read', 'write'] });
    expect((await store.getTask(task.id))!.ownerIdentity).toMatchObject({ kind: owner.kind, id: owner.id, method: owner.method, claims: owner.claims, ...(owner.issuer ? { issuer: owner.issuer } : {}) });
    const issued = await service.issueToken(ctx(owner), { taskId: task.id, audience: 'demo-api', scopes: ['read', 'write'] });
    const holder = await service.authenticateTaskToken(issued.token);
    expect(holder.method).toBe('task-token');

    // Same audience, a subset of the scopes: allowed (this is what failed for OIDC tasks).
    const narrower = await service.issueToken(ctx(holder), { taskId: task.id, audience: 'demo-api', scopes: ['read'] });
    expect(narrower.scopes).toEqual(['read']);
    // Wider, elsewhere, or another task: refused before policy.
    expect(await code(service.issueToken(ctx(holder), { taskId: task.id, audience: 'demo-api', scopes: ['read', 'admin'] }))).toBe('ERR_SCOPE_DENIED');
    expect(await code(service.issueToken(ctx(holder), { taskId: task.id, audience: 'other-api', scopes: ['read'] }))).toBe('ERR_AUDIENCE_DENIED');
    const sibling = await service.beginTask(ctx(owner), { purpose: 'other job' });
    expect(await code(service.issueToken(ctx(holder), { taskId: sibling.id, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_NOT_TASK_OWNER');
    // A child task begun with the task token keeps the original identity too, and can narrow in turn.
    const child = await service.beginTask(ctx(holder), { purpose: 'step', parentTaskId: task.id, scopes: ['read'] });
    expect((await store.getTask(child.id))!.ownerIdentity).toMatchObject({ id: owner.id, method: owner.method });
  });
});

describe('narrowing with the task token of an X.509-SVID task', () => {
  it('the token is bound to the certificate: as a bearer credential it is refused, so narrowing goes through the certificate', async () => {
    const { service, store } = await setup();
    const task = await service.beginTask(ctx(x509), { purpose: 'mtls job' });
    expect((await store.getTask(task.id))!.ownerIdentity).toMatchObject({ kind: 'spiffe', method: 'x509-svid', trustDomain: 'example.org' });
    const issued = await service.issueToken(ctx(x509), { taskId: task.id, audience: 'demo-api', scopes: ['read', 'write'] });
    expect(await code(service.authenticateTaskToken(issued.token))).toBe('ERR_UNAUTHENTICATED');
    expect((await service.issueToken(ctx(x509), { taskId: task.id, audience: 'demo-api', scopes: ['read'] })).scopes).toEqual(['read']);
  });
});

describe('a task stored before the identity was recorded', () => {
  it('falls back to the task token identity (fails closed for OIDC rules, as before)', async () => {
    const { service, store } = await setup();
    const task = await service.beginTask(ctx(oidc), { purpose: 'old task' });
    const issued = await service.issueToken(ctx(oidc), { taskId: task.id, audience: 'demo-api', scopes: ['read'] });
    const stored = (await store.getTask(task.id))!;
    delete stored.ownerIdentity;
    // Simulate the old row: replace the task in a fresh store view.
    (store as unknown as { tasks: Map<string, unknown> }).tasks.set(task.id, stored);
    const holder = await service.authenticateTaskToken(issued.token);
    expect(await code(service.issueToken(ctx(holder), { taskId: task.id, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_POLICY_DENIED');
  });
});
