/**
 * gRPC transport: mayfly.v1.Broker on @grpc/grpc-js, with protobuf-es
 * messages, the standard health service and server reflection. TLS is
 * terminated by our own tls.Server (optional client certificates, SPIFFE
 * validation) and the connections are injected into grpc-js.
 */
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { mayflyError, MayflyError } from '../../core/errors.js';
import type { AuditSink, Clock } from '../../core/ports.js';
import type { BrokerService } from '../../service/broker.js';
import type { CallContext } from '../../service/deps.js';
import type { FeedMessage, RevocationFeed } from '../../service/feed.js';
import * as pb from '../../gen/mayfly/v1/broker_pb.js';
import { toGrpcStatus } from '../errors.js';
import { bearerFrom, PeerRegistry, type CallerAuthenticator, type TlsMaterial } from '../tls.js';

/** Largest request accepted; larger ones get RESOURCE_EXHAUSTED from grpc-js. */
export const MAX_RECEIVE_BYTES = 64 * 1024;

export interface GrpcServerDeps {
  broker: BrokerService;
  feed: RevocationFeed;
  auth: CallerAuthenticator;
  audit: AuditSink;
  clock: Clock;
  tls: TlsMaterial;
  requestId: () => string;
  /** Called with every failure (for logging); never sees tokens. */
  onError?: (method: string, err: MayflyError, requestId: string) => void;
  /** Relying parties allowed on the revocation feed (exact identity ids; empty = any authenticated caller). */
  feedSubscribers?: string[];
}

type Handler<I extends DescMessage, O extends DescMessage> = (ctx: CallContext, req: MessageShape<I>) => Promise<Partial<MessageShape<O>>>;

const raw = {
  serialize: (b: Buffer) => b,
  deserialize: (b: Buffer) => b,
};

/** A running gRPC listener. */
export interface GrpcListener {
  address: { host: string; port: number };
  health: HealthImplementation;
  close(graceMs?: number): Promise<void>;
}

/** Starts the gRPC server on host:port over TLS. */
export async function startGrpcServer(deps: GrpcServerDeps, host: string, port: number): Promise<GrpcListener> {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_RECEIVE_BYTES,
    'grpc.max_send_message_length': 4 * 1024 * 1024,
    'grpc.keepalive_permit_without_calls': 1,
  });
  const peers = new PeerRegistry();

  const identify = async (call: grpc.ServerUnaryCall<Buffer, Buffer> | grpc.ServerWritableStream<Buffer, Buffer>, requestId: string, method: string): Promise<CallContext> => {
    const peer = call.getPeer();
    try {
      const fromCert = peers.identify(peer, deps.auth, deps.clock.now());
      if (fromCert) return { identity: fromCert, requestId, peer };
      const header = call.metadata.get('authorization')[0];
      const token = bearerFrom(typeof header === 'string' ? header : header?.toString());
      if (!token) throw mayflyError('ERR_UNAUTHENTICATED', 'no client certificate or bearer token was presented');
      return { identity: await deps.auth.fromBearer(token), requestId, peer };
    } catch (e) {
      const err = MayflyError.from(e);
      deps.audit.write({ event: 'auth.failure', outcome: 'denied', request_id: requestId, peer, method, code: err.code, reason: err.message });
      throw err;
    }
  };

  const unary = <I extends DescMessage, O extends DescMessage>(method: string, input: I, output: O, fn: Handler<I, O>) =>
    (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      const requestId = deps.requestId();
      void (async () => {
        try {
          let req: MessageShape<I>;
          try {
            req = fromBinary(input, call.request);
          } catch (cause) {
            deps.audit.write({ event: 'request.invalid', outcome: 'denied', request_id: requestId, peer: call.getPeer(), method, code: 'ERR_INVALID_ARGUMENT', reason: `malformed ${input.typeName} message` });
            throw mayflyError('ERR_INVALID_ARGUMENT', `malformed ${input.typeName} message`, undefined, cause);
          }
          const ctx = await identify(call, requestId, method);
          const res = await fn(ctx, req);
          callback(null, Buffer.from(toBinary(output, create(output, res as never))));
        } catch (e) {
          const err = MayflyError.from(e);
          deps.onError?.(method, err, requestId);
          const st = toGrpcStatus(err);
          const md = new grpc.Metadata();
          md.set('mayfly-error-code', st.mayflyCode);
          md.set('x-request-id', requestId);
          callback({ code: st.code, details: st.details, metadata: md });
        }
      })();
    };

  const b = deps.broker;
  const handlers: grpc.UntypedServiceImplementation = {
    BeginTask: unary('BeginTask', pb.BeginTaskRequestSchema, pb.BeginTaskResponseSchema, async (ctx, r) => {
      const t = await b.beginTask(ctx, { purpose: r.purpose, ttlSeconds: r.ttlSeconds, labels: r.labels, parentTaskId: r.parentTaskId || undefined, scopes: r.scopes, leaseSeconds: r.leaseSeconds, actor: r.actor });
      return { taskId: t.id, expiresAt: BigInt(Math.floor(t.expiresAt / 1000)), leaseExpiresAt: BigInt(t.leaseExpiresAt ? Math.floor(t.leaseExpiresAt / 1000) : 0), parentTaskId: t.parentId ?? '', depth: t.depth };
    }),
    IssueToken: unary('IssueToken', pb.IssueTokenRequestSchema, pb.IssueTokenResponseSchema, async (ctx, r) => {
      const t = await b.issueToken(ctx, { taskId: r.taskId, audience: r.audience, scopes: r.scopes, ttlSeconds: r.ttlSeconds, tool: r.tool, argsDigest: r.argsDigest, singleUse: r.singleUse });
      return { token: t.token, tokenId: t.tokenId, expiresAt: BigInt(Math.floor(t.expiresAt / 1000)), scopes: t.scopes, tokenType: 'Bearer' };
    }),
    CompleteTask: unary('CompleteTask', pb.CompleteTaskRequestSchema, pb.CompleteTaskResponseSchema, async (ctx, r) => {
      const res = await b.completeTask(ctx, { taskId: r.taskId });
      return { revokedTokens: res.revokedTokens, taskIds: res.taskIds };
    }),
    RenewTask: unary('RenewTask', pb.RenewTaskRequestSchema, pb.RenewTaskResponseSchema, async (ctx, r) => {
      const until = await b.renewTask(ctx, { taskId: r.taskId, leaseSeconds: r.leaseSeconds });
      return { leaseExpiresAt: BigInt(Math.floor(until / 1000)) };
    }),
    Introspect: unary('Introspect', pb.IntrospectRequestSchema, pb.IntrospectResponseSchema, async (ctx, r) => {
      const res = await b.introspect(ctx, { token: r.token });
      if (!res.active || !res.claims) return { active: false, reason: res.reason ?? 'malformed' };
      const c = res.claims;
      return { active: true, sub: c.sub, aud: c.aud, scope: c.scope, jti: c.jti, taskId: c.tid, exp: BigInt(c.exp), iat: BigInt(c.iat), iss: c.iss, claimsJson: JSON.stringify(c) };
    }),
    RevokeToken: unary('RevokeToken', pb.RevokeTokenRequestSchema, pb.RevokeTokenResponseSchema, async (ctx, r) => {
      return { revoked: await b.revokeToken(ctx, { token: r.token || undefined, tokenId: r.tokenId || undefined }) };
    }),
    RevokeIdentity: unary('RevokeIdentity', pb.RevokeIdentityRequestSchema, pb.RevokeIdentityResponseSchema, async (ctx, r) => {
      const res = await b.revokeIdentity(ctx, { identity: r.identity, reason: r.reason });
      return { revokedTasks: res.taskIds.length, revokedTokens: res.revokedTokens };
    }),
    AckKeySet: unary('AckKeySet', pb.AckKeySetRequestSchema, pb.AckKeySetResponseSchema, async (ctx, r) => {
      deps.feed.ack(r.subscriberId || ctx.identity.id, r.keysetVersion);
      return {};
    }),
    ReportMisuse: unary('ReportMisuse', pb.ReportMisuseRequestSchema, pb.ReportMisuseResponseSchema, async (ctx, r) => {
      b.reportMisuse(ctx, { kind: r.kind, tokenId: r.tokenId, detail: r.detail });
      return {};
    }),
    Ping: unary('Ping', pb.PingRequestSchema, pb.PingResponseSchema, async () => ({})),
    WatchRevocations: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      const requestId = deps.requestId();
      void (async () => {
        try {
          let req: pb.WatchRevocationsRequest;
          try {
            req = fromBinary(pb.WatchRevocationsRequestSchema, call.request);
          } catch (cause) {
            throw mayflyError('ERR_INVALID_ARGUMENT', 'malformed WatchRevocationsRequest message', undefined, cause);
          }
          const ctx = await identify(call, requestId, 'WatchRevocations');
          const allowed = deps.feedSubscribers ?? [];
          if (allowed.length > 0 && !allowed.includes(ctx.identity.id)) {
            throw mayflyError('ERR_NOT_AUTHORIZED_CLIENT', `${ctx.identity.id} is not allowed to subscribe to the revocation feed`);
          }
          const subscriberId = (req.subscriberId || ctx.identity.id).slice(0, 200);
          deps.audit.write({ event: 'feed.subscribe', outcome: 'success', request_id: requestId, peer: ctx.peer, subscriber_id: subscriberId, cursor: Number(req.cursor), identity: { kind: ctx.identity.kind, id: ctx.identity.id, method: ctx.identity.method } });
          const sub = await deps.feed.subscribe(
            subscriberId,
            Number(req.cursor),
            (m) => {
              call.write(encodeEvent(m));
            },
            () => call.end(),
          );
          const end = () => sub.close();
          call.on('cancelled', end);
          call.on('close', end);
          call.on('error', end);
        } catch (e) {
          const err = MayflyError.from(e);
          deps.onError?.('WatchRevocations', err, requestId);
          const st = toGrpcStatus(err);
          call.destroy(Object.assign(new Error(st.details), { code: st.code, details: st.details }));
        }
      })();
    },
  };

  const def: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  for (const m of pb.Broker.methods) {
    def[m.name] = {
      path: `/${pb.Broker.typeName}/${m.name}`,
      requestStream: false,
      responseStream: m.methodKind === 'server_streaming',
      requestSerialize: raw.serialize,
      requestDeserialize: raw.deserialize,
      responseSerialize: raw.serialize,
      responseDeserialize: raw.deserialize,
      originalName: m.localName,
    };
  }
  server.addService(def as grpc.ServiceDefinition, handlers);

  const health = new HealthImplementation({ '': 'SERVING', [pb.Broker.typeName]: 'SERVING' });
  health.addToServer(server);
  const fileBytes = Buffer.from(toBinary(FileDescriptorProtoSchema, pb.file_mayfly_v1_broker.proto));
  new ReflectionService({ [pb.Broker.typeName]: { fileDescriptorProtos: [fileBytes] } } as never).addToServer(server);

  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const tlsServer: TlsServer = createTlsServer({
    cert: deps.tls.cert,
    key: deps.tls.key,
    ...(deps.tls.clientCa && deps.tls.clientCa.length > 0 ? { ca: deps.tls.clientCa } : {}),
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
  });
  tlsServer.on('secureConnection', (socket: TLSSocket) => {
    peers.attach(socket);
    injector.injectConnection(socket);
  });
  tlsServer.on('tlsClientError', () => {
    /* handshake failures are the client's problem; nothing to log per connection */
  });
  await new Promise<void>((resolve, reject) => {
    tlsServer.once('error', reject);
    tlsServer.listen(port, host, () => {
      tlsServer.off('error', reject);
      resolve();
    });
  });
  const addr = tlsServer.address();
  const boundPort = typeof addr === 'object' && addr ? addr.port : port;

  return {
    address: { host, port: boundPort },
    health,
    close: (graceMs = 5000) =>
      new Promise<void>((resolve) => {
        health.setStatus('', 'NOT_SERVING');
        tlsServer.close();
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          injector.destroy();
          resolve();
        });
      }),
  };
}

const KIND: Record<FeedMessage['kind'], pb.RevocationEvent_Kind> = {
  task: pb.RevocationEvent_Kind.TASK,
  token: pb.RevocationEvent_Kind.TOKEN,
  keyset: pb.RevocationEvent_Kind.KEYSET,
  key: pb.RevocationEvent_Kind.KEY,
  snapshot: pb.RevocationEvent_Kind.SNAPSHOT,
  heartbeat: pb.RevocationEvent_Kind.HEARTBEAT,
};

// The hub hands one message object to every subscriber: encode it once, not once per subscriber.
const encoded = new WeakMap<FeedMessage, Buffer>();

function encodeEvent(m: FeedMessage): Buffer {
  let b = encoded.get(m);
  if (!b) {
    b = Buffer.from(toBinary(pb.RevocationEventSchema, toProtoEvent(m)));
    encoded.set(m, b);
  }
  return b;
}

/** Feed message to its protobuf form. */
export function toProtoEvent(m: FeedMessage): pb.RevocationEvent {
  return create(pb.RevocationEventSchema, {
    kind: KIND[m.kind],
    cursor: BigInt(m.cursor),
    at: BigInt(m.at),
    taskIds: m.taskIds,
    tokenIds: m.jtis,
    kid: m.kid,
    reason: m.reason,
    kids: m.kids,
    jwksJson: m.jwksJson,
    coversUntil: BigInt(m.coversUntil),
  });
}
