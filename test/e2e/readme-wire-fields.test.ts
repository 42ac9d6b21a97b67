/**
 * The field names the README documents are the ones on the wire. Each name
 * list is read from the README sentence that documents it, then compared
 * with a real answer of a running broker: the token-exchange response, the
 * inactive introspection answer, and a revocation event on the SSE feed.
 */
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from './helpers.js';

const README = readFileSync(join(process.cwd(), 'README.md'), 'utf8');
let tb: TestBroker;

beforeAll(async () => {
  tb = await startTestBroker({ configPatch: { feed: { subscribers: [] } } });
});
afterAll(async () => {
  await tb?.stop();
});

/** Backticked names in the README line containing `marker` (a `name: value` takes the name). */
function documented(marker: string, after = ''): string[] {
  const line = README.split('\n').find((l) => l.includes(marker));
  expect(line, marker).toBeDefined();
  const part = after ? line!.slice(line!.indexOf(after) + after.length) : line!;
  return [...part.matchAll(/`([a-zA-Z_]+)(?::[^`]*)?`/g)].map((m) => m[1]!);
}

async function boundTaskToken(): Promise<{ taskId: string; token: string }> {
  const c = tb.client();
  const task = await c.beginTask({ purpose: 'wire', ttlSeconds: 300 });
  const { token } = await c.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
  return { taskId: task.taskId, token };
}

describe('README field names are the wire names', () => {
  it('token exchange response', async () => {
    const fields = documented('The response is a standard RFC 8693 body');
    expect(fields).toEqual(expect.arrayContaining(['access_token', 'issued_token_type', 'token_type', 'expires_in', 'scope', 'mayfly_task_id']));
    const { taskId, token } = await boundTaskToken();
    const r = await tb.http('/oauth2/token', {
      cert: 'workload',
      form: { grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: token, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token', audience: 'demo-api', scope: 'read', mayfly_task_id: taskId },
    });
    expect(r.status, r.text).toBe(200);
    for (const f of fields) expect(Object.keys(r.json!), f).toContain(f);
    expect(r.json!['token_type']).toBe('Bearer');
  });

  it('inactive introspection answer', async () => {
    expect(documented('`POST /oauth2/introspect`')).toContain('mayfly_reason');
    const { taskId, token } = await boundTaskToken();
    await tb.client().completeTask(taskId);
    const r = await tb.http('/oauth2/introspect', { cert: 'workload', form: { token } });
    expect(r.status, r.text).toBe(200);
    expect(r.json).toEqual({ active: false, mayfly_reason: 'revoked' });
  });

  it('revocation event on the SSE feed', async () => {
    const fields = documented('Every event carries `covers_until`', 'proto3 JSON names:');
    expect(fields).toEqual(expect.arrayContaining(['cursor', 'kind', 'at', 'taskIds', 'jtis', 'kid', 'reason', 'coversUntil']));
    const { taskId } = await boundTaskToken();
    await tb.client().completeTask(taskId);
    // Replay from cursor 1: the completion event comes back as an SSE `task` event.
    const event = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const u = new URL(`${tb.httpUrl}/v1/revocations`);
      const req = httpsRequest(
        { hostname: '127.0.0.1', servername: 'localhost', port: u.port, path: '/v1/revocations', headers: { 'last-event-id': '1' }, ca: tb.ca, cert: readFileSync(join(tb.dir, 'relying-party.pem')), key: readFileSync(join(tb.dir, 'relying-party.key')), agent: false },
        (res) => {
          let buf = '';
          res.on('data', (c: Buffer) => {
            buf += c.toString();
            for (const block of buf.split('\n\n')) {
              if (!/^event: task$/m.test(block)) continue;
              const data = /^data: (.*)$/m.exec(block);
              if (data && (JSON.parse(data[1]!) as { taskIds: string[] }).taskIds.includes(taskId)) {
                req.destroy();
                resolve(JSON.parse(data[1]!) as Record<string, unknown>);
              }
            }
          });
        },
      );
      req.on('error', (e) => (e.message.includes('socket hang up') ? undefined : reject(e)));
      req.setTimeout(15_000, () => req.destroy(new Error('no task event')));
      req.end();
    });
    for (const f of ['cursor', 'kind', 'at', 'taskIds', 'jtis', 'kid', 'reason', 'coversUntil']) expect(Object.keys(event), f).toContain(f);
    expect(event['coversUntil']).toEqual(expect.any(Number));
  });
});

describe('HTTP details a careful client notices', () => {
  it('JWKS answers If-None-Match with its ETag by 304', async () => {
    const first = await tb.http('/.well-known/jwks.json');
    expect(first.status).toBe(200);
    const etag = String(first.headers['etag']);
    expect(etag).toMatch(/^".+"$/);
    const again = await new Promise<number>((resolve, reject) => {
      const u = new URL(`${tb.httpUrl}/.well-known/jwks.json`);
      const req = httpsRequest({ hostname: '127.0.0.1', servername: 'localhost', port: u.port, path: u.pathname, headers: { 'if-none-match': etag }, ca: tb.ca, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end();
    });
    expect(again).toBe(304);
  });

  it.each(['/oauth2/token', '/oauth2/introspect', '/oauth2/revoke'])('GET %s is 405 with Allow: POST and the OAuth error shape', async (path) => {
    const r = await tb.http(path, { method: 'GET' });
    expect(r.status).toBe(405);
    expect(r.headers['allow']).toBe('POST');
    expect(r.json).toMatchObject({ error: 'invalid_request', mayfly_code: 'ERR_INVALID_ARGUMENT' });
  });
});
