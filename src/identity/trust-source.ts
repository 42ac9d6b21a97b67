/**
 * Where verifiers get trust anchors from. Like go-spiffe's bundle sources,
 * each verifier depends on a one-method interface, and a static source and a
 * live (bundle endpoint) source both implement it. RefreshingTrustSource
 * fetches through net/remote-document.ts, like every remote key source.
 */
import { createHash, type KeyObject, type X509Certificate } from 'node:crypto';
import { mayflyError, type MayflyError } from '../core/errors.js';
import type { Clock } from '../core/ports.js';
import { RemoteDocument, type FetchLike } from '../net/remote-document.js';
import { MAX_BUNDLE_BYTES, bundleFingerprint, parseJwksBundle, type TrustBundle } from './trust-bundle.js';
import { parseTrustDomain } from './spiffe-id.js';

/** X.509 authorities per trust domain; undefined when the trust domain is unknown. */
export interface X509BundleSource {
  x509BundleFor(trustDomain: string): readonly X509Certificate[] | undefined;
}

/** JWT-SVID signing keys (by kid) per trust domain; undefined when the trust domain is unknown. */
export interface JwtBundleSource {
  jwtAuthoritiesFor(trustDomain: string): ReadonlyMap<string, KeyObject> | undefined;
}

/** A source that can list the trust domains it serves (for TLS `ca` and diagnostics). */
export interface TrustDomainLister {
  trustDomains(): string[];
}

export type TrustSource = X509BundleSource & JwtBundleSource & TrustDomainLister;

/** Bundles fixed at construction, one per trust domain and never mixed (Trust Domain and Bundle §6.4). */
export class StaticTrustSource implements TrustSource {
  private readonly bundles = new Map<string, TrustBundle>();

  constructor(bundles: Iterable<TrustBundle>) {
    for (const b of bundles) {
      if (this.bundles.has(b.trustDomain)) {
        throw mayflyError('ERR_CONFIG_INVALID', `trust domain ${b.trustDomain} is configured more than once; merge its authorities into one bundle`, { trustDomain: b.trustDomain });
      }
      this.bundles.set(b.trustDomain, b);
    }
  }

  x509BundleFor(trustDomain: string): readonly X509Certificate[] | undefined {
    return this.bundles.get(trustDomain)?.x509Authorities;
  }

  jwtAuthoritiesFor(trustDomain: string): ReadonlyMap<string, KeyObject> | undefined {
    return this.bundles.get(trustDomain)?.jwtAuthorities;
  }

  trustDomains(): string[] {
    return [...this.bundles.keys()];
  }
}

/** Several sources (static files, bundle endpoints) behind one; each trust domain must come from exactly one of them. */
export class CompositeTrustSource implements TrustSource {
  constructor(private readonly sources: readonly TrustSource[]) {
    const seen = new Set<string>();
    for (const s of sources) {
      for (const td of s.trustDomains()) {
        if (seen.has(td)) throw mayflyError('ERR_CONFIG_INVALID', `trust domain ${td} is served by more than one trust source`, { trustDomain: td });
        seen.add(td);
      }
    }
  }

  x509BundleFor(trustDomain: string): readonly X509Certificate[] | undefined {
    for (const s of this.sources) {
      const b = s.x509BundleFor(trustDomain);
      if (b) return b;
    }
    return undefined;
  }

  jwtAuthoritiesFor(trustDomain: string): ReadonlyMap<string, KeyObject> | undefined {
    for (const s of this.sources) {
      const b = s.jwtAuthoritiesFor(trustDomain);
      if (b) return b;
    }
    return undefined;
  }

  trustDomains(): string[] {
    return this.sources.flatMap((s) => s.trustDomains());
  }
}

/** Every X.509 root of every trust domain as PEM, deduplicated, for a TLS server's `ca` option. */
export function allTrustDomainRootsPem(source: X509BundleSource & TrustDomainLister): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const td of source.trustDomains()) {
    for (const cert of source.x509BundleFor(td) ?? []) {
      const fp = createHash('sha256').update(cert.raw).digest('hex');
      if (seen.has(fp)) continue;
      seen.add(fp);
      out.push(cert.toString());
    }
  }
  return out;
}

export interface RefreshingTrustSourceOptions {
  /** The trust domain the endpoint speaks for; bound by configuration (Trust Domain and Bundle §5). */
  trustDomain: string;
  /** Bundle endpoint URL; must be https (Trust Domain and Bundle §5). */
  url: string;
  /** CA certificate(s) that authenticate the endpoint's TLS certificate; replaces the system roots. */
  caPem?: string | string[];
  /** Injected fetch; takes precedence over caPem. Defaults to global fetch (system roots). */
  fetch?: FetchLike;
  /** Fixed refresh interval; when unset, the bundle's refresh hint, else 5 minutes (§6.2). */
  refreshIntervalMs?: number;
  /** Delay before retrying after a failed fetch; defaults to min(interval, 30 s). */
  retryIntervalMs?: number;
  /** Per-request timeout; default 10 s. */
  timeoutMs?: number;
  /** Served until the first successful fetch (for example the bundle from an offline exchange, §5.2.2). */
  initialBundle?: TrustBundle;
  clock?: Clock;
  onUpdate?: (bundle: TrustBundle, version: number) => void;
  onError?: (err: MayflyError) => void;
}

// Trust Domain and Bundle §6.2: without a hint, clients should default to a low interval such as five minutes.
// §4.1.2: the hint is advisory; it is clamped so a hint of 0 cannot turn into a busy loop.
const BUNDLE_REFRESH_BOUNDS = { minMs: 1_000, maxMs: 24 * 3600_000, defaultMs: 5 * 60_000 };
const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * A bundle endpoint client for one trust domain. Keeps serving the last good
 * bundle when the endpoint fails: an outage of a federated endpoint must not
 * become an outage of authentication (the old roots stay valid until they
 * are rotated out and a fetch succeeds).
 */
export class RefreshingTrustSource implements TrustSource {
  readonly trustDomain: string;
  private readonly doc: RemoteDocument<TrustBundle>;
  private current: TrustBundle | undefined;
  private fingerprint: string | undefined;
  private versionN = 0;
  private closed = false;

  constructor(private readonly options: RefreshingTrustSourceOptions) {
    try {
      this.trustDomain = parseTrustDomain(options.trustDomain);
    } catch (cause) {
      throw mayflyError('ERR_CONFIG_INVALID', `bundle endpoint: ${(cause as Error).message}`, undefined, cause);
    }
    let u: URL;
    try {
      u = new URL(options.url);
    } catch (cause) {
      throw mayflyError('ERR_CONFIG_INVALID', `bundle endpoint URL for ${this.trustDomain} is not a URL`, { trustDomain: this.trustDomain }, cause);
    }
    // §5: the bundle endpoint MUST be TLS-protected; plain http would let anyone on path mint identities.
    if (u.protocol !== 'https:') throw mayflyError('ERR_CONFIG_INVALID', `bundle endpoint URL for ${this.trustDomain} must use https`, { trustDomain: this.trustDomain });
    for (const [name, v] of [
      ['refreshIntervalMs', options.refreshIntervalMs],
      ['retryIntervalMs', options.retryIntervalMs],
      ['timeoutMs', options.timeoutMs],
    ] as const) {
      if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw mayflyError('ERR_CONFIG_INVALID', `bundle endpoint ${name} must be a positive number of milliseconds`, { field: name });
    }
    if (options.initialBundle && options.initialBundle.trustDomain !== this.trustDomain) {
      throw mayflyError('ERR_CONFIG_INVALID', `initial bundle is for ${options.initialBundle.trustDomain}, not ${this.trustDomain}`, { trustDomain: this.trustDomain });
    }
    const url = u.toString();
    this.doc = new RemoteDocument<TrustBundle>({
      name: `bundle endpoint for ${this.trustDomain}`,
      load: async (get) => this.checkSequence(parseJwksBundle(this.trustDomain, await get(url))),
      ...(options.fetch ? { fetchImpl: options.fetch } : {}),
      ...(options.caPem ? { ca: options.caPem } : {}),
      redirect: 'error',
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      maxBytes: MAX_BUNDLE_BYTES,
      background: true,
      ...(options.refreshIntervalMs !== undefined ? { intervalMs: options.refreshIntervalMs } : {}),
      ...(options.retryIntervalMs !== undefined ? { retryMs: options.retryIntervalMs } : {}),
      hintMs: (b) => (b.refreshHintSeconds !== undefined ? b.refreshHintSeconds * 1000 : undefined),
      bounds: BUNDLE_REFRESH_BOUNDS,
      ...(options.clock ? { clock: options.clock } : {}),
      onUpdate: (b) => this.accept(b),
      ...(options.onError ? { onError: options.onError } : {}),
    });
    if (options.initialBundle) this.accept(options.initialBundle);
  }

  /** Increments whenever the served bundle changes (0 before any bundle). */
  get version(): number {
    return this.versionN;
  }

  /** The bundle being served, if any. */
  get bundle(): TrustBundle | undefined {
    return this.current;
  }

  /** The error of the most recent failed fetch; cleared by a successful one. */
  get lastError(): MayflyError | undefined {
    return this.doc.lastError;
  }

  /** When the endpoint last answered with a valid bundle (epoch ms). */
  get lastSuccessAt(): number | undefined {
    return this.doc.lastSuccessAt;
  }

  /** When the next background fetch is due (epoch ms by the injected clock); undefined when none is scheduled. */
  get nextRefreshAt(): number | undefined {
    return this.doc.nextRefreshAt;
  }

  /** Fetches once and starts the refresh timer; rejects if there is still no bundle to serve (the timer keeps retrying until close()). */
  async start(): Promise<void> {
    await this.refresh().catch(() => false);
    if (!this.current) throw this.doc.lastError ?? mayflyError('ERR_UNAVAILABLE', `no trust bundle for ${this.trustDomain}`);
  }

  /** Fetches the bundle now (single flight); resolves true if it changed. Failures keep the last good bundle and reject. */
  async refresh(): Promise<boolean> {
    if (this.closed) throw mayflyError('ERR_UNAVAILABLE', `trust source for ${this.trustDomain} is closed`);
    const before = this.versionN;
    await this.doc.refresh();
    return this.versionN !== before;
  }

  /** Stops refreshing; the last bundle is still served. */
  close(): void {
    this.closed = true;
    this.doc.close();
  }

  x509BundleFor(trustDomain: string): readonly X509Certificate[] | undefined {
    return trustDomain === this.trustDomain ? this.current?.x509Authorities : undefined;
  }

  jwtAuthoritiesFor(trustDomain: string): ReadonlyMap<string, KeyObject> | undefined {
    return trustDomain === this.trustDomain ? this.current?.jwtAuthorities : undefined;
  }

  trustDomains(): string[] {
    return [this.trustDomain];
  }

  /** §4.1.1: the sequence is monotonic; an older one is a stale replica or a rollback, not an update. */
  private checkSequence(bundle: TrustBundle): TrustBundle {
    if (this.current?.sequence !== undefined && bundle.sequence !== undefined && bundle.sequence < this.current.sequence) {
      throw mayflyError('ERR_UNAVAILABLE', `bundle endpoint for ${this.trustDomain} served sequence ${bundle.sequence}, older than ${this.current.sequence}`, { trustDomain: this.trustDomain });
    }
    return bundle;
  }

  private accept(bundle: TrustBundle): void {
    const fp = bundleFingerprint(bundle);
    if (fp === this.fingerprint) return;
    this.current = bundle;
    this.fingerprint = fp;
    this.versionN++;
    this.options.onUpdate?.(bundle, this.versionN);
  }
}
