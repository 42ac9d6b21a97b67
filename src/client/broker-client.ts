/**
 * gRPC client for mayfly.v1.Broker with protobuf-es messages. Authenticates
 * with an X.509-SVID (mTLS) or a bearer token (JWT-SVID, OIDC token, task
 * token). Errors come back as MayflyError with the broker's stable code.
 */
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import { ERROR_CODES, MayflyError, mayflyError, type ErrorCode } from '../core/errors.js';
import * as pb from '../gen/mayfly/v1/broker_pb.js';

export interface BrokerClientOptions {
  /** host:port of the broker's gRPC listener. */
  address: string;
  /** PEM CA that signed the broker's certificate. */
  ca: Buffer | string;
  /** mTLS: the workload's X.509-SVID chain and key (PEM). */
  cert?: Buffer | string;
  key?: Buffer | string;
  /** Bearer credential when not using mTLS. */
  bearer?: string | (() => string);
  /** TLS server name override (default: the address host). */
  serverName?: string;
  /** Per-call deadline, ms (default 10 s). */
  timeoutMs?: number;
}

const buf = (b: Buffer | string) => (typeof b === 'string' ? Buffer.from(b) : b);

/** Turns a gRPC error into a MayflyError, keeping the broker's stable code. */
export function fromGrpcError(e: grpc.ServiceError): MayflyError {
  const code = e.metadata?.get('mayfly-error-code')[0]?.toString();
  const details = (e.details ?? e.message).replace(/^ERR_[A-Z_]+: /, '');
  if (code && code in ERROR_CODES) return new MayflyError(code as ErrorCode, details);
  if (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED) return mayflyError('ERR_UNAVAILABLE', `broker unavailable: ${details}`);
  if (e.code === grpc.status.RESOURCE_EXHAUSTED) return mayflyError('ERR_TOO_LARGE', details);
  if (e.code === grpc.status.UNAUTHENTICATED) return mayflyError('ERR_UNAUTHENTICATED', details);
  return mayflyError('ERR_INTERNAL', `${grpc.status[e.code] ?? e.code}: ${details}`);
}

export class BrokerClient {
  private readonly client: grpc.Client;
  private readonly timeoutMs: number;

  constructor(private readonly o: BrokerClientOptions) {
    let creds = grpc.credentials.createSsl(buf(o.ca), o.key ? buf(o.key) : null, o.cert ? buf(o.cert) : null);
    if (o.bearer) {
      const bearer = o.bearer;
      const callCreds = grpc.credentials.createFromMetadataGenerator((_p, cb) => {
        const md = new grpc.Metadata();
        md.set('authorization', `Bearer ${typeof bearer === 'function' ? bearer() : bearer}`);
        cb(null, md);
      });
      creds = grpc.credentials.combineChannelCredentials(creds, callCreds);
    }
    const rawHost = o.address.slice(0, o.address.lastIndexOf(':')).replace(/^\[|\]$/g, '');
    // RFC 6066 forbids IP addresses as SNI; loopback brokers present a localhost certificate.
    const host = rawHost === '127.0.0.1' || rawHost === '::1' ? 'localhost' : rawHost;
    this.client = new grpc.Client(o.address, creds, {
      'grpc.ssl_target_name_override': o.serverName ?? host,
      'grpc.default_authority': o.serverName ?? host,
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
    });
    this.timeoutMs = o.timeoutMs ?? 10_000;
  }

  private unary<I extends DescMessage, O extends DescMessage>(method: string, input: I, output: O, req: MessageInitShape<I>): Promise<MessageShape<O>> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/${pb.Broker.typeName}/${method}`,
        (m: MessageShape<I>) => Buffer.from(toBinary(input, m)),
        (b: Buffer) => fromBinary(output, b),
        create(input, req),
        new grpc.Metadata(),
        { deadline: Date.now() + this.timeoutMs },
        (err, res) => (err ? reject(fromGrpcError(err)) : resolve(res as MessageShape<O>)),
      );
    });
  }

  beginTask(req: WithSeconds<pb.BeginTaskRequest, 'ttlSeconds' | 'leaseSeconds'>) {
    const { ttlSeconds, leaseSeconds, ...rest } = req;
    return this.unary('BeginTask', pb.BeginTaskRequestSchema, pb.BeginTaskResponseSchema, { ...rest, ...seconds('ttlSeconds', ttlSeconds), ...seconds('leaseSeconds', leaseSeconds) });
  }
  issueToken(req: WithSeconds<pb.IssueTokenRequest, 'ttlSeconds'>) {
    const { ttlSeconds, ...rest } = req;
    return this.unary('IssueToken', pb.IssueTokenRequestSchema, pb.IssueTokenResponseSchema, { ...rest, ...seconds('ttlSeconds', ttlSeconds) });
  }
  completeTask(taskId: string) {
    return this.unary('CompleteTask', pb.CompleteTaskRequestSchema, pb.CompleteTaskResponseSchema, { taskId });
  }
  renewTask(taskId: string, leaseSeconds: number) {
    return this.unary('RenewTask', pb.RenewTaskRequestSchema, pb.RenewTaskResponseSchema, { taskId, leaseSeconds: BigInt(leaseSeconds) });
  }
  introspect(token: string) {
    return this.unary('Introspect', pb.IntrospectRequestSchema, pb.IntrospectResponseSchema, { token });
  }
  revokeToken(req: MessageInitShape<typeof pb.RevokeTokenRequestSchema>) {
    return this.unary('RevokeToken', pb.RevokeTokenRequestSchema, pb.RevokeTokenResponseSchema, req);
  }
  revokeIdentity(identity: string, reason = '') {
    return this.unary('RevokeIdentity', pb.RevokeIdentityRequestSchema, pb.RevokeIdentityResponseSchema, { identity, reason });
  }
  ackKeySet(subscriberId: string, keysetVersion: string) {
    return this.unary('AckKeySet', pb.AckKeySetRequestSchema, pb.AckKeySetResponseSchema, { subscriberId, keysetVersion });
  }
  reportMisuse(kind: string, tokenId: string, detail = '') {
    return this.unary('ReportMisuse', pb.ReportMisuseRequestSchema, pb.ReportMisuseResponseSchema, { kind, tokenId, detail });
  }
  ping() {
    return this.unary('Ping', pb.PingRequestSchema, pb.PingResponseSchema, {});
  }

  /** Opens the revocation feed from `cursor`; returns the call so the caller can cancel it. */
  watchRevocations(
    req: { cursor: number; subscriberId: string },
    onEvent: (e: pb.RevocationEvent) => void,
    onEnd: (err: MayflyError | null) => void,
  ): grpc.ClientReadableStream<pb.RevocationEvent> {
    const call = this.client.makeServerStreamRequest(
      `/${pb.Broker.typeName}/WatchRevocations`,
      (m: pb.WatchRevocationsRequest) => Buffer.from(toBinary(pb.WatchRevocationsRequestSchema, m)),
      (b: Buffer) => fromBinary(pb.RevocationEventSchema, b),
      create(pb.WatchRevocationsRequestSchema, { cursor: BigInt(req.cursor), subscriberId: req.subscriberId }),
      new grpc.Metadata(),
      {},
    );
    let ended = false;
    const end = (err: MayflyError | null) => {
      if (ended) return;
      ended = true;
      onEnd(err);
    };
    call.on('data', (e: pb.RevocationEvent) => onEvent(e));
    call.on('error', (e: grpc.ServiceError) => end(e.code === grpc.status.CANCELLED ? null : fromGrpcError(e)));
    call.on('end', () => end(null));
    return call;
  }

  close(): void {
    this.client.close();
  }
}

export { pb };

/** A request shape whose 64-bit seconds fields also take plain numbers (as they did when they were uint32). */
type WithSeconds<T, K extends keyof T> = Partial<Omit<T, K | '$typeName' | '$unknown'>> & { [P in K]?: number | bigint };

/** `{ [field]: bigint }` for a given value, nothing for undefined; numbers must be whole and non-negative. */
function seconds<K extends string>(field: K, v: number | bigint | undefined): { [P in K]?: bigint } {
  if (v === undefined) return {};
  return { [field]: BigInt(v) } as { [P in K]?: bigint };
}
