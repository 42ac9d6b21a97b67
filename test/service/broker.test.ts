import { createPublicKey } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { ManualClock, systemRandom } from '../../src/core/clock.js';
import { MayflyError } from '../../src/core/errors.js';
import type { Identity, RevocationEvent } from '../../src/core/types.js';
import type { AuditEntry } from '../../src/core/ports.js';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { BuiltinEngine } from '../../src/policy/builtin.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { BrokerService } from '../../src/service/broker.js';
import { MemoryStore } from '../../src/store/memory.js';
import { decodeJws } from '../../src/tokens/jws.js';
import { KeyManager } from '../../src/tokens/keys.js';
import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';
import { verifyMayflyToken } from '../../src/tokens/verify.js';
import { buildClaims } from '../../src/tokens/claims.js';
import { mintToken } from '../../src/tokens/mint.js';

const RULES = `
rules:
  - name: demo
    match: { spiffe: "spiffe://example.org/demo/workload" }
    audiences: [demo-api]
    scopes: [read, write]
    max_ttl_seconds: 600
    max_task_ttl_seconds: 3600
  - name: agents
    match: { spiffe: "glob:spiffe://example.org/agent/*" }
    audiences: [github]
    scopes: [issues.read, issues.write]
    max_ttl_seconds: 120
`;

const ISSUER = 'https://mayfly.test';
const workload: Identity = { kind: 'spiffe', id: 'spiffe://example.org/demo/workload', trustDomain: 'example.org', method: 'x509-svid', claims: {}, certThumbprint: 'thumb-1' };
const other: Identity = { ...workload, id: 'spiffe://example.org/demo/other', certThumbprint: 'thumb-2' };
const ctx = (identity: Identity) => ({ identity, requestId: 'r1', peer: '127.0.0.1:1' });

async function setup() {
  const clock = new ManualClock(Date.UTC(2026, 10, 21, 12, 0, 0));
  const store = new MemoryStore();
  const audit = new MemoryAuditSink({ brokerId: 'test', clock });
  const keys = new KeyManager(new MemoryKeyStore(), clock, { alg: 'ES256', rotationPeriodMs: 86_400_000, prePublishMs: 600_000, skewMs: 60_000, maxPromotionWaitMs: 3_600_000 });
  await keys.init();
  const events: RevocationEvent[] = [];
  const misuse: string[] = [];
  const decisions: boolean[] = [];
  const service = new BrokerService({
    store,
    keys,
    policy: new DecisionPoint(BuiltinEngine.fromText(RULES)),
    audit,
    clock,
    random: systemRandom,
    events: { publish: (e) => events.push(e) },
    config: {
      issuer: ISSUER,
      brokerId: 'test',
      clockSkewSeconds: 0,
      tokens: { defaultTtlSeconds: 300, maxTtlSeconds: 3600 },
      tasks: { defaultTtlSeconds: 900, maxTtlSeconds: 86_400, maxDelegationDepth: 2, maxLeaseSeconds: 3600 },
      admins: ['spiffe://example.org/ops/admin'],
    },
    observer: { misuse: (k) => misuse.push(k), policyEval: (_engine, allow) => decisions.push(allow) },
  });
  return { clock, store, audit, keys, service, events, misuse, decisions };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as MayflyError).code;
  }
  return 'resolved';
}

describe('BrokerService', () => {
  let s: Awaited<ReturnType<typeof setup>>;
  beforeEach(async () => {
    s = await setup();
  });

  it('mints a verifiable at+jwt with task, scope and cnf claims', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'nightly export', ttlSeconds: 600 });
    expect(task.id).toMatch(/^[A-Za-z0-9_-]{24}$/); // 48-bit ms time, then 96 random bits
    expect(Buffer.from(task.id, 'base64url').readUIntBE(0, 6)).toBe(s.clock.now());
    const t = await s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['read', 'admin'] });
    expect(t.scopes).toEqual(['read']);
    const { header, claims } = verifyMayflyToken(t.token, (kid) => s.keys.publicKey(kid), { issuer: ISSUER, audience: 'demo-api', now: s.clock.now() });
    expect(header).toMatchObject({ typ: 'at+jwt', alg: 'ES256', kid: s.keys.active().info.kid });
    expect(claims).toMatchObject({ sub: workload.id, aud: 'demo-api', scope: 'read', tid: task.id, jti: t.tokenId, cnf: { 'x5t#S256': 'thumb-1' } });
  });

  it.each([
    ['requested TTL', { ttlSeconds: 60 }, 600, 60],
    ['policy max TTL', { ttlSeconds: 3000 }, 3600, 600],
    ['task deadline', { ttlSeconds: 600 }, 120, 120],
    ['default TTL', {}, 3600, 300],
  ])('exp is bounded by the %s', async (_name, req, taskTtl, expected) => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p', ttlSeconds: taskTtl });
    const t = await s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['read'], ...req });
    expect((t.expiresAt - s.clock.now()) / 1000).toBe(expected);
  });

  it.each([
    ['empty purpose', () => s.service.beginTask(ctx(workload), { purpose: '' }), 'ERR_INVALID_ARGUMENT'],
    ['absurd task TTL', () => s.service.beginTask(ctx(workload), { purpose: 'p', ttlSeconds: 1e9 }), 'ERR_TTL_INVALID'],
    ['negative TTL', () => s.service.beginTask(ctx(workload), { purpose: 'p', ttlSeconds: -1 }), 'ERR_TTL_INVALID'],
    ['bad label key', () => s.service.beginTask(ctx(workload), { purpose: 'p', labels: { 'Bad Key': 'x' } }), 'ERR_INVALID_ARGUMENT'],
    ['oversized purpose', () => s.service.beginTask(ctx(workload), { purpose: 'x'.repeat(300) }), 'ERR_TOO_LARGE'],
    ['unknown identity', () => s.service.beginTask(ctx({ ...workload, id: 'spiffe://example.org/nobody' }), { purpose: 'p' }), 'ERR_POLICY_DENIED'],
    ['unknown task', () => s.service.issueToken(ctx(workload), { taskId: 'AAAAAAAAAAAAAAAAAAAAAAAA', audience: 'demo-api' }), 'ERR_TASK_NOT_FOUND'],
    ['malformed task id', () => s.service.issueToken(ctx(workload), { taskId: '../etc', audience: 'demo-api' }), 'ERR_INVALID_ARGUMENT'],
  ])('rejects %s', async (_name, fn, expected) => {
    expect(await code(fn())).toBe(expected);
  });

  it('rejects bad issuance requests with stable codes and audits each', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p' });
    const cases: Array<[Record<string, unknown>, string, Identity?]> = [
      [{ audience: 'demo api' }, 'ERR_AUDIENCE_INVALID'],
      [{ audience: '' }, 'ERR_INVALID_ARGUMENT'],
      [{ audience: 'demo-api', scopes: ['bad"scope'] }, 'ERR_SCOPE_INVALID'],
      [{ audience: 'other-api', scopes: ['read'] }, 'ERR_POLICY_DENIED'],
      [{ audience: 'demo-api', scopes: ['admin'] }, 'ERR_POLICY_DENIED'],
      [{ audience: 'demo-api', ttlSeconds: 999_999 }, 'ERR_TTL_INVALID'],
      [{ audience: 'demo-api', scopes: ['read'] }, 'ERR_NOT_TASK_OWNER', other],
    ];
    for (const [req, expected, who] of cases) {
      expect(await code(s.service.issueToken(ctx(who ?? workload), { taskId: task.id, ...req })), JSON.stringify(req)).toBe(expected);
      const last = s.audit.records.at(-1)!;
      expect(last).toMatchObject({ event: 'token.issue', outcome: 'denied', code: expected, task_id: task.id });
    }
  });

  it('completing a task revokes its tokens durably, publishes one event, and blocks further issuance', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p' });
    const a = await s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['read'] });
    await s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['write'] });
    expect(await code(s.service.completeTask(ctx(other), { taskId: task.id }))).toBe('ERR_NOT_TASK_OWNER');
    const res = await s.service.completeTask(ctx(workload), { taskId: task.id });
    expect(res.revokedTokens).toBe(2);
    expect(s.events).toHaveLength(1);
    expect(s.events[0]).toMatchObject({ kind: 'task', taskIds: [task.id] });
    expect(await s.service.introspect(ctx(other), { token: a.token })).toMatchObject({ active: false, reason: 'revoked' });
    expect(s.misuse).toEqual(['revoked_use']);
    expect(s.audit.records.some((r) => r.event === 'token.misuse' && r['misuse'] === 'revoked_use')).toBe(true);
    expect(await code(s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api' }))).toBe('ERR_TASK_NOT_ACTIVE');
    expect(await code(s.service.completeTask(ctx(workload), { taskId: task.id }))).toBe('ERR_TASK_NOT_ACTIVE');
  });

  it('introspection gives RFC 7662 reasons', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p' });
    const t = await s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 });
    expect(await s.service.introspect(ctx(other), { token: t.token })).toMatchObject({ active: true });
    expect(await s.service.introspect(ctx(other), { token: 'not.a.jwt' })).toMatchObject({ active: false, reason: 'malformed' });
    const [h, p] = t.token.split('.');
    expect(await s.service.introspect(ctx(other), { token: `${h}.${p}.${'A'.repeat(86)}` })).toMatchObject({ active: false, reason: 'invalid_signature' });
    const header = decodeJws(t.token).header;
    const forged = `${Buffer.from(JSON.stringify({ ...header, kid: 'unknown' })).toString('base64url')}.${p}.${t.token.split('.')[2]}`;
    expect(await s.service.introspect(ctx(other), { token: forged })).toMatchObject({ active: false, reason: 'unknown_signer' });
    s.clock.advance(61_000);
    expect(await s.service.introspect(ctx(other), { token: t.token })).toMatchObject({ active: false, reason: 'expired' });
    // The audit record carries the hash, never the token.
    expect(JSON.stringify(s.audit.records)).not.toContain(t.token);
  });

  it('introspection tells a token from the future and a foreign issuer apart (by code and detail, not message)', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p' });
    const t = await s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 });
    const { signer, publicKey } = s.keys.active();
    const now = s.clock.now();
    const claims = buildClaims({ issuer: 'https://elsewhere.test', subject: workload.id, audience: 'demo-api', scopes: ['read'], jti: 'j1', taskId: task.id, issuedAtMs: now, expiresAtMs: now + 60_000, certThumbprint: null, actors: [], parentTaskId: null, tool: null, argsDigest: null, singleUse: false });
    const foreign = mintToken(claims, signer, publicKey, now);
    expect(await s.service.introspect(ctx(other), { token: foreign })).toMatchObject({ active: false, reason: 'wrong_issuer' });
    s.clock.set(now - 3_600_000);
    expect(await s.service.introspect(ctx(other), { token: t.token })).toMatchObject({ active: false, reason: 'not_yet_valid' });
  });

  it('delegation: child scopes within the parent, act chain, depth limit, cascading revoke', async () => {
    const root = await s.service.beginTask(ctx(workload), { purpose: 'agent run', scopes: ['read', 'write'] });
    const child = await s.service.beginTask(ctx(workload), { purpose: 'sub-agent', parentTaskId: root.id, scopes: ['read'], actor: 'agent:planner' });
    expect(child).toMatchObject({ parentId: root.id, rootId: root.id, depth: 1 });
    expect(await code(s.service.beginTask(ctx(workload), { purpose: 'x', parentTaskId: child.id, scopes: ['write'] }))).toBe('ERR_DELEGATION_DENIED');
    const grand = await s.service.beginTask(ctx(workload), { purpose: 'tool', parentTaskId: child.id, scopes: ['read'], actor: 'tool:reader' });
    expect(await code(s.service.beginTask(ctx(workload), { purpose: 'too deep', parentTaskId: grand.id, scopes: ['read'] }))).toBe('ERR_DELEGATION_DENIED');
    expect(grand.expiresAt).toBeLessThanOrEqual(root.expiresAt);
    const t = await s.service.issueToken(ctx(workload), { taskId: grand.id, audience: 'demo-api', scopes: ['read'], tool: 'github.create_issue', argsDigest: 'sha256:abcd' });
    const claims = decodeJws(t.token).payload;
    expect(claims['act']).toEqual({ sub: 'tool:reader', act: { sub: 'agent:planner', act: { sub: workload.id } } });
    expect(claims['mayfly']).toMatchObject({ parent_tid: child.id, tool: 'github.create_issue', args_digest: 'sha256:abcd' });
    expect(await code(s.service.issueToken(ctx(workload), { taskId: grand.id, audience: 'demo-api', scopes: ['write'] }))).toBe('ERR_SCOPE_DENIED');
    const res = await s.service.completeTask(ctx(workload), { taskId: root.id });
    expect(new Set(res.taskIds)).toEqual(new Set([root.id, child.id, grand.id]));
    expect(await s.service.introspect(ctx(other), { token: t.token })).toMatchObject({ active: false, reason: 'revoked' });
  });

  it('a lapsed lease revokes the task on the next sweep', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p', leaseSeconds: 30 });
    const t = await s.service.issueToken(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['read'] });
    s.clock.advance(20_000);
    await s.service.renewTask(ctx(workload), { taskId: task.id, leaseSeconds: 30 });
    s.clock.advance(25_000);
    expect(await s.service.expireDue()).toBe(0);
    s.clock.advance(10_000);
    expect(await s.service.expireDue()).toBe(1);
    expect((await s.store.getTask(task.id))?.status).toBe('revoked');
    expect(await s.service.introspect(ctx(other), { token: t.token })).toMatchObject({ active: false, reason: 'revoked' });
    expect(s.events.at(-1)).toMatchObject({ kind: 'task', taskIds: [task.id] });
  });

  it('task tokens authenticate only for their own task, and only narrow', async () => {
    const bearerCaller = { ...workload, certThumbprint: undefined }; // e.g. a JWT-SVID caller: tokens are not certificate-bound
    const a = await s.service.beginTask(ctx(bearerCaller), { purpose: 'a' });
    const b = await s.service.beginTask(ctx(bearerCaller), { purpose: 'b' });
    const t = await s.service.issueToken(ctx(bearerCaller), { taskId: a.id, audience: 'demo-api', scopes: ['read'] });
    const id = await s.service.authenticateTaskToken(t.token);
    expect(id).toMatchObject({ id: workload.id, method: 'task-token' });
    expect(await code(s.service.completeTask(ctx(id), { taskId: b.id }))).toBe('ERR_NOT_TASK_OWNER');
    expect(await code(s.service.issueToken(ctx(id), { taskId: a.id, audience: 'demo-api', scopes: ['write'] }))).toBe('ERR_SCOPE_DENIED');
    expect(await code(s.service.issueToken(ctx(id), { taskId: a.id, audience: 'other', scopes: ['read'] }))).toBe('ERR_AUDIENCE_DENIED');
    expect(await code(s.service.beginTask(ctx(id), { purpose: 'root as owner' }))).toBe('ERR_NOT_AUTHORIZED_CLIENT');
    expect((await s.service.beginTask(ctx(id), { purpose: 'child', parentTaskId: a.id, scopes: ['read'] })).parentId).toBe(a.id);
    expect(await code(s.service.revokeIdentity(ctx({ ...id, id: 'spiffe://example.org/ops/admin' }), { identity: workload.id }))).toBe('ERR_NOT_AUTHORIZED_CLIENT');
    // A certificate-bound token is useless as a bearer without its certificate.
    const bound = await s.service.issueToken(ctx(workload), { taskId: (await s.service.beginTask(ctx(workload), { purpose: 'c' })).id, audience: 'demo-api', scopes: ['read'] });
    expect(await code(s.service.authenticateTaskToken(bound.token))).toBe('ERR_UNAUTHENTICATED');
    expect((await s.service.completeTask(ctx(id), { taskId: a.id })).revokedTokens).toBe(1);
    expect(await code(s.service.authenticateTaskToken(t.token))).toBe('ERR_UNAUTHENTICATED');
  });

  it('RevokeIdentity is admin-only and ends every live task of the identity', async () => {
    await s.service.beginTask(ctx(workload), { purpose: 'a' });
    await s.service.beginTask(ctx(workload), { purpose: 'b' });
    expect(await code(s.service.revokeIdentity(ctx(other), { identity: workload.id }))).toBe('ERR_NOT_AUTHORIZED_CLIENT');
    const admin = { ...workload, id: 'spiffe://example.org/ops/admin' };
    const res = await s.service.revokeIdentity(ctx(admin), { identity: workload.id, reason: 'compromised' });
    expect(res.taskIds).toHaveLength(2);
  });

  it('every decision audit record carries engine, revision, input digest, outcome and latency', async () => {
    await s.service.beginTask(ctx(workload), { purpose: 'p' });
    const rec = s.audit.records.at(-1)! as unknown as AuditEntry;
    expect(rec.decision).toMatchObject({ engine: 'builtin', source: 'demo', allow: true });
    expect(rec.decision!.revision).toMatch(/^[0-9a-f]{64}$/);
    expect(rec.decision!.input_sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(typeof rec.decision!.latency_us).toBe('number');
  });

  it('the active key verifies with its published JWK', async () => {
    const jwks = JSON.parse(s.keys.jwks().json) as { keys: Array<Record<string, string>> };
    const active = s.keys.active();
    const jwk = jwks.keys.find((k) => k['kid'] === active.info.kid)!;
    expect(jwk['d']).toBeUndefined();
    expect(createPublicKey({ key: jwk, format: 'jwk' }).equals(active.publicKey)).toBe(true);
    expect(jwks.keys.map((k) => k['kid'])).toContain(s.keys.list().find((k) => k.state === 'next')!.kid);
  });
});

describe('BrokerService.exchange', () => {
  let s: Awaited<ReturnType<typeof setup>>;
  beforeEach(async () => {
    s = await setup();
  });
  const activeTasks = () => s.store.dueTasks(Number.MAX_SAFE_INTEGER, 1000);

  it('begins the task and mints its token with one decision and one audit record', async () => {
    const before = s.audit.records.length;
    const t = await s.service.exchange(ctx(workload), { audience: 'demo-api', scopes: ['read', 'admin'] });
    expect(s.decisions).toEqual([true]);
    const recs = s.audit.records.slice(before);
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({ event: 'token.exchange', outcome: 'success', task_id: t.taskId, jti: t.tokenId, task_begun: true, audience: 'demo-api', scopes: ['read'] });
    expect(recs[0]!.decision).toMatchObject({ allow: true, source: 'demo', reasons: ['rule "demo" allows exchange', 'rule "demo": scopes [admin] not allowed and dropped'] });
    const task = await s.store.getTask(t.taskId);
    expect(task).toMatchObject({ owner: workload.id, status: 'active', labels: { via: 'token-exchange' }, purpose: 'token exchange for demo-api', tokensIssued: 1, scopeCeiling: null });
    expect(t.taskExpiresAt).toBe(task!.expiresAt);
    expect(await s.store.getToken(t.tokenId)).toMatchObject({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'], certThumbprint: 'thumb-1' });
    expect((await s.service.check(t.token)).active).toBe(true);
  });

  it('bounds the task it begins by the rule\'s task cap and the token by its token cap', async () => {
    const t = await s.service.exchange(ctx(workload), { audience: 'demo-api', scopes: ['read'], ttlSeconds: 3000, taskTtlSeconds: 7200, purpose: 'deploy' });
    expect((t.taskExpiresAt! - s.clock.now()) / 1000).toBe(3600);
    expect((t.expiresAt - s.clock.now()) / 1000).toBe(600);
    expect(await s.store.getTask(t.taskId)).toMatchObject({ purpose: 'deploy' });
    // Without a task TTL the task lives as long as the token asked for, within the caps.
    const u = await s.service.exchange(ctx(workload), { audience: 'demo-api', scopes: ['read'], ttlSeconds: 120 });
    expect((u.taskExpiresAt! - s.clock.now()) / 1000).toBe(120);
  });

  it('issues for an existing task with one exchange decision and no new task', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p' });
    const tasks = (await activeTasks()).length;
    const before = s.audit.records.length;
    s.decisions.length = 0;
    const t = await s.service.exchange(ctx(workload), { taskId: task.id, audience: 'demo-api', scopes: ['write'] });
    expect(t.taskId).toBe(task.id);
    expect(t.taskExpiresAt).toBeUndefined();
    expect(s.decisions).toEqual([true]);
    expect(s.audit.records.slice(before).map((r) => [r.event, r.outcome, r.task_begun])).toEqual([['token.exchange', 'success', undefined]]);
    expect((await activeTasks()).length).toBe(tasks);
    expect(await code(s.service.exchange(ctx(other), { taskId: task.id, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_NOT_TASK_OWNER');
  });

  it.each([
    ['an audience no rule allows', { audience: 'other-api', scopes: ['read'] }, 'ERR_POLICY_DENIED', workload],
    ['no allowed scope', { audience: 'demo-api', scopes: ['admin'] }, 'ERR_POLICY_DENIED', workload],
    ['an absurd token TTL', { audience: 'demo-api', scopes: ['read'], ttlSeconds: 999_999 }, 'ERR_TTL_INVALID', workload],
    ['an absurd task TTL', { audience: 'demo-api', scopes: ['read'], taskTtlSeconds: 999_999 }, 'ERR_TTL_INVALID', workload],
    ['a malformed task id', { taskId: '../x', audience: 'demo-api', scopes: ['read'] }, 'ERR_INVALID_ARGUMENT', workload],
    ['an unknown identity', { audience: 'demo-api', scopes: ['read'] }, 'ERR_POLICY_DENIED', { ...workload, id: 'spiffe://example.org/nobody' }],
  ])('refuses %s with one denied record and leaves no task behind', async (_n, params, expected, who) => {
    const before = s.audit.records.length;
    expect(await code(s.service.exchange(ctx(who), params))).toBe(expected);
    expect(s.audit.records.slice(before).map((r) => [r.event, r.outcome, r.code])).toEqual([['token.exchange', 'denied', expected]]);
    expect(await activeTasks()).toEqual([]);
  });

  it('a task token cannot begin a task by exchange, only narrow within its own', async () => {
    const task = await s.service.beginTask(ctx(workload), { purpose: 'p' });
    const unbound = await s.service.issueToken(ctx({ ...workload, certThumbprint: undefined }), { taskId: task.id, audience: 'demo-api', scopes: ['read'] });
    const holder = await s.service.authenticateTaskToken(unbound.token);
    expect(await code(s.service.exchange(ctx(holder), { audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_NOT_AUTHORIZED_CLIENT');
    expect(await code(s.service.exchange(ctx(holder), { taskId: task.id, audience: 'demo-api', scopes: ['write'] }))).toBe('ERR_SCOPE_DENIED');
    const narrowed = await s.service.exchange(ctx(holder), { taskId: task.id, audience: 'demo-api', scopes: ['read'] });
    expect(narrowed.taskId).toBe(task.id);
  });
});
