/** The examples/relying-party server, run as a process against a real broker. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevBroker, waitFor, type DevBroker } from './harness.js';

let env: DevBroker;
let server: ChildProcess;
let origin = '';
beforeAll(async () => {
  env = await startDevBroker();
  const script = fileURLToPath(new URL('../../examples/relying-party/server.mjs', import.meta.url));
  server = spawn(process.execPath, [script], {
    env: { ...process.env, MAYFLY_DEV_DIR: env.dir, MAYFLY_BROKER: env.grpcAddress, MAYFLY_JWKS_URL: env.jwksUrl, PORT: '0' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  origin = await new Promise<string>((resolve, reject) => {
    let buf = '';
    server.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /listening on (https:\/\/\S+)/.exec(buf);
      if (m) resolve(m[1]!);
    });
    server.on('exit', (code) => reject(new Error(`example exited with ${code}`)));
    setTimeout(() => reject(new Error('example did not start')), 20_000).unref();
  });
});
afterAll(async () => {
  server?.kill('SIGKILL');
  await env?.stop();
});

function get(token: string | null, who?: 'workload' | 'relying-party'): Promise<{ status: number; body: Record<string, unknown>; wwwAuthenticate: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(
      new URL('/hello', origin),
      {
        ca: env.ca,
        headers: token ? { authorization: `Bearer ${token}` } : {},
        ...(who ? { cert: readFileSync(join(env.dir, `${who}.pem`)), key: readFileSync(join(env.dir, `${who}.key`)) } : {}),
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown>, wwwAuthenticate: res.headers['www-authenticate'] as string | undefined }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('examples/relying-party', () => {
  it('checks bearer, scope read, certificate binding and revocation', async () => {
    const wl = env.client('workload');
    const task = await wl.beginTask({ purpose: 'example', ttlSeconds: 600 });
    const read = (await wl.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] })).token;
    const write = (await wl.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['write'] })).token;

    expect((await get(null)).status).toBe(401);
    const ok = await get(read, 'workload');
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ hello: 'spiffe://example.org/demo/workload', scope: 'read', task: task.taskId, bound: true });
    // A bare bearer of a bound token, without the certificate it is bound to (RFC 8705): refused.
    const bare = await get(read);
    expect(bare.status).toBe(401);
    expect(bare.body).toMatchObject({ error: 'invalid_token', code: 'ERR_JWT_INVALID' });
    expect(bare.wwwAuthenticate).toContain('invalid_token');
    const wrongCert = await get(read, 'relying-party');
    expect(wrongCert.status).toBe(401);
    expect(wrongCert.body['error_description']).toBe('certificate-bound token presented with a different certificate');
    const noScope = await get(write, 'workload');
    expect(noScope.status).toBe(403);
    expect(noScope.wwwAuthenticate).toContain('insufficient_scope');

    await wl.completeTask(task.taskId);
    await waitFor(async () => (await get(read, 'workload')).body['code'] === 'ERR_TOKEN_REVOKED', 2000, 20);
  });
});
