/**
 * BrokerClient across several replicas, against scripted gRPC servers on
 * 127.0.0.1 (real TLS, real HTTP/2): which RPCs are sent again after an
 * UNAVAILABLE whose outcome is unknown, failover before anything is sent,
 * and the verifier's feed resuming on the next replica from its cursor.
 */
import { generateKeyPairSync } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerClient, RETRY_AFTER_UNAVAILABLE } from '../../src/client/index.js';
import { REPLAY_END_REASON } from '../../src/core/types.js';
import * as pb from '../../src/gen/mayfly/v1/broker_pb.js';
import { issueServerCert } from '../../src/pki/dev-pki.js';
import { buildClaims } from '../../src/tokens/claims.js';
import { signCompact } from '../../src/tokens/jws.js';
import { MayflyVerifier } from '../../src/verifier/index.js';
import type { FetchLike } from '../../src/net/remote-document.js';
import { codeOf } from '../helpers/codes.js';
import { devPki } from '../helpers/pki.js';

const UNARY = ['BeginTask', 'IssueToken', 'CompleteTask', 'RenewTask', 'Introspect', 'RevokeToken', 'RevokeIdentity', 'AckKeySet', 'ReportMisuse', 'Ping'] as const;

/** A scripted replica: records every call; unary calls answer an empty message, or UNAVAILABLE after receiving them. */
class FakeReplica {
  readonly calls: string[] = [];
  readonly feedCursors: number[] = [];
  failUnary = false;
  port = 0;
  private readonly server = new grpc.Server();

  constructor(feed: (call: grpc.ServerWritableStream<Buffer, Buffer>, cursor: number) => void = () => undefined) {
    for (const method of UNARY) {
      this.server.register<Buffer, Buffer>(
        `/${pb.Broker.typeName}/${method}`,
        ((_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          this.calls.push(method);
          if (this.failUnary) cb({ code: grpc.status.UNAVAILABLE, details: 'replica going away' });
          else cb(null, Buffer.alloc(0));
        }) as grpc.handleUnaryCall<Buffer, Buffer>,
        (b) => b,
        (b) => b,
        'unary',
      );
    }
    this.server.register<Buffer, Buffer>(
      `/${pb.Broker.typeName}/WatchRevocations`,
      ((call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        const cursor = Number(fromBinary(pb.WatchRevocationsRequestSchema, call.request).cursor);
        this.calls.push('WatchRevocations');
        this.feedCursors.push(cursor);
        feed(call, cursor);
      }) as grpc.handleServerStreamingCall<Buffer, Buffer>,
      (b) => b,
      (b) => b,
      'serverStream',
    );
  }

  host = '127.0.0.1';

  /** Listens on `host`:`port` (0: any free port). */
  async start(host = '127.0.0.1', port = 0): Promise<this> {
    const pki = devPki();
    const cert = issueServerCert(pki.example, { dnsNames: ['localhost', 'brokers.test'], ipAddresses: ['127.0.0.1'], keyPem: pki.leafKeyPem });
    const creds = grpc.ServerCredentials.createSsl(null, [{ cert_chain: Buffer.from(cert.certPem + cert.chainPem.join('')), private_key: Buffer.from(cert.keyPem) }], false);
    this.host = host;
    this.port = await new Promise<number>((resolve, reject) => this.server.bindAsync(`${host}:${port}`, creds, (err, p) => (err ? reject(err) : resolve(p))));
    return this;
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

const event = (e: Parameters<typeof create<typeof pb.RevocationEventSchema>>[1]) => Buffer.from(toBinary(pb.RevocationEventSchema, create(pb.RevocationEventSchema, e)));

const open: Array<{ close(): void } | FakeReplica> = [];
afterEach(() => {
  for (const x of open.splice(0)) (x instanceof FakeReplica ? x.stop() : x.close());
});
async function replica(feed?: ConstructorParameters<typeof FakeReplica>[0]): Promise<FakeReplica> {
  const r = await new FakeReplica(feed).start();
  open.push(r);
  return r;
}
function client(address: string | string[]): BrokerClient {
  const c = new BrokerClient({ address, ca: devPki().example.certPem, timeoutMs: 5_000, connectTimeoutMs: 1_000 });
  open.push(c);
  return c;
}
const call = (c: BrokerClient, method: (typeof UNARY)[number]): Promise<unknown> => {
  switch (method) {
    case 'BeginTask':
      return c.beginTask({ purpose: 'p' });
    case 'IssueToken':
      return c.issueToken({ taskId: 't', audience: 'a' });
    case 'CompleteTask':
      return c.completeTask('t');
    case 'RenewTask':
      return c.renewTask('t', 30);
    case 'Introspect':
      return c.introspect('x.y.z');
    case 'RevokeToken':
      return c.revokeToken({ tokenId: 'j' });
    case 'RevokeIdentity':
      return c.revokeIdentity('spiffe://example.org/w');
    case 'AckKeySet':
      return c.ackKeySet('s', 'v');
    case 'ReportMisuse':
      return c.reportMisuse('replay', 'j');
    case 'Ping':
      return c.ping();
  }
};

describe('BrokerClient failover between replicas', () => {
  it('takes an array or a comma-separated list', () => {
    expect(client('127.0.0.1:1, 127.0.0.1:2').stats().addresses).toEqual(['127.0.0.1:1', '127.0.0.1:2']);
    expect(client(['127.0.0.1:1', '127.0.0.1:2,127.0.0.1:3']).stats().addresses).toHaveLength(3);
    expect(() => new BrokerClient({ address: ' , ', ca: devPki().example.certPem })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG_INVALID' }));
  });

  it.each(UNARY.map((m) => [m, RETRY_AFTER_UNAVAILABLE[m]] as const))('%s after UNAVAILABLE on a sent call: sent again to the next replica = %s', async (method, retried) => {
    const [a, b] = [await replica(), await replica()];
    a.failUnary = true;
    const c = client([a.address, b.address]);
    const code = await codeOf(call(c, method));
    expect(a.calls).toEqual([method]);
    if (retried) {
      expect(code).toBe('OK');
      expect(b.calls).toEqual([method]);
      expect(c.stats().failovers).toBe(1);
    } else {
      expect(code).toBe('ERR_UNAVAILABLE');
      expect(b.calls).toEqual([]);
      // The next call starts at the other replica.
      expect(await codeOf(call(c, method))).toBe('OK');
      expect(b.calls).toEqual([method]);
    }
  });

  it('a replica that is down is skipped before anything is sent, so even BeginTask fails over', async () => {
    const [a, b] = [await replica(), await replica()];
    const c = client([a.address, b.address]);
    await c.ping();
    a.stop();
    await new Promise((r) => setTimeout(r, 200)); // the client sees the connection close (a killed replica's RST)
    expect(await codeOf(c.beginTask({ purpose: 'after the first replica died' }))).toBe('OK');
    expect(await codeOf(c.issueToken({ taskId: 't', audience: 'a' }))).toBe('OK');
    expect(b.calls).toEqual(expect.arrayContaining(['BeginTask', 'IssueToken']));
    expect(a.calls).toEqual(['Ping']);
  });

  it('every replica down: ERR_UNAVAILABLE, not a hang', async () => {
    const [a, b] = [await replica(), await replica()];
    a.stop();
    b.stop();
    const t0 = Date.now();
    expect(await codeOf(client([a.address, b.address]).introspect('x.y.z'))).toBe('ERR_UNAVAILABLE');
    expect(Date.now() - t0).toBeLessThan(5_000);
  });
});

describe('BrokerClient given one DNS name with several records', () => {
  /** Replicas on 127.0.0.1, 127.0.0.2, ... all on one port, as the records of one name would be. */
  async function records(n: number): Promise<FakeReplica[]> {
    const first = await replica();
    const rest: FakeReplica[] = [];
    for (let i = 2; i <= n; i++) {
      const r = await new FakeReplica().start(`127.0.0.${i}`, first.port);
      open.push(r);
      rest.push(r);
    }
    return [first, ...rest];
  }
  /** A resolver that knows only brokers.test, answering whatever `answer` holds at the time. */
  function resolver(answer: { ips: string[] }) {
    const asked: string[] = [];
    const lookup = async (host: string) => {
      asked.push(host);
      if (host !== 'brokers.test') throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
      return answer.ips;
    };
    return { lookup, asked };
  }
  function named(port: number, lookup: (h: string) => Promise<string[]>): BrokerClient {
    const c = new BrokerClient({ address: `brokers.test:${port}`, ca: devPki().example.certPem, timeoutMs: 5_000, connectTimeoutMs: 1_000, lookup });
    open.push(c);
    return c;
  }

  it('each address is a replica: an idempotent call answered UNAVAILABLE goes to the next address, BeginTask does not', async () => {
    const [a, b, c] = await records(3);
    const r = resolver({ ips: ['127.0.0.1', '127.0.0.2', '127.0.0.3'] });
    const client = named(a!.port, r.lookup);
    a!.failUnary = true;
    b!.failUnary = true;
    expect(await codeOf(client.completeTask('t'))).toBe('OK');
    expect(client.stats().addresses).toEqual([a!.address, b!.address, c!.address]);
    // Reaching 127.0.0.2 and .3 at all means TLS checked the name: the certificate names brokers.test, no such address.
    expect([a!.calls, b!.calls, c!.calls]).toEqual([['CompleteTask'], ['CompleteTask'], ['CompleteTask']]);
    expect(client.stats().failovers).toBe(2);
    expect(r.asked).toEqual(['brokers.test']);
    c!.failUnary = true;
    a!.failUnary = false;
    expect(await codeOf(client.beginTask({ purpose: 'p' }))).toBe('ERR_UNAVAILABLE');
    expect(c!.calls).toEqual(['CompleteTask', 'BeginTask']);
    expect(a!.calls).toEqual(['CompleteTask']);
  });

  it('a dead address is skipped before anything is sent; when no known address answers, the name is resolved again', async () => {
    const [a, b] = await records(2);
    const answer = { ips: ['127.0.0.1', '127.0.0.2'] };
    const r = resolver(answer);
    const client = named(a!.port, r.lookup);
    await client.ping();
    a!.stop();
    await new Promise((res) => setTimeout(res, 200));
    expect(await codeOf(client.beginTask({ purpose: 'after the first address died' }))).toBe('OK');
    expect(b!.calls).toEqual(expect.arrayContaining(['BeginTask']));
    // Both replicas are replaced by one at a new address: the name now points there.
    const moved = await new FakeReplica().start('127.0.0.3', a!.port);
    open.push(moved);
    answer.ips = ['127.0.0.3'];
    b!.stop();
    await new Promise((res) => setTimeout(res, 200));
    expect(await codeOf(client.beginTask({ purpose: 'after the name moved' }))).toBe('OK');
    expect(moved.calls).toEqual(['BeginTask']);
    expect(r.asked).toEqual(['brokers.test', 'brokers.test']);
    expect(client.stats().addresses).toEqual([moved.address]);
  });

  it('a resolver that never answers does not outlast the call deadline', async () => {
    const client = new BrokerClient({ address: 'brokers.test:1', ca: devPki().example.certPem, timeoutMs: 800, connectTimeoutMs: 500, lookup: () => new Promise<string[]>(() => undefined) });
    open.push(client);
    const t0 = Date.now();
    expect(await codeOf(client.ping())).toBe('ERR_UNAVAILABLE');
    expect(Date.now() - t0).toBeLessThan(3_000);
  });

  it('a name that does not resolve fails with ERR_UNAVAILABLE naming it, not a hang', async () => {
    const client = named(1, resolver({ ips: [] }).lookup);
    const t0 = Date.now();
    const err = await client.ping().catch((e: unknown) => e as { code: string; message: string });
    expect(err).toMatchObject({ code: 'ERR_UNAVAILABLE' });
    expect((err as { message: string }).message).toContain('brokers.test:1');
    expect(Date.now() - t0).toBeLessThan(5_000);
  });
});

describe('MayflyVerifier across replicas', () => {
  it('the feed resumes on the next replica from its cursor (no gap, no duplicate); JWKS falls back to the next URL', async () => {
    const ISS = 'https://broker.test';
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwks = JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'k1', alg: 'ES256', use: 'sig' }] });
    const now = Date.now();
    const mint = (tid: string) =>
      signCompact({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' }, buildClaims({ issuer: ISS, subject: 'spiffe://example.org/w', audience: 'api', scopes: ['read'], jti: `j-${tid}`, taskId: tid, issuedAtMs: now, expiresAtMs: now + 300_000 }), privateKey);
    // One global event log, as the replicas of one cluster share it: cursors 5 (snapshot), 6, 7.
    const log = [
      { cursor: 6, e: event({ kind: pb.RevocationEvent_Kind.TASK, cursor: 6n, taskIds: ['t-6'] }) },
      { cursor: 7, e: event({ kind: pb.RevocationEvent_Kind.TASK, cursor: 7n, taskIds: ['t-7'] }) },
    ];
    const heartbeats = new Set<NodeJS.Timeout>();
    const serve = (upTo: number, thenFail: boolean) => (call: grpc.ServerWritableStream<Buffer, Buffer>, cursor: number) => {
      if (cursor === 0) call.write(event({ kind: pb.RevocationEvent_Kind.SNAPSHOT, cursor: 5n, kid: 'v1', jwksJson: jwks }));
      for (const x of log) if (x.cursor > Math.max(cursor, 5) && x.cursor <= upTo) call.write(x.e);
      if (cursor > 0) call.write(event({ kind: pb.RevocationEvent_Kind.KEYSET, cursor: BigInt(upTo), kid: 'v1', jwksJson: jwks, reason: REPLAY_END_REASON }));
      if (thenFail) setTimeout(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'replica killed' }), 50);
      else {
        const hb = setInterval(() => call.write(event({ kind: pb.RevocationEvent_Kind.HEARTBEAT })), 100);
        heartbeats.add(hb);
        call.on('cancelled', () => clearInterval(hb));
      }
    };
    const a = await replica(serve(6, true));
    const b = await replica(serve(7, false));
    const fetches: string[] = [];
    const fetchImpl: FetchLike = async (url) => {
      fetches.push(url);
      if (url.includes('replica-a')) throw new Error('ECONNREFUSED');
      return { ok: true, status: 200, text: async () => jwks };
    };
    const c = client([a.address, b.address]);
    const v = new MayflyVerifier({
      issuer: ISS,
      audience: 'api',
      jwks: { url: ['https://replica-a.test/jwks', 'https://replica-b.test/jwks'], fetchImpl },
      feed: { client: c, subscriberId: 'rp', backoff: { initialMs: 10, maxMs: 50 } },
    });
    open.push(v);
    try {
      await v.start();
      expect(fetches).toEqual(['https://replica-a.test/jwks', 'https://replica-b.test/jwks']);
      for (let i = 0; i < 200 && v.stats().cursor < 7; i++) await new Promise((r) => setTimeout(r, 10));
      expect(a.feedCursors).toEqual([0]);
      expect(b.feedCursors).toEqual([6]); // exactly the last cursor processed: B replays 7 and nothing before
      expect(v.stats().cursor).toBe(7);
      expect(await codeOf(v.verify(mint('t-6')))).toBe('ERR_TOKEN_REVOKED');
      expect(await codeOf(v.verify(mint('t-7')))).toBe('ERR_TOKEN_REVOKED');
      expect(await codeOf(v.verify(mint('t-live')))).toBe('OK');
      expect(c.stats().failovers).toBe(1);
    } finally {
      for (const hb of heartbeats) clearInterval(hb);
    }
  });
});
