/**
 * End-to-end harness: a real broker (real sockets, real TLS, SQLite, file
 * audit log) started from a `mayfly dev init` directory on 127.0.0.1:0,
 * plus small clients for gRPC (BrokerClient and raw frames) and HTTPS
 * (plain node:https, the way curl would talk to it).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { startBroker, type RunningBroker } from '../../src/cli/broker.js';
import { devInit } from '../../src/cli/dev-init.js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { loadConfig } from '../../src/config/load.js';
import { MayflyError, type ErrorCode } from '../../src/core/errors.js';

type Doc = Record<string, unknown>;

/** Credentials for a client: a cert/key prefix in the broker dir, explicit PEMs, a bearer token, or nothing at all. */
export type ClientCred = string | { bearer: string } | { cert: string | Buffer; key: string | Buffer } | { none: true };

export interface StartTestBrokerOptions {
  /** Reuse a directory (restart tests); default: a fresh temp dir with `dev init`. */
  dir?: string;
  /** Deep-merged into mayfly.yaml (arrays replace), or a function editing the parsed document in place. */
  configPatch?: Doc | ((config: Doc, dir: string) => void);
  /** Rules appended after the default dev rules in rules.yaml. */
  extraRules?: Doc[];
}

export interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  /** Parsed JSON body, or undefined when the body is not JSON. */
  json: Doc | undefined;
}

export interface HttpOptions {
  method?: 'GET' | 'POST';
  /** application/x-www-form-urlencoded body. */
  form?: Record<string, string>;
  /** A raw application/x-www-form-urlencoded body (e.g. with a repeated parameter). */
  rawForm?: string;
  /** application/json body. */
  json?: unknown;
  bearer?: string;
  /** Client certificate: a prefix in the broker dir (e.g. 'relying-party'). */
  cert?: string;
}

export interface TestBroker {
  broker: RunningBroker;
  dir: string;
  /** 127.0.0.1:<port> of the gRPC listener. */
  grpcAddr: string;
  /** https://localhost:<port> of the HTTP listener. */
  httpUrl: string;
  /** The `iss` of the broker's tokens (from mayfly.yaml). */
  issuer: string;
  ca: Buffer;
  /** A BrokerClient; closed by stop(). Default: the demo workload's X.509-SVID. */
  client(cred?: ClientCred): BrokerClient;
  /** An HTTPS request to the HTTP listener, trusting the dev CA. */
  http(path: string, options?: HttpOptions): Promise<HttpResult>;
  /** Parsed audit.log records, oldest first. */
  audit(): Doc[];
  /** Highest seq written so far (use with auditSince). */
  auditMark(): number;
  /** Records written after `mark`. */
  auditSince(mark: number): Doc[];
  /** Stops the broker and closes clients; removes the dir unless keepDir. */
  stop(options?: { keepDir?: boolean }): Promise<void>;
}

function isObject(v: unknown): v is Doc {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge: objects merge, everything else (arrays included) replaces. */
export function deepMerge(target: Doc, patch: Doc): Doc {
  for (const [k, v] of Object.entries(patch)) {
    const cur = target[k];
    target[k] = isObject(cur) && isObject(v) ? deepMerge({ ...cur }, v) : v;
  }
  return target;
}

/** Runs `dev init` (unless the dir already has a setup), applies the patches and starts a broker on ephemeral ports. */
export async function startTestBroker(options: StartTestBrokerOptions = {}): Promise<TestBroker> {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'mayfly-e2e-'));
  const fresh = !existsSync(join(dir, 'mayfly.yaml'));
  devInit(dir);
  const configPath = join(dir, 'mayfly.yaml');
  if (fresh) {
    const doc = parseYaml(readFileSync(configPath, 'utf8')) as Doc;
    // Quiet by default; MAYFLY_E2E_LOG=debug shows the broker's log.
    doc['log'] = { level: process.env['MAYFLY_E2E_LOG'] ?? 'silent' };
    if (typeof options.configPatch === 'function') options.configPatch(doc, dir);
    else if (options.configPatch) deepMerge(doc, options.configPatch);
    writeFileSync(configPath, stringifyYaml(doc));
    if (options.extraRules && options.extraRules.length > 0) {
      const rules = parseYaml(readFileSync(join(dir, 'rules.yaml'), 'utf8')) as { rules: Doc[] };
      rules.rules.push(...options.extraRules);
      writeFileSync(join(dir, 'rules.yaml'), stringifyYaml(rules));
    }
  }
  const loaded = loadConfig(configPath);
  const broker = await startBroker(loaded, { grpcListen: '127.0.0.1:0', httpListen: '127.0.0.1:0' });
  const grpcAddr = `127.0.0.1:${broker.grpc.address.port}`;
  const httpUrl = `https://localhost:${broker.http.address.port}`;
  const ca = readFileSync(join(dir, 'ca.pem'));
  const auditPath = join(dir, loaded.config.audit.file);
  const clients: BrokerClient[] = [];

  const audit = (): Doc[] =>
    readFileSync(auditPath, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as Doc);

  const tb: TestBroker = {
    broker,
    dir,
    grpcAddr,
    httpUrl,
    issuer: loaded.config.issuer,
    ca,
    client(cred: ClientCred = 'workload') {
      let c: BrokerClient;
      if (typeof cred === 'string') {
        c = new BrokerClient({ address: grpcAddr, ca, cert: readFileSync(join(dir, `${cred}.pem`)), key: readFileSync(join(dir, `${cred}.key`)) });
      } else if ('bearer' in cred) {
        c = new BrokerClient({ address: grpcAddr, ca, bearer: cred.bearer });
      } else if ('cert' in cred) {
        c = new BrokerClient({ address: grpcAddr, ca, cert: cred.cert, key: cred.key });
      } else {
        c = new BrokerClient({ address: grpcAddr, ca });
      }
      clients.push(c);
      return c;
    },
    http: (path, o = {}) => httpCall(httpUrl + path, ca, dir, o),
    audit,
    auditMark: () => {
      const all = audit();
      return all.length === 0 ? 0 : (all[all.length - 1]!['seq'] as number);
    },
    auditSince: (mark) => audit().filter((r) => (r['seq'] as number) > mark),
    async stop(o = {}) {
      for (const c of clients) c.close();
      await broker.stop();
      if (!o.keepDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return tb;
}

/** One HTTPS request with node:https, a fresh connection each time (no agent), trusting `ca`. */
export function httpCall(url: string, ca: Buffer, dir: string, o: HttpOptions = {}): Promise<HttpResult> {
  const u = new URL(url);
  let body: string | undefined;
  const headers: Record<string, string> = { accept: 'application/json' };
  if (o.form || o.rawForm !== undefined) {
    body = o.rawForm ?? new URLSearchParams(o.form).toString();
    headers['content-type'] = 'application/x-www-form-urlencoded';
  } else if (o.json !== undefined) {
    body = JSON.stringify(o.json);
    headers['content-type'] = 'application/json';
  }
  if (body !== undefined) headers['content-length'] = String(Buffer.byteLength(body));
  if (o.bearer) headers['authorization'] = `Bearer ${o.bearer}`;
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        hostname: u.hostname === 'localhost' ? '127.0.0.1' : u.hostname,
        servername: u.hostname,
        port: u.port,
        path: u.pathname + u.search,
        method: o.method ?? (body !== undefined ? 'POST' : 'GET'),
        headers,
        ca,
        agent: false,
        ...(o.cert ? { cert: readFileSync(join(dir, `${o.cert}.pem`)), key: readFileSync(join(dir, `${o.cert}.key`)) } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: Doc | undefined;
          try {
            json = JSON.parse(text) as Doc;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`timeout: ${url}`)));
    req.end(body);
  });
}

/** Awaits a rejection and returns it as a MayflyError, failing the test if the call succeeded or threw something else. */
export async function mayflyRejection(p: Promise<unknown>): Promise<MayflyError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof MayflyError) return e;
    throw new Error(`expected a MayflyError, got ${String(e)}`);
  }
  throw new Error('expected the call to fail, but it succeeded');
}

/** The MayflyError code of a rejected call. */
export async function codeOf(p: Promise<unknown>): Promise<ErrorCode> {
  return (await mayflyRejection(p)).code;
}

export interface RawResult {
  error: grpc.ServiceError | null;
  response: Buffer | undefined;
}

/** Channel credentials for a raw gRPC client. */
export function grpcCreds(tb: TestBroker, certPrefix: string | null = 'workload'): grpc.ChannelCredentials {
  return certPrefix
    ? grpc.credentials.createSsl(tb.ca, readFileSync(join(tb.dir, `${certPrefix}.key`)), readFileSync(join(tb.dir, `${certPrefix}.pem`)))
    : grpc.credentials.createSsl(tb.ca);
}

/** A raw grpc-js client (no protobuf) to the test broker; the caller closes it. */
export function rawGrpcClient(tb: TestBroker, certPrefix: string | null = 'workload'): grpc.Client {
  return new grpc.Client(tb.grpcAddr, grpcCreds(tb, certPrefix), {
    'grpc.ssl_target_name_override': 'localhost',
    'grpc.default_authority': 'localhost',
  });
}

/** Sends `bytes` as the request message of unary `path` and returns the raw reply or the status. */
export function rawUnary(client: grpc.Client, path: string, bytes: Buffer): Promise<RawResult> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      bytes,
      new grpc.Metadata(),
      { deadline: Date.now() + 10_000 },
      (err, res) => resolve({ error: err ?? null, response: res }),
    );
  });
}

/** Minimal protobuf varint / string-field reading for the few raw replies tests look at. */
export function protoFields(buf: Buffer): Array<{ field: number; wire: number; value: number | Buffer }> {
  const out: Array<{ field: number; wire: number; value: number | Buffer }> = [];
  let i = 0;
  const varint = (): number => {
    let r = 0;
    let shift = 0;
    for (;;) {
      const b = buf[i++]!;
      r += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return r;
      shift += 7;
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const wire = tag & 7;
    const field = tag >>> 3;
    if (wire === 0) out.push({ field, wire, value: varint() });
    else if (wire === 2) {
      const len = varint();
      out.push({ field, wire, value: buf.subarray(i, i + len) });
      i += len;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}
