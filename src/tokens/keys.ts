/**
 * Signing-key lifecycle: next → active → retiring → retired (or revoked).
 *
 * - next: published in the JWKS but not signing, for at least `prePublishMs`
 *   (≥ the JWKS Cache-Control max-age), so every verifier has it before the
 *   first token signed with it exists.
 * - active: exactly one signs.
 * - retiring: no longer signs; published until every token it signed has
 *   expired, plus clock skew.
 * - retired: gone from the JWKS. revoked: gone at once (emergency).
 *
 * Promotion of next also waits for a gate (live feed subscribers having
 * acknowledged a key set containing it) up to `maxPromotionWaitMs`.
 *
 * Several replicas sharing one KeyStore (PostgreSQL): pass `cluster`. Every
 * change to the lifecycle then runs under the cluster's lifecycle lock, after
 * re-reading the key set, so one replica at a time creates, promotes, retires
 * or revokes; the others `sync()` (on their lifecycle tick and whenever the
 * store notifies a change) and so publish a next key long before anyone may
 * promote it (pre-publication ≥ JWKS max-age ≫ sync interval). How long
 * promotion has been held back is measured from when it became due, a fact
 * of the shared key set, so it is the same whichever replica holds the lock.
 * See docs/clustering.md.
 */
import { createHash, createPublicKey, type KeyObject, type JsonWebKey } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import type { Clock, KeyStore, Signer } from '../core/ports.js';
import type { KeyInfo, KeyState, SigningAlg } from '../core/types.js';

export interface KeyManagerOptions {
  alg: SigningAlg;
  /** How long a key signs before the next one takes over. */
  rotationPeriodMs: number;
  /** Minimum time a next key is published before it may sign. */
  prePublishMs: number;
  /** Clock skew allowed by verifiers; retiring keys stay published this much longer. */
  skewMs: number;
  /** Longest promotion waits for laggard subscribers to acknowledge. */
  maxPromotionWaitMs: number;
  /** Set when several replicas share the KeyStore. */
  cluster?: KeyLifecycleLock;
}

/** Result of asking whether live consumers hold a key set containing `kid`. */
export interface PromotionGate {
  (kid: string): { ready: boolean; laggards: string[] } | Promise<{ ready: boolean; laggards: string[] }>;
}

/**
 * Finishes the emergency revocation of a revoked key beyond the key set: its
 * tokens and the feed (KeyAdministration.finishRevocation). Must be
 * idempotent: the lifecycle calls it for every revoked key on every tick.
 */
export type RevocationFinisher = (kid: string) => Promise<void>;

/** Where a key change came from: this broker, or another replica seen by `sync()`. */
export type ChangeOrigin = 'local' | 'cluster';

/** The cluster-wide lifecycle lock of a shared KeyStore (PostgresKeyStore.lock). */
export interface KeyLifecycleLock {
  lock<T>(fn: () => Promise<T>, wait: boolean): Promise<{ ran: true; value: T } | { ran: false }>;
}

export interface KeyManagerEvents {
  /** The published key set changed (a key was added, retired or revoked), here or (origin cluster) on another replica. */
  onKeySetChange?(version: string, jwksJson: string, origin: ChangeOrigin): void;
  /** A key changed state, here or (origin cluster) on another replica. */
  onStateChange?(info: KeyInfo, from: KeyState | null, origin: ChangeOrigin): void;
  /** Promotion is being held back by laggards (called once per tick while blocked). */
  onPromotionDelayed?(nextKid: string, laggards: string[], waitedMs: number): void;
}

export interface ActiveKey {
  info: KeyInfo;
  signer: Signer;
  publicKey: KeyObject;
}

export interface JwksDocument {
  /** Serialized `{"keys":[...]}`. */
  json: string;
  /** Stable short hash of the published kids; changes whenever the set changes. */
  version: string;
  kids: string[];
}

const PUBLISHED: readonly KeyState[] = ['next', 'active', 'retiring'];

export class KeyManager {
  private keys = new Map<string, KeyInfo>();
  private publicKeys = new Map<string, KeyObject>();
  private activeKey: ActiveKey | null = null;
  private jwksDoc: JwksDocument = { json: '{"keys":[]}', version: '', kids: [] };
  private blockedSince: number | null = null;
  private gate: PromotionGate | null = null;
  private finisher: RevocationFinisher | null = null;
  /** Exclusive sections of this process run one after another (the cluster lock keeps other replicas out). */
  private exclusiveTail: Promise<unknown> = Promise.resolve();
  private ticking: Promise<void> | null = null;
  private syncing: Promise<void> | null = null;

  constructor(
    private readonly store: KeyStore,
    private readonly clock: Clock,
    private readonly options: KeyManagerOptions,
    private readonly events: KeyManagerEvents = {},
  ) {}

  /** Loads keys and makes sure there is an active and a next key. */
  async init(): Promise<void> {
    await this.exclusive(() => this.initLocked(), true);
    await this.refresh('local');
    await this.advance(false);
  }

  private async initLocked(): Promise<void> {
    this.keys.clear();
    for (const k of await this.store.list()) this.keys.set(k.kid, k);
    const now = this.clock.now();
    if (![...this.keys.values()].some((k) => k.state === 'active')) {
      const next = this.byState('next')[0];
      if (next) {
        // Resume: a next key exists but nothing signs (e.g. crash mid-promotion). Promote it now.
        await this.setState(next, 'active', now);
      } else {
        // First start: nothing was ever signed, so no pre-publication is needed.
        const k = await this.store.create(this.options.alg, 'active', now);
        this.keys.set(k.kid, k);
        this.events.onStateChange?.(k, null, 'local');
      }
    }
  }

  /**
   * Runs `fn` alone in the cluster (under the lifecycle lock, after re-reading
   * the shared key set), or just runs it on a single broker. Without `wait`,
   * returns false when another replica holds the lock (after syncing with it).
   * Within this process, exclusive sections never overlap either: a
   * lifecycle run never interleaves with a revocation taking place here.
   */
  private exclusive(fn: () => Promise<void>, wait: boolean): Promise<boolean> {
    const run = this.exclusiveTail.then(() => this.exclusiveNow(fn, wait));
    this.exclusiveTail = run.catch(() => undefined);
    return run;
  }

  private async exclusiveNow(fn: () => Promise<void>, wait: boolean): Promise<boolean> {
    const cluster = this.options.cluster;
    if (!cluster) {
      await fn();
      return true;
    }
    const r = await cluster.lock(async () => {
      await this.sync();
      await fn();
    }, wait);
    if (!r.ran) await this.sync();
    return r.ran;
  }

  /**
   * Re-reads the key set from the store and adopts other replicas' changes
   * (new keys, state changes): the JWKS and the signing key follow at once.
   * A no-op on a single broker's own store apart from the re-read.
   */
  async sync(): Promise<void> {
    if (this.syncing) return this.syncing;
    this.syncing = this.doSync().finally(() => {
      this.syncing = null;
    });
    return this.syncing;
  }

  private async doSync(): Promise<void> {
    let changed = false;
    for (const k of await this.store.list()) {
      const mine = this.keys.get(k.kid);
      if (!mine) {
        this.keys.set(k.kid, k);
        this.events.onStateChange?.(k, null, 'cluster');
        changed = true;
      } else if (mine.state !== k.state || mine.stateSince !== k.stateSince) {
        const from = mine.state;
        mine.state = k.state;
        mine.stateSince = k.stateSince;
        this.events.onStateChange?.(mine, from, 'cluster');
        changed = true;
      }
      if (mine && (mine.lastTokenExpiresAt ?? 0) < (k.lastTokenExpiresAt ?? 0)) mine.lastTokenExpiresAt = k.lastTokenExpiresAt;
    }
    if (changed && this.byState('active')[0]) await this.refresh('cluster');
  }

  /** Installs the gate that promotion waits on (the revocation feed's acknowledgements). */
  setPromotionGate(gate: PromotionGate | null): void {
    this.gate = gate;
  }

  /**
   * Installs what finishes a key revocation after the key set changed (see
   * revoke()). Every tick() that runs the lifecycle (under the lifecycle
   * lock in a cluster) calls it, last, for every revoked key, so a revocation whose broker died
   * between the key's state and its tokens is finished by whichever broker
   * runs the lifecycle next, with no operator action.
   */
  setRevocationFinisher(finisher: RevocationFinisher | null): void {
    this.finisher = finisher;
  }

  /** The key that signs now. Synchronous: on the issuance hot path. */
  active(): ActiveKey {
    if (!this.activeKey) throw mayflyError('ERR_KEYSTORE', 'no active signing key');
    return this.activeKey;
  }

  /** Records that `kid` signed a token valid until `exp` (keeps the key published until then). */
  noteTokenExpiry(kid: string, exp: number): void {
    const k = this.keys.get(kid);
    if (k && (k.lastTokenExpiresAt ?? 0) < exp) k.lastTokenExpiresAt = exp;
    this.store.noteTokenExpiry(kid, exp);
  }

  /** Public key for a published kid (next, active or retiring), else undefined. */
  publicKey(kid: string): KeyObject | undefined {
    return this.publicKeys.get(kid);
  }

  /** State of a kid this broker knows, including retired and revoked ones. */
  stateOf(kid: string): KeyState | undefined {
    return this.keys.get(kid)?.state;
  }

  /** The published JWKS document. */
  jwks(): JwksDocument {
    return this.jwksDoc;
  }

  /** All keys with their lifecycle state. */
  list(): KeyInfo[] {
    return [...this.keys.values()].sort((a, b) => a.createdAt - b.createdAt);
  }

  /** Whether promotion is currently held back by laggards, and since when. */
  promotionBlockedSince(): number | null {
    return this.blockedSince;
  }

  /** Whether the active key is older than its rotation period plus the maximum promotion wait. */
  overdue(now = this.clock.now()): boolean {
    const a = this.activeKey?.info;
    return !!a && now - a.stateSince > this.options.rotationPeriodMs + this.options.maxPromotionWaitMs + this.options.prePublishMs;
  }

  /**
   * Requests a rotation: the next key is promoted as soon as it has been
   * published long enough (and the gate allows). The request is kept in the
   * KeyStore, so on a shared key set whichever replica runs the lifecycle
   * completes it, also after this one dies.
   */
  async rotate(): Promise<void> {
    // A replica that has not seen the latest promotion would ask to rotate away from a key that no longer signs.
    if (this.options.cluster) await this.sync();
    await this.store.requestRotation(this.active().info.kid, this.clock.now());
    // In a cluster, wait for the lifecycle lock rather than skip the run when another replica holds it:
    // the answer then says whether promotion happened or is held back (promotionBlockedSince).
    if (this.options.cluster) await this.exclusive(() => this.doTick(), true);
    else await this.advance(false);
  }

  /**
   * Emergency: removes `kid` from the JWKS at once and, if it was signing,
   * promotes a replacement immediately (skipping pre-publication: verifiers
   * learn the new set from the feed, JWKS pollers on the unknown kid).
   * `then` (the revocation of the key's tokens) runs right after, still
   * under the lifecycle lock, so a lifecycle run elsewhere never finishes
   * the same revocation concurrently; it runs also when the key was revoked
   * already (a re-run).
   */
  async revoke(kid: string, then?: () => Promise<void>): Promise<KeyInfo> {
    await this.exclusive(async () => {
      await this.revokeLocked(kid);
      await then?.();
    }, true);
    await this.advance(false);
    return this.keys.get(kid)!;
  }

  private async revokeLocked(kid: string): Promise<void> {
    const info = this.keys.get(kid);
    if (!info) throw mayflyError('ERR_KEY_NOT_FOUND', `no key with kid ${kid}`);
    if (info.state === 'revoked') return;
    const now = this.clock.now();
    const wasActive = info.state === 'active';
    await this.setState(info, 'revoked', now);
    if (wasActive) {
      const next = this.byState('next')[0];
      if (next) await this.setState(next, 'active', now);
      else {
        const k = await this.store.create(this.options.alg, 'active', now);
        this.keys.set(k.kid, k);
        this.events.onStateChange?.(k, null, 'local');
      }
    }
    await this.refresh('local');
  }

  /**
   * Advances the lifecycle, then finishes unfinished revocations (see
   * setRevocationFinisher). Safe to call often; concurrent calls share one
   * run. In a cluster, only the replica that gets the lifecycle lock acts;
   * the others sync.
   */
  async tick(): Promise<void> {
    return this.advance(true);
  }

  /**
   * tick(), for the lifecycle's own callers (start, rotate, revoke) with
   * `finish` false: they do not depend on the token store, so a store that
   * is down fails only the periodic run, which retries.
   */
  private advance(finish: boolean): Promise<void> {
    if (this.ticking) return this.ticking;
    this.ticking = this.exclusive(async () => {
      await this.doTick();
      if (finish && this.finisher) for (const k of this.byState('revoked')) await this.finisher(k.kid);
    }, false).then(() => undefined).finally(() => {
      this.ticking = null;
    });
    return this.ticking;
  }

  private async doTick(): Promise<void> {
    const now = this.clock.now();
    let changed = false;
    for (const k of this.byState('retiring')) {
      const lastUse = Math.max(k.lastTokenExpiresAt ?? 0, k.stateSince);
      if (lastUse + this.options.skewMs <= now) {
        await this.setState(k, 'retired', now);
        changed = true;
      }
    }
    let next = this.byState('next')[0];
    if (!next) {
      next = await this.store.create(this.options.alg, 'next', now);
      this.keys.set(next.kid, next);
      this.events.onStateChange?.(next, null, 'local');
      changed = true;
    }
    const active = this.byState('active')[0];
    const request = active ? await this.store.rotationRequest() : null;
    const requested = request !== null && request.kid === active?.kid;
    const due = !active || requested || now - active.stateSince >= this.options.rotationPeriodMs;
    const published = now - next.stateSince >= this.options.prePublishMs;
    if (due && published) {
      const verdict = this.gate ? await this.gate(next.kid) : { ready: true, laggards: [] };
      if (!verdict.ready && this.blockedSince === null) {
        // In a cluster another replica may have been waiting already (or have taken the rotation request
        // and died): count from when promotion became due, a fact of the shared key set.
        const periodDue = active ? active.stateSince + this.options.rotationPeriodMs : now;
        const dueSince = requested ? Math.min(request.at, periodDue) : periodDue;
        this.blockedSince = this.options.cluster ? Math.min(now, Math.max(next.stateSince + this.options.prePublishMs, dueSince)) : now;
      }
      const waited = this.blockedSince === null ? 0 : now - this.blockedSince;
      if (verdict.ready || waited >= this.options.maxPromotionWaitMs) {
        if (active) await this.setState(active, 'retiring', now);
        await this.setState(next, 'active', now);
        this.blockedSince = null;
        const fresh = await this.store.create(this.options.alg, 'next', now);
        this.keys.set(fresh.kid, fresh);
        this.events.onStateChange?.(fresh, null, 'local');
        changed = true;
      } else {
        this.events.onPromotionDelayed?.(next.kid, verdict.laggards, waited);
      }
    }
    if (changed) await this.refresh('local');
  }

  private byState(state: KeyState): KeyInfo[] {
    return [...this.keys.values()].filter((k) => k.state === state).sort((a, b) => a.stateSince - b.stateSince);
  }

  private async setState(info: KeyInfo, state: KeyState, now: number): Promise<void> {
    const from = info.state;
    await this.store.setState(info.kid, state, now);
    info.state = state;
    info.stateSince = now;
    this.events.onStateChange?.(info, from, 'local');
  }

  private async refresh(origin: ChangeOrigin): Promise<void> {
    this.publicKeys.clear();
    const published: Record<string, string>[] = [];
    for (const k of this.list()) {
      if (!PUBLISHED.includes(k.state)) continue;
      const all: Record<string, string> = { ...k.publicJwk, kid: k.kid, alg: k.alg, use: 'sig' };
      delete all['d'];
      // Members in a fixed order: every replica of a cluster serves byte-identical JWKS (same ETag behind a load balancer).
      const jwk: Record<string, string> = {};
      for (const m of Object.keys(all).sort()) jwk[m] = all[m]!;
      this.publicKeys.set(k.kid, createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }));
      published.push(jwk);
    }
    const active = this.byState('active')[0];
    if (!active) throw mayflyError('ERR_KEYSTORE', 'no active signing key after refresh');
    if (this.activeKey?.info.kid !== active.kid) {
      this.activeKey = { info: active, signer: await this.store.signer(active.kid), publicKey: this.publicKeys.get(active.kid)! };
    } else {
      this.activeKey.info = active;
    }
    const kids = published.map((k) => k['kid']!).sort();
    const version = createHash('sha256').update(kids.join(',')).digest('hex').slice(0, 16);
    const prev = this.jwksDoc.version;
    this.jwksDoc = { json: JSON.stringify({ keys: published }), version, kids };
    if (prev !== version) this.events.onKeySetChange?.(version, this.jwksDoc.json, origin);
  }
}
