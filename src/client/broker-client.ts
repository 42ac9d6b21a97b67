/**
 * gRPC client for mayfly.v1.Broker. Authenticates with an X.509-SVID (mTLS)
 * or a bearer token (JWT-SVID, OIDC token, task token). Errors come back as
 * MayflyError with the broker's stable code; results are plain objects
 * (int64 fields as numbers, no protobuf message internals), so they
 * serialise with JSON.stringify.
 *
 * Several replicas: `address` takes a list (array or comma-separated). A call
 * goes to a replica whose connection is ready (a dead one is skipped before
 * anything is sent, so that failover is safe for every RPC). When a replica
 * fails a call already sent with UNAVAILABLE, the outcome is unknown: only
 * RPCs that are idempotent by design (RETRY_AFTER_UNAVAILABLE below, and the
 * README's "Client failover" table) are sent again, to the next replica. A
 * host name with several DNS records is balanced over by gRPC (round robin).
 */
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import { ERROR_CODES, MayflyError, mayflyError, type ErrorCode } from '../core/errors.js';
import * as pb from '../gen/mayfly/v1/broker_pb.js';

export interface BrokerClientOptions {
  /** host:port of the broker's gRPC listener; several replicas as an array or a comma-separated list. */
  address: string | readonly string[];
  /** PEM CA that signed the broker's certificate. */
  ca: Buffer | string;
  /** mTLS: the workload's X.509-SVID chain and key (PEM). */
  cert?: Buffer | string;
  key?: Buffer | string;
  /** Bearer credential when not using mTLS. */
  bearer?: string | (() => string);
  /** TLS server name override (default: the address host). */
  serverName?: string;
  /** Per-call deadline, ms (default 10 s); failover happens within it. */
  timeoutMs?: number;
  /** How long to wait for one replica's connection before trying the next, ms (default 2 s). */
  connectTimeoutMs?: number;
}

/**
 * Whether an RPC may be sent again after UNAVAILABLE, when it may already
 * have taken effect. Decided per RPC:
 * - BeginTask, IssueToken: no. Each call creates something new (a task, a
 *   token); a repeat would leave one nobody holds.
 * - ReportMisuse: no. Each call is an audit alert; a repeat is a false second one.
 * - CompleteTask: yes. A task ends once; a repeat can only find it ended
 *   (ERR_TASK_NOT_ACTIVE, passed on as is: the task is not active, its tokens
 *   are revoked, whichever call ended it).
 * - RenewTask: yes (sets the lease to now + lease again).
 * - RevokeToken, RevokeIdentity: yes (revoking what is revoked changes nothing;
 *   a repeat may report smaller counts).
 * - Introspect, Ping, AckKeySet: yes (reads, or the same fact again).
 * WatchRevocations resumes from the verifier's cursor on the next replica.
 */
export const RETRY_AFTER_UNAVAILABLE: Readonly<Record<string, boolean>> = Object.freeze({
  BeginTask: false,
  IssueToken: false,
  ReportMisuse: false,
  CompleteTask: true,
  RenewTask: true,
  RevokeToken: true,
  RevokeIdentity: true,
  Introspect: true,
  Ping: true,
  AckKeySet: true,
});

/** A protobuf-es message as plain data: int64 fields as numbers, no `$typeName`/`$unknown`. */
export type Plain<T> = T extends bigint
  ? number
  : T extends readonly (infer U)[]
    ? Plain<U>[]
    : T extends object
      ? { [K in keyof T as K extends '$typeName' | '$unknown' ? never : K]: Plain<T[K]> }
      : T;

export type BeginTaskResult = Plain<pb.BeginTaskResponse>;
export type IssueTokenResult = Plain<pb.IssueTokenResponse>;
export type CompleteTaskResult = Plain<pb.CompleteTaskResponse>;
export type RenewTaskResult = Plain<pb.RenewTaskResponse>;
export type IntrospectResult = Plain<pb.IntrospectResponse>;
export type RevokeTokenResult = Plain<pb.RevokeTokenResponse>;
export type RevokeIdentityResult = Plain<pb.RevokeIdentityResponse>;

/** Plain data of a protobuf-es message (int64 values are Unix times and counts, well inside 2^53). */
export function toPlain<T>(m: T): Plain<T> {
  if (typeof m === 'bigint') return Number(m) as Plain<T>;
  if (Array.isArray(m)) return m.map(toPlain) as Plain<T>;
  if (typeof m !== 'object' || m === null || m instanceof Uint8Array) return m as Plain<T>;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) if (k !== '$typeName' && k !== '$unknown') out[k] = toPlain(v);
  return out as Plain<T>;
}

/** The replica list of an `address` option: an array, or one string with comma-separated entries. */
export function brokerAddresses(address: string | readonly string[]): string[] {
  const list = (typeof address === 'string' ? [address] : [...address]).flatMap((a) => a.split(',')).map((a) => a.trim()).filter(Boolean);
  if (list.length === 0) throw mayflyError('ERR_CONFIG_INVALID', 'BrokerClient: address is required (host:port, or several separated by commas)', { field: 'address' });
  return list;
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

interface Replica {
  address: string;
  client: grpc.Client;
}

/** A call failed with gRPC UNAVAILABLE (the replica, not the request, is the problem). */
class ReplicaUnavailable extends Error {
  constructor(readonly error: MayflyError) {
    super(error.message);
  }
}

export class BrokerClient {
  private readonly replicas: Replica[];
  private readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  /** The replica calls go to first. */
  private preferred = 0;
  private failoverCount = 0;

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
    this.replicas = brokerAddresses(o.address).map((address) => {
      const rawHost = address.slice(0, address.lastIndexOf(':')).replace(/^\[|\]$/g, '');
      // RFC 6066 forbids IP addresses as SNI; loopback brokers present a localhost certificate.
      const host = rawHost === '127.0.0.1' || rawHost === '::1' ? 'localhost' : rawHost;
      const client = new grpc.Client(address, creds, {
        'grpc.ssl_target_name_override': o.serverName ?? host,
        'grpc.default_authority': o.serverName ?? host,
        'grpc.max_receive_message_length': 4 * 1024 * 1024,
        // A name with several DNS records: spread over all of them, and route around a dead one.
        'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
      });
      return { address, client };
    });
    this.timeoutMs = o.timeoutMs ?? 10_000;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 2_000;
  }

  /** The replica addresses, and how many calls were sent again to another replica after UNAVAILABLE. */
  stats(): { addresses: string[]; failovers: number } {
    return { addresses: this.replicas.map((r) => r.address), failovers: this.failoverCount };
  }

  private async unary<I extends DescMessage, O extends DescMessage>(method: string, input: I, output: O, req: MessageInitShape<I>): Promise<Plain<MessageShape<O>>> {
    const deadline = Date.now() + this.timeoutMs;
    const msg = create(input, req);
    // With one address, one more attempt: a name with several records routes it to another one.
    const attempts = RETRY_AFTER_UNAVAILABLE[method] ? Math.max(2, this.replicas.length) : 1;
    const tried = new Set<Replica>();
    for (let attempt = 1; ; attempt++) {
      const replica = this.readyNow(tried) ?? (await this.connect(deadline, tried));
      tried.add(replica);
      try {
        return toPlain(await this.send(replica, method, input, output, msg, deadline));
      } catch (e) {
        if (!(e instanceof ReplicaUnavailable)) throw e;
        this.avoid(replica);
        if (attempt >= attempts || Date.now() >= deadline) throw e.error;
        this.failoverCount++;
        if (this.replicas.length === 1) tried.clear();
      }
    }
  }

  private send<I extends DescMessage, O extends DescMessage>(replica: Replica, method: string, input: I, output: O, msg: MessageShape<I>, deadline: number): Promise<MessageShape<O>> {
    return new Promise((resolve, reject) => {
      replica.client.makeUnaryRequest(
        `/${pb.Broker.typeName}/${method}`,
        (m: MessageShape<I>) => Buffer.from(toBinary(input, m)),
        (b: Buffer) => fromBinary(output, b),
        msg,
        new grpc.Metadata(),
        { deadline },
        (err, res) => {
          if (!err) resolve(res as MessageShape<O>);
          else reject(err.code === grpc.status.UNAVAILABLE ? new ReplicaUnavailable(fromGrpcError(err)) : fromGrpcError(err));
        },
      );
    });
  }

  /** The preferred replica if its connection is ready now (the hot path: no waiting, no promise). */
  private readyNow(tried: Set<Replica>): Replica | undefined {
    const r = this.replicas[this.preferred]!;
    return !tried.has(r) && r.client.getChannel().getConnectivityState(true) === grpc.connectivityState.READY ? r : undefined;
  }

  /** The first replica, from the preferred one on, whose connection becomes ready; nothing has been sent when this fails. */
  private async connect(deadline: number, tried: Set<Replica>): Promise<Replica> {
    const n = this.replicas.length;
    for (let i = 0; i < n; i++) {
      const idx = (this.preferred + i) % n;
      const r = this.replicas[idx]!;
      if (tried.has(r)) continue;
      if (await this.becomesReady(r, Math.min(deadline, Date.now() + this.connectTimeoutMs))) {
        this.preferred = idx;
        return r;
      }
    }
    throw mayflyError('ERR_UNAVAILABLE', `broker unavailable: no connection to ${this.replicas.map((r) => r.address).join(', ')}`);
  }

  private async becomesReady(r: Replica, until: number): Promise<boolean> {
    const channel = r.client.getChannel();
    for (let state = channel.getConnectivityState(true); ; state = channel.getConnectivityState(true)) {
      if (state === grpc.connectivityState.READY) return true;
      // A failed connection (or a closed client) is not waited for: the next replica is tried.
      if (state === grpc.connectivityState.TRANSIENT_FAILURE || state === grpc.connectivityState.SHUTDOWN) return false;
      const changed = await new Promise<boolean>((done) => channel.watchConnectivityState(state, until, (err) => done(!err)));
      if (!changed) return false;
    }
  }

  /** After UNAVAILABLE, later calls start at the next replica. */
  private avoid(r: Replica): void {
    const idx = this.replicas.indexOf(r);
    if (idx === this.preferred) this.preferred = (idx + 1) % this.replicas.length;
  }

  beginTask(req: WithSeconds<pb.BeginTaskRequest, 'ttlSeconds' | 'leaseSeconds'>): Promise<BeginTaskResult> {
    const { ttlSeconds, leaseSeconds, ...rest } = req;
    return this.unary('BeginTask', pb.BeginTaskRequestSchema, pb.BeginTaskResponseSchema, { ...rest, ...seconds('ttlSeconds', ttlSeconds), ...seconds('leaseSeconds', leaseSeconds) });
  }
  issueToken(req: WithSeconds<pb.IssueTokenRequest, 'ttlSeconds'>): Promise<IssueTokenResult> {
    const { ttlSeconds, ...rest } = req;
    return this.unary('IssueToken', pb.IssueTokenRequestSchema, pb.IssueTokenResponseSchema, { ...rest, ...seconds('ttlSeconds', ttlSeconds) });
  }
  completeTask(taskId: string): Promise<CompleteTaskResult> {
    return this.unary('CompleteTask', pb.CompleteTaskRequestSchema, pb.CompleteTaskResponseSchema, { taskId });
  }
  renewTask(taskId: string, leaseSeconds: number): Promise<RenewTaskResult> {
    return this.unary('RenewTask', pb.RenewTaskRequestSchema, pb.RenewTaskResponseSchema, { taskId, leaseSeconds: BigInt(leaseSeconds) });
  }
  introspect(token: string): Promise<IntrospectResult> {
    return this.unary('Introspect', pb.IntrospectRequestSchema, pb.IntrospectResponseSchema, { token });
  }
  revokeToken(req: MessageInitShape<typeof pb.RevokeTokenRequestSchema>): Promise<RevokeTokenResult> {
    return this.unary('RevokeToken', pb.RevokeTokenRequestSchema, pb.RevokeTokenResponseSchema, req);
  }
  revokeIdentity(identity: string, reason = ''): Promise<RevokeIdentityResult> {
    return this.unary('RevokeIdentity', pb.RevokeIdentityRequestSchema, pb.RevokeIdentityResponseSchema, { identity, reason });
  }
  ackKeySet(subscriberId: string, keysetVersion: string): Promise<Record<string, never>> {
    return this.unary('AckKeySet', pb.AckKeySetRequestSchema, pb.AckKeySetResponseSchema, { subscriberId, keysetVersion });
  }
  reportMisuse(kind: string, tokenId: string, detail = ''): Promise<Record<string, never>> {
    return this.unary('ReportMisuse', pb.ReportMisuseRequestSchema, pb.ReportMisuseResponseSchema, { kind, tokenId, detail });
  }
  ping(): Promise<Record<string, never>> {
    return this.unary('Ping', pb.PingRequestSchema, pb.PingResponseSchema, {});
  }

  /**
   * Opens the revocation feed from `cursor` on a replica that is not known to
   * be down; returns the call so the caller can cancel it. When it ends with
   * UNAVAILABLE, the next subscription goes to the next replica (the verifier
   * resubscribes from its cursor: no gap, no duplicate).
   */
  watchRevocations(
    req: { cursor: number; subscriberId: string },
    onEvent: (e: pb.RevocationEvent) => void,
    onEnd: (err: MayflyError | null) => void,
  ): grpc.ClientReadableStream<pb.RevocationEvent> {
    const replica = this.streamReplica();
    const call = replica.client.makeServerStreamRequest(
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
    call.on('error', (e: grpc.ServiceError) => {
      if (e.code === grpc.status.UNAVAILABLE) {
        this.avoid(replica);
        if (this.replicas.length > 1) this.failoverCount++;
      }
      end(e.code === grpc.status.CANCELLED ? null : fromGrpcError(e));
    });
    call.on('end', () => end(null));
    return call;
  }

  /** From the preferred replica on, the first whose connection has not failed (the preferred one if all have). */
  private streamReplica(): Replica {
    const n = this.replicas.length;
    for (let i = 0; i < n; i++) {
      const idx = (this.preferred + i) % n;
      const state = this.replicas[idx]!.client.getChannel().getConnectivityState(true);
      if (state !== grpc.connectivityState.TRANSIENT_FAILURE && state !== grpc.connectivityState.SHUTDOWN) {
        this.preferred = idx;
        return this.replicas[idx]!;
      }
    }
    return this.replicas[this.preferred]!;
  }

  close(): void {
    for (const r of this.replicas) r.client.close();
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
