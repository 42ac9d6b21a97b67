/**
 * Several `mayfly serve` processes (bin/mayfly.js, real child processes) on
 * one PostgreSQL database: one `dev init` directory shared for the CA, the
 * broker certificate and the KEK, and per replica its own config, data dir
 * (audit log), broker_id and ports. Needs `npm run build`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { devInit } from '../../src/cli/dev-init.js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { MayflyVerifier } from '../../src/verifier/index.js';

const BIN = resolve('bin/mayfly.js');

/** POST with no body to a replica's HTTPS API, as the dev identity `who` (its certificate in `dir`). */
export function post(url: string, ca: Buffer, dir: string, who: string): Promise<{ status: number; body: string }> {
  return new Promise((done, fail) => {
    const req = request(url, { method: 'POST', ca, cert: readFileSync(join(dir, `${who}.pem`)), key: readFileSync(join(dir, `${who}.key`)), servername: 'localhost' }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => done({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', fail);
    req.end();
  });
}

export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
    s.on('error', fail);
  });
}

export interface Replica {
  index: number;
  brokerId: string;
  config: string;
  dataDir: string;
  grpc: string;
  https: string;
  jwksUrl: string;
  proc: ChildProcess | null;
  stderr: string;
}

export interface Cluster {
  dir: string;
  issuer: string;
  ca: Buffer;
  replicas: Replica[];
  /** A client of replica i as `who` (workload, relying-party, admin). */
  client(i: number, who?: string): BrokerClient;
  /** A workload client given every replica's address, starting with replica `first`. */
  clusterClient(first: number): BrokerClient;
  /** A verifier using replica i's JWKS and subscribed to replica i's feed. */
  verifier(i: number, id: string): MayflyVerifier;
  /** kill -9. */
  kill(i: number): Promise<void>;
  stop(): Promise<void>;
}

export async function startCluster(n: number, dbUrl: string, patch: (doc: Record<string, any>, i: number) => void = () => undefined): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'mayfly-cluster-'));
  const init = devInit(dir);
  const base = YAML.parse(readFileSync(init.config, 'utf8')) as Record<string, any>;
  const issuer = base['issuer'] as string;
  const replicas: Replica[] = [];
  for (let i = 0; i < n; i++) {
    const [g, h] = [await freePort(), await freePort()];
    const doc = structuredClone(base);
    doc['broker_id'] = `replica-${i + 1}`;
    doc['data_dir'] = `replica-${i + 1}`;
    doc['listen'] = { grpc: `127.0.0.1:${g}`, http: `127.0.0.1:${h}` };
    doc['store'] = { backend: 'postgres', url: dbUrl, pool_max: 6 };
    doc['feed'] = { heartbeat_ms: 250 };
    doc['tasks'] = { sweep_interval_ms: 200 };
    doc['log'] = { level: 'warn' };
    patch(doc, i);
    const dataDir = join(dir, `replica-${i + 1}`);
    mkdirSync(dataDir, { mode: 0o700 });
    const config = join(dir, `replica-${i + 1}.yaml`);
    writeFileSync(config, YAML.stringify(doc));
    replicas.push({ index: i, brokerId: `replica-${i + 1}`, config, dataDir, grpc: `127.0.0.1:${g}`, https: `https://127.0.0.1:${h}`, jwksUrl: `https://127.0.0.1:${h}/.well-known/jwks.json`, proc: null, stderr: '' });
  }
  const start = (r: Replica) =>
    new Promise<void>((done, fail) => {
      const p = spawn(process.execPath, [BIN, 'serve', '--config', r.config], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MAYFLY_KEK: '' } });
      r.proc = p;
      const t = setTimeout(() => fail(new Error(`${r.brokerId} did not start: ${r.stderr}`)), 30_000);
      p.stderr!.on('data', (c: Buffer) => {
        r.stderr += c.toString();
        if (r.stderr.includes('gRPC (mTLS) on')) {
          clearTimeout(t);
          done();
        }
      });
      p.on('exit', (code) => {
        clearTimeout(t);
        fail(new Error(`${r.brokerId} exited ${code}: ${r.stderr}`));
      });
    });
  // The first replica creates the schema and the key set; the others start together.
  await start(replicas[0]!);
  await Promise.all(replicas.slice(1).map(start));
  const ca = readFileSync(join(dir, 'ca.pem'));
  const clients: BrokerClient[] = [];
  const verifiers: MayflyVerifier[] = [];
  const client = (i: number, who = 'workload') => {
    const c = new BrokerClient({ address: replicas[i]!.grpc, ca, cert: readFileSync(join(dir, `${who}.pem`)), key: readFileSync(join(dir, `${who}.key`)), timeoutMs: 5000 });
    clients.push(c);
    return c;
  };
  const clusterClient = (first: number) => {
    const addresses = replicas.map((_, k) => replicas[(first + k) % replicas.length]!.grpc);
    const c = new BrokerClient({ address: addresses, ca, cert: readFileSync(join(dir, 'workload.pem')), key: readFileSync(join(dir, 'workload.key')), timeoutMs: 5000, connectTimeoutMs: 1000 });
    clients.push(c);
    return c;
  };
  return {
    dir,
    issuer,
    ca,
    replicas,
    client,
    clusterClient,
    verifier: (i, id) => {
      const v = new MayflyVerifier({
        issuer,
        audience: 'demo-api',
        jwks: { url: replicas[i]!.jwksUrl, ca, minRefreshIntervalMs: 500 },
        feed: { client: client(i, 'relying-party'), subscriberId: id, maxSilenceMs: 3000 },
      });
      verifiers.push(v);
      return v;
    },
    kill: async (i) => {
      const p = replicas[i]!.proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      for (const v of verifiers) v.close();
      for (const c of clients) c.close();
      await Promise.all(
        replicas.map(async (r) => {
          const p = r.proc;
          if (!p || p.exitCode !== null || p.signalCode !== null) return;
          p.removeAllListeners('exit');
          const exited = new Promise((res) => p.once('exit', res));
          p.kill('SIGTERM');
          const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
          await exited;
          clearTimeout(t);
        }),
      );
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
