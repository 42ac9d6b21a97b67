/**
 * Test harness: a real broker (dev setup from devInit, real TLS on
 * 127.0.0.1:0), BrokerClients with the dev SVIDs, and verifiers wired to it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import YAML from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { startBroker, type RunningBroker } from '../../src/cli/broker.js';
import { devInit } from '../../src/cli/dev-init.js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { MayflyVerifier, type MayflyVerifierOptions } from '../../src/verifier/index.js';

export interface DevBroker {
  dir: string;
  broker: RunningBroker;
  issuer: string;
  grpcAddress: string;
  jwksUrl: string;
  ca: Buffer;
  /** A client authenticated with the named dev SVID (workload, relying-party, admin). */
  client(who?: 'workload' | 'relying-party' | 'admin'): BrokerClient;
  /** Leaf certificate DER of a dev SVID (what a relying party sees over mTLS). */
  leafDer(who: 'workload' | 'relying-party' | 'admin'): Buffer;
  verifier(id: string, options?: Partial<MayflyVerifierOptions> & { feedOptions?: Partial<NonNullable<MayflyVerifierOptions['feed']>> }): MayflyVerifier;
  auditLines(): Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

export async function startDevBroker(patch: (doc: Record<string, any>) => void = () => undefined): Promise<DevBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'mayfly-rp-'));
  const init = devInit(dir);
  const doc = YAML.parse(readFileSync(init.config, 'utf8')) as Record<string, any>;
  doc['feed'] = { heartbeat_ms: 200 };
  doc['tasks'] = { sweep_interval_ms: 100 };
  doc['log'] = { level: 'silent' };
  doc['store'] = { backend: 'memory' };
  patch(doc);
  writeFileSync(init.config, YAML.stringify(doc));
  const loaded = loadConfig(init.config);
  const broker = await startBroker(loaded, { grpcListen: '127.0.0.1:0', httpListen: '127.0.0.1:0' });
  const ca = readFileSync(join(dir, 'ca.pem'));
  const grpcAddress = `127.0.0.1:${broker.grpc.address.port}`;
  const jwksUrl = `https://127.0.0.1:${broker.http.address.port}/.well-known/jwks.json`;
  const clients: BrokerClient[] = [];
  const verifiers: MayflyVerifier[] = [];
  const client = (who: 'workload' | 'relying-party' | 'admin' = 'workload') => {
    const c = new BrokerClient({ address: grpcAddress, ca, cert: readFileSync(join(dir, `${who}.pem`)), key: readFileSync(join(dir, `${who}.key`)), timeoutMs: 5000 });
    clients.push(c);
    return c;
  };
  let stopped = false;
  return {
    dir,
    broker,
    issuer: loaded.config.issuer,
    grpcAddress,
    jwksUrl,
    ca,
    client,
    leafDer: (who) => new X509Certificate(readFileSync(join(dir, `${who}.pem`))).raw,
    verifier: (id, options = {}) => {
      const { feedOptions, ...rest } = options;
      const v = new MayflyVerifier({
        issuer: loaded.config.issuer,
        audience: 'demo-api',
        jwks: { url: jwksUrl, ca },
        feed: { client: client('relying-party'), subscriberId: id, maxSilenceMs: 3000, ...feedOptions },
        ...rest,
      });
      verifiers.push(v);
      return v;
    },
    auditLines: () =>
      readFileSync(join(dir, 'audit.log'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    stop: async () => {
      for (const v of verifiers) v.close();
      for (const c of clients) c.close();
      if (!stopped) {
        stopped = true;
        await broker.stop();
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `fn` until it returns true or `timeoutMs` passes; returns the elapsed ms. */
export async function waitFor(fn: () => boolean | Promise<boolean>, timeoutMs = 5000, stepMs = 5): Promise<number> {
  const start = performance.now();
  for (;;) {
    if (await fn()) return performance.now() - start;
    if (performance.now() - start > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** The stable error code of a rejected promise or thrown call (or 'OK'). */
export async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
    return 'OK';
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
}
