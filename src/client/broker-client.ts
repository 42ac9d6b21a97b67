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
 * host name is resolved by the client itself (`lookup`, default the system
 * resolver) and each of its addresses becomes a replica of its own, so one
 * DNS name with several records fails over exactly like a list; the TLS
 * server name stays the host name. Names are resolved before the first call,
 * again every `resolveIntervalMs` (in the background), and at once when no
 * known address answers.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
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
  /**
   * Resolves a broker host name to all its addresses (A and AAAA records);
   * default: the system resolver (`dns.lookup` with `all`). Each address
   * becomes a replica. IP literals are never looked up.
   */
  lookup?: (hostname: string) => Promise<string[]>;
  /** How long resolved addresses are used before the names are resolved again, ms (default 30 s). */
  resolveIntervalMs?: number;
}

/** The system resolver: every address of `hostname`, in the resolver's order. */
export async function systemLookup(hostname: string): Promise<string[]> {
  return (await dnsLookup(hostname, { all: true, order: 'verbatim' })).map((a) => a.address);
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

/** Waits for `p` until `deadline` at most (a resolver that hangs must not outlast the call's deadline; the call then fails as unreachable). */
async function withinDeadline(p: Promise<void>, deadline: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise<void>((done) => (timer = setTimeout(done, Math.max(0, deadline - Date.now()))))]);
  clearTimeout(timer);
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

/** One entry of the `address` option. */
interface Target {
  address: string;
  host: string;
  port: string;
  /** An IP literal: its own replica, never looked up. */
  literal: boolean;
}

function target(address: string): Target {
  const i = address.lastIndexOf(':');
  const host = (i < 0 ? address : address.slice(0, i)).replace(/^\[|\]$/g, '');
  return { address, host, port: i < 0 ? '' : address.slice(i + 1), literal: isIP(host) !== 0 };
}

/** A call failed with gRPC UNAVAILABLE (the replica, not the request, is the problem). */
class ReplicaUnavailable extends Error {
  constructor(readonly error: MayflyError) {
    super(error.message);
  }
}

export class BrokerClient {
  private replicas: Replica[];
  private readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  /** The replica calls go to first. */
  private preferred = 0;
  private failoverCount = 0;
  private readonly targets: Target[];
  private readonly creds: grpc.ChannelCredentials;
  private readonly lookup: (hostname: string) => Promise<string[]>;
  private readonly resolveIntervalMs: number;
  /** Every client made, by address, so a replica keeps its connection (and its streams) across resolutions. */
  private readonly made = new Map<string, Replica>();
  /** When the names were last resolved (0: never; always 0 with IP literals only: nothing to resolve). */
  private resolvedAt = 0;
  /** The replicas of each target, as last resolved. */
  private perTarget: Replica[][];
  private resolving: Promise<void> | null = null;
  private closed = false;

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
    this.creds = creds;
    this.targets = brokerAddresses(o.address).map(target);
    this.lookup = o.lookup ?? systemLookup;
    this.resolveIntervalMs = o.resolveIntervalMs ?? 30_000;
    // Until the names are resolved (before the first call), a name is one replica resolved by gRPC itself.
    this.perTarget = this.targets.map((t) => [this.replica(t.address, t.host)]);
    this.replicas = this.perTarget.flat();
    this.timeoutMs = o.timeoutMs ?? 10_000;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 2_000;
  }

  /** The client of `address` (made once); `host` is the name the broker's certificate is checked against. */
  private replica(address: string, host: string): Replica {
    const known = this.made.get(address);
    if (known) return known;
    // RFC 6066 forbids IP addresses as SNI; loopback brokers present a localhost certificate.
    const name = host === '127.0.0.1' || host === '::1' ? 'localhost' : host;
    const client = new grpc.Client(address, this.creds, {
      'grpc.ssl_target_name_override': this.o.serverName ?? name,
      'grpc.default_authority': this.o.serverName ?? name,
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
    });
    const r = { address, client };
    this.made.set(address, r);
    return r;
  }

  /** Whether some target is a host name (something to resolve). */
  private get named(): boolean {
    return this.targets.some((t) => !t.literal);
  }

  /**
   * Resolves every host name into one replica per address, keeping the
   * order of the `address` option (a name's addresses in resolver order). A
   * name that does not resolve keeps its previous replicas. Concurrent calls
   * share one resolution.
   */
  private resolve(): Promise<void> {
    this.resolving ??= (async () => {
      const lists = await Promise.all(
        this.targets.map(async (t): Promise<Replica[] | null> => {
          if (t.literal) return [this.replica(t.address, t.host)];
          try {
            const ips = [...new Set(await this.lookup(t.host))].filter((ip) => isIP(ip) !== 0);
            const at = (ip: string) => {
              const h = isIP(ip) === 6 ? `[${ip}]` : ip;
              return t.port ? `${h}:${t.port}` : h;
            };
            return ips.length > 0 ? ips.map((ip) => this.replica(at(ip), t.host)) : null;
          } catch {
            return null;
          }
        }),
      );
      if (this.closed) return;
      const before = this.replicas[this.preferred];
      // Unresolved: what the name resolved to last time (at first, the name itself, resolved by gRPC).
      this.perTarget = lists.map((l, i) => l ?? this.perTarget[i]!);
      this.replicas = [...new Set(this.perTarget.flat())];
      const idx = before ? this.replicas.indexOf(before) : -1;
      this.preferred = idx >= 0 ? idx : 0;
      this.resolvedAt = Date.now();
    })().finally(() => {
      this.resolving = null;
    });
    return this.resolving;
  }

  /**
   * Names not resolved yet: the resolution to wait for before the first call.
   * Later, once the last resolution is old, starts one in the background
   * (calls carry on with the addresses known) and returns nothing to wait for.
   */
  private fresh(): Promise<void> | undefined {
    if (!this.named) return undefined;
    if (this.resolvedAt === 0) return this.resolve();
    if (Date.now() - this.resolvedAt >= this.resolveIntervalMs && !this.resolving) void this.resolve();
    return undefined;
  }

  /** The replica addresses (a host name's: one per resolved address), and how many calls were sent again to another replica after UNAVAILABLE. */
  stats(): { addresses: string[]; failovers: number } {
    return { addresses: this.replicas.map((r) => r.address), failovers: this.failoverCount };
  }

  private async unary<I extends DescMessage, O extends DescMessage>(method: string, input: I, output: O, req: MessageInitShape<I>): Promise<Plain<MessageShape<O>>> {
    const deadline = Date.now() + this.timeoutMs;
    const resolving = this.fresh();
    if (resolving) await withinDeadline(resolving, deadline);
    const msg = create(input, req);
    // With one replica, one more attempt: its connection may be back, or (a name gRPC resolves) lead to another address.
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

  /**
   * The first replica, from the preferred one on, whose connection becomes
   * ready; nothing has been sent when this fails. When none does, host names
   * are resolved again (the replicas may have moved) and the new addresses tried.
   */
  private async connect(deadline: number, tried: Set<Replica>): Promise<Replica> {
    const failed = new Set<Replica>();
    for (let round = 0; round < 2; round++) {
      const n = this.replicas.length;
      for (let i = 0; i < n; i++) {
        const idx = (this.preferred + i) % n;
        const r = this.replicas[idx]!;
        if (tried.has(r) || failed.has(r)) continue;
        if (await this.becomesReady(r, Math.min(deadline, Date.now() + this.connectTimeoutMs))) {
          this.preferred = this.replicas.indexOf(r);
          return r;
        }
        failed.add(r);
      }
      if (!this.named || Date.now() >= deadline) break;
      await withinDeadline(this.resolve(), deadline);
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
    // Synchronous: the first subscription may go to a name not resolved yet (gRPC resolves it); later ones use its addresses.
    void this.fresh()?.catch(() => undefined);
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
    this.closed = true;
    for (const r of this.made.values()) r.client.close();
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
