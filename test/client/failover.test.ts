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

  async start(): Promise<this> {
    const pki = devPki();
    const cert = issueServerCert(pki.example, { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyPem: pki.leafKeyPem });
    const creds = grpc.ServerCredentials.createSsl(null, [{ cert_chain: Buffer.from(cert.certPem + cert.chainPem.join('')), private_key: Buffer.from(cert.keyPem) }], false);
    this.port = await new Promise<number>((resolve, reject) => this.server.bindAsync('127.0.0.1:0', creds, (err, port) => (err ? reject(err) : resolve(port))));
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
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
