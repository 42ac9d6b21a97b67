/**
 * `mayfly serve --workers N`: N broker processes (node:cluster) sharing one
 * gRPC and one HTTPS port on the PostgreSQL store, and the refusal on SQLite.
 * Real `bin/mayfly.js` processes; needs `npm run build`.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { devInit } from '../../src/cli/dev-init.js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { freshDatabase } from '../helpers/postgres.js';
import { httpCall } from './helpers.js';

const BIN = resolve('bin/mayfly.js');
let dir: string;
let config: string;
let base: Record<string, unknown>;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'mayfly-workers-'));
  const init = devInit(dir);
  config = init.config;
  base = YAML.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeConfig(name: string, patch: Record<string, unknown>): string {
  const p = join(dir, name);
  writeFileSync(p, YAML.stringify({ ...base, log: { level: 'warn' }, ...patch }));
  return p;
}

function pids(ppid: number): number[] {
  try {
    return readFileSync(`/proc/${ppid}/task/${ppid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

describe('serve --workers', () => {
  it('refuses more than one worker on SQLite, saying why', async () => {
    const cfg = writeConfig('sqlite.yaml', {});
    const out = await new Promise<{ code: number | null; stderr: string }>((done) => {
      execFile(process.execPath, [BIN, 'serve', '--config', cfg, '--workers', '2', '--grpc-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], { cwd: dir, timeout: 20_000 }, (err, _o, stderr) =>
        done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr }),
      );
    });
    expect(out.code).not.toBe(0);
    expect(out.stderr).toContain('ERR_CONFIG_INVALID');
    expect(out.stderr).toContain('--workers 2 needs store.backend: postgres (got sqlite)');
    expect(out.stderr).toContain('one file owned by one process');
  });

  it('rejects a malformed worker count', async () => {
    const cfg = writeConfig('sqlite2.yaml', {});
    const stderr = await new Promise<string>((done) => {
      execFile(process.execPath, [BIN, 'serve', '--config', cfg, '--workers', 'two'], { cwd: dir, timeout: 20_000 }, (_e, _o, se) => done(se));
    });
    expect(stderr).toContain('--workers: must be an integer from 1 to 64');
  });

  describe('on PostgreSQL', () => {
    let proc: ChildProcess;
    let stderr = '';
    let grpcAddr = '';
    let httpUrl = '';
    const clients: BrokerClient[] = [];

    beforeAll(async () => {
      const url = await freshDatabase('mayfly_workers');
      const cfg = writeConfig('pg.yaml', { broker_id: 'box', data_dir: 'box', store: { backend: 'postgres', url } });
      proc = spawn(process.execPath, [BIN, 'serve', '--config', cfg, '--workers', '2', '--grpc-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MAYFLY_KEK: '' } });
      await new Promise<void>((done, fail) => {
        const t = setTimeout(() => fail(new Error(`workers did not start: ${stderr}`)), 45_000);
        proc.stderr!.on('data', (c: Buffer) => {
          stderr += c.toString();
          const m = /2 workers \(primary pid \d+\) share gRPC (\S+) and HTTPS (\S+)/.exec(stderr);
          if (m) {
            clearTimeout(t);
            grpcAddr = m[1]!;
            httpUrl = m[2]!.replace('127.0.0.1', 'localhost');
            done();
          }
        });
        proc.once('exit', (code) => fail(new Error(`primary exited ${code}: ${stderr}`)));
      });
    });

    afterAll(async () => {
      for (const c of clients) c.close();
      if (proc && proc.exitCode === null && proc.signalCode === null) {
        proc.removeAllListeners('exit');
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGKILL');
        await exited;
      }
    });

    const client = () => {
      const c = new BrokerClient({ address: grpcAddr, ca: readFileSync(join(dir, 'ca.pem')), cert: readFileSync(join(dir, 'workload.pem')), key: readFileSync(join(dir, 'workload.key')), timeoutMs: 10_000 });
      clients.push(c);
      return c;
    };

    it('runs two broker processes that share both ports, each a replica with its own audit chain', async () => {
      const workers = pids(proc.pid!);
      expect(workers).toHaveLength(2);
      expect(stderr.match(/worker [12] \(pid \d+\) gRPC \(mTLS\) on (\S+);/g)).toHaveLength(2);
      // Every worker reports the same shared addresses.
      for (const m of stderr.matchAll(/worker [12] \(pid \d+\) gRPC \(mTLS\) on (\S+); HTTPS on (\S+) /g)) {
        expect(m[1]).toBe(grpcAddr);
      }
      // Connections are handed out round-robin: with enough of them both workers serve.
      const cs = Array.from({ length: 8 }, client);
      const tasks = await Promise.all(cs.map((c, i) => c.beginTask({ purpose: `worker test ${i}`, ttlSeconds: 300 })));
      const audits = [1, 2].map((i) => join(dir, 'box', `worker-${i}`, 'audit.log'));
      for (const a of audits) expect(existsSync(a)).toBe(true);
      const begun = audits.map((a) => readFileSync(a, 'utf8').split('\n').filter((l) => l.includes('"task.begin"')).length);
      expect(begun[0]! + begun[1]!).toBe(8);
      expect(begun[0]).toBeGreaterThan(0);
      expect(begun[1]).toBeGreaterThan(0);
      const ids = audits.map((a) => new Set(readFileSync(a, 'utf8').split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { broker_id: string }).broker_id)));
      expect([...ids[0]!]).toEqual(['box-w1']);
      expect([...ids[1]!]).toEqual(['box-w2']);
      // A task begun through one worker is issued and completed through the other (shared store).
      const t = tasks[0]!;
      for (const c of cs) await c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 });
      await cs[1]!.completeTask(t.taskId);
      for (const c of cs) await expect(c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'], ttlSeconds: 60 })).rejects.toMatchObject({ code: 'ERR_TASK_NOT_ACTIVE' });
      const h = await httpCall(`${httpUrl}/healthz`, readFileSync(join(dir, 'ca.pem')), dir);
      expect(h.json).toMatchObject({ status: 'ok', checks: { store: { ok: true } } });
    });

    it('replaces a worker that dies, and stops every worker on SIGTERM', async () => {
      const [w1] = pids(proc.pid!);
      process.kill(w1!, 'SIGKILL');
      const until = Date.now() + 30_000;
      while (!/worker \d back, gRPC on/.test(stderr)) {
        if (Date.now() > until) throw new Error(`no replacement: ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const now = pids(proc.pid!);
      expect(now).toHaveLength(2);
      expect(now).not.toContain(w1);
      await client().beginTask({ purpose: 'after replacement', ttlSeconds: 60 });
      const exited = new Promise<number | null>((r) => {
        proc.removeAllListeners('exit');
        proc.once('exit', (code) => r(code));
      });
      proc.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toContain('all workers stopped (SIGTERM)');
      for (const p of now) expect(existsSync(`/proc/${p}`) && !readFileSync(`/proc/${p}/stat`, 'utf8').includes(') Z ')).toBe(false);
    });
  });
});
