/**
 * kill -9 during load, then restart (docs/durability.md): a broker process
 * under BeginTask/IssueToken/CompleteTask load is SIGKILLed; a broker started
 * on the same directory must still know every revocation whose CompleteTask
 * returned OK, every token whose IssueToken returned OK, and an audit chain
 * that `mayfly audit verify` accepts. Needs `npm run build` (the test
 * command runs it first).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';

const BIN = resolve('bin/mayfly.js');

function run(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { cwd, timeout: 30_000 }, (err, stdout, stderr) => {
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

const dir = mkdtempSync(join(tmpdir(), 'mayfly-kill-'));
const dev = join(dir, '.mayfly');
const brokers: ChildProcess[] = [];

afterAll(async () => {
  for (const b of brokers) {
    if (b.exitCode === null && b.signalCode === null) {
      const exited = new Promise((r) => b.once('exit', r));
      b.kill('SIGKILL');
      await exited;
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

/** `mayfly serve` in its own process on fresh ports; resolves once gRPC listens. */
async function serve(): Promise<{ proc: ChildProcess; client: () => BrokerClient }> {
  const grpc = `127.0.0.1:${await freePort()}`;
  const proc = spawn(process.execPath, [BIN, 'serve', '--config', join(dev, 'mayfly.yaml'), '--grpc-listen', grpc, '--http-listen', `127.0.0.1:${await freePort()}`], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  brokers.push(proc);
  let banner = '';
  await new Promise<void>((done, fail) => {
    const t = setTimeout(() => fail(new Error(`broker did not start: ${banner}`)), 30_000);
    proc.stderr!.on('data', (c: Buffer) => {
      banner += c.toString();
      if (banner.includes('gRPC (mTLS) on')) {
        clearTimeout(t);
        done();
      }
    });
    proc.once('exit', (code, sig) => fail(new Error(`broker exited ${code ?? sig}: ${banner}`)));
  });
  const pem = (f: string) => readFileSync(join(dev, f));
  return { proc, client: () => new BrokerClient({ address: grpc, ca: pem('ca.pem'), cert: pem('workload.pem'), key: pem('workload.key'), timeoutMs: 10_000 }) };
}

it('a SIGKILL under IssueToken/CompleteTask load loses no acknowledged revocation or token, and the audit chain verifies', async () => {
  expect((await run(['dev', 'init', '--dir', dev], dir)).code).toBe(0);
  const first = await serve();
  const clients = [first.client(), first.client()];

  // What the broker acknowledged before it died.
  const completed: { taskId: string; tokens: string[] }[] = [];
  const issuedOnOpen: { taskId: string; token: string }[] = [];
  const open: string[] = [];
  for (let i = 0; i < 4; i++) open.push((await clients[0]!.beginTask({ purpose: `open ${i}`, ttlSeconds: 3600 })).taskId);

  let killed = false;
  const lifecycle = async (w: number) => {
    const c = clients[w % clients.length]!;
    while (!killed) {
      try {
        const t = await c.beginTask({ purpose: `kill test ${w}`, ttlSeconds: 600 });
        const tokens: string[] = [];
        for (let k = 0; k < 2; k++) tokens.push((await c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 300 })).token);
        await c.completeTask(t.taskId);
        if (!killed) completed.push({ taskId: t.taskId, tokens });
      } catch (e) {
        if (!killed) throw e;
      }
    }
  };
  const issuing = async (w: number) => {
    const c = clients[w % clients.length]!;
    for (let i = 0; !killed; i++) {
      const taskId = open[i % open.length]!;
      try {
        const r = await c.issueToken({ taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 300 });
        if (!killed) issuedOnOpen.push({ taskId, token: r.token });
      } catch (e) {
        if (!killed) throw e;
      }
    }
  };
  const load = Promise.all([...[0, 1, 2, 3, 4, 5].map(lifecycle), ...[0, 1, 2, 3].map(issuing)]);
  const deadline = Date.now() + 20_000;
  while ((completed.length < 30 || issuedOnOpen.length < 60) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  // Kill mid-flight: calls are in progress on every worker.
  const exited = new Promise((r) => first.proc.once('exit', (_code, sig) => r(sig)));
  first.proc.kill('SIGKILL');
  killed = true;
  expect(await exited).toBe('SIGKILL');
  await load;
  for (const c of clients) c.close();
  expect(completed.length).toBeGreaterThanOrEqual(30);
  expect(issuedOnOpen.length).toBeGreaterThanOrEqual(60);

  const second = await serve();
  const c = second.client();
  try {
    for (const t of completed) {
      for (const token of t.tokens) {
        const r = await c.introspect(token);
        expect({ task: t.taskId, active: r.active, reason: r.reason }).toEqual({ task: t.taskId, active: false, reason: 'revoked' });
      }
      await expect(c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] })).rejects.toMatchObject({ code: 'ERR_TASK_NOT_ACTIVE' });
    }
    for (const t of issuedOnOpen) {
      const r = await c.introspect(t.token);
      expect({ task: t.taskId, active: r.active, reason: r.reason }).toEqual({ task: t.taskId, active: true, reason: '' });
    }
    // The open tasks go on, and end like any other.
    // (in-flight IssueTokens whose answer the kill swallowed may have been recorded too, hence at least).
    const acknowledged = issuedOnOpen.filter((t) => t.taskId === open[0]).length;
    expect((await c.completeTask(open[0]!)).revokedTokens).toBeGreaterThanOrEqual(acknowledged);
    expect((await c.introspect(issuedOnOpen.find((t) => t.taskId === open[0])!.token)).reason).toBe('revoked');
  } finally {
    c.close();
  }
  const stopped = new Promise((r) => second.proc.once('exit', r));
  second.proc.kill('SIGTERM');
  await stopped;

  const verify = await run(['audit', 'verify', '--config', join(dev, 'mayfly.yaml')], dir);
  expect(verify.code, `${verify.stdout}\n${verify.stderr}`).toBe(0);
}, 120_000);
