/**
 * OIDC federation end to end: a GitHub-shaped issuer on its own HTTPS JWKS,
 * the broker configured for it with a claim-matching rule, and RFC 8693
 * token exchange driven exactly as curl would (form posts over node:https),
 * through task completion and introspection; the same OIDC token as a gRPC
 * bearer; and the shipped `mayfly exchange` CLI.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeSelfSignedCert } from '../helpers/https-jwks.js';
import { TestIssuer, type TestKey } from '../helpers/test-issuer.js';
import { codeOf, startTestBroker, type HttpResult, type TestBroker } from './helpers.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const AUD = 'https://deploy.acme.internal';

let issuer: TestIssuer;
let key: TestKey;
let tb: TestBroker;

beforeAll(async () => {
  const cert = makeSelfSignedCert();
  issuer = await new TestIssuer(cert).start();
  key = issuer.addKey('RS256');
  tb = await startTestBroker({
    configPatch: (cfg, dir) => {
      writeFileSync(join(dir, 'issuer-ca.pem'), cert.cert);
      cfg['oidc'] = {
        issuers: [{ name: 'gha', issuer: issuer.issuer, audiences: ['mayfly'], jwks_uri: issuer.server.jwksUri, ca_file: 'issuer-ca.pem' }],
      };
    },
    extraRules: [
      {
        name: 'gha-deploy',
        match: { oidc: { issuer: issuer.issuer, claims: { repository: 'acme/api', ref: 'refs/heads/main', environment: 'prod' } } },
        actions: ['begin_task', 'issue_token', 'exchange'],
        audiences: [AUD],
        scopes: ['deploy', 'read'],
        max_ttl_seconds: 600,
      },
      {
        name: 'gha-exchange-only',
        match: { oidc: { issuer: issuer.issuer, claims: { repository: 'acme/web' } } },
        actions: ['exchange'],
        audiences: [AUD],
        scopes: ['deploy'],
        max_ttl_seconds: 300,
        max_task_ttl_seconds: 900,
      },
    ],
  });
});

afterAll(async () => {
  await tb?.stop();
  await issuer?.close();
});

const mint = (claims: Record<string, unknown> = {}, nowMs = Date.now()) => issuer.mint({ kid: key.kid, nowMs, claims });

const exchange = (form: Record<string, string>): Promise<HttpResult> => tb.http('/oauth2/token', { form });

const exchangeForm = (subject: string, extra: Record<string, string> = {}) => ({
  grant_type: GRANT,
  subject_token: subject,
  subject_token_type: JWT_TYPE,
  audience: AUD,
  scope: 'deploy',
  ...extra,
});

function b64url(o: unknown): string {
  return Buffer.from(JSON.stringify(o)).toString('base64url');
}

describe('RFC 8693 token exchange over HTTPS', () => {
  it('writes exactly one audit record per exchange request, whatever the outcome', async () => {
    const requestRecords = async (form: Record<string, string>) => {
      const mark = tb.auditMark();
      const r = await exchange(form);
      return { r, recs: tb.auditSince(mark).filter((x) => x['request_id'] !== undefined) };
    };
    const begun = await requestRecords(exchangeForm(mint()));
    expect(begun.r.status, begun.r.text).toBe(200);
    expect(begun.recs.map((x) => [x['event'], x['outcome']])).toEqual([['token.exchange', 'success']]);
    expect(begun.recs[0]).toMatchObject({ task_id: begun.r.json!['mayfly_task_id'], task_begun: true });

    const again = await requestRecords(exchangeForm(mint(), { mayfly_task_id: begun.r.json!['mayfly_task_id'] as string }));
    expect(again.r.status, again.r.text).toBe(200);
    expect(again.recs.map((x) => [x['event'], x['outcome']])).toEqual([['token.exchange', 'success']]);

    const denied = await requestRecords(exchangeForm(mint(), { audience: 'demo-api' }));
    expect(denied.r.status).toBe(400);
    expect(denied.recs.map((x) => [x['event'], x['outcome'], x['code']])).toEqual([['token.exchange', 'denied', 'ERR_POLICY_DENIED']]);

    const unauthenticated = await requestRecords(exchangeForm(mint({}, Date.now() - 3600_000)));
    expect(unauthenticated.r.status).toBe(400);
    expect(unauthenticated.recs.map((x) => [x['event'], x['code']])).toEqual([['auth.failure', 'ERR_JWT_EXPIRED']]);
  });

  it('the same subject token exchanged again (verified before): each request still gets its own policy decision, task, token and audit record', async () => {
    const subject = mint();
    const results = [];
    for (let i = 0; i < 3; i++) {
      const mark = tb.auditMark();
      const r = await exchange(exchangeForm(subject));
      expect(r.status, r.text).toBe(200);
      const recs = tb.auditSince(mark).filter((x) => x['request_id'] !== undefined);
      expect(recs.map((x) => [x['event'], x['outcome']])).toEqual([['token.exchange', 'success']]);
      expect(recs[0]!['decision']).toMatchObject({ allow: true });
      results.push(r.json!);
    }
    expect(new Set(results.map((j) => j['mayfly_task_id'])).size).toBe(3);
    expect(new Set(results.map((j) => j['access_token'])).size).toBe(3);
    // Policy still decides per request: the same token asking for an audience no rule allows is denied and audited.
    const mark = tb.auditMark();
    const denied = await exchange(exchangeForm(subject, { audience: 'demo-api' }));
    expect(denied.status).toBe(400);
    expect(tb.auditSince(mark).filter((x) => x['request_id'] !== undefined).map((x) => [x['event'], x['code']])).toEqual([['token.exchange', 'ERR_POLICY_DENIED']]);
  });

  it('a rule that allows only `exchange` allows the whole exchange: the task it begins and its token', async () => {
    const r = await exchange(exchangeForm(mint({ repository: 'acme/web' }), { mayfly_task_ttl: '3600' }));
    expect(r.status, r.text).toBe(200);
    expect(r.json!['expires_in']).toBeLessThanOrEqual(300);
    // The task is bounded by the rule's max_task_ttl_seconds, not by the token's cap or the request.
    const taskSeconds = (r.json!['mayfly_task_expires_at'] as number) - Math.floor(Date.now() / 1000);
    expect(taskSeconds).toBeGreaterThan(850);
    expect(taskSeconds).toBeLessThanOrEqual(900);
  });

  it('exchanges a matching CI token for a task token, completes the task with it, and introspection says inactive', async () => {
    const subject = mint();
    const r = await exchange(exchangeForm(subject, { scope: 'deploy admin' }));
    expect(r.status, r.text).toBe(200);
    expect(r.headers['cache-control']).toBe('no-store');
    const body = r.json!;
    expect(Object.keys(body).sort()).toEqual(['access_token', 'expires_in', 'issued_token_type', 'mayfly_task_expires_at', 'mayfly_task_id', 'scope', 'token_type']);
    expect(body['issued_token_type']).toBe(ACCESS_TYPE);
    expect(body['token_type']).toBe('Bearer');
    expect(body['scope']).toBe('deploy');
    expect(body['expires_in']).toBeGreaterThan(0);
    expect(body['expires_in']).toBeLessThanOrEqual(600);
    const access = body['access_token'] as string;
    const claims = decodeJwt(access);
    expect(claims.iss).toBe(tb.issuer);
    expect(claims.aud).toBe(AUD);
    expect(claims.sub).toBe(`${issuer.issuer}#repo:acme/api:environment:prod`);
    expect(claims['tid']).toBe(body['mayfly_task_id']);
    expect(claims['cnf']).toBeUndefined();

    const live = await tb.http('/oauth2/introspect', { form: { token: access }, cert: 'relying-party' });
    expect(live.status).toBe(200);
    expect(live.json).toMatchObject({ active: true, tid: body['mayfly_task_id'], scope: 'deploy', token_type: 'Bearer' });

    const done = await tb.http('/v1/tasks/complete', { json: {}, bearer: access });
    expect(done.status, done.text).toBe(200);
    expect(done.json).toMatchObject({ task_id: body['mayfly_task_id'], revoked_tokens: 1 });

    const dead = await tb.http('/oauth2/introspect', { form: { token: access }, cert: 'relying-party' });
    expect(dead.status).toBe(200);
    expect(dead.json).toEqual({ active: false, mayfly_reason: 'revoked' });

    // The audit log has the exchange, with the subject token only as a hash.
    const audit = tb.audit();
    const ex = audit.filter((x) => x['event'] === 'token.exchange' && x['outcome'] === 'success');
    expect(ex.length).toBeGreaterThanOrEqual(1);
    const text = JSON.stringify(audit);
    expect(text.includes(subject)).toBe(false);
    expect(text.includes(access)).toBe(false);
  });

  it('a claim that does not match the rule (ref) → 400 unauthorized_client naming the claim', async () => {
    const mark = tb.auditMark();
    const r = await exchange(exchangeForm(mint({ ref: 'refs/heads/feature-x' })));
    expect(r.status).toBe(400);
    expect(r.json!['error']).toBe('unauthorized_client');
    expect(r.json!['mayfly_code']).toBe('ERR_POLICY_DENIED');
    expect(r.json!['error_description']).toMatch(/claim ref "refs\/heads\/feature-x" does not match/);
    expect(r.json!['error_description']).not.toMatch(/claim (repository|environment)/);
    expect(tb.auditSince(mark).some((x) => x['code'] === 'ERR_POLICY_DENIED' && x['outcome'] === 'denied')).toBe(true);
  });

  it('an audience the rule does not allow → 400 unauthorized_client', async () => {
    const r = await exchange(exchangeForm(mint(), { audience: 'demo-api' }));
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'unauthorized_client', mayfly_code: 'ERR_POLICY_DENIED' });
  });

  it('an expired subject token → 400 invalid_grant, audited as auth.failure', async () => {
    const mark = tb.auditMark();
    const old = mint({}, Date.now() - 3600_000);
    const r = await exchange(exchangeForm(old));
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'invalid_grant', mayfly_code: 'ERR_JWT_EXPIRED' });
    const recs = tb.auditSince(mark).filter((x) => x['event'] === 'auth.failure');
    expect(recs.map((x) => x['code'])).toEqual(['ERR_JWT_EXPIRED']);
    expect(recs[0]!['token_sha256']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('an alg none token → 400 invalid_grant', async () => {
    const now = Math.floor(Date.now() / 1000);
    const claims = decodeJwt(mint());
    const unsigned = `${b64url({ alg: 'none', typ: 'JWT', kid: key.kid })}.${b64url({ ...claims, iat: now, exp: now + 300 })}.`;
    const r = await exchange(exchangeForm(unsigned));
    expect(r.status).toBe(400);
    expect(r.json!['error']).toBe('invalid_grant');
    expect(r.json!['mayfly_code']).toBe('ERR_JWT_INVALID');
  });

  it('a token signed by an unpublished key → 400 invalid_grant', async () => {
    const rogue = issuer.addKey('RS256', { publish: false });
    const r = await exchange(exchangeForm(issuer.mint({ kid: rogue.kid, nowMs: Date.now() })));
    expect(r.status).toBe(400);
    expect(r.json!['error']).toBe('invalid_grant');
  });

  it('a tampered payload (signature no longer matches) → 400 invalid_grant', async () => {
    const [h, , s] = mint().split('.');
    const forged = `${h}.${b64url({ ...decodeJwt(mint()), ref: 'refs/heads/main', repository: 'acme/api', environment: 'prod', sub: 'repo:acme/other' })}.${s}`;
    const r = await exchange(exchangeForm(forged));
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'invalid_grant', mayfly_code: 'ERR_JWT_SIGNATURE' });
  });

  it('missing subject_token → 400 invalid_request', async () => {
    const form = exchangeForm('x');
    delete (form as Record<string, string>)['subject_token'];
    const r = await exchange(form);
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_INVALID_ARGUMENT' });
  });

  it('unsupported subject_token_type → 400 invalid_request', async () => {
    const r = await exchange(exchangeForm(mint(), { subject_token_type: 'urn:ietf:params:oauth:token-type:saml2' }));
    expect(r.status).toBe(400);
    expect(r.json!['error']).toBe('invalid_request');
  });

  it('a bad grant_type → 400 unsupported_grant_type', async () => {
    const r = await exchange(exchangeForm(mint(), { grant_type: 'client_credentials' }));
    expect(r.status).toBe(400);
    expect(r.json!['error']).toBe('unsupported_grant_type');
  });

  it('a repeated parameter → 400 invalid_request', async () => {
    const rawForm = `${new URLSearchParams(exchangeForm(mint())).toString()}&audience=other`;
    const r = await tb.http('/oauth2/token', { rawForm });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_INVALID_ARGUMENT' });
    expect(r.json!['error_description']).toContain('audience');
  });

  it('a JSON body, or none, on any OAuth endpoint → 400 invalid_request before anyone is authenticated', async () => {
    const mark = tb.auditMark();
    for (const path of ['/oauth2/token', '/oauth2/introspect', '/oauth2/revoke']) {
      const asJson = await tb.http(path, { json: exchangeForm(mint()) });
      expect(asJson.status, path).toBe(400);
      expect(asJson.headers['cache-control']).toBe('no-store');
      expect(asJson.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_INVALID_ARGUMENT' });
      const empty = await tb.http(path, { method: 'POST' });
      expect(empty.status, path).toBe(400);
      expect(empty.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_INVALID_ARGUMENT' });
    }
    expect(tb.auditSince(mark).filter((r) => r['event'] === 'token.exchange' || r['event'] === 'auth.failure')).toEqual([]);
  });

  it('percent-encoded and plus-encoded form values are decoded (scope "deploy read", an escaped audience)', async () => {
    const plain = new URLSearchParams(exchangeForm(mint(), { scope: 'deploy read' })).toString();
    const form = plain.replace(`audience=${AUD}`, `audience=${[...AUD].map((c) => `%${c.charCodeAt(0).toString(16)}`).join('')}`);
    expect(form).toContain('scope=deploy+read');
    expect(form).not.toContain(`audience=${AUD}`);
    const r = await tb.http('/oauth2/token', { rawForm: form });
    expect(r.status).toBe(200);
    expect(r.json!['scope']).toBe('deploy read');
  });

  it('a body over 64 KiB → 400 invalid_request with ERR_TOO_LARGE', async () => {
    const r = await exchange(exchangeForm(mint(), { mayfly_purpose: 'p'.repeat(70 * 1024) }));
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_TOO_LARGE' });
  });

  it('an oversized subject token (over 16 KiB) → 400 invalid_grant', async () => {
    const huge = mint({ padding: 'x'.repeat(20 * 1024) });
    const r = await exchange(exchangeForm(huge));
    expect(r.status).toBe(400);
    expect(r.json!['error']).toBe('invalid_grant');
    expect(r.json!['mayfly_code']).toMatch(/^ERR_(JWT_INVALID|TOO_LARGE)$/);
  });

  it('requested_lifetime is capped by the rule (600 s) and absurd values are refused', async () => {
    const ok = await exchange(exchangeForm(mint(), { requested_lifetime: '3000' }));
    expect(ok.status, ok.text).toBe(200);
    expect(ok.json!['expires_in']).toBeLessThanOrEqual(600);
    await tb.http('/v1/tasks/complete', { json: {}, bearer: ok.json!['access_token'] as string });
    const absurd = await exchange(exchangeForm(mint(), { requested_lifetime: '999999999' }));
    expect(absurd.status).toBe(400);
    expect(absurd.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_TTL_INVALID' });
    const notNumber = await exchange(exchangeForm(mint(), { requested_lifetime: '10m' }));
    expect(notNumber.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_TTL_INVALID' });
  });

  it('an invalid scope token → 400 invalid_scope', async () => {
    const r = await exchange(exchangeForm(mint(), { scope: 'deploy "bad' }));
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'invalid_scope', mayfly_code: 'ERR_SCOPE_INVALID' });
  });
});

describe('the exchanged access token handed to a relying party', () => {
  // A task token authenticates as the task owner, limited to its task: a relying party holding it can only
  // narrow (same audience, a subset of its scopes, on its own task), never widen or start new tasks.
  it('cannot be re-exchanged for wider scopes on its task, nor start a new task', async () => {
    const first = await exchange(exchangeForm(mint(), { scope: 'deploy' }));
    expect(first.status).toBe(200);
    const access = first.json!['access_token'] as string;
    const taskId = first.json!['mayfly_task_id'] as string;
    try {
      const wider = await exchange({ grant_type: GRANT, subject_token: access, subject_token_type: ACCESS_TYPE, audience: AUD, scope: 'read', mayfly_task_id: taskId });
      expect(wider.status).toBe(400);
      // A task token only narrows: same audience, a subset of its scopes, on its own task.
      expect(wider.json).toMatchObject({ error: 'invalid_scope', mayfly_code: 'ERR_SCOPE_DENIED' });
      const fresh = await exchange({ grant_type: GRANT, subject_token: access, subject_token_type: ACCESS_TYPE, audience: AUD, scope: 'deploy' });
      expect(fresh.status).toBe(400);
      expect(fresh.json).toMatchObject({ error: 'unauthorized_client', mayfly_code: 'ERR_NOT_AUTHORIZED_CLIENT' });
      const viaGrpc = tb.client({ bearer: access });
      expect(await codeOf(viaGrpc.issueToken({ taskId, audience: AUD, scopes: ['read'] }))).toBe('ERR_SCOPE_DENIED');
      expect(await codeOf(viaGrpc.issueToken({ taskId, audience: 'elsewhere', scopes: ['deploy'] }))).toBe('ERR_AUDIENCE_DENIED');
      // Within its audience and scopes the request goes to policy, which judges the identity that began the
      // task (the CI claims are stored with the task, never re-read from the token): a narrower token.
      const narrowed = await viaGrpc.issueToken({ taskId, audience: AUD, scopes: ['deploy'], ttlSeconds: 60 });
      expect(narrowed.scopes).toEqual(['deploy']);
      expect(decodeJwt(narrowed.token)).toMatchObject({ aud: AUD, tid: taskId, scope: 'deploy' });
    } finally {
      const done = await tb.http('/v1/tasks/complete', { json: {}, bearer: access });
      expect(done.status).toBe(200);
    }
  });
});

describe('the OIDC token as a gRPC bearer', () => {
  it('begins a task and issues a token without a client certificate', async () => {
    const subject = mint();
    const c = tb.client({ bearer: subject });
    const t = await c.beginTask({ purpose: 'deploy from CI over gRPC' });
    const tok = await c.issueToken({ taskId: t.taskId, audience: AUD, scopes: ['deploy', 'read'] });
    expect(tok.scopes).toEqual(['deploy', 'read']);
    const claims = decodeJwt(tok.token);
    expect(claims.sub).toBe(`${issuer.issuer}#repo:acme/api:environment:prod`);
    expect(claims['tid']).toBe(t.taskId);
    // A different repository's token cannot use that task, and cannot start its own.
    const other = tb.client({ bearer: mint({ sub: 'repo:acme/web:environment:prod', repository: 'acme/web' }) });
    expect(await codeOf(other.issueToken({ taskId: t.taskId, audience: AUD, scopes: ['read'] }))).toBe('ERR_NOT_TASK_OWNER');
    expect(await codeOf(other.beginTask({ purpose: 'not allowed' }))).toBe('ERR_POLICY_DENIED');
    // An expired OIDC token as bearer is refused outright.
    const stale = tb.client({ bearer: mint({}, Date.now() - 3600_000) });
    expect(await codeOf(stale.beginTask({ purpose: 'stale' }))).toBe('ERR_JWT_EXPIRED');
    expect((await c.completeTask(t.taskId)).revokedTokens).toBe(1);
  });
});

describe('mayfly exchange (CLI)', () => {
  it('prints a task token for a subject token file', async () => {
    const file = join(tb.dir, 'ci-token.jwt');
    writeFileSync(file, `${mint()}\n`);
    const url = `https://127.0.0.1:${tb.broker.http.address.port}`;
    const out = await new Promise<{ code: number; stdout: string; stderr: string }>((res) => {
      execFile(
        process.execPath,
        [join(ROOT, 'bin', 'mayfly.js'), 'exchange', '--subject-token-file', file, '--audience', AUD, '--scope', 'read', '--url', url, '--ca', join(tb.dir, 'ca.pem')],
        { cwd: ROOT, timeout: 20_000 },
        (err, stdout, stderr) => res({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
      );
    });
    expect(out.code, out.stderr).toBe(0);
    const token = out.stdout.trim();
    expect(token.split('.')).toHaveLength(3);
    const claims = decodeJwt(token);
    expect(claims.aud).toBe(AUD);
    expect(claims['scope']).toBe('read');
    expect(out.stderr).toMatch(/task \S+ scope \[read\] expires in \d+s/);
    const live = await tb.http('/oauth2/introspect', { form: { token }, cert: 'relying-party' });
    expect(live.json!['active']).toBe(true);
  });
});
