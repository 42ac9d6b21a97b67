/**
 * Certificate-bound task tokens (cnf.x5t#S256, RFC 8705) have a working path
 * on every surface that takes a task token: the token as bearer plus its
 * certificate on the connection. Without the certificate, or with another
 * one, the error says what to present. Over gRPC, /v1/tasks/complete,
 * /oauth2/token (as subject token) and the CLI.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { decodeJws } from '../../src/tokens/jws.js';
import { mayflyRejection, startTestBroker, type TestBroker } from './helpers.js';

const BIN = resolve('bin/mayfly.js');
let tb: TestBroker;
const opened: BrokerClient[] = [];

/** A client presenting both a client certificate and a bearer token. */
function withBoth(creds: { cert: Buffer; key: Buffer }, bearer: string): BrokerClient {
  const c = new BrokerClient({ address: tb.grpcAddr, ca: tb.ca, ...creds, bearer });
  opened.push(c);
  return c;
}

beforeAll(async () => {
  tb = await startTestBroker();
});

afterAll(async () => {
  for (const c of opened) c.close();
  await tb?.stop();
});

/** A fresh task of the demo workload and a token for it, minted over mTLS (so bound to workload.pem). */
async function boundToken(): Promise<{ taskId: string; token: string }> {
  const c = tb.client();
  const task = await c.beginTask({ purpose: 'bound', ttlSeconds: 300 });
  const { token } = await c.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
  const cnf = decodeJws(token).payload['cnf'] as Record<string, string> | undefined;
  expect(cnf?.['x5t#S256']).toMatch(/^[A-Za-z0-9_-]{43}$/);
  return { taskId: task.taskId, token };
}

const workloadCert = () => ({ cert: readFileSync(join(tb.dir, 'workload.pem')), key: readFileSync(join(tb.dir, 'workload.key')) });
const otherCert = () => ({ cert: readFileSync(join(tb.dir, 'relying-party.pem')), key: readFileSync(join(tb.dir, 'relying-party.key')) });

describe('gRPC', () => {
  it('the bound token with its certificate acts as the task token: completes its task, narrowed to it', async () => {
    const { taskId, token } = await boundToken();
    const holder = withBoth(workloadCert(), token);
    // Narrowed: the task-token identity may not get a token for another audience, which the certificate identity could.
    const narrowed = await mayflyRejection(holder.issueToken({ taskId, audience: 'other-api', scopes: ['read'] }));
    expect(narrowed.code).not.toBe('ERR_UNAUTHENTICATED');
    const again = await holder.issueToken({ taskId, audience: 'demo-api', scopes: ['read'] });
    // What a bound holder gets is bound to the same certificate.
    expect((decodeJws(again.token).payload['cnf'] as Record<string, string>)['x5t#S256']).toBe((decodeJws(token).payload['cnf'] as Record<string, string>)['x5t#S256']);
    const done = await holder.completeTask(taskId);
    expect(done.taskIds).toEqual([taskId]);
  });

  it('without a certificate, or with another one, the error says what to present', async () => {
    const { taskId, token } = await boundToken();
    const bare = await mayflyRejection(tb.client({ bearer: token }).completeTask(taskId));
    expect(bare.code).toBe('ERR_UNAUTHENTICATED');
    expect(bare.message).toMatch(/bound to a client certificate .*none was presented.*over mTLS with the certificate it was issued to/);
    const wrong = await mayflyRejection(withBoth(otherCert(), token).completeTask(taskId));
    expect(wrong.code).toBe('ERR_UNAUTHENTICATED');
    expect(wrong.message).toMatch(/not the one this task token is bound to/);
  });
});

describe('HTTPS', () => {
  it('/v1/tasks/complete: mTLS plus the bearer completes the bearer token\'s task', async () => {
    const { taskId, token } = await boundToken();
    const r = await tb.http('/v1/tasks/complete', { bearer: token, cert: 'workload', json: {} });
    expect(r.status, r.text).toBe(200);
    expect(r.json).toMatchObject({ task_id: taskId, task_ids: [taskId] });
  });

  it('/v1/tasks/complete: the bearer alone, or with another certificate, is refused with what to present', async () => {
    const { token } = await boundToken();
    const bare = await tb.http('/v1/tasks/complete', { bearer: token, json: {} });
    expect(bare.status).toBe(401);
    expect(bare.json).toMatchObject({ error: 'ERR_UNAUTHENTICATED' });
    expect(String(bare.json!['message'])).toMatch(/none was presented/);
    const wrong = await tb.http('/v1/tasks/complete', { bearer: token, cert: 'relying-party', json: {} });
    expect(wrong.status).toBe(401);
    expect(String(wrong.json!['message'])).toMatch(/not the one this task token is bound to/);
  });

  it('/oauth2/token: the bound token as subject over mTLS with its certificate is accepted', async () => {
    const { taskId, token } = await boundToken();
    const form = { grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: token, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token', audience: 'demo-api', scope: 'read', mayfly_task_id: taskId };
    const bare = await tb.http('/oauth2/token', { form });
    expect(bare.status).toBe(400);
    expect(bare.json).toMatchObject({ error: 'invalid_grant', mayfly_code: 'ERR_UNAUTHENTICATED' });
    expect(String(bare.json!['error_description'])).toMatch(/none was presented/);
    const ok = await tb.http('/oauth2/token', { form, cert: 'workload' });
    expect(ok.status, ok.text).toBe(200);
    expect(ok.json).toMatchObject({ mayfly_task_id: taskId, scope: 'read' });
  });
});

describe('CLI', () => {
  const cli = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((done) => {
      execFile(process.execPath, [BIN, ...args, '--dev-dir', tb.dir, '--broker', tb.grpcAddr], { timeout: 30_000 }, (err, stdout, stderr) =>
        done({ code: err ? 1 : 0, stdout: stdout.trim(), stderr: stderr.trim() }),
      );
    });

  it('task complete --token-file with --cert/--key completes the bound token\'s task; without them it says to add them', async () => {
    const { taskId, token } = await boundToken();
    const file = join(tb.dir, 'bound.jwt');
    writeFileSync(file, token);
    const bare = await cli(['task', 'complete', '--token-file', file]);
    expect(bare.code).toBe(1);
    expect(bare.stderr).toMatch(/^mayfly: ERR_USAGE: .*bound to a client certificate .*add --cert and --key/);
    const wrong = await cli(['task', 'complete', '--token-file', file, '--cert', join(tb.dir, 'relying-party.pem'), '--key', join(tb.dir, 'relying-party.key')]);
    expect(wrong.stderr).toMatch(/^mayfly: ERR_UNAUTHENTICATED: .*bound to another certificate/);
    const ok = await cli(['task', 'complete', '--token-file', file, '--cert', join(tb.dir, 'workload.pem'), '--key', join(tb.dir, 'workload.key')]);
    expect(ok.stderr).toBe('');
    expect(ok.stdout).toBe(`task ${taskId} completed; 1 token(s) revoked across 1 task(s)`);
  }, 120_000);
});
