/**
 * MayflyVerifier: what a relying party runs to accept Mayfly access tokens.
 *
 * - Signature and claims are checked by `verifyMayflyToken`, the same code the
 *   broker runs on Introspect, so the SDK and the broker cannot disagree.
 * - Keys come from the broker's JWKS over HTTPS (cached; an unknown kid causes
 *   at most one refetch at a time, at most once per `minRefreshIntervalMs`)
 *   and from the revocation feed, which pushes every key-set change.
 * - Revocation comes from the broker's revocation feed (WatchRevocations):
 *   ended tasks (a task event lists the task and all its descendants),
 *   revoked tokens, revoked signing keys. The verifier subscribes from cursor
 *   0 (snapshot), resubscribes from its last cursor after a disconnect (the
 *   broker replays what was missed), and fails closed until the first
 *   snapshot or replay has been processed, and again when the feed has been
 *   silent for longer than `maxSilenceMs` (or falls back to Introspect).
 * - Misuse it detects (a revoked token presented, a certificate-bound token
 *   presented with another certificate, a single-use token replayed) is
 *   reported to the broker, fire-and-forget.
 *
 * Once synchronized, verification is CPU-only: `verifySync` never waits.
 */
import type { KeyObject } from 'node:crypto';
import { isMayflyError, MayflyError, mayflyError, verdictError, type ErrorCode } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import type { Clock } from '../core/ports.js';
import { REPLAY_END_REASON } from '../core/types.js';
import { httpsFetch, parseJsonDocument, RemoteDocument, type CaOption, type FetchLike } from '../net/remote-document.js';
import { checkAudience, checkScopes, checkTimeWindow, type MayflyClaims } from '../tokens/claims.js';
import { certificateThumbprint } from '../tokens/hashes.js';
import { decodeJws, MAX_JWS_BYTES, payloadOf } from '../tokens/jws.js';
import { parseJwks } from '../tokens/jwks.js';
import { verifyDecodedMayflyToken, verifyMayflyToken } from '../tokens/verify.js';
import { RevocationEvent_Kind, type IntrospectResponse, type RevocationEvent } from '../gen/mayfly/v1/broker_pb.js';

/** The part of BrokerClient the verifier uses (a BrokerClient fits). */
export interface VerifierBrokerClient {
  watchRevocations(
    req: { cursor: number; subscriberId: string },
    onEvent: (e: RevocationEvent) => void,
    onEnd: (err: MayflyError | null) => void,
  ): { cancel(): void };
  ackKeySet(subscriberId: string, keysetVersion: string): Promise<unknown>;
  reportMisuse(kind: string, tokenId: string, detail?: string): Promise<unknown>;
  introspect(token: string): Promise<Pick<IntrospectResponse, 'active' | 'reason'>>;
}

export type MisuseKind = 'revoked_use' | 'cnf_mismatch' | 'replay';

/** Things worth logging; the verifier itself never logs. */
export type VerifierEvent =
  | { type: 'feed.synchronized'; cursor: number; snapshot: boolean }
  | { type: 'feed.disconnected'; error: MayflyError | null; retryInMs: number | null }
  | { type: 'jwks.error'; error: MayflyError }
  | { type: 'misuse'; kind: MisuseKind; jti: string; reported: boolean };

export interface MayflyVerifierOptions {
  /** Must equal the broker's configured `issuer` exactly. */
  issuer: string;
  /** The audience(s) this relying party accepts (the token's `aud` must be one of them). */
  audience: string | readonly string[];
  jwks: {
    /**
     * The broker's JWKS URL, e.g. https://broker:8444/.well-known/jwks.json;
     * must be https. Several replicas: a list, tried in turn from the last
     * one that answered.
     */
    url: string | readonly string[];
    /** PEM CA for the broker's HTTPS certificate (default: the system roots). */
    ca?: CaOption;
    /** Unknown kids refetch at most this often (default 30 s). */
    minRefreshIntervalMs?: number;
    /** Bound on one fetch (default 3 s). */
    timeoutMs?: number;
    /** Injected fetch (tests, custom transports); `ca` is ignored when given. */
    fetchImpl?: FetchLike;
  };
  /**
   * The revocation feed. Required: without it a token stays valid until it
   * expires even after its task ended. To run without one anyway, pass
   * `acceptRevokedTokensUntilExpiry: true` instead.
   */
  feed?: {
    client: VerifierBrokerClient;
    /** Stable id of this verifier instance (key-set acknowledgements, feed lag). */
    subscriberId: string;
    /** Longest tolerated silence (no event and no heartbeat), ms (default 15 000; must exceed the broker's heartbeat). */
    maxSilenceMs?: number;
    /** What to do once the feed is silent for too long (default fail-closed). */
    onSilence?: 'fail-closed' | 'introspect';
    /** How long `verify` waits for a resubscription to finish its replay before judging staleness (default 1 000 ms). */
    syncWaitMs?: number;
    /** How long `start()` waits for the first snapshot (default 10 000 ms). */
    startTimeoutMs?: number;
    /**
     * Resubscribe when an open subscription has been silent this long, ms
     * (default max(1 000, maxSilenceMs / 2)): a half-open connection never
     * ends by itself, and the broker heartbeats every few seconds.
     */
    resubscribeAfterSilenceMs?: number;
    /** Reconnect backoff bounds, ms (default 100 → 5 000, with jitter). */
    backoff?: { initialMs?: number; maxMs?: number };
  };
  /** Tolerance for exp/nbf, seconds (default 60). */
  clockSkewSeconds?: number;
  clock?: Clock;
  /** Remember the jti of single-use tokens to reject a second presentation (default true). */
  replayCache?: boolean;
  /**
   * Floor on how long a revoked task id or jti is kept, ms (default 1 h + skew).
   * Each feed event also says until when it matters (`covers_until`: the latest
   * expiry of any token it covers) and is kept at least that long plus skew, so
   * tokens longer-lived than this floor stay revoked.
   */
  revocationRetentionMs?: number;
  /**
   * DANGEROUS. Accept a certificate-bound token (cnf x5t#S256, RFC 8705)
   * presented without any client certificate (default false: refused with
   * ERR_JWT_INVALID). Turning it on makes a stolen bound token usable as a
   * plain bearer token by whoever holds it, which is exactly what binding
   * exists to prevent. Only for a relying party that cannot see the client
   * certificate (TLS terminated elsewhere) and accepts that risk; a warning
   * is emitted once per process. A certificate that does not match is
   * refused either way.
   */
  allowUnboundUseOfBoundTokens?: boolean;
  /**
   * DANGEROUS. Run without a revocation feed (default false: `feed` is
   * required). Tokens of ended tasks, revoked tokens and tokens of revoked
   * keys are then accepted until they expire. A warning is emitted once.
   */
  acceptRevokedTokensUntilExpiry?: boolean;
  /**
   * How many verified tokens to remember (default 10 000; 0 turns the cache
   * off). A remembered token skips the signature check on its later uses,
   * and nothing else: expiry, not-before, audience, revocation (task, token,
   * key), the signing key still being current, the certificate binding,
   * scopes and single use are checked on every call. Its claims are parsed
   * once more on its second use (the cache keeps a first-time token, not
   * the caller's claims object), then kept.
   */
  verifiedTokenCacheSize?: number;
  /** Report detected misuse to the broker (default true; needs `feed.client`). */
  reportMisuse?: boolean;
  onEvent?: (e: VerifierEvent) => void;
}

export interface VerifyOptions {
  /** Scopes the request needs; all must be granted (ERR_SCOPE_DENIED otherwise). */
  requiredScopes?: readonly string[];
  /**
   * DER of the client's leaf certificate when this service terminates mTLS
   * (`tlsSocket.getPeerCertificate().raw`). A certificate-bound token (cnf
   * x5t#S256, RFC 8705) must be presented with the certificate it is bound to.
   */
  clientCertDer?: Buffer;
  /** Treat the token as single-use even if it does not carry mayfly.single_use. */
  singleUse?: boolean;
}

export interface VerifierStats {
  started: boolean;
  /** The feed has delivered a snapshot or a replay since start. */
  synchronized: boolean;
  connected: boolean;
  catchingUp: boolean;
  cursor: number;
  /** Ms since the last feed message (event or heartbeat); null without a feed or before the first one. */
  silenceMs: number | null;
  keysetVersion: string;
  keys: number;
  revokedTasks: number;
  revokedTokens: number;
  revokedKeys: number;
  replayEntries: number;
  accepted: number;
  rejected: Partial<Record<ErrorCode, number>>;
  feedMessages: number;
  reconnects: number;
  jwksFetches: number;
  jwksErrors: number;
  misuseReports: number;
  introspections: number;
  /** Verified tokens remembered (see `verifiedTokenCacheSize`). */
  cachedTokens: number;
  /** Verifications answered from that cache (every per-call check still ran). */
  cacheHits: number;
}

const DEFAULT_RETENTION_MS = 3_600_000;
const DEFAULT_CACHE_SIZE = 10_000;
/** Mayfly tokens are well under this; bigger strings are verified every time rather than held in memory. */
const MAX_CACHED_TOKEN_CHARS = MAX_JWS_BYTES / 4;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

export { certificateThumbprint };

export class MayflyVerifier {
  private readonly clock: Clock;
  private readonly skew: number;
  private readonly retentionMs: number;
  /** The broker's JWKS over HTTPS, kept fresh by the shared remote-document fetcher. */
  private readonly jwks: RemoteDocument<Map<string, KeyObject>>;
  private feedKeys = new Map<string, KeyObject>();
  private keysetVersion = '';
  /** id → time after which the entry can be dropped. */
  private readonly revokedTasks = new Map<string, number>();
  private readonly revokedJtis = new Map<string, number>();
  private readonly revokedKids = new Map<string, number>();
  private readonly seenSingleUse = new Map<string, number>();
  private readonly reported = new Set<string>();
  /**
   * Verified tokens (signature and claims), by their signature segment (see
   * `cacheKeyOf`); an entry answers only for the exact token string it holds.
   * Bounded, oldest evicted first.
   */
  private readonly verified = new Map<string, VerifiedEntry>();
  private readonly cacheSize: number;
  /** The last client certificate hashed, and its x5t#S256. */
  private lastCert: { der: Buffer; thumbprint: string } | null = null;

  private pruneTimer: NodeJS.Timeout | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private callOpenedAt = 0;

  private started = false;
  private closed = false;
  private cursor = 0;
  private synchronized = false;
  private lastHeardAt: number | null = null;
  private call: { cancel(): void } | null = null;
  private generation = 0;
  private suspended = false;
  private catchingUp = false;
  private catchUpWaiters: Array<() => void> = [];
  private reconnectTimer: NodeJS.Timeout | null = null;
  private backoffMs: number;

  private readonly counters = { accepted: 0, feedMessages: 0, reconnects: 0, misuseReports: 0, introspections: 0, cacheHits: 0 };
  private readonly rejected: Partial<Record<ErrorCode, number>> = {};

  constructor(private readonly o: MayflyVerifierOptions) {
    if (!o.issuer) throw mayflyError('ERR_CONFIG_INVALID', 'MayflyVerifier: issuer is required', { field: 'issuer' });
    if (!o.audience || (typeof o.audience !== 'string' && o.audience.length === 0)) throw mayflyError('ERR_CONFIG_INVALID', 'MayflyVerifier: audience is required', { field: 'audience' });
    const urls = typeof o.jwks?.url === 'string' ? [o.jwks.url] : [...(o.jwks?.url ?? [])];
    if (urls.length === 0 || urls.some((u) => !u)) throw mayflyError('ERR_CONFIG_INVALID', 'MayflyVerifier: jwks.url is required', { field: 'jwks.url' });
    if (!o.feed && o.acceptRevokedTokensUntilExpiry !== true) {
      throw mayflyError('ERR_CONFIG_INVALID', 'MayflyVerifier: feed is required (without the revocation feed, tokens of ended tasks stay valid until they expire); pass acceptRevokedTokensUntilExpiry: true to run without it', { field: 'feed' });
    }
    for (const [field, v, max] of [
      ['clockSkewSeconds', o.clockSkewSeconds, 300],
      ['revocationRetentionMs', o.revocationRetentionMs, Number.MAX_SAFE_INTEGER],
      ['verifiedTokenCacheSize', o.verifiedTokenCacheSize, 1_000_000],
    ] as const) {
      if (v !== undefined && !(Number.isFinite(v) && v >= 0 && v <= max)) throw mayflyError('ERR_CONFIG_INVALID', `MayflyVerifier: ${field} must be a number from 0 to ${max}`, { field });
    }
    if (o.allowUnboundUseOfBoundTokens === true) warnOnce('allowUnboundUseOfBoundTokens is on: certificate-bound tokens are accepted from callers without the certificate they are bound to (a stolen token works as a bearer token)');
    if (!o.feed) warnOnce('acceptRevokedTokensUntilExpiry is on: no revocation feed, so tokens of ended tasks and revoked tokens are accepted until they expire');
    this.clock = o.clock ?? systemClock;
    this.skew = o.clockSkewSeconds ?? 60;
    this.cacheSize = Math.floor(o.verifiedTokenCacheSize ?? DEFAULT_CACHE_SIZE);
    this.retentionMs = o.revocationRetentionMs ?? DEFAULT_RETENTION_MS + this.skew * 1000;
    if (urls.some((u) => !/^https:\/\//i.test(u))) throw mayflyError('ERR_CONFIG_INVALID', 'MayflyVerifier: jwks.url must use https (keys fetched over plain http could be replaced on the way)', { field: 'jwks.url' });
    let first = 0;
    this.jwks = new RemoteDocument({
      name: 'Mayfly JWKS',
      // Replicas in turn, from the one that answered last; the error of the last one tried if none does.
      load: async (get) => {
        let error: unknown;
        for (let i = 0; i < urls.length; i++) {
          const idx = (first + i) % urls.length;
          try {
            const keys = keysOf(parseJsonDocument(await get(urls[idx]!, urls[idx]), `Mayfly JWKS ${urls[idx]}`));
            first = idx;
            return keys;
          } catch (e) {
            error = e;
          }
        }
        throw error;
      },
      ...(o.jwks.fetchImpl ? { fetchImpl: o.jwks.fetchImpl } : { fetchImpl: httpsFetch(o.jwks.ca !== undefined ? { ca: o.jwks.ca } : {}) }),
      timeoutMs: o.jwks.timeoutMs ?? 3000,
      minRefreshIntervalMs: o.jwks.minRefreshIntervalMs ?? 30_000,
      background: true,
      clock: this.clock,
      onError: (error) => this.o.onEvent?.({ type: 'jwks.error', error }),
    });
    this.backoffMs = o.feed?.backoff?.initialMs ?? 100;
  }

  /**
   * Fetches the JWKS and subscribes to the feed. Resolves once keys are known
   * and (with a feed) the first snapshot has been processed. Rejects with
   * ERR_UNAVAILABLE if that takes longer than `feed.startTimeoutMs`; the
   * verifier keeps retrying in the background either way (call close()).
   */
  async start(): Promise<void> {
    if (this.closed) throw mayflyError('ERR_UNAVAILABLE', 'verifier is closed');
    if (this.started) return;
    this.started = true;
    this.pruneTimer = setInterval(() => this.prune(), 30_000);
    this.pruneTimer.unref();
    if (this.o.feed) {
      this.connect();
      this.watchdog = setInterval(() => this.checkSilence(), 250);
      this.watchdog.unref();
    }
    let jwksError: unknown = null;
    try {
      await this.jwks.refresh();
    } catch (e) {
      jwksError = e;
    }
    if (this.o.feed) {
      const timeout = this.o.feed.startTimeoutMs ?? 10_000;
      const deadline = this.clock.now() + timeout;
      while (!this.synchronized && !this.closed && this.clock.now() < deadline) await this.waitCatchUp(Math.max(1, deadline - this.clock.now()));
      if (!this.synchronized) throw mayflyError('ERR_UNAVAILABLE', `revocation feed not synchronized within ${timeout} ms`);
      // The snapshot carries the key set, so a failed JWKS fetch is not fatal here.
      return;
    }
    if (jwksError) throw jwksError;
  }

  /**
   * Verifies a token: signature (kid from JWKS or the feed), typ, iss, aud,
   * exp/nbf, revocation (task, token, key), certificate binding, scopes and
   * single use. Returns the claims (frozen) or throws a MayflyError.
   */
  async verify(token: string, options: VerifyOptions = {}): Promise<MayflyClaims> {
    try {
      if (this.catchingUp && this.synchronized) await this.waitCatchUp(this.o.feed?.syncWaitMs ?? 1000);
      const mode = this.gate();
      let claims: MayflyClaims;
      try {
        claims = this.check(token, options, mode === 'introspect');
      } catch (e) {
        if (!isMayflyError(e, 'ERR_KEY_UNKNOWN') || !this.jwks.mayRefresh()) throw e;
        await this.jwks.refreshIfAllowed();
        claims = this.check(token, options, mode === 'introspect');
      }
      if (mode === 'introspect') {
        await this.introspect(token, claims);
        this.finish(claims, options);
      }
      this.counters.accepted++;
      return claims;
    } catch (e) {
      throw this.countRejection(e);
    }
  }

  /**
   * Synchronous verification: never waits and never fetches. An unknown kid
   * throws ERR_KEY_UNKNOWN (and starts a background JWKS refresh); a silent
   * feed throws ERR_UNAVAILABLE even with onSilence 'introspect'. While a
   * resubscription is replaying it answers from the state it has (bounded by
   * maxSilenceMs like any staleness); `verify` waits for the replay instead.
   */
  verifySync(token: string, options: VerifyOptions = {}): MayflyClaims {
    try {
      if (this.gate() === 'introspect') throw mayflyError('ERR_UNAVAILABLE', 'revocation feed is silent; only the asynchronous verify can fall back to Introspect');
      let claims: MayflyClaims;
      try {
        claims = this.check(token, options, false);
      } catch (e) {
        if (isMayflyError(e, 'ERR_KEY_UNKNOWN')) void this.jwks.refreshIfAllowed();
        throw e;
      }
      this.counters.accepted++;
      return claims;
    } catch (e) {
      throw this.countRejection(e);
    }
  }

  stats(): VerifierStats {
    const now = this.clock.now();
    return {
      started: this.started,
      synchronized: this.synchronized,
      connected: this.call !== null,
      catchingUp: this.catchingUp,
      cursor: this.cursor,
      silenceMs: this.o.feed && this.lastHeardAt !== null ? now - this.lastHeardAt : null,
      keysetVersion: this.keysetVersion,
      keys: new Set([...(this.jwks.value?.keys() ?? []), ...this.feedKeys.keys()].filter((kid) => !this.revokedKids.has(kid))).size,
      revokedTasks: this.revokedTasks.size,
      revokedTokens: this.revokedJtis.size,
      revokedKeys: this.revokedKids.size,
      replayEntries: this.seenSingleUse.size,
      accepted: this.counters.accepted,
      rejected: { ...this.rejected },
      feedMessages: this.counters.feedMessages,
      reconnects: this.counters.reconnects,
      jwksFetches: this.jwks.stats().refreshes,
      jwksErrors: this.jwks.stats().failures,
      misuseReports: this.counters.misuseReports,
      introspections: this.counters.introspections,
      cachedTokens: this.verified.size,
      cacheHits: this.counters.cacheHits,
    };
  }

  /** Stops the feed subscription and timers. The BrokerClient is the caller's to close. */
  close(): void {
    this.closed = true;
    this.dropCall();
    this.jwks.close();
    for (const t of [this.reconnectTimer, this.pruneTimer, this.watchdog]) if (t) clearTimeout(t);
    this.reconnectTimer = this.pruneTimer = this.watchdog = null;
    this.releaseWaiters();
  }

  /**
   * Operations/testing hook: drops the feed subscription and does not
   * reconnect until `resumeFeed()`. While suspended the verifier keeps
   * accepting tokens until the silence limit, exactly as during an outage.
   */
  suspendFeed(): void {
    this.suspended = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.dropCall();
  }

  /** Resubscribes from the last cursor; `verify` waits (up to syncWaitMs) for the replay. */
  resumeFeed(): void {
    if (!this.suspended) return;
    this.suspended = false;
    this.connect();
  }

  /** Drops revocation and replay entries whose coverage is past (also runs every 30 s). */
  prune(): void {
    const now = this.clock.now();
    for (const m of [this.revokedTasks, this.revokedJtis, this.revokedKids, this.seenSingleUse]) {
      for (const [k, until] of m) if (until <= now) m.delete(k);
    }
    if (this.reported.size > 10_000) this.reported.clear();
    const sec = Math.floor(now / 1000);
    for (const [k, e] of this.verified) if (e.exp + this.skew <= sec) this.verified.delete(k);
  }

  // ---- verification ----

  /** Fails closed before the first sync and after too long a silence; 'introspect' when that is the fallback. */
  private gate(): 'ok' | 'introspect' {
    if (this.closed) throw mayflyError('ERR_UNAVAILABLE', 'verifier is closed');
    const feed = this.o.feed;
    if (!feed) return 'ok';
    if (!this.synchronized) throw mayflyError('ERR_UNAVAILABLE', 'revocation feed not yet synchronized');
    const silence = this.clock.now() - (this.lastHeardAt ?? 0);
    const limit = feed.maxSilenceMs ?? 15_000;
    if (silence > limit) {
      if (feed.onSilence === 'introspect') return 'introspect';
      throw mayflyError('ERR_UNAVAILABLE', `revocation feed silent for ${silence} ms (limit ${limit} ms); failing closed`, { silence_ms: silence });
    }
    return 'ok';
  }

  /**
   * CPU-only checks in a fixed order: signature and claims (or the cache of
   * tokens that passed them), revocation, certificate binding, scopes, replay.
   * Everything after the signature runs on every call, cached or not.
   */
  private check(token: string, options: VerifyOptions, deferReplay: boolean): MayflyClaims {
    const now = this.clock.now();
    const cacheKey = cacheKeyOf(token);
    const hit = this.remembered(token, cacheKey, now);
    const v = hit ?? this.verifyFresh(token, cacheKey, now);
    const claims = v.claims as MayflyClaims; // set by both: remembered() re-parses the token's payload if needed
    // Revocation before scopes, so a revoked token is always recognized (and reported) as such. A first-time
    // token has just passed both checks in verifyFresh (the key when it was resolved, the ids before the
    // signature), in this same synchronous call: nothing can have been revoked since.
    if (hit !== undefined) {
      if (this.revokedKids.has(v.kid)) throw verdictError('ERR_TOKEN_REVOKED', 'token was signed by a revoked key', { kid: v.kid });
      if (this.isRevoked(claims.jti, claims.tid, v.parent)) {
        this.misuse('revoked_use', claims.jti, `task ${claims.tid}`);
        throw verdictError('ERR_TOKEN_REVOKED', 'token has been revoked (its task ended or the token was revoked)', { jti: claims.jti });
      }
    }
    const bound = claims.cnf?.['x5t#S256'];
    if (bound !== undefined) {
      if (options.clientCertDer) {
        if (!this.boundTo(v, options.clientCertDer, bound)) {
          this.misuse('cnf_mismatch', claims.jti, 'x5t#S256 does not match the presented certificate');
          throw mayflyError('ERR_JWT_INVALID', 'certificate-bound token presented with a different certificate', { jti: claims.jti });
        }
      } else if (this.o.allowUnboundUseOfBoundTokens !== true) {
        throw mayflyError('ERR_JWT_INVALID', 'certificate-bound token presented without a client certificate: present it over mutual TLS with the certificate it is bound to', { jti: claims.jti, reason: 'cnf_certificate_missing' });
      }
    }
    if (options.requiredScopes) checkScopes(claims.scope, options.requiredScopes);
    if (!deferReplay) this.finish(claims, options);
    // A first-time token's entry keeps the token string (which it holds anyway) rather than this object
    // graph, which is the caller's and usually dies young: carrying the dozen objects JSON.parse made to the
    // old generation cost the garbage collector more than the rest of the cache. The token's next use parses
    // its payload once more (the bytes that were verified) and keeps the result.
    if (hit === undefined) v.claims = null;
    return claims;
  }

  /**
   * A token verified before, re-checked for what changes with time or
   * configuration: its signing key is still the one this verifier would use
   * for its kid, and exp, nbf and aud still pass. Undefined when not cached
   * (or the key changed: then it is verified afresh).
   */
  private remembered(token: string, cacheKey: string, now: number): VerifiedEntry | undefined {
    const e = this.verified.get(cacheKey);
    // Another string with the same signature segment is another token: verified afresh (and refused), the entry kept.
    if (e === undefined || e.token !== token) return undefined;
    if (this.keyFor(e.kid) !== e.key) {
      this.verified.delete(cacheKey);
      return undefined;
    }
    const claims = (e.claims ??= deepFreeze(payloadOf(token) as unknown as MayflyClaims));
    checkAudience(claims, this.o.audience);
    try {
      checkTimeWindow(claims, now, this.skew);
    } catch (err) {
      this.verified.delete(cacheKey);
      throw err;
    }
    this.counters.cacheHits++;
    return e;
  }

  /** Decodes once, refuses a revoked task's tokens before paying for the signature, then verifies and remembers. */
  private verifyFresh(token: string, cacheKey: string, now: number): VerifiedEntry {
    const jws = decodeJws(token);
    // Revocation first, from the unverified payload: a revoked task's tokens are refused without paying for a
    // signature check, which keeps rejection cheap right after a revocation, when every caller retries. A
    // forged token naming a revoked task is refused too (as revoked rather than invalid); only a genuine one,
    // checked off the request path, is reported as misuse.
    const p = jws.payload;
    const jti = p['jti'];
    const tid = p['tid'];
    const parent = parentTaskOf(p);
    if (typeof jti === 'string' && typeof tid === 'string' && this.isRevoked(jti, tid, parent)) {
      this.reportRevokedUse(token, jti, tid, now);
      throw verdictError('ERR_TOKEN_REVOKED', 'token has been revoked (its task ended or the token was revoked)', { jti });
    }
    // The claims validated are the payload read above (validateClaims returns it), so `parent` is theirs.
    const { header, claims, key } = verifyDecodedMayflyToken(jws, this.resolveKeyFn, { issuer: this.o.issuer, audience: this.o.audience, now, clockSkewSeconds: this.skew });
    // Frozen, as every answer is (from its second use on, one object answers every use of a token). The entry
    // drops this object once the call is done (see check) and keeps the token to re-parse.
    const entry: VerifiedEntry = { token, claims: deepFreeze(claims), exp: claims.exp, kid: header.kid as string, key, parent, certDer: null };
    if (this.cacheSize > 0 && token.length <= MAX_CACHED_TOKEN_CHARS && cacheKey !== '') {
      if (this.verified.size >= this.cacheSize) this.evictOldest();
      this.verified.set(cacheKey, entry);
    }
    return entry;
  }

  /**
   * Drops the oldest eighth of the cache (at least one entry). A Map keeps a
   * deleted slot until it next rehashes, and every new iterator walks over
   * those slots, so evicting one entry per insertion from a full cache would
   * walk over thousands of them each time; a batch pays that walk once.
   */
  private evictOldest(): void {
    let n = Math.max(1, this.cacheSize >> 3);
    for (const k of this.verified.keys()) {
      this.verified.delete(k);
      if (--n === 0) return;
    }
  }

  /**
   * Whether `der` is the certificate the token is bound to. The token's last
   * matching certificate, and the last certificate hashed at all, are
   * remembered: a repeat costs a byte compare, not a SHA-256.
   */
  private boundTo(v: VerifiedEntry, der: Buffer, thumbprint: string): boolean {
    if (v.certDer !== null && v.certDer.equals(der)) return true;
    let last = this.lastCert;
    if (last === null || !last.der.equals(der)) {
      last = { der: Buffer.from(der), thumbprint: certificateThumbprint(der) };
      this.lastCert = last;
    }
    if (last.thumbprint !== thumbprint) return false;
    v.certDer = last.der;
    return true;
  }

  private isRevoked(jti: string, tid: string, parent: string | null): boolean {
    return this.revokedJtis.has(jti) || this.revokedTasks.has(tid) || (parent !== null && this.revokedTasks.has(parent));
  }

  /** Reports a revoked token's use once its signature has been checked, off the request path. */
  private reportRevokedUse(token: string, jti: string, tid: string, now: number): void {
    if (this.reported.has(`revoked_use:${jti}`) && !this.o.onEvent) return;
    setImmediate(() => {
      try {
        verifyMayflyToken(token, (kid) => this.keyFor(kid), { issuer: this.o.issuer, audience: this.o.audience, now, clockSkewSeconds: this.skew });
      } catch {
        return; // forged or otherwise invalid: nothing to report
      }
      this.misuse('revoked_use', jti, `task ${tid}`);
    });
  }

  /** The single-use check, last so only a token that passed everything else consumes its jti. */
  private finish(claims: MayflyClaims, options: VerifyOptions): void {
    const singleUse = options.singleUse === true || claims.mayfly?.single_use === true;
    if (!singleUse || this.o.replayCache === false) return;
    if (this.seenSingleUse.has(claims.jti)) {
      this.misuse('replay', claims.jti, 'single-use token presented again');
      throw mayflyError('ERR_TOKEN_REPLAYED', 'single-use token was already used', { jti: claims.jti });
    }
    this.seenSingleUse.set(claims.jti, (claims.exp + this.skew) * 1000 + 1000);
  }

  private readonly resolveKeyFn = (kid: string): KeyObject | undefined => this.resolveKey(kid);

  private resolveKey(kid: string): KeyObject | undefined {
    if (this.revokedKids.has(kid)) throw verdictError('ERR_TOKEN_REVOKED', 'token was signed by a revoked key', { kid });
    return this.feedKeys.get(kid) ?? this.jwks.value?.get(kid);
  }

  /** A key that is not revoked, or undefined. */
  private keyFor(kid: string): KeyObject | undefined {
    return this.revokedKids.has(kid) ? undefined : (this.feedKeys.get(kid) ?? this.jwks.value?.get(kid));
  }

  private async introspect(token: string, claims: MayflyClaims): Promise<void> {
    const client = this.o.feed?.client;
    if (!client) throw mayflyError('ERR_UNAVAILABLE', 'no broker client to introspect with');
    this.counters.introspections++;
    let res: Pick<IntrospectResponse, 'active' | 'reason'>;
    try {
      res = await client.introspect(token);
    } catch (e) {
      throw mayflyError('ERR_UNAVAILABLE', `revocation feed is silent and Introspect failed: ${(e as Error).message}`, undefined, e);
    }
    if (res.active) return;
    // The broker records a revoked token presented to Introspect as misuse itself.
    switch (res.reason) {
      case 'revoked':
        this.revokedJtis.set(claims.jti, this.clock.now() + this.retentionMs);
        throw mayflyError('ERR_TOKEN_REVOKED', 'token has been revoked (per Introspect)', { jti: claims.jti });
      case 'expired':
        throw mayflyError('ERR_JWT_EXPIRED', 'token is expired (per Introspect)');
      case 'unknown_signer':
        throw mayflyError('ERR_KEY_UNKNOWN', 'token was signed by a key the broker does not know (per Introspect)');
      default:
        throw mayflyError('ERR_JWT_INVALID', `token is not active (per Introspect: ${res.reason || 'no reason'})`);
    }
  }

  private countRejection(e: unknown): MayflyError {
    const err = MayflyError.from(e);
    this.rejected[err.code] = (this.rejected[err.code] ?? 0) + 1;
    return err;
  }

  private misuse(kind: MisuseKind, jti: string, detail: string): void {
    const client = this.o.feed?.client;
    const report = client !== undefined && this.o.reportMisuse !== false && !this.reported.has(`${kind}:${jti}`);
    if (report) {
      this.reported.add(`${kind}:${jti}`);
      this.counters.misuseReports++;
      void client.reportMisuse(kind, jti, detail).catch(() => undefined);
    }
    this.o.onEvent?.({ type: 'misuse', kind, jti, reported: report });
  }

  // ---- feed ----

  private connect(): void {
    const feed = this.o.feed;
    if (!feed || this.closed || this.suspended) return;
    const gen = ++this.generation;
    this.catchingUp = true;
    this.callOpenedAt = this.clock.now();
    try {
      this.call = feed.client.watchRevocations(
        { cursor: this.cursor, subscriberId: feed.subscriberId },
        (e) => {
          if (gen === this.generation) this.onFeedEvent(e);
        },
        (err) => {
          if (gen === this.generation) this.onFeedEnd(err);
        },
      );
    } catch (e) {
      this.onFeedEnd(MayflyError.from(e));
    }
  }

  /** Watchdog: an open but silent subscription is dropped and resubscribed from the last cursor. */
  private checkSilence(): void {
    const feed = this.o.feed;
    if (!feed || !this.call || this.closed || this.suspended) return;
    const limit = feed.resubscribeAfterSilenceMs ?? Math.max(1000, Math.floor((feed.maxSilenceMs ?? 15_000) / 2));
    const since = this.clock.now() - Math.max(this.lastHeardAt ?? 0, this.callOpenedAt);
    if (since <= limit) return;
    const call = this.call;
    this.onFeedEnd(mayflyError('ERR_UNAVAILABLE', `revocation feed silent for ${since} ms on an open subscription; resubscribing`));
    try {
      call.cancel();
    } catch {
      /* already gone */
    }
  }

  private dropCall(): void {
    this.generation++;
    const call = this.call;
    this.call = null;
    this.catchingUp = false;
    this.releaseWaiters();
    try {
      call?.cancel();
    } catch {
      /* already gone */
    }
  }

  private onFeedEnd(err: MayflyError | null): void {
    this.call = null;
    this.generation++;
    this.catchingUp = false;
    this.releaseWaiters();
    if (this.closed || this.suspended) return;
    const max = this.o.feed?.backoff?.maxMs ?? 5000;
    const delay = Math.round(this.backoffMs * (0.5 + Math.random() / 2));
    this.backoffMs = Math.min(max, this.backoffMs * 2);
    this.o.onEvent?.({ type: 'feed.disconnected', error: err, retryInMs: delay });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.counters.reconnects++;
      this.connect();
    }, delay);
    this.reconnectTimer.unref();
  }

  private onFeedEvent(e: RevocationEvent): void {
    const now = this.clock.now();
    this.lastHeardAt = now;
    this.counters.feedMessages++;
    // Keep what the broker says the event covers (latest expiry of its tokens) plus skew; the
    // configured retention is the floor, and the whole rule when the broker does not say.
    const covers = Number(e.coversUntil);
    const until = Math.max(now + this.retentionMs, covers > 0 ? covers + this.skew * 1000 + 1000 : 0);
    const cursor = Number(e.cursor);
    switch (e.kind) {
      case RevocationEvent_Kind.TASK:
        for (const id of e.taskIds) this.revokedTasks.set(id, until);
        for (const id of e.tokenIds) this.revokedJtis.set(id, until);
        break;
      case RevocationEvent_Kind.TOKEN:
        for (const id of e.tokenIds) this.revokedJtis.set(id, until);
        break;
      case RevocationEvent_Kind.KEY:
        if (e.kid) this.revokeKid(e.kid, until);
        for (const id of e.tokenIds) this.revokedJtis.set(id, until);
        if (e.jwksJson) this.applyKeySet(e.jwksJson, '');
        break;
      case RevocationEvent_Kind.KEYSET:
        this.applyKeySet(e.jwksJson, e.kid);
        if (e.reason === REPLAY_END_REASON) this.caughtUp(cursor, false);
        break;
      case RevocationEvent_Kind.SNAPSHOT:
        for (const id of e.taskIds) this.revokedTasks.set(id, until);
        for (const id of e.tokenIds) this.revokedJtis.set(id, until);
        for (const kid of e.kids) this.revokeKid(kid, until);
        this.applyKeySet(e.jwksJson, e.kid);
        this.cursor = Math.max(this.cursor, cursor);
        this.caughtUp(cursor, true);
        return;
      default:
        // Heartbeats (and kinds this version does not know) only prove the feed is alive.
        return;
    }
    this.cursor = Math.max(this.cursor, cursor);
  }

  private revokeKid(kid: string, until: number): void {
    this.revokedKids.set(kid, Math.max(until, this.revokedKids.get(kid) ?? 0));
    this.feedKeys.delete(kid);
  }

  /** Replaces the feed's key set and acknowledges its version (the broker's key-promotion gate). */
  private applyKeySet(json: string, version: string): void {
    if (!json) return;
    try {
      this.feedKeys = keysOf(JSON.parse(json));
    } catch (e) {
      this.o.onEvent?.({ type: 'jwks.error', error: mayflyError('ERR_UNAVAILABLE', `feed key set could not be parsed: ${(e as Error).message}`) });
      return;
    }
    const feed = this.o.feed;
    if (version && feed) {
      this.keysetVersion = version;
      void feed.client.ackKeySet(feed.subscriberId, version).catch(() => undefined);
    }
  }

  private caughtUp(cursor: number, snapshot: boolean): void {
    const first = !this.synchronized;
    this.synchronized = true;
    this.catchingUp = false;
    this.backoffMs = this.o.feed?.backoff?.initialMs ?? 100;
    this.releaseWaiters();
    if (first || snapshot) this.o.onEvent?.({ type: 'feed.synchronized', cursor, snapshot });
  }

  private releaseWaiters(): void {
    const w = this.catchUpWaiters;
    this.catchUpWaiters = [];
    for (const fn of w) fn();
  }

  /** Resolves when the current (re)subscription has caught up or ended, or after `ms`. */
  private waitCatchUp(ms: number): Promise<void> {
    if (!this.catchingUp) return this.o.feed && !this.synchronized && !this.closed ? sleep(Math.min(ms, 50)) : Promise.resolve();
    return new Promise<void>((resolve) => {
      const t = setTimeout(done, ms);
      t.unref();
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.catchUpWaiters.push(done);
    });
  }
}

/** The first usable key of each kid in a JWKS document. */
function keysOf(doc: unknown): Map<string, KeyObject> {
  const out = new Map<string, KeyObject>();
  for (const [kid, entries] of parseJwks(doc, undefined, 'Mayfly JWKS')) {
    const first = entries[0];
    if (first) out.set(kid, first.key);
  }
  return out;
}

/** jti, tid and parent tid from a decoded, not yet verified payload; null if they are not strings. */
/** `mayfly.parent_tid` when it is a string (a delegated task's parent, revoked with it), else null. */
function parentTaskOf(p: Record<string, unknown>): string | null {
  const m = p['mayfly'];
  if (typeof m !== 'object' || m === null) return null;
  const parent = (m as Record<string, unknown>)['parent_tid'];
  return typeof parent === 'string' ? parent : null;
}

/**
 * The verified-token cache key of a token: its signature segment. Hashing it
 * (for the lookup every call makes, and the insertion after a first-time
 * verify) costs a fraction of hashing the whole token, and a fresh string
 * arrives with every request; a hit still requires the whole token string to
 * match (`VerifiedEntry.token`). Empty for what cannot be a compact JWS.
 */
function cacheKeyOf(token: string): string {
  if (typeof token !== 'string') return '';
  // Two forward scans: String.prototype.indexOf is a fast builtin, lastIndexOf a runtime call that cost
  // several times more on a 600-character token. What follows the second dot; '' with fewer than two dots.
  const a = token.indexOf('.');
  const b = a < 0 ? -1 : token.indexOf('.', a + 1);
  return b < 0 ? '' : token.slice(b + 1);
}

/** A token that passed signature and claim checks, and what the per-call checks need. */
interface VerifiedEntry {
  /** The exact token string that was verified. */
  token: string;
  /** The claims, frozen; null between a first-time verify and the token's next use (see `check`): then re-parsed from `token`. */
  claims: MayflyClaims | null;
  exp: number;
  kid: string;
  /** The key that verified it: a cached entry counts only while the kid still resolves to this key. */
  key: KeyObject;
  parent: string | null;
  /** The client certificate last seen to match cnf x5t#S256 (DER), or null. */
  certDer: Buffer | null;
}

/**
 * Freezes an object fresh from JSON.parse and every object in it. Such a
 * value is a tree of objects no one else holds (no cycles, nothing already
 * frozen), so there is no Object.isFrozen check per node: it cost more than
 * the freezing.
 */
function deepFreeze<T extends object>(v: T): T {
  Object.freeze(v);
  // for-in over JSON.parse's own (plain, prototype-free of enumerables) objects walks the enum cache; Object.values made an array per object.
  for (const k in v) {
    const x = (v as Record<string, unknown>)[k];
    if (typeof x === 'object' && x !== null) deepFreeze(x);
  }
  return v;
}

const warned = new Set<string>();
/** Emits a process warning once per message: the loud part of the dangerous opt-outs. */
function warnOnce(message: string): void {
  if (warned.has(message)) return;
  warned.add(message);
  process.emitWarning(`MayflyVerifier: ${message}`, { code: 'MAYFLY_INSECURE_VERIFIER_OPTION' });
}
