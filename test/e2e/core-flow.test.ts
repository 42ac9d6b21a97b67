/**
 * The core task lifecycle over real gRPC + mTLS: begin, issue, verify the JWT
 * against the published JWKS as a relying party would, complete, introspect;
 * then the rejections a caller can provoke, each with its exact stable code
 * and an audit record.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { create, toBinary } from '@bufbuild/protobuf';
import { createRemoteJWKSet, customFetch, decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueDevSvid, loadDevCa } from '../../src/cli/dev-init.js';
import type { BrokerClient, pb as PbNs } from '../../src/client/broker-client.js';
import type { ErrorCode } from '../../src/core/errors.js';
import { pemToDer } from '../../src/pki/dev-pki.js';
import * as pb from '../../src/gen/mayfly/v1/broker_pb.js';
import { codeOf, httpCall, protoFields, rawGrpcClient, rawUnary, startTestBroker, type TestBroker } from './helpers.js';

let tb: TestBroker;
let workload: BrokerClient;

beforeAll(async () => {
  tb = await startTestBroker({
    // The admin may also get demo-api tokens (used to check that an admin's task token is not an admin credential).
    extraRules: [{ name: 'e2e-admin-demo', match: { spiffe: 'spiffe://example.org/demo/admin' }, audiences: ['demo-api'], scopes: ['read'], max_ttl_seconds: 300 }],
  });
  workload = tb.client();
});

afterAll(async () => {
  await tb?.stop();
});

/** The one audit record written after `mark` for `event` that carries `code`. */
function auditedDenial(mark: number, event: string, code: ErrorCode): Record<string, unknown> {
  const recs = tb.auditSince(mark).filter((r) => r['event'] === event && r['code'] === code);
  expect(recs, `audit record ${event} ${code}`).toHaveLength(1);
  expect(recs[0]!['outcome']).toBe('denied');
  return recs[0]!;
}

describe('task lifecycle', () => {
  it('begins, issues a verifiable cert-bound JWT, completes (revoking it) and refuses further issuance', async () => {
    const task = await workload.beginTask({ purpose: 'e2e core flow', ttlSeconds: 600 });
    expect(task.taskId).toMatch(/^[A-Za-z0-9_-]{24}$/);

    const issued = await workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read', 'write'], ttlSeconds: 120 });
    expect(issued.tokenType).toBe('Bearer');
    expect(issued.scopes).toEqual(['read', 'write']);

    // A relying party: fetch the JWKS over HTTPS (trusting the dev CA through jose's customFetch) and verify.
    const jwks = createRemoteJWKSet(new URL(`${tb.httpUrl}/.well-known/jwks.json`), {
      [customFetch]: async (url: string) => {
        const r = await httpCall(url, tb.ca, tb.dir);
        return new Response(r.text, { status: r.status, headers: { 'content-type': 'application/json' } });
      },
    });
    const { payload, protectedHeader } = await jwtVerify(issued.token, jwks, { issuer: tb.issuer, audience: 'demo-api', typ: 'at+jwt', algorithms: ['ES256'] });
    expect(protectedHeader.typ).toBe('at+jwt');
    expect(protectedHeader.kid).toBe(tb.broker.keys.active().info.kid);
    expect(payload.iss).toBe(tb.issuer);
    expect(payload.aud).toBe('demo-api');
    expect(payload.sub).toBe('spiffe://example.org/demo/workload');
    expect(payload['scope']).toBe('read write');
    expect(payload['tid']).toBe(task.taskId);
    expect(payload.jti).toBe(issued.tokenId);
    expect(payload.exp! - payload.iat!).toBeLessThanOrEqual(120);
    const leafDer = pemToDer(readFileSync(join(tb.dir, 'workload.pem'), 'utf8'))[0]!;
    const thumb = createHash('sha256').update(leafDer).digest('base64url');
    expect((payload['cnf'] as Record<string, string>)['x5t#S256']).toBe(thumb);

    const live = await workload.introspect(issued.token);
    expect(live.active).toBe(true);
    expect(live.taskId).toBe(task.taskId);

    const done = await workload.completeTask(task.taskId);
    expect(done.revokedTokens).toBe(1);
    expect(done.taskIds).toEqual([task.taskId]);

    const after = await workload.introspect(issued.token);
    expect(after.active).toBe(false);
    expect(after.reason).toBe('revoked');

    expect(await codeOf(workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_TASK_NOT_ACTIVE');
    expect(await codeOf(workload.completeTask(task.taskId))).toBe('ERR_TASK_NOT_ACTIVE');
  });

  it('grants only the scopes policy allows: admin is dropped, read kept', async () => {
    const task = await workload.beginTask({ purpose: 'scope narrowing' });
    const issued = await workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read', 'admin'] });
    expect(issued.scopes).toEqual(['read']);
    const claims = JSON.parse((await workload.introspect(issued.token)).claimsJson) as Record<string, unknown>;
    expect(claims['scope']).toBe('read');
    // Nothing grantable at all is a denial, not an empty token.
    const mark = tb.auditMark();
    expect(await codeOf(workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['admin'] }))).toBe('ERR_POLICY_DENIED');
    auditedDenial(mark, 'token.issue', 'ERR_POLICY_DENIED');
    await workload.completeTask(task.taskId);
  });

  it('denies an audience no rule allows, with an audit record', async () => {
    const task = await workload.beginTask({ purpose: 'wrong audience' });
    const mark = tb.auditMark();
    expect(await codeOf(workload.issueToken({ taskId: task.taskId, audience: 'billing-api', scopes: ['read'] }))).toBe('ERR_POLICY_DENIED');
    const rec = auditedDenial(mark, 'token.issue', 'ERR_POLICY_DENIED');
    expect(rec['audience']).toBe('billing-api');
    expect(rec['task_id']).toBe(task.taskId);
    await workload.completeTask(task.taskId);
  });

  it('refuses another identity acting on the task (ERR_NOT_TASK_OWNER), audited', async () => {
    const task = await workload.beginTask({ purpose: 'ownership' });
    issueDevSvid(loadDevCa(tb.dir), 'spiffe://example.org/other', join(tb.dir, 'other'));
    const other = tb.client('other');
    const mark = tb.auditMark();
    expect(await codeOf(other.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_NOT_TASK_OWNER');
    const rec = auditedDenial(mark, 'token.issue', 'ERR_NOT_TASK_OWNER');
    expect((rec['identity'] as Record<string, unknown>)['id']).toBe('spiffe://example.org/other');
    expect(rec['task_owner']).toBe('spiffe://example.org/demo/workload');
    expect(await codeOf(other.completeTask(task.taskId))).toBe('ERR_NOT_TASK_OWNER');
    // The owner's task is untouched.
    const issued = await workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
    expect((await workload.introspect(issued.token)).active).toBe(true);
    await workload.completeTask(task.taskId);
  });
});

describe('delegation', () => {
  it('child tasks narrow scopes, carry the actor chain, respect the depth limit and end with the root', async () => {
    const root = await workload.beginTask({ purpose: 'agent run', scopes: ['read', 'write'] });
    const child = await workload.beginTask({ purpose: 'sub-agent', parentTaskId: root.taskId, scopes: ['read'], actor: 'agent:planner' });
    expect(child.depth).toBe(1);
    expect(child.parentTaskId).toBe(root.taskId);
    expect(child.expiresAt).toBeLessThanOrEqual(root.expiresAt);
    expect(await codeOf(workload.issueToken({ taskId: child.taskId, audience: 'demo-api', scopes: ['write'] }))).toBe('ERR_SCOPE_DENIED');
    const childTok = await workload.issueToken({ taskId: child.taskId, audience: 'demo-api', scopes: ['read'] });
    const claims = decodeJwt(childTok.token);
    expect(claims['act']).toEqual({ sub: 'agent:planner', act: { sub: 'spiffe://example.org/demo/workload' } });
    expect((claims['mayfly'] as Record<string, unknown>)['parent_tid']).toBe(root.taskId);

    expect(await codeOf(workload.beginTask({ purpose: 'wider', parentTaskId: child.taskId, scopes: ['write'] }))).toBe('ERR_DELEGATION_DENIED');
    const grandchild = await workload.beginTask({ purpose: 'sub-sub-agent', parentTaskId: child.taskId, scopes: ['read'] });
    expect(grandchild.depth).toBe(2);
    // The demo rule allows max_delegation_depth 2.
    expect(await codeOf(workload.beginTask({ purpose: 'too deep', parentTaskId: grandchild.taskId, scopes: ['read'] }))).toBe('ERR_POLICY_DENIED');
    const gcTok = await workload.issueToken({ taskId: grandchild.taskId, audience: 'demo-api', scopes: ['read'] });

    const done = await workload.completeTask(root.taskId);
    expect([...done.taskIds].sort()).toEqual([root.taskId, child.taskId, grandchild.taskId].sort());
    expect(done.revokedTokens).toBe(2);
    for (const t of [childTok, gcTok]) expect((await workload.introspect(t.token)).reason).toBe('revoked');
    expect(await codeOf(workload.beginTask({ purpose: 'late child', parentTaskId: root.taskId, scopes: ['read'] }))).toBe('ERR_TASK_NOT_ACTIVE');
  });
});

describe('a task token presented back to the broker as bearer', () => {
  it('a certificate-bound token is no bearer credential: without its certificate it authenticates nowhere', async () => {
    const t1 = await workload.beginTask({ purpose: 'bearer task 1' });
    const tok1 = await workload.issueToken({ taskId: t1.taskId, audience: 'demo-api', scopes: ['read'] });
    const holder = tb.client({ bearer: tok1.token });
    expect(await codeOf(holder.issueToken({ taskId: t1.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_UNAUTHENTICATED');
    expect(await codeOf(holder.completeTask(t1.taskId))).toBe('ERR_UNAUTHENTICATED');
    const done = await tb.http('/v1/tasks/complete', { json: {}, bearer: tok1.token });
    expect(done.status).toBe(401);
    expect(done.json).toMatchObject({ error: 'ERR_UNAUTHENTICATED' });
    // Task-token holders acting on their own task only (unbound tokens) is covered in federation.test.ts.
    await workload.completeTask(t1.taskId);
  });

  it('a malformed Authorization header → ERR_UNAUTHENTICATED, audited as auth.failure', async () => {
    const mark = tb.auditMark();
    const r = await tb.http('/v1/tasks/complete', { json: {}, bearer: 'not a token' });
    expect(r.status).toBe(401);
    expect(r.json).toMatchObject({ error: 'ERR_UNAUTHENTICATED' });
    expect(tb.auditSince(mark).filter((x) => x['event'] === 'auth.failure').map((x) => x['code'])).toEqual(['ERR_UNAUTHENTICATED']);
  });

  // Regression: a relying party that received a read token bound to the workload's certificate
  // (cnf.x5t#S256) must not mint a write token on the task, or start tasks as the workload.
  it('cannot widen its own scope or start tasks as the owner (cert-bound token, no certificate)', async () => {
    const t = await workload.beginTask({ purpose: 'bearer escalation' });
    const read = await workload.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    const relyingParty = tb.client({ bearer: read.token });
    try {
      expect(await codeOf(relyingParty.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['write'] }))).toMatch(/^ERR_(UNAUTHENTICATED|SCOPE_DENIED|NOT_TASK_OWNER)$/);
      expect(await codeOf(relyingParty.beginTask({ purpose: 'started by a relying party' }))).toMatch(/^ERR_(UNAUTHENTICATED|NOT_TASK_OWNER|POLICY_DENIED)$/);
    } finally {
      await workload.completeTask(t.taskId);
    }
  });
});

describe('revocation feed, leases and admin revocation', () => {
  /** Opens WatchRevocations as the relying party and collects events until `until` holds. */
  function watch(until: (events: PbNs.RevocationEvent[]) => boolean): { done: Promise<PbNs.RevocationEvent[]>; cancel(): void } {
    const rp = tb.client('relying-party');
    const events: PbNs.RevocationEvent[] = [];
    let call: ReturnType<BrokerClient['watchRevocations']> | undefined;
    const done = new Promise<PbNs.RevocationEvent[]>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`feed: condition not met; got ${JSON.stringify(events.map((e) => [e.kind, e.taskIds]))}`)), 8000);
      call = rp.watchRevocations(
        { cursor: 0, subscriberId: `e2e-${Math.random().toString(36).slice(2)}` },
        (e) => {
          events.push(e);
          if (until(events)) {
            clearTimeout(timer);
            resolve(events);
          }
        },
        (err) => {
          if (err) {
            clearTimeout(timer);
            reject(err);
          }
        },
      );
    });
    return { done, cancel: () => call?.cancel() };
  }

  it('completing a task is pushed to a feed subscriber (task event naming the task; relying parties revoke by tid)', async () => {
    const t = await workload.beginTask({ purpose: 'feed' });
    const a = await workload.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    const b = await workload.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['write'] });
    const w = watch((es) => es.some((e) => e.taskIds.includes(t.taskId)));
    try {
      // Give the stream a moment to attach before the event happens; a resume from cursor 0 would replay it anyway.
      await new Promise((r) => setTimeout(r, 100));
      await workload.completeTask(t.taskId);
      const events = await w.done;
      const ev = events.find((e) => e.taskIds.includes(t.taskId))!;
      expect(ev.kind).toBe(1); // KIND_TASK
      expect(ev.taskIds).toEqual([t.taskId]);
      expect(ev.reason).toMatch(/completed/);
      // The tokens it covers are the ones whose tid is the task.
      for (const tok of [a, b]) {
        expect(decodeJwt(tok.token)['tid']).toBe(t.taskId);
        expect((await workload.introspect(tok.token)).reason).toBe('revoked');
      }
      expect(ev.cursor).toBeGreaterThan(0n);
    } finally {
      w.cancel();
    }
  });

  it('a lapsed lease ends the task: issuance refused at once, tokens revoked by the sweep', async () => {
    const t = await workload.beginTask({ purpose: 'leased', leaseSeconds: 1 });
    expect(t.leaseExpiresAt).toBeGreaterThan(0n);
    const tok = await workload.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    const renewed = await workload.renewTask(t.taskId, 1);
    expect(renewed.leaseExpiresAt).toBeGreaterThanOrEqual(t.leaseExpiresAt);
    await new Promise((r) => setTimeout(r, 1300));
    expect(await codeOf(workload.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_TASK_NOT_ACTIVE');
    expect(await codeOf(workload.renewTask(t.taskId, 30))).toBe('ERR_TASK_NOT_ACTIVE');
    // The sweep runs every second (tasks.sweep_interval_ms).
    let r = await workload.introspect(tok.token);
    for (let i = 0; i < 30 && r.active; i++) {
      await new Promise((res) => setTimeout(res, 100));
      r = await workload.introspect(tok.token);
    }
    expect(r.active).toBe(false);
    expect(r.reason).toBe('revoked');
    expect(tb.audit().some((x) => x['event'] === 'task.expire' && x['task_id'] === t.taskId && x['reason'] === 'lease lapsed')).toBe(true);
  });

  it('RevokeIdentity: refused for non-admins, ends every live task of the identity for an admin', async () => {
    issueDevSvid(loadDevCa(tb.dir), 'spiffe://example.org/victim', join(tb.dir, 'victim'));
    const victimRule = tb.client('victim');
    // The victim has no rule: it cannot begin tasks; use the workload's own tasks instead.
    expect(await codeOf(victimRule.beginTask({ purpose: 'no rule' }))).toBe('ERR_POLICY_DENIED');
    expect(await codeOf(workload.revokeIdentity('spiffe://example.org/demo/workload'))).toBe('ERR_NOT_AUTHORIZED_CLIENT');
    const admin = tb.client('admin');
    const t1 = await workload.beginTask({ purpose: 'to be revoked 1' });
    const t2 = await workload.beginTask({ purpose: 'to be revoked 2' });
    const tok = await workload.issueToken({ taskId: t1.taskId, audience: 'demo-api', scopes: ['read'] });
    const res = await admin.revokeIdentity('spiffe://example.org/demo/workload', 'e2e');
    expect(res.revokedTasks).toBeGreaterThanOrEqual(2);
    expect(res.revokedTokens).toBeGreaterThanOrEqual(1);
    expect((await workload.introspect(tok.token)).reason).toBe('revoked');
    expect(await codeOf(workload.issueToken({ taskId: t2.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_TASK_NOT_ACTIVE');
    // The identity itself is not banned: new tasks still work.
    const t3 = await workload.beginTask({ purpose: 'after revocation' });
    await workload.completeTask(t3.taskId);
  });

  it('admin HTTP endpoints: admin certificate only, never a task token', async () => {
    const asWorkload = await tb.http('/admin/keys/rotate', { method: 'POST', cert: 'workload' });
    expect(asWorkload.status).toBe(403);
    expect(asWorkload.json).toMatchObject({ error: 'ERR_NOT_AUTHORIZED_CLIENT' });
    const admin = tb.client('admin');
    const t = await admin.beginTask({ purpose: 'admin task' });
    const adminTok = await admin.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    const viaToken = await tb.http('/admin/keys/rotate', { method: 'POST', bearer: adminTok.token });
    expect(viaToken.status).toBe(401); // certificate-bound: not even a credential without the admin certificate
    await admin.completeTask(t.taskId);
  });

  // Regression: whoever holds a token issued to an admin's task (e.g. the relying party it was sent to)
  // must not be able to call RevokeIdentity as that admin.
  it("an admin's task token is not an admin credential on gRPC RevokeIdentity", async () => {
    const admin = tb.client('admin');
    const t = await admin.beginTask({ purpose: 'admin task 2' });
    const adminTok = await admin.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    const relyingParty = tb.client({ bearer: adminTok.token });
    try {
      expect(await codeOf(relyingParty.revokeIdentity('spiffe://example.org/nobody', 'from a relying party'))).toBe('ERR_UNAUTHENTICATED');
    } finally {
      await admin.completeTask(t.taskId);
    }
  });
});

describe('bad input', () => {
  let taskId: string;
  beforeAll(async () => {
    taskId = (await workload.beginTask({ purpose: 'bad input table' })).taskId;
  });

  const cases: Array<{ name: string; event: string; code: ErrorCode; call: () => Promise<unknown> }> = [
    { name: 'empty purpose', event: 'task.begin', code: 'ERR_INVALID_ARGUMENT', call: () => workload.beginTask({ purpose: '' }) },
    { name: 'whitespace-only purpose', event: 'task.begin', code: 'ERR_INVALID_ARGUMENT', call: () => workload.beginTask({ purpose: '   ' }) },
    { name: 'purpose with control characters', event: 'task.begin', code: 'ERR_INVALID_ARGUMENT', call: () => workload.beginTask({ purpose: 'a\u0000b' }) },
    { name: 'purpose over 256 characters', event: 'task.begin', code: 'ERR_TOO_LARGE', call: () => workload.beginTask({ purpose: 'p'.repeat(257) }) },
    { name: 'absurd task ttl (10^9 s)', event: 'task.begin', code: 'ERR_TTL_INVALID', call: () => workload.beginTask({ purpose: 'x', ttlSeconds: 1_000_000_000 }) },
    { name: 'absurd token ttl (10^9 s)', event: 'token.issue', code: 'ERR_TTL_INVALID', call: () => workload.issueToken({ taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 1_000_000_000 }) },
    { name: 'unknown task id', event: 'token.issue', code: 'ERR_TASK_NOT_FOUND', call: () => workload.issueToken({ taskId: 'AAAAAAAAAAAAAAAAAAAAAAAA', audience: 'demo-api', scopes: ['read'] }) },
    { name: 'malformed task id', event: 'token.issue', code: 'ERR_INVALID_ARGUMENT', call: () => workload.issueToken({ taskId: '../../etc/passwd', audience: 'demo-api', scopes: ['read'] }) },
    { name: 'empty task id', event: 'token.issue', code: 'ERR_INVALID_ARGUMENT', call: () => workload.issueToken({ taskId: '', audience: 'demo-api', scopes: ['read'] }) },
    { name: 'malformed parent task id', event: 'task.begin', code: 'ERR_INVALID_ARGUMENT', call: () => workload.beginTask({ purpose: 'x', parentTaskId: 'no such/id' }) },
    { name: 'audience with whitespace', event: 'token.issue', code: 'ERR_AUDIENCE_INVALID', call: () => workload.issueToken({ taskId, audience: 'demo api', scopes: ['read'] }) },
    { name: 'invalid scope token (quote)', event: 'token.issue', code: 'ERR_SCOPE_INVALID', call: () => workload.issueToken({ taskId, audience: 'demo-api', scopes: ['re"ad'] }) },
    { name: 'invalid scope token (space)', event: 'token.issue', code: 'ERR_SCOPE_INVALID', call: () => workload.issueToken({ taskId, audience: 'demo-api', scopes: ['read write'] }) },
    { name: 'invalid begin scopes', event: 'task.begin', code: 'ERR_SCOPE_INVALID', call: () => workload.beginTask({ purpose: 'x', scopes: ['a\\b'] }) },
    { name: 'bad label key', event: 'task.begin', code: 'ERR_INVALID_ARGUMENT', call: () => workload.beginTask({ purpose: 'x', labels: { 'Bad Key': 'v' } }) },
    { name: 'introspect without a token', event: 'token.introspect', code: 'ERR_INVALID_ARGUMENT', call: () => workload.introspect('') },
  ];

  for (const c of cases) {
    it(`${c.name} → ${c.code}, audited`, async () => {
      const mark = tb.auditMark();
      expect(await codeOf(c.call())).toBe(c.code);
      auditedDenial(mark, c.event, c.code);
    });
  }

  it('a message over 64 KiB → RESOURCE_EXHAUSTED (ERR_TOO_LARGE) and the broker keeps serving', async () => {
    expect(await codeOf(workload.beginTask({ purpose: 'x'.repeat(65 * 1024) }))).toBe('ERR_TOO_LARGE');
    const c = rawGrpcClient(tb);
    try {
      const bytes = Buffer.from(toBinary(pb.BeginTaskRequestSchema, create(pb.BeginTaskRequestSchema, { purpose: 'y'.repeat(70 * 1024) })));
      const r = await rawUnary(c, '/mayfly.v1.Broker/BeginTask', bytes);
      expect(r.error?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    } finally {
      c.close();
    }
    expect((await workload.ping()) !== undefined).toBe(true);
  });

  it('malformed protobuf bytes → INVALID_ARGUMENT with ERR_INVALID_ARGUMENT', async () => {
    const c = rawGrpcClient(tb);
    try {
      for (const method of ['BeginTask', 'IssueToken', 'Introspect']) {
        const r = await rawUnary(c, `/mayfly.v1.Broker/${method}`, Buffer.from([0xff, 0xff, 0xff]));
        expect(r.error?.code, method).toBe(grpc.status.INVALID_ARGUMENT);
        expect(r.error?.metadata.get('mayfly-error-code')[0], method).toBe('ERR_INVALID_ARGUMENT');
      }
    } finally {
      c.close();
    }
  });

  it('an unknown method → UNIMPLEMENTED', async () => {
    const c = rawGrpcClient(tb);
    try {
      const r = await rawUnary(c, '/mayfly.v1.Broker/NoSuchMethod', Buffer.alloc(0));
      expect(r.error?.code).toBe(grpc.status.UNIMPLEMENTED);
    } finally {
      c.close();
    }
  });
});

describe('standard gRPC services', () => {
  it('health check reports SERVING for the server and for mayfly.v1.Broker', async () => {
    const c = rawGrpcClient(tb);
    try {
      for (const service of ['', 'mayfly.v1.Broker']) {
        const req = service === '' ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a, service.length]), Buffer.from(service)]);
        const r = await rawUnary(c, '/grpc.health.v1.Health/Check', req);
        expect(r.error, service).toBeNull();
        // HealthCheckResponse { status = 1 }: SERVING = 1.
        expect(protoFields(r.response!)).toEqual([{ field: 1, wire: 0, value: 1 }]);
      }
      const unknown = await rawUnary(c, '/grpc.health.v1.Health/Check', Buffer.concat([Buffer.from([0x0a, 4]), Buffer.from('nope')]));
      expect(unknown.error?.code).toBe(grpc.status.NOT_FOUND);
    } finally {
      c.close();
    }
  });

  it('server reflection lists mayfly.v1.Broker', async () => {
    const c = rawGrpcClient(tb);
    try {
      const names = await new Promise<string[]>((resolve, reject) => {
        const call = c.makeBidiStreamRequest(
          '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
          (b: Buffer) => b,
          (b: Buffer) => b,
          new grpc.Metadata(),
          { deadline: Date.now() + 10_000 },
        );
        call.on('data', (b: Buffer) => {
          // ServerReflectionResponse.list_services_response = 6 { repeated ServiceResponse service = 1 { string name = 1 } }
          const list = protoFields(b).find((f) => f.field === 6);
          const services = list ? protoFields(list.value as Buffer).filter((f) => f.field === 1) : [];
          resolve(services.map((s) => (protoFields(s.value as Buffer)[0]!.value as Buffer).toString('utf8')));
          call.end();
        });
        call.on('error', reject);
        // ServerReflectionRequest.list_services = 7 (string, "" = all)
        call.write(Buffer.from([0x3a, 0x00]));
      });
      expect(names).toContain('mayfly.v1.Broker');
    } finally {
      c.close();
    }
  });

  it('the HTTP listener serves JWKS, discovery and health over the same dev CA', async () => {
    const jwks = await tb.http('/.well-known/jwks.json');
    expect(jwks.status).toBe(200);
    const kids = ((jwks.json!['keys'] as Array<Record<string, unknown>>) ?? []).map((k) => k['kid']);
    expect(kids).toContain(tb.broker.keys.active().info.kid);
    for (const k of jwks.json!['keys'] as Array<Record<string, unknown>>) expect(k['d']).toBeUndefined();
    const disco = await tb.http('/.well-known/openid-configuration');
    expect(disco.json!['issuer']).toBe(tb.issuer);
    // Only what the broker does: the token exchange, no authorization endpoint, no ID tokens, no JWT client auth.
    expect(disco.json!['grant_types_supported']).toEqual(['urn:ietf:params:oauth:grant-type:token-exchange']);
    expect(disco.json!['response_types_supported']).toEqual([]);
    expect(disco.json!['id_token_signing_alg_values_supported']).toBeUndefined();
    expect(disco.json!['token_endpoint_auth_signing_alg_values_supported']).toBeUndefined();
    expect(disco.json!['token_endpoint_auth_methods_supported']).toEqual(['none', 'tls_client_auth']);
    const health = await tb.http('/healthz');
    expect(health.status).toBe(200);
    expect(health.json!['status']).toBe('ok');
  });

  it('tokens carry the kid of the published key', async () => {
    const task = await workload.beginTask({ purpose: 'kid' });
    const issued = await workload.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
    expect(decodeProtectedHeader(issued.token).kid).toBe(tb.broker.keys.active().info.kid);
    await workload.completeTask(task.taskId);
  });
});
