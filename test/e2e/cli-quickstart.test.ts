/**
 * The README quickstart, as a user runs it: `mayfly dev init`, `mayfly serve`
 * in its own process, then the client commands from another, over real TLS.
 * Needs `npm run build` (the test command runs it first).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const BIN = resolve('bin/mayfly.js');

function run(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { cwd, timeout: 20_000 }, (err, stdout, stderr) => {
      done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout: stdout.trim(), stderr: stderr.trim() });
    });
  });
}

function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
    s.on('error', fail);
  });
}

describe('CLI quickstart against a broker process', () => {
  let dir: string;
  let serve: ChildProcess;
  let grpc: string;
  const flags = () => ['--dev-dir', join(dir, '.mayfly'), '--broker', grpc];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mayfly-cli-'));
    expect((await run(['dev', 'init', '--dir', '.mayfly'], dir)).code).toBe(0);
    const [g, h] = [await freePort(), await freePort()];
    grpc = `127.0.0.1:${g}`;
    serve = spawn(process.execPath, [BIN, 'serve', '--config', '.mayfly/mayfly.yaml', '--grpc-listen', grpc, '--http-listen', `127.0.0.1:${h}`], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    let banner = '';
    await new Promise<void>((done, fail) => {
      const t = setTimeout(() => fail(new Error(`broker did not start: ${banner}`)), 20_000);
      serve.stderr!.on('data', (c: Buffer) => {
        banner += c.toString();
        if (banner.includes('gRPC (mTLS) on')) {
          clearTimeout(t);
          done();
        }
      });
      serve.on('exit', (code) => fail(new Error(`broker exited ${code}: ${banner}`)));
    });
  });

  afterAll(async () => {
    if (serve && serve.exitCode === null) {
      const exited = new Promise((r) => serve.once('exit', r));
      serve.kill('SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('begin → issue → inspect → introspect → complete → introspect inactive → issue refused, one line, exit 1', async () => {
    const begin = await run(['task', 'begin', ...flags(), '--purpose', 'nightly export', '--ttl', '10m'], dir);
    expect(begin.code).toBe(0);
    const task = begin.stdout;
    expect(task).toMatch(/^[A-Za-z0-9_-]{24}$/);

    const issue = await run(['token', 'issue', ...flags(), '--task', task, '--audience', 'demo-api', '--scope', 'read', '--scope', 'admin'], dir);
    expect(issue.code).toBe(0);
    const token = issue.stdout;
    expect(issue.stderr).toMatch(/scopes \[read\]/);

    const inspect = JSON.parse((await run(['token', 'inspect', token], dir)).stdout) as { header: Record<string, string>; claims: Record<string, unknown> };
    expect(inspect.header).toMatchObject({ typ: 'at+jwt', alg: 'ES256' });
    expect(inspect.claims).toMatchObject({ sub: 'spiffe://example.org/demo/workload', aud: 'demo-api', scope: 'read', tid: task });
    expect(inspect.claims['cnf']).toHaveProperty('x5t#S256');

    expect(JSON.parse((await run(['token', 'introspect', ...flags(), token], dir)).stdout)).toMatchObject({ active: true, tid: task });
    const complete = await run(['task', 'complete', ...flags(), '--task', task], dir);
    expect(complete).toMatchObject({ code: 0, stdout: `task ${task} completed; 1 token(s) revoked across 1 task(s)` });
    expect(JSON.parse((await run(['token', 'introspect', ...flags(), token], dir)).stdout)).toEqual({ active: false, mayfly_reason: 'revoked' });

    const refused = await run(['token', 'issue', ...flags(), '--task', task, '--audience', 'demo-api', '--scope', 'read'], dir);
    expect(refused.code).toBe(1);
    expect(refused.stderr.split('\n').filter((l) => l.startsWith('mayfly:'))).toEqual(['mayfly: ERR_TASK_NOT_ACTIVE: task is completed (completed by owner)']);
  });

  it('audit verify passes on the broker’s live log, and bad input gets one clear line', async () => {
    const verify = await run(['audit', 'verify', '--config', '.mayfly/mayfly.yaml'], dir);
    expect(verify.code).toBe(0);
    const bad = await run(['task', 'begin', ...flags(), '--purpose', 'x', '--ttl', 'forever'], dir);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^mayfly: ERR_TTL_INVALID: invalid duration "forever"/m);
    const denied = await run(['token', 'issue', ...flags(), '--task', 'AAAAAAAAAAAAAAAAAAAAAAAA', '--audience', 'demo-api'], dir);
    expect(denied.stderr).toMatch(/^mayfly: ERR_TASK_NOT_FOUND: no such task$/m);
  });

  it('SIGTERM shuts the broker down cleanly', async () => {
    const exited = new Promise<number | null>((r) => serve.once('exit', (code) => r(code)));
    serve.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
