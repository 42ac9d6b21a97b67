/**
 * gRPC transport: mayfly.v1.Broker on @grpc/grpc-js, with protobuf-es
 * messages, the standard health service and server reflection. TLS is
 * terminated by our own tls.Server (optional client certificates, SPIFFE
 * validation) and the connections are injected into grpc-js. The methods
 * are in handlers.ts, how one call runs in calls.ts.
 */
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import type { MayflyError } from '../../core/errors.js';
import type { AuditSink, CallerAuthenticator, Clock } from '../../core/ports.js';
import type { CallerAuthentication } from '../../service/authenticate.js';
import type { BrokerService } from '../../service/broker.js';
import type { FeedSubscriptions } from '../../service/subscriptions.js';
import * as pb from '../../gen/mayfly/v1/broker_pb.js';
import { PeerRegistry, type TlsMaterial } from '../tls.js';
import { callRunner } from './calls.js';
import { brokerHandlers } from './handlers.js';

export { toProtoEvent } from './feed-encoding.js';

/** Largest request accepted; larger ones get RESOURCE_EXHAUSTED with ERR_TOO_LARGE (calls.ts). */
export const MAX_RECEIVE_BYTES = 64 * 1024;

/**
 * grpc-js's own ceiling, above ours so that our check (with its code
 * trailer) is the one callers meet; past it grpc-js refuses on its own.
 */
const TRANSPORT_RECEIVE_CEILING = 4 * 1024 * 1024;

export interface GrpcServerDeps {
  broker: BrokerService;
  subscriptions: FeedSubscriptions;
  /** Verifies client certificates for the connection cache. */
  auth: CallerAuthenticator;
  /** The shared authenticate-and-audit step. */
  authentication: CallerAuthentication;
  audit: AuditSink;
  clock: Clock;
  tls: TlsMaterial;
  requestId: () => string;
  /** Called with every failure (for logging); never sees tokens. */
  onError?: (method: string, err: MayflyError, requestId: string) => void;
}

/** A running gRPC listener. */
export interface GrpcListener {
  address: { host: string; port: number };
  health: HealthImplementation;
  close(graceMs?: number): Promise<void>;
}

const raw = (b: Buffer) => b;

/** The Broker service definition over raw buffers: the handlers decode with protobuf-es themselves. */
function brokerDefinition(): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  for (const m of pb.Broker.methods) {
    def[m.name] = {
      path: `/${pb.Broker.typeName}/${m.name}`,
      requestStream: false,
      responseStream: m.methodKind === 'server_streaming',
      requestSerialize: raw,
      requestDeserialize: raw,
      responseSerialize: raw,
      responseDeserialize: raw,
      originalName: m.localName,
    };
  }
  return def as grpc.ServiceDefinition;
}

/** The standard health service and server reflection next to the Broker service. */
function addHealthAndReflection(server: grpc.Server): HealthImplementation {
  const health = new HealthImplementation({ '': 'SERVING', [pb.Broker.typeName]: 'SERVING' });
  health.addToServer(server);
  const fileBytes = Buffer.from(toBinary(FileDescriptorProtoSchema, pb.file_mayfly_v1_broker.proto));
  new ReflectionService({ [pb.Broker.typeName]: { fileDescriptorProtos: [fileBytes] } } as never).addToServer(server);
  return health;
}

/** Our TLS listener; every secured connection is registered for its certificate, then handed to grpc-js. */
async function listenTls(tls: TlsMaterial, host: string, port: number, onConnection: (socket: TLSSocket) => void): Promise<{ server: TlsServer; port: number }> {
  const server: TlsServer = createTlsServer({
    cert: tls.cert,
    key: tls.key,
    ...(tls.clientCa && tls.clientCa.length > 0 ? { ca: tls.clientCa } : {}),
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    // No Nagle: a feed stream's client only reads, so the ACK of its previous message can sit in the
    // client's delayed-ACK timer (40 ms and more), and Nagle would hold the next small write (a
    // revocation) until it fires. Node's own HTTP(S) servers (the SSE feed) default to no-delay already.
    noDelay: true,
  });
  server.on('secureConnection', onConnection);
  server.on('tlsClientError', () => {
    /* handshake failures are the client's problem; nothing to log per connection */
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  return { server, port: typeof addr === 'object' && addr ? addr.port : port };
}

/** Starts the gRPC server on host:port over TLS. */
export async function startGrpcServer(deps: GrpcServerDeps, host: string, port: number): Promise<GrpcListener> {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': TRANSPORT_RECEIVE_CEILING,
    'grpc.max_send_message_length': 4 * 1024 * 1024,
    'grpc.keepalive_permit_without_calls': 1,
    // No channelz service is served, so its per-call bookkeeping (closures, trackers and timestamps on every
    // stream) is work nobody reads. An A/B run on a quiet machine showed no difference beyond noise.
    'grpc.enable_channelz': 0,
  });
  const peers = new PeerRegistry(deps.auth, deps.clock);
  const run = callRunner({ authentication: deps.authentication, peers, audit: deps.audit, requestId: deps.requestId, maxRequestBytes: MAX_RECEIVE_BYTES, ...(deps.onError ? { onError: deps.onError } : {}) });
  server.addService(brokerDefinition(), brokerHandlers(deps.broker, deps.subscriptions, run));
  const health = addHealthAndReflection(server);

  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener = await listenTls(deps.tls, host, port, (socket) => {
    peers.attach(socket);
    injector.injectConnection(socket);
  });

  return {
    address: { host, port: listener.port },
    health,
    close: (graceMs = 5000) =>
      new Promise<void>((resolve) => {
        health.setStatus('', 'NOT_SERVING');
        listener.server.close();
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
