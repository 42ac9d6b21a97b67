/**
 * The authorization model, one table, both transports: every rule the README
 * states for task-token holders, admins, feed subscribers and key-set
 * acknowledgements is one row, run over gRPC and over HTTPS, and both must
 * come out the same (the README's "Who may call what" table lists the same
 * rows). Callers: an OIDC identity (bearer) that owns tasks and is an admin
 * by its own credential, its task's task token (bearer), the workload (mTLS,
 * another identity, not a feed subscriber) and the relying party (mTLS, the
 * feed subscriber).
 */
import * as grpc from '@grpc/grpc-js';
import { request as httpsRequest } from 'node:https';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { create, toBinary } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as pb from '../../src/gen/mayfly/v1/broker_pb.js';
import { DEV_ADMIN_ID, DEV_RELYING_PARTY_ID } from '../../src/cli/dev-init.js';
import { makeSelfSignedCert } from '../helpers/https-jwks.js';
import { TestIssuer, type TestKey } from '../helpers/test-issuer.js';
import { grpcCreds, startTestBroker, type ClientCred, type TestBroker } from './helpers.js';

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const AUD = 'https://deploy.acme.internal';

let issuer: TestIssuer;
let key: TestKey;
let tb: TestBroker;
let ownerId: string;
/** The OIDC identity's own credential. */
let oidc: string;
/** Task token of task A (bearer, not certificate-bound). */
let taskToken: string;
let taskA: string;
let taskB: string;
/** A token of task B (same owner, another task). */
let tokenOfB: string;

beforeAll(async () => {
  const cert = makeSelfSignedCert();
  issuer = await new TestIssuer(cert).start();
  key = issuer.addKey('RS256');
  oidc = issuer.mint({ kid: key.kid, nowMs: Date.now() });
  ownerId = `${issuer.issuer}#${JSON.parse(Buffer.from(oidc.split('.')[1]!, 'base64url').toString())['sub']}`;
  tb = await startTestBroker({
    configPatch: (cfg, dir) => {
      writeFileSync(join(dir, 'issuer-ca.pem'), cert.cert);
      cfg['oidc'] = { issuers: [{ name: 'gha', issuer: issuer.issuer, audiences: ['mayfly'], jwks_uri: issuer.server.jwksUri, ca_file: 'issuer-ca.pem' }] };
      cfg['feed'] = { subscribers: [DEV_RELYING_PARTY_ID, DEV_ADMIN_ID] };
      cfg['admins'] = [DEV_ADMIN_ID, ownerId];
    },
    extraRules: [
      {
        name: 'gha-deploy',
        match: { oidc: { issuer: issuer.issuer, claims: { repository: 'acme/api' } } },
        actions: ['begin_task', 'issue_token', 'exchange', 'delegate'],
        audiences: [AUD, 'https://other.acme.internal'],
        scopes: ['deploy', 'read'],
        max_ttl_seconds: 600,
      },
    ],
  });
  const ex = await tb.http('/oauth2/token', { form: { grant_type: GRANT, subject_token: oidc, subject_token_type: JWT_TYPE, audience: AUD, scope: 'deploy read' } });
  expect(ex.status, ex.text).toBe(200);
  taskToken = ex.json!['access_token'] as string;
  taskA = ex.json!['mayfly_task_id'] as string;
  const owner = tb.client({ bearer: oidc });
  taskB = (await owner.beginTask({ purpose: 'sibling' })).taskId;
  tokenOfB = (await owner.issueToken({ taskId: taskB, audience: AUD, scopes: ['read'] })).token;
  // The admin's stream binds the subscriber name "admin-feed" to the admin.
  const bound = await grpcStream(grpcCreds(tb, 'admin'), new grpc.Metadata(), 'admin-feed');
  expect(bound).toBe('ok');
});

afterAll(async () => {
  await tb?.stop();
  await issuer?.close();
});

type Who = 'owner' | 'task-token' | 'workload' | 'relying-party' | 'admin';

const creds = (who: Who): ClientCred => (who === 'owner' ? { bearer: oidc } : who === 'task-token' ? { bearer: taskToken } : who);
const httpAuth = (who: Who): { bearer?: string; cert?: string } => (who === 'owner' ? { bearer: oidc } : who === 'task-token' ? { bearer: taskToken } : { cert: who });

/** gRPC outcome: 'ok' or the mayfly code. */
async function g(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return String((e as { code?: string }).code);
  }
}

/** HTTPS outcome: 'ok' for 2xx, else our code (error or mayfly_code). */
async function h(path: string, who: Who, o: { json?: unknown; form?: Record<string, string> }): Promise<string> {
  const r = await tb.http(path, { ...httpAuth(who), ...(o.json !== undefined ? { json: o.json } : {}), ...(o.form ? { form: o.form } : {}) });
  if (r.status >= 200 && r.status < 300) return 'ok';
  const code = (r.json?.['mayfly_code'] ?? r.json?.['error']) as string | undefined;
  return code ?? `HTTP ${r.status}`;
}

/** Introspection as seen by the caller: 'active', or the reason it is not. */
async function introspectGrpc(who: Who, token: string): Promise<string> {
  try {
    const r = await tb.client(creds(who)).introspect(token);
    return r.active ? 'active' : r.reason;
  } catch (e) {
    return String((e as { code?: string }).code);
  }
}
async function introspectHttps(who: Who, token: string): Promise<string> {
  const r = await tb.http('/oauth2/introspect', { ...httpAuth(who), form: { token } });
  if (r.status !== 200) return String(r.json?.['mayfly_code']);
  return r.json!['active'] === true ? 'active' : String(r.json!['mayfly_reason']);
}

const exchange = (who: Who, extra: Record<string, string>) =>
  h('/oauth2/token', who, { form: { grant_type: GRANT, subject_token: who === 'owner' ? oidc : taskToken, subject_token_type: JWT_TYPE, audience: AUD, ...extra } });

/** Opens WatchRevocations; 'ok' when the first message arrives, else the status's mayfly code. */
function grpcStream(channelCreds: grpc.ChannelCredentials, md: grpc.Metadata, subscriberId = ''): Promise<string> {
  const client = new grpc.Client(tb.grpcAddr, channelCreds, { 'grpc.ssl_target_name_override': 'localhost', 'grpc.default_authority': 'localhost' });
  const bytes = Buffer.from(toBinary(pb.WatchRevocationsRequestSchema, create(pb.WatchRevocationsRequestSchema, { subscriberId })));
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest('/mayfly.v1.Broker/WatchRevocations', (b: Buffer) => b, (b: Buffer) => b, bytes, md, { deadline: Date.now() + 5000 });
    let done = false;
    call.on('data', () => {
      if (done) return;
      done = true;
      resolve('ok');
      // Keep the admin's binding stream open for the run; others close.
      if (subscriberId !== 'admin-feed') setTimeout(() => (call.cancel(), client.close()), 10);
    });
    call.on('error', () => undefined);
    call.on('status', (s: grpc.StatusObject) => {
      if (!done) resolve(String(s.metadata.get('mayfly-error-code')[0] ?? `status ${s.code}`));
      done = true;
    });
  });
}
function watchGrpc(who: Who): Promise<string> {
  const md = new grpc.Metadata();
  if (who === 'owner') md.set('authorization', `Bearer ${oidc}`);
  if (who === 'task-token') md.set('authorization', `Bearer ${taskToken}`);
  const cert = who === 'owner' || who === 'task-token' ? null : who;
  return grpcStream(grpcCreds(tb, cert), md);
}
function watchSse(who: Who): Promise<string> {
  const u = new URL('/v1/revocations', tb.httpUrl);
  const a = httpAuth(who);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        hostname: '127.0.0.1', servername: 'localhost', port: u.port, path: u.pathname, method: 'GET', ca: tb.ca, agent: false,
        headers: { accept: 'text/event-stream', ...(a.bearer ? { authorization: `Bearer ${a.bearer}` } : {}) },
        ...(a.cert ? { cert: readFileSync(join(tb.dir, `${a.cert}.pem`)), key: readFileSync(join(tb.dir, `${a.cert}.key`)) } : {}),
      },
      (res) => {
        if (res.statusCode === 200) {
          resolve('ok');
          res.destroy();
          return;
        }
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(String((JSON.parse(text) as Record<string, unknown>)['error'])));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

interface Row {
  rule: string;
  grpc: () => Promise<string>;
  https: () => Promise<string>;
  expected: string;
}

const rows: Row[] = [
  // Task-token holders only narrow.
  { rule: 'task token: may not begin a root task', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('task-token')).beginTask({ purpose: 'root' })),
    https: () => exchange('task-token', { scope: 'deploy' }) },
  { rule: 'task token: a narrower token for its own task (same audience, subset of scopes)', expected: 'ok',
    grpc: () => g(tb.client(creds('task-token')).issueToken({ taskId: taskA, audience: AUD, scopes: ['deploy'] })),
    https: () => exchange('task-token', { mayfly_task_id: taskA, scope: 'deploy' }) },
  { rule: 'task token: no wider scopes', expected: 'ERR_SCOPE_DENIED',
    grpc: () => g(tb.client(creds('task-token')).issueToken({ taskId: taskA, audience: AUD, scopes: ['deploy', 'admin'] })),
    https: () => exchange('task-token', { mayfly_task_id: taskA, scope: 'deploy admin' }) },
  { rule: 'task token: no other audience', expected: 'ERR_AUDIENCE_DENIED',
    grpc: () => g(tb.client(creds('task-token')).issueToken({ taskId: taskA, audience: 'https://other.acme.internal', scopes: ['read'] })),
    https: () => h('/oauth2/token', 'task-token', { form: { grant_type: GRANT, subject_token: taskToken, subject_token_type: JWT_TYPE, audience: 'https://other.acme.internal', mayfly_task_id: taskA, scope: 'read' } }) },
  { rule: 'task token: not another task of the same owner', expected: 'ERR_NOT_TASK_OWNER',
    grpc: () => g(tb.client(creds('task-token')).issueToken({ taskId: taskB, audience: AUD, scopes: ['read'] })),
    https: () => exchange('task-token', { mayfly_task_id: taskB, scope: 'read' }) },
  { rule: 'task token: introspecting another task\'s token shows nothing (not_visible)', expected: 'not_visible',
    grpc: () => introspectGrpc('task-token', tokenOfB),
    https: () => introspectHttps('task-token', tokenOfB) },
  { rule: 'task token: introspecting its own task\'s token', expected: 'active',
    grpc: () => introspectGrpc('task-token', taskToken),
    https: () => introspectHttps('task-token', taskToken) },
  { rule: 'task token: never an admin, even when its owner is one', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('task-token')).revokeIdentity('spiffe://example.org/nobody')),
    https: () => h('/admin/keys/rotate', 'task-token', { json: {} }) },
  { rule: 'task token: may not subscribe to the feed', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => watchGrpc('task-token'),
    https: () => watchSse('task-token') },
  { rule: 'task token: may not acknowledge key sets', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('task-token')).ackKeySet('', 'v1')),
    https: () => h('/v1/keyset/ack', 'task-token', { json: { keyset_version: 'v1' } }) },
  { rule: 'task token: may not report misuse', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('task-token')).reportMisuse('revoked_use', 'some-jti')),
    https: () => h('/v1/misuse', 'task-token', { json: { kind: 'revoked_use', token_id: 'some-jti' } }) },
  // Task owners.
  { rule: 'another identity may not complete a task', expected: 'ERR_NOT_TASK_OWNER',
    grpc: () => g(tb.client(creds('workload')).completeTask(taskB)),
    https: () => h('/v1/tasks/complete', 'workload', { json: { task_id: taskB } }) },
  { rule: 'another identity may not revoke a task\'s token', expected: 'ERR_NOT_TASK_OWNER',
    grpc: () => g(tb.client(creds('workload')).revokeToken({ token: tokenOfB })),
    https: () => h('/oauth2/revoke', 'workload', { form: { token: tokenOfB } }) },
  { rule: 'any authenticated caller may introspect (relying party)', expected: 'active',
    grpc: () => introspectGrpc('relying-party', tokenOfB),
    https: () => introspectHttps('relying-party', tokenOfB) },
  // Admins.
  { rule: 'admin by its own credential: admin operations', expected: 'ok',
    grpc: () => g(tb.client(creds('owner')).revokeIdentity('spiffe://example.org/nobody')),
    https: () => h('/admin/keys/rotate', 'owner', { json: {} }) },
  { rule: 'not an admin: admin operations refused', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('workload')).revokeIdentity('spiffe://example.org/nobody')),
    https: () => h('/admin/keys/rotate', 'workload', { json: {} }) },
  // Feed subscribers.
  { rule: 'feed subscriber: may subscribe', expected: 'ok',
    grpc: () => watchGrpc('relying-party'),
    https: () => watchSse('relying-party') },
  { rule: 'not a feed subscriber: may not subscribe', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => watchGrpc('workload'),
    https: () => watchSse('workload') },
  { rule: 'feed subscriber: may report misuse', expected: 'ok',
    grpc: () => g(tb.client(creds('relying-party')).reportMisuse('replay', 'jti-1', 'seen twice')),
    https: () => h('/v1/misuse', 'relying-party', { json: { kind: 'replay', token_id: 'jti-1', detail: 'seen twice' } }) },
  { rule: 'not a feed subscriber: may not report misuse', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('workload')).reportMisuse('replay', 'jti-1')),
    https: () => h('/v1/misuse', 'workload', { json: { kind: 'replay', token_id: 'jti-1' } }) },
  // Key-set acknowledgements.
  { rule: 'ack: a feed subscriber for its own identity', expected: 'ok',
    grpc: () => g(tb.client(creds('relying-party')).ackKeySet('', 'v1')),
    https: () => h('/v1/keyset/ack', 'relying-party', { json: { keyset_version: 'v1' } }) },
  { rule: 'ack: a feed subscriber for a subscriber_id bound to its own stream', expected: 'ok',
    grpc: () => g(tb.client(creds('admin')).ackKeySet('admin-feed', 'v1')),
    https: () => h('/v1/keyset/ack', 'admin', { json: { subscriber_id: 'admin-feed', keyset_version: 'v1' } }) },
  { rule: 'ack: not on behalf of another subscriber\'s stream', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('relying-party')).ackKeySet('admin-feed', 'v1')),
    https: () => h('/v1/keyset/ack', 'relying-party', { json: { subscriber_id: 'admin-feed', keyset_version: 'v1' } }) },
  { rule: 'ack: not for a subscriber_id no stream of the caller holds', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('relying-party')).ackKeySet('someone-else', 'v1')),
    https: () => h('/v1/keyset/ack', 'relying-party', { json: { subscriber_id: 'someone-else', keyset_version: 'v1' } }) },
  { rule: 'ack: not from a caller that is not a feed subscriber', expected: 'ERR_NOT_AUTHORIZED_CLIENT',
    grpc: () => g(tb.client(creds('workload')).ackKeySet('', 'v1')),
    https: () => h('/v1/keyset/ack', 'workload', { json: { keyset_version: 'v1' } }) },
];

describe('authorization table: each rule over gRPC and over HTTPS', () => {
  for (const row of rows) {
    it(row.rule, async () => {
      const viaGrpc = await row.grpc();
      const viaHttps = await row.https();
      expect({ grpc: viaGrpc, https: viaHttps }).toEqual({ grpc: row.expected, https: row.expected });
    });
  }
});
