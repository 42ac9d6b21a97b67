/**
 * End-to-end harness: a real broker (real sockets, real TLS, SQLite, file
 * audit log) started from a `mayfly dev init` directory on 127.0.0.1:0,
 * plus small clients for gRPC (BrokerClient and raw frames) and HTTPS
 * (plain node:https, the way curl would talk to it).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { connect as http2Connect, constants as h2 } from 'node:http2';
import { createServer as createTcpServer, connect as tcpConnect, type Socket } from 'node:net';
import { request as httpsRequest, type RequestOptions } from 'node:https';
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

/** Polls `cond` every 20 ms for up to `ms`; returns its last value. */
export async function until(cond: () => boolean, ms = 3000): Promise<boolean> {
  const t0 = Date.now();
  while (!cond() && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 20));
  return cond();
}

export interface SseEvent {
  id?: string;
  event: string;
  data: Record<string, unknown>;
}

export interface SseFeed {
  /** Events parsed so far, in order. */
  events: SseEvent[];
  /** The response status, once the headers arrived. */
  ready: Promise<number>;
  /** Set when the response ended or its connection closed. */
  closed: () => boolean;
  /** Starts reading a feed opened with `paused` (a subscriber that had stalled). */
  resume(): void;
  close(): void;
}

/**
 * Opens GET /v1/revocations; events are collected until close(). With
 * `paused` the response is never read (a stalled subscriber: its TCP window
 * fills and the broker's writes back up) until resume().
 */
export function openSseFeed(tb: TestBroker, opts: { cert?: string; lastEventId?: string; paused?: boolean } = {}): SseFeed {
  const events: SseEvent[] = [];
  let res: IncomingMessage | undefined;
  let closed = false;
  let paused = opts.paused === true;
  const url = new URL('/v1/revocations', tb.httpUrl);
  const o: RequestOptions = {
    ca: tb.ca,
    agent: false,
    headers: { accept: 'text/event-stream', ...(opts.lastEventId ? { 'last-event-id': opts.lastEventId } : {}) },
    ...(opts.cert ? { cert: readFileSync(join(tb.dir, `${opts.cert}.pem`)), key: readFileSync(join(tb.dir, `${opts.cert}.key`)) } : {}),
  };
  const ready = new Promise<number>((resolve, reject) => {
    const req = httpsRequest(url, o, (r) => {
      res = r;
      let buf = '';
      r.setEncoding('utf8');
      r.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const e: Partial<SseEvent> = {};
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) e.id = line.slice(4);
            else if (line.startsWith('event: ')) e.event = line.slice(7);
            else if (line.startsWith('data: ')) e.data = JSON.parse(line.slice(6)) as Record<string, unknown>;
          }
          if (e.event) events.push(e as SseEvent);
        }
      });
      r.on('close', () => (closed = true));
      r.on('error', () => (closed = true));
      if (paused) r.pause();
      resolve(r.statusCode ?? 0);
    });
    req.on('error', (e) => {
      closed = true;
      reject(e);
    });
    req.end();
  });
  return {
    events,
    ready,
    closed: () => closed,
    resume: () => {
      paused = false;
      res?.resume();
    },
    close: () => res?.destroy(),
  };
}

export interface RawFeedStatus {
  code: number;
  details: string;
  /** The `mayfly-error-code` trailer, if any. */
  mayflyCode: string | undefined;
}

export interface RawFeed {
  /** Messages received so far (RevocationEvent protobuf bytes), in order. */
  messages: Buffer[];
  /** The call's status, once its trailers (or a reset) arrived. */
  status: Promise<RawFeedStatus>;
  /** Starts reading a stream opened with `paused`. */
  resume(): void;
  close(): void;
}

/**
 * WatchRevocations over a plain node:http2 session (gRPC framing by hand).
 * With `paused` the stream is never read until resume(), and HTTP/2 flow
 * control holds the broker to its window: a subscriber that stopped reading.
 * (grpc-js clients keep reading into memory while their stream is paused, so
 * they cannot play one.)
 */
export function rawFeedStream(tb: TestBroker, request: Buffer, o: { cert?: string; paused?: boolean } = {}): RawFeed {
  const cert = o.cert ?? 'relying-party';
  const session = http2Connect(`https://localhost:${tb.grpcAddr.split(':')[1]}`, {
    ca: tb.ca,
    cert: readFileSync(join(tb.dir, `${cert}.pem`)),
    key: readFileSync(join(tb.dir, `${cert}.key`)),
    host: '127.0.0.1',
  });
  session.on('error', () => undefined);
  const stream = session.request({ ':method': 'POST', ':path': '/mayfly.v1.Broker/WatchRevocations', 'content-type': 'application/grpc', te: 'trailers' });
  const frame = Buffer.alloc(5);
  frame.writeUInt32BE(request.length, 1);
  stream.end(Buffer.concat([frame, request]));
  const messages: Buffer[] = [];
  let buf = Buffer.alloc(0);
  stream.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
      const len = buf.readUInt32BE(1);
      messages.push(buf.subarray(5, 5 + len));
      buf = buf.subarray(5 + len);
    }
  });
  if (o.paused) stream.pause();
  const status = new Promise<RawFeedStatus>((resolve) => {
    const from = (h: Record<string, unknown>) => ({ code: Number(h['grpc-status']), details: decodeURIComponent(String(h['grpc-message'] ?? '')), mayflyCode: h['mayfly-error-code'] as string | undefined });
    stream.on('response', (h) => {
      if (h['grpc-status'] !== undefined) resolve(from(h));
    });
    stream.on('trailers', (h) => resolve(from(h)));
    // No trailers: not a gRPC status at all (code -1), whatever closed the stream.
    stream.on('close', () => resolve({ code: -1, details: `stream closed without a status (RST_STREAM ${stream.rstCode ?? 'none'})`, mayflyCode: undefined }));
  });
  return {
    messages,
    status,
    resume: () => stream.resume(),
    close: () => {
      stream.close(h2.NGHTTP2_CANCEL);
      session.close();
    },
  };
}

export interface PausableProxy {
  /** 127.0.0.1:<port> to dial instead of the target. */
  address: string;
  /** Stops forwarding from the target to the clients: they stall as a stopped process would (their peer's writes back up). */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

/** A TCP relay to `target` (host:port) that can stop passing the target's bytes on, e.g. a gRPC feed client's process frozen. */
export async function pausableProxy(target: string): Promise<PausableProxy> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Map<Socket, Socket>();
  let paused = false;
  const server = createTcpServer((client) => {
    const up = tcpConnect(port, host);
    pairs.set(up, client);
    client.pipe(up);
    if (!paused) up.pipe(client);
    const drop = () => {
      client.destroy();
      up.destroy();
      pairs.delete(up);
    };
    client.on('error', drop).on('close', drop);
    up.on('error', drop).on('close', drop);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  return {
    address: `127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`,
    pause: () => {
      paused = true;
      for (const up of pairs.keys()) {
        up.unpipe();
        up.pause();
      }
    },
    resume: () => {
      paused = false;
      for (const [up, client] of pairs) up.pipe(client);
    },
    close: async () => {
      for (const up of pairs.keys()) up.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
