/**
 * The one way Mayfly keeps a remote document fresh: OIDC issuer keys
 * (identity/jwks-source.ts), SPIFFE bundle endpoints (identity/trust-source.ts)
 * and the broker's JWKS in the verifier SDK (verifier/verifier.ts) all use
 * `RemoteDocument`.
 *
 * It lives in net/, not identity/, because the verifier SDK may not import
 * the broker's identity code; and not in core/, which holds ports and types
 * and does no I/O. It imports only core.
 *
 * What it guarantees to every user:
 * - single flight: concurrent refreshes share one load;
 * - on-demand refreshes (an unknown kid) are rate-limited to one per
 *   `minRefreshIntervalMs`, so attacker-chosen kids cannot hammer the origin;
 * - every request is bounded by `timeoutMs` (an AbortSignal plus a timer, so
 *   even a fetch that ignores the signal cannot stall callers) and by
 *   `maxBytes`;
 * - stale on error: a failed load keeps the last good value and is reported;
 * - background refresh at a fixed interval, or the document's own hint, or
 *   its Cache-Control max-age, bounded to [min, max]; sooner after a failure;
 * - HTTPS with a custom CA through `httpsFetch` (Node 20's global fetch cannot
 *   take one).
 *
 * jose's createRemoteJWKSet was considered and not used: it covers JWKS only
 * (not SPIFFE bundles, whose X.509 authorities are not JWS keys), refreshes on
 * a fixed cache age rather than Cache-Control or a bundle's refresh hint, and
 * hands out keys for jose's WebCrypto verify, which `npm run bench` measures
 * slower than node:crypto KeyObjects.
 */
import { request as httpsRequest } from 'node:https';
import { systemClock } from '../core/clock.js';
import { isMayflyError, mayflyError, type MayflyError } from '../core/errors.js';
import type { Clock } from '../core/ports.js';

/** The subset of a fetch Response read here. */
export interface FetchResponseLike {
  ok: boolean;
  status: number;
  /** Absent when the transport has none to give; then no Cache-Control applies. */
  headers?: { get(name: string): string | null };
  text(): Promise<string>;
}

export interface FetchInit {
  signal: AbortSignal;
  headers: Record<string, string>;
  redirect: 'error' | 'follow';
}

/** The subset of `fetch` needed here; the global fetch fits. Inject one for tests or custom transports. */
export type FetchLike = (url: string, init: FetchInit) => Promise<FetchResponseLike>;

/** PEM CA certificate(s) that replace the system roots for one origin. */
export type CaOption = string | Buffer | Array<string | Buffer>;

/** Background refresh bounds, ms. */
export interface RefreshBounds {
  minMs: number;
  maxMs: number;
  /** Without an interval, a hint or a Cache-Control max-age. */
  defaultMs: number;
}

export const DEFAULT_REFRESH_BOUNDS: Readonly<RefreshBounds> = Object.freeze({ minMs: 60_000, maxMs: 3_600_000, defaultMs: 300_000 });
const DEFAULT_TIMEOUT_MS = 3_000;
const DEFAULT_MIN_REFRESH_MS = 30_000;
const DEFAULT_MAX_BYTES = 512 * 1024;
/** A failed load is retried after min(the success delay, this). */
const MAX_RETRY_MS = 30_000;

/** A GET over node:https that trusts `ca` (or the system roots), refuses other schemes and bodies over `maxBytes`. */
export function httpsFetch(options: { ca?: CaOption; maxBytes?: number } = {}): FetchLike {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  return (url, init) =>
    new Promise<FetchResponseLike>((resolve, reject) => {
      const u = new URL(url);
      if (u.protocol !== 'https:') {
        reject(new Error(`only https is fetched here, got ${u.protocol}`));
        return;
      }
      // node:https never follows redirects, which is what `redirect: 'error'` asks for; 3xx is then just not ok.
      const req = httpsRequest(u, { method: 'GET', headers: init.headers, ca: options.ca, signal: init.signal }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxBytes) res.destroy(new Error(`response exceeds ${maxBytes} bytes`));
          else chunks.push(c);
        });
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          resolve({
            ok: status >= 200 && status < 300,
            status,
            headers: {
              get: (name) => {
                const v = res.headers[name.toLowerCase()];
                return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
              },
            },
            text: async () => body,
          });
        });
      });
      req.on('error', reject);
      req.end();
    });
}

/** Cache-Control max-age in ms, or undefined when the header has none. */
export function cacheControlMaxAgeMs(cacheControl: string | null | undefined): number | undefined {
  const m = cacheControl ? /(?:^|,)\s*max-age\s*=\s*"?(\d+)"?/i.exec(cacheControl) : null;
  return m ? Number(m[1]) * 1000 : undefined;
}

/**
 * When to refresh after a successful load: a fixed interval as configured;
 * else the document's hint, else its Cache-Control max-age, else the default,
 * bounded to [minMs, maxMs] (so a hint of 0 can never become a busy loop).
 */
export function refreshDelayMs(o: { intervalMs?: number | undefined; hintMs?: number | undefined; cacheControl?: string | null | undefined; bounds?: RefreshBounds }): number {
  if (o.intervalMs !== undefined) return o.intervalMs;
  const b = o.bounds ?? DEFAULT_REFRESH_BOUNDS;
  const ms = o.hintMs ?? cacheControlMaxAgeMs(o.cacheControl) ?? b.defaultMs;
  return Math.min(b.maxMs, Math.max(b.minMs, ms));
}

/** Parses a fetched JSON document; ERR_UNAVAILABLE when it is not JSON. */
export function parseJsonDocument(text: string, subject: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw mayflyError('ERR_UNAVAILABLE', `${subject} is not JSON`);
  }
}

/** The bounded GET handed to a loader: resolves to the body text; `what` names the document in messages. */
export type BoundedGet = (url: string, what?: string) => Promise<string>;

export interface RemoteDocumentOptions<T> {
  /** Names the origin in messages, e.g. "bundle endpoint for example.org". */
  name: string;
  /** Fetches (through `get`) and parses the document; throw a MayflyError to refuse what came back. */
  load: (get: BoundedGet) => Promise<T>;
  /** Injected fetch; takes precedence over `ca`. Default: `httpsFetch({ca})` with a CA, else the global fetch. */
  fetchImpl?: FetchLike;
  ca?: CaOption;
  /** Default 'follow' (as fetch does). */
  redirect?: 'error' | 'follow';
  /** Per request, ms (default 3000). */
  timeoutMs?: number;
  /** Largest body accepted, bytes (default 512 KiB). */
  maxBytes?: number;
  /** On-demand refreshes (`refreshIfAllowed`) at most this often, ms (default 30 000). */
  minRefreshIntervalMs?: number;
  /** Refresh on a timer after each load (default false). */
  background?: boolean;
  /** Fixed background interval, ms; not bounded. */
  intervalMs?: number;
  /** The document's own refresh hint, ms (a SPIFFE bundle's spiffe_refresh_hint). */
  hintMs?: (value: T) => number | undefined;
  /** Bounds for hint and Cache-Control (default 60 s to 1 h, 5 min without either). */
  bounds?: RefreshBounds;
  /** Delay before the background retry after a failed load (default min(success delay, 30 s)). */
  retryMs?: number;
  clock?: Clock;
  /** Called with every successfully loaded value, before waiting callers resume. */
  onUpdate?: (value: T) => void;
  /** Called with every failed load; the value in use is unaffected. */
  onError?: (err: MayflyError) => void;
}

export interface RemoteDocumentStats {
  /** Loads attempted. */
  refreshes: number;
  /** Loads that failed. */
  failures: number;
  /** Individual GETs (a load may make several, e.g. discovery then JWKS). */
  httpRequests: number;
}

/** A remote document kept fresh: see the module comment for what it guarantees. */
export class RemoteDocument<T> {
  private current: T | undefined;
  private inflight: Promise<T> | null = null;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private lastErr: MayflyError | undefined;
  private lastOk: number | undefined;
  private lastCacheControl: string | null = null;
  private timer: NodeJS.Timeout | null = null;
  private nextAt: number | undefined;
  private closed = false;
  private readonly closeController = new AbortController();
  private readonly fetchImpl: FetchLike;
  private readonly clock: Clock;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly minRefreshMs: number;
  private readonly counts: RemoteDocumentStats = { refreshes: 0, failures: 0, httpRequests: 0 };

  constructor(private readonly o: RemoteDocumentOptions<T>) {
    this.timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxBytes = o.maxBytes ?? DEFAULT_MAX_BYTES;
    this.minRefreshMs = o.minRefreshIntervalMs ?? DEFAULT_MIN_REFRESH_MS;
    this.clock = o.clock ?? systemClock;
    this.fetchImpl = o.fetchImpl ?? (o.ca !== undefined ? httpsFetch({ ca: o.ca, maxBytes: this.maxBytes }) : (globalThis.fetch as unknown as FetchLike));
  }

  /** The last successfully loaded value (kept when later loads fail); undefined before the first. */
  get value(): T | undefined {
    return this.current;
  }

  /** The error of the most recent failed load; cleared by a successful one. */
  get lastError(): MayflyError | undefined {
    return this.lastErr;
  }

  /** When a load last succeeded (epoch ms, injected clock). */
  get lastSuccessAt(): number | undefined {
    return this.lastOk;
  }

  /** When the next background refresh is due (epoch ms); undefined when none is scheduled. */
  get nextRefreshAt(): number | undefined {
    return this.timer ? this.nextAt : undefined;
  }

  stats(): RemoteDocumentStats {
    return { ...this.counts };
  }

  /** True when a refresh is in flight (a caller may join it) or the rate limit allows a new one. */
  mayRefresh(): boolean {
    return this.inflight !== null || this.clock.now() - this.lastAttemptAt >= this.minRefreshMs;
  }

  /** Loads now, or joins the load in flight; not rate-limited. Rejects with the MayflyError of a failed load. */
  refresh(): Promise<T> {
    if (this.closed) return Promise.reject(mayflyError('ERR_UNAVAILABLE', `${this.o.name} is closed`));
    return this.inflight ?? this.startLoad();
  }

  /** For an unknown kid: joins the load in flight, or starts one unless rate-limited. Never throws. */
  async refreshIfAllowed(): Promise<'ok' | 'failed' | 'skipped'> {
    if (!this.mayRefresh()) return 'skipped';
    return this.refresh().then(
      () => 'ok' as const,
      () => 'failed' as const,
    );
  }

  /** Stops the background timer and aborts the request in flight. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.closeController.abort(new Error('closed'));
  }

  private startLoad(): Promise<T> {
    this.lastAttemptAt = this.clock.now();
    this.counts.refreshes++;
    let cacheControl: string | null = null;
    const get: BoundedGet = async (url, what) => {
      const res = await this.get(url, what ? `${this.o.name}: ${what}` : this.o.name);
      cacheControl = res.cacheControl;
      return res.text;
    };
    const p = this.o
      .load(get)
      .then(
        (value) => {
          this.current = value;
          this.lastErr = undefined;
          this.lastOk = this.clock.now();
          this.lastCacheControl = cacheControl;
          try {
            this.o.onUpdate?.(value);
          } catch (e) {
            this.report(mayflyError('ERR_INTERNAL', `${this.o.name}: update listener failed: ${(e as Error)?.message ?? String(e)}`, undefined, e));
          }
          this.schedule(this.successDelay());
          return value;
        },
        (e: unknown) => {
          this.counts.failures++;
          const err = isMayflyError(e) ? e : mayflyError('ERR_UNAVAILABLE', `${this.o.name} could not be loaded: ${(e as Error)?.message ?? String(e)}`, undefined, e);
          this.lastErr = err;
          this.report(err);
          this.schedule(this.o.retryMs ?? Math.min(this.successDelay(), MAX_RETRY_MS));
          throw err;
        },
      )
      .finally(() => {
        this.inflight = null;
      });
    this.inflight = p;
    return p;
  }

  private report(err: MayflyError): void {
    try {
      this.o.onError?.(err);
    } catch {
      // A broken reporter must never break the source.
    }
  }

  private successDelay(): number {
    const hintMs = this.current !== undefined ? this.o.hintMs?.(this.current) : undefined;
    return refreshDelayMs({ intervalMs: this.o.intervalMs, hintMs, cacheControl: this.lastCacheControl, ...(this.o.bounds ? { bounds: this.o.bounds } : {}) });
  }

  private schedule(delayMs: number): void {
    if (!this.o.background || this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.nextAt = this.clock.now() + delayMs;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.refresh().catch(() => undefined);
    }, delayMs);
    // A background refresh must never keep the process alive on its own.
    this.timer.unref();
  }

  /** One bounded GET: timeout (signal and timer), size cap, status check; every failure is ERR_UNAVAILABLE. */
  private async get(url: string, subject: string): Promise<{ text: string; cacheControl: string | null }> {
    this.counts.httpRequests++;
    const timedOut = (): MayflyError => mayflyError('ERR_UNAVAILABLE', `${subject} timed out after ${this.timeoutMs} ms`);
    const signal = AbortSignal.any([AbortSignal.timeout(this.timeoutMs), this.closeController.signal]);
    let timer: NodeJS.Timeout | undefined;
    // Belt and braces: a fetch that ignores the signal still cannot stall callers past the timeout.
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(timedOut()), this.timeoutMs);
    });
    const fetchOnce = async (): Promise<{ text: string; cacheControl: string | null }> => {
      let res: FetchResponseLike;
      try {
        res = await this.fetchImpl(url, { signal, headers: { accept: 'application/json' }, redirect: this.o.redirect ?? 'follow' });
      } catch (cause) {
        if (signal.aborted && !this.closeController.signal.aborted) throw timedOut();
        throw mayflyError('ERR_UNAVAILABLE', `${subject} failed: ${(cause as Error)?.message ?? 'unknown error'}`, undefined, cause);
      }
      if (!res.ok) throw mayflyError('ERR_UNAVAILABLE', `${subject} answered HTTP ${res.status}`, { status: res.status });
      let text: string;
      try {
        text = await res.text();
      } catch (cause) {
        throw mayflyError('ERR_UNAVAILABLE', `${subject}: body could not be read`, undefined, cause);
      }
      if (Buffer.byteLength(text) > this.maxBytes) throw mayflyError('ERR_UNAVAILABLE', `${subject} exceeds ${this.maxBytes} bytes`);
      return { text, cacheControl: res.headers?.get('cache-control') ?? null };
    };
    try {
      return await Promise.race([fetchOnce(), deadline]);
    } finally {
      clearTimeout(timer);
    }
  }
}
