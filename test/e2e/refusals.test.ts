/**
 * Every refused call ends with a status and a code: each stream opened with
 * bad credentials or a malformed request ends within a second (gRPC status
 * plus mayfly-error-code; SSE an HTTP error in our shape), and the errors the
 * frameworks answer before any route runs (unknown path, over-long path
 * parameter, oversized headers, oversized gRPC message) carry our shape too.
 */
import * as grpc from '@grpc/grpc-js';
import { request as httpsRequest } from 'node:https';
import { create, toBinary } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as pb from '../../src/gen/mayfly/v1/broker_pb.js';
import { DEV_RELYING_PARTY_ID } from '../../src/cli/dev-init.js';
import { grpcCreds, rawGrpcClient, rawUnary, startTestBroker, type TestBroker } from './helpers.js';

let tb: TestBroker;

beforeAll(async () => {
  // The relying party is the only feed subscriber here, so the workload is a refused one.
  tb = await startTestBroker({ configPatch: { feed: { subscribers: [DEV_RELYING_PARTY_ID] } } });
});

afterAll(async () => {
  await tb?.stop();
});

interface StreamEnd {
  code: grpc.status;
  mayflyCode: string | undefined;
  ms: number;
  messages: number;
}

/** Opens WatchRevocations with raw request bytes and waits (at most 5 s) for its status. */
function watch(creds: grpc.ChannelCredentials, bytes: Buffer, metadata = new grpc.Metadata()): Promise<StreamEnd> {
  const client = new grpc.Client(tb.grpcAddr, creds, { 'grpc.ssl_target_name_override': 'localhost', 'grpc.default_authority': 'localhost' });
  const t0 = Date.now();
  return new Promise((resolve) => {
    let messages = 0;
    const call = client.makeServerStreamRequest('/mayfly.v1.Broker/WatchRevocations', (b: Buffer) => b, (b: Buffer) => b, bytes, metadata, { deadline: Date.now() + 5000 });
    call.on('data', () => messages++);
    call.on('error', () => undefined);
    call.on('status', (s: grpc.StatusObject) => {
      client.close();
      resolve({ code: s.code, mayflyCode: s.metadata.get('mayfly-error-code')[0] as string | undefined, ms: Date.now() - t0, messages });
    });
  });
}

const request = (o: { cursor?: bigint; subscriberId?: string } = {}) => Buffer.from(toBinary(pb.WatchRevocationsRequestSchema, create(pb.WatchRevocationsRequestSchema, { cursor: o.cursor ?? 0n, subscriberId: o.subscriberId ?? '' })));
const bearer = (t: string) => {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${t}`);
  return md;
};

describe('WatchRevocations: a refused stream ends with its status within a second', () => {
  const cases: Array<{ name: string; run: () => Promise<StreamEnd>; code: grpc.status; mayfly: string }> = [
    { name: 'anonymous (no certificate, no bearer)', run: () => watch(grpcCreds(tb, null), request()), code: grpc.status.UNAUTHENTICATED, mayfly: 'ERR_UNAUTHENTICATED' },
    { name: 'a bearer that is not a JWT', run: () => watch(grpcCreds(tb, null), request(), bearer('not-a-token')), code: grpc.status.UNAUTHENTICATED, mayfly: 'ERR_JWT_INVALID' },
    { name: 'a forged bearer JWT', run: () => watch(grpcCreds(tb, null), request(), bearer('eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.AAAA')), code: grpc.status.UNAUTHENTICATED, mayfly: 'ERR_ISSUER_UNKNOWN' },
    { name: 'malformed request bytes', run: () => watch(grpcCreds(tb, 'relying-party'), Buffer.from([0xff, 0xff, 0xff])), code: grpc.status.INVALID_ARGUMENT, mayfly: 'ERR_INVALID_ARGUMENT' },
    { name: 'a cursor past 2^53', run: () => watch(grpcCreds(tb, 'relying-party'), request({ cursor: 2n ** 64n - 1n })), code: grpc.status.INVALID_ARGUMENT, mayfly: 'ERR_INVALID_ARGUMENT' },
    { name: 'an over-long subscriber_id', run: () => watch(grpcCreds(tb, 'relying-party'), request({ subscriberId: 'x'.repeat(300) })), code: grpc.status.INVALID_ARGUMENT, mayfly: 'ERR_TOO_LARGE' },
    { name: 'an authenticated caller that is not a feed subscriber', run: () => watch(grpcCreds(tb, 'workload'), request()), code: grpc.status.PERMISSION_DENIED, mayfly: 'ERR_NOT_AUTHORIZED_CLIENT' },
  ];
  for (const c of cases) {
    it(`${c.name} → ${grpc.status[c.code]} ${c.mayfly}`, async () => {
      const end = await c.run();
      expect(end).toMatchObject({ code: c.code, mayflyCode: c.mayfly, messages: 0 });
      expect(end.ms).toBeLessThan(1000);
    });
  }

  it('the entitled subscriber still gets its stream (snapshot first)', async () => {
    const client = rawGrpcClient(tb, 'relying-party');
    try {
      const first = await new Promise<number>((resolve, reject) => {
        const call = client.makeServerStreamRequest('/mayfly.v1.Broker/WatchRevocations', (b: Buffer) => b, (b: Buffer) => b, request(), new grpc.Metadata(), {});
        call.on('data', (b: Buffer) => {
          resolve(b.length);
          call.cancel();
        });
        call.on('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? undefined : reject(e)));
      });
      expect(first).toBeGreaterThan(0);
    } finally {
      client.close();
    }
  });
});

describe('the SSE feed refuses at once, in our shape', () => {
  it('anonymous → 401; a Last-Event-ID past 2^53 → 400 ERR_INVALID_ARGUMENT', async () => {
    const anon = await tb.http('/v1/revocations', { method: 'GET' });
    expect(anon.status).toBe(401);
    expect(anon.json).toMatchObject({ error: 'ERR_UNAUTHENTICATED' });
    const far = await tb.http('/v1/revocations?cursor=18446744073709551615', { method: 'GET', cert: 'relying-party' });
    expect(far.status).toBe(400);
    expect(far.json).toMatchObject({ error: 'ERR_INVALID_ARGUMENT', message: /cursor .* out of range/ });
    const notANumber = await tb.http('/v1/revocations?cursor=12abc', { method: 'GET', cert: 'relying-party' });
    expect(notANumber.status).toBe(400);
  });
});

describe("errors the frameworks answer get our shape", () => {
  it('an unknown path → 404 {error: ERR_ROUTE_NOT_FOUND}', async () => {
    const r = await tb.http('/no/such/route', { method: 'GET' });
    expect(r.status).toBe(404);
    expect(r.json).toEqual({ error: 'ERR_ROUTE_NOT_FOUND', message: 'no route GET /no/such/route' });
  });

  it('an over-long path parameter → 414 {error: ERR_TOO_LARGE}', async () => {
    const r = await tb.http(`/admin/keys/${'k'.repeat(500)}/revoke`, { json: {}, cert: 'admin' });
    expect(r.status).toBe(414);
    expect(r.json).toMatchObject({ error: 'ERR_TOO_LARGE' });
  });

  it('an oversized bearer header → 431 {error: ERR_TOO_LARGE}, and the broker keeps serving', async () => {
    const r = await rawHttps('/v1/tasks/complete', { authorization: `Bearer ${'a'.repeat(20_000)}` });
    expect(r.status).toBe(431);
    expect(JSON.parse(r.text)).toMatchObject({ error: 'ERR_TOO_LARGE' });
    expect((await tb.http('/healthz', { method: 'GET' })).status).toBe(200);
  });

  it('a gRPC message over 64 KiB → RESOURCE_EXHAUSTED with ERR_TOO_LARGE', async () => {
    const c = rawGrpcClient(tb);
    try {
      const bytes = Buffer.from(toBinary(pb.BeginTaskRequestSchema, create(pb.BeginTaskRequestSchema, { purpose: 'y'.repeat(70 * 1024) })));
      const r = await rawUnary(c, '/mayfly.v1.Broker/BeginTask', bytes);
      expect(r.error?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(r.error?.metadata.get('mayfly-error-code')[0]).toBe('ERR_TOO_LARGE');
    } finally {
      c.close();
    }
  });
});

function rawHttps(path: string, headers: Record<string, string>): Promise<{ status: number; text: string }> {
  const u = new URL(path, tb.httpUrl);
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ hostname: '127.0.0.1', servername: 'localhost', port: u.port, path: u.pathname, method: 'POST', ca: tb.ca, agent: false, headers: { 'content-type': 'application/json', 'content-length': '2', ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end('{}');
  });
}
