/**
 * JWKS trust source for OIDC issuers: the one module in identity/ that does
 * I/O. Keys come from an explicit jwks_uri, from OIDC discovery, or from a
 * static JWKS (object or file, for air-gapped deployments).
 *
 * Behaviour that matters for availability and safety:
 * - an unknown kid triggers at most ONE refresh per call, shared by all
 *   concurrent callers (single flight) and rate-limited to one per
 *   `minRefreshIntervalMs`, so attacker-chosen kids cannot hammer the issuer;
 * - every fetch is bounded by `timeoutMs` (AbortSignal plus a timer, so even a
 *   fetchImpl that ignores the signal cannot stall callers);
 * - when the issuer is unreachable the last good key set keeps serving and
 *   the failure is reported through `onError`;
 * - symmetric keys, keys whose `use` is not `sig`, and keys whose `alg` does
 *   not match the token are never returned.
 */
import { readFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import type { KeyObject } from 'node:crypto';
import { isMayflyError, mayflyError, MayflyError } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import type { Clock } from '../core/ports.js';
import { isPlainObject, keyFitsAlg, publicKeyFromJwk } from '../tokens/jws.js';

/** The subset of a fetch Response this module reads. */
export interface FetchResponseLike {
  ok: boolean;
  status: number;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
}

/** The subset of `fetch` this module needs; inject it for tests or custom transports. */
export type FetchLike = (url: string, init: { signal: AbortSignal; headers: Record<string, string> }) => Promise<FetchResponseLike>;

/** A JSON Web Key Set document (RFC 7517 §5). */
export interface JwksDocument {
  keys: Record<string, unknown>[];
}

/** Where keys come from. */
export type JwksLocation =
  | { discovery: string } // issuer URL; keys via <issuer>/.well-known/openid-configuration
  | { jwksUri: string }
  | { jwks: JwksDocument }
  | { jwksFile: string };

/** Anything that resolves a verification key by kid and alg. */
export interface KeySource {
  getKey(kid: string, alg: string): Promise<KeyObject>;
}

/** Options of RemoteJwks. */
export interface RemoteJwksOptions {
  /** Label used in messages (for example the issuer name). */
  name?: string;
  /** Injected fetch. Defaults to an https fetch with `ca` when `ca` is set, else the global fetch. */
  fetchImpl?: FetchLike;
  /** Custom CA bundle (PEM) for HTTPS; ignored when fetchImpl is given. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Per-request timeout, ms. Default 3000. */
  timeoutMs?: number;
  /** Minimum gap between refreshes triggered by unknown kids, ms. Default 30000. */
  minRefreshIntervalMs?: number;
  /** Refresh in the background, honouring Cache-Control max-age bounded to [60 s, 1 h]. Default false. */
  backgroundRefresh?: boolean;
  /** Allow http:// URLs (development only). Default false. */
  allowInsecureHttp?: boolean;
  /** Largest JWKS or discovery document accepted, bytes. Default 512 KiB. */
  maxDocumentBytes?: number;
  /** Reports fetch failures and dropped keys; the key set in use is unaffected. */
  onError?: (err: MayflyError) => void;
  clock?: Clock;
}

interface KeyEntry {
  key: KeyObject;
  alg?: string;
}

const DEFAULT_TIMEOUT_MS = 3_000;
const DEFAULT_MIN_REFRESH_MS = 30_000;
const DEFAULT_MAX_DOC_BYTES = 512 * 1024;
const MIN_BACKGROUND_MS = 60_000;
const MAX_BACKGROUND_MS = 3_600_000;
const DEFAULT_BACKGROUND_MS = 300_000;

/** Parses Cache-Control max-age (seconds) and bounds it to [60 s, 1 h]; undefined header gives the 5 min default. */
export function backgroundRefreshDelayMs(cacheControl: string | null): number {
  const m = cacheControl ? /(?:^|,)\s*max-age\s*=\s*"?(\d+)"?/i.exec(cacheControl) : null;
  if (!m) return DEFAULT_BACKGROUND_MS;
  const ms = Number(m[1]) * 1000;
  return Math.min(MAX_BACKGROUND_MS, Math.max(MIN_BACKGROUND_MS, ms));
}

/** Builds a FetchLike over node:https that trusts `ca` (Node 20's global fetch cannot take a CA). */
export function createHttpsFetch(options: { ca?: string | Buffer | Array<string | Buffer>; maxBytes?: number } = {}): FetchLike {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_DOC_BYTES;
  return (url, init) =>
    new Promise<FetchResponseLike>((resolve, reject) => {
      const u = new URL(url);
      if (u.protocol !== 'https:') {
        reject(new Error(`createHttpsFetch only speaks https, got ${u.protocol}`));
        return;
      }
      if (init.signal.aborted) {
        reject(init.signal.reason ?? new Error('aborted'));
        return;
      }
      const req = httpsRequest(u, { method: 'GET', headers: init.headers, ca: options.ca, signal: init.signal }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxBytes) {
            res.destroy(new Error(`response exceeds ${maxBytes} bytes`));
            return;
          }
          chunks.push(c);
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

/** Parses a JWKS document into usable verification keys; unusable keys are dropped and reported. */
export function parseJwks(doc: unknown, report?: (err: MayflyError) => void, label = 'JWKS'): Map<string, KeyEntry[]> {
  if (!isPlainObject(doc) || !Array.isArray(doc['keys'])) throw mayflyError('ERR_UNAVAILABLE', `${label}: document has no "keys" array`);
  const out = new Map<string, KeyEntry[]>();
  const drop = (why: string, kid?: string): void => report?.(mayflyError('ERR_KEY_UNKNOWN', `${label}: ignored key${kid ? ` ${JSON.stringify(kid)}` : ''}: ${why}`, kid ? { kid } : undefined));
  for (const jwk of doc['keys'] as unknown[]) {
    if (!isPlainObject(jwk)) {
      drop('not a JSON object');
      continue;
    }
    const kid = typeof jwk['kid'] === 'string' && jwk['kid'].length > 0 ? jwk['kid'] : undefined;
    if (!kid) {
      drop('no kid (tokens are matched to keys by kid)');
      continue;
    }
    // RFC 8725 §3.1/§3.2: a JWKS is public; a symmetric key in it could be used as an HMAC secret.
    if (jwk['kty'] === 'oct') {
      drop('symmetric keys are not accepted', kid);
      continue;
    }
    // RFC 7517 §4.2/§4.3: only signature-verification keys.
    if (jwk['use'] !== undefined && jwk['use'] !== 'sig') {
      drop(`use is ${JSON.stringify(jwk['use'])}, not "sig"`, kid);
      continue;
    }
    if (jwk['key_ops'] !== undefined && !(Array.isArray(jwk['key_ops']) && jwk['key_ops'].includes('verify'))) {
      drop('key_ops does not include "verify"', kid);
      continue;
    }
    if (jwk['alg'] !== undefined && typeof jwk['alg'] !== 'string') {
      drop('alg is not a string', kid);
      continue;
    }
    let key: KeyObject;
    try {
      key = publicKeyFromJwk(jwk);
    } catch {
      drop('could not be imported', kid);
      continue;
    }
    const entry: KeyEntry = { key };
    if (typeof jwk['alg'] === 'string') entry.alg = jwk['alg'];
    const list = out.get(kid) ?? [];
    list.push(entry);
    out.set(kid, list);
  }
  return out;
}

/**
 * A cached JWKS with single-flight, rate-limited refresh on unknown kids,
 * bounded fetches, and stale serving when the issuer is unreachable.
 */
export class RemoteJwks implements KeySource {
  private keys: Map<string, KeyEntry[]> | null = null;
  private inflight: Promise<boolean> | null = null;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private lastError: MayflyError | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly closeController = new AbortController();
  private readonly fetchImpl: FetchLike;
  private readonly timeoutMs: number;
  private readonly minRefreshMs: number;
  private readonly clock: Clock;
  private readonly label: string;
  private readonly maxBytes: number;
  private counts = { refreshes: 0, failures: 0, httpRequests: 0 };

  constructor(
    private readonly location: JwksLocation,
    private readonly options: RemoteJwksOptions = {},
  ) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.minRefreshMs = options.minRefreshIntervalMs ?? DEFAULT_MIN_REFRESH_MS;
    this.clock = options.clock ?? systemClock;
    this.maxBytes = options.maxDocumentBytes ?? DEFAULT_MAX_DOC_BYTES;
    this.label = options.name ?? ('discovery' in location ? location.discovery : 'jwksUri' in location ? location.jwksUri : 'jwksFile' in location ? location.jwksFile : 'static JWKS');
    this.fetchImpl = options.fetchImpl ?? (options.ca !== undefined ? createHttpsFetch({ ca: options.ca, maxBytes: this.maxBytes }) : (globalThis.fetch as unknown as FetchLike));
    for (const url of 'discovery' in location ? [location.discovery] : 'jwksUri' in location ? [location.jwksUri] : []) this.checkUrl(url, 'ERR_CONFIG_INVALID');
    if ('jwks' in location) {
      try {
        this.keys = parseJwks(location.jwks, (e) => this.report(e), this.label);
      } catch (cause) {
        throw mayflyError('ERR_CONFIG_INVALID', `${this.label}: static JWKS has no "keys" array`, { field: 'jwks' }, cause);
      }
    }
  }

  /** Number of key-set refreshes attempted so far (for metrics). */
  get fetchCount(): number {
    return this.counts.refreshes;
  }

  /** Refresh attempts, failed refreshes and individual HTTP requests so far. */
  stats(): { refreshes: number; failures: number; httpRequests: number } {
    return { ...this.counts };
  }

  /** The kids currently cached (empty before the first successful load). */
  kids(): string[] {
    return [...(this.keys?.keys() ?? [])];
  }

  /** Resolves the verification key for (kid, alg); refreshes at most once for an unknown kid, then ERR_KEY_UNKNOWN. */
  async getKey(kid: string, alg: string): Promise<KeyObject> {
    if (this.closed) throw mayflyError('ERR_UNAVAILABLE', `${this.label}: key source is closed`);
    let keys = this.keys;
    if (keys === null) {
      await this.refreshIfAllowed();
      keys = this.keys;
      if (keys === null) throw this.unavailable();
    } else if (!keys.has(kid) && !('jwks' in this.location)) {
      const outcome = await this.refreshIfAllowed();
      keys = this.keys ?? keys;
      // The refresh that could have brought this kid failed: say so rather than "unknown key".
      if (outcome === 'failed' && !keys.has(kid)) throw this.unavailable();
    }
    const entries = keys.get(kid);
    if (entries === undefined) throw mayflyError('ERR_KEY_UNKNOWN', `${this.label}: no key with kid ${JSON.stringify(kid)}`, { kid });
    // RFC 8725 §3.1: when the JWK names an alg, the token's alg must be that one.
    const fit = entries.find((e) => (e.alg === undefined || e.alg === alg) && keyFitsAlg(e.key, alg));
    if (!fit) throw mayflyError('ERR_KEY_UNKNOWN', `${this.label}: key ${JSON.stringify(kid)} cannot verify ${alg} signatures`, { kid, alg });
    return fit.key;
  }

  /** Forces a refresh now (still single-flight, not rate-limited); resolves when it settles, never throws. */
  async refresh(): Promise<void> {
    await (this.inflight ?? this.startRefresh());
  }

  /** Stops the background timer and aborts any in-flight fetch. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.closeController.abort(new Error('closed'));
  }

  private unavailable(): MayflyError {
    return this.lastError ?? mayflyError('ERR_UNAVAILABLE', `${this.label}: keys could not be fetched`);
  }

  /** Joins the in-flight refresh, or starts one unless rate-limited. */
  private async refreshIfAllowed(): Promise<'ok' | 'failed' | 'skipped'> {
    if (this.inflight) return (await this.inflight) ? 'ok' : 'failed';
    if (this.clock.now() - this.lastAttemptAt < this.minRefreshMs) return 'skipped';
    return (await this.startRefresh()) ? 'ok' : 'failed';
  }

  private startRefresh(): Promise<boolean> {
    this.lastAttemptAt = this.clock.now();
    this.counts.refreshes++;
    const p = this.load()
      .then(({ keys, cacheControl }) => {
        this.keys = keys;
        this.lastError = null;
        this.schedule(backgroundRefreshDelayMs(cacheControl));
        return true;
      })
      .catch((e: unknown) => {
        this.counts.failures++;
        const err = isMayflyError(e) ? e : mayflyError('ERR_UNAVAILABLE', `keys of ${this.label} could not be fetched`, undefined, e);
        this.lastError = err;
        this.report(err);
        // Keep the last good set (stale serving); try again on the normal schedule.
        this.schedule(MIN_BACKGROUND_MS);
        return false;
      })
      .finally(() => {
        this.inflight = null;
      });
    this.inflight = p;
    return p;
  }

  private schedule(ms: number): void {
    if (!this.options.backgroundRefresh || this.closed || 'jwks' in this.location) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.refresh();
    }, ms);
    this.timer.unref();
  }

  private report(err: MayflyError): void {
    try {
      this.options.onError?.(err);
    } catch {
      // A broken reporter must never break verification.
    }
  }

  private checkUrl(url: string, code: 'ERR_CONFIG_INVALID' | 'ERR_UNAVAILABLE'): URL {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw mayflyError(code, `${this.label}: ${JSON.stringify(url)} is not a URL`);
    }
    if (u.protocol !== 'https:' && !(this.options.allowInsecureHttp && u.protocol === 'http:')) {
      throw mayflyError(code, `${this.label}: ${JSON.stringify(url)} must use https`);
    }
    return u;
  }

  private async load(): Promise<{ keys: Map<string, KeyEntry[]>; cacheControl: string | null }> {
    const loc = this.location;
    if ('jwks' in loc) return { keys: parseJwks(loc.jwks, (e) => this.report(e), this.label), cacheControl: null };
    if ('jwksFile' in loc) {
      let doc: unknown;
      try {
        doc = JSON.parse(await readFile(loc.jwksFile, 'utf8'));
      } catch (cause) {
        throw mayflyError('ERR_UNAVAILABLE', `${this.label}: JWKS file could not be read as JSON`, undefined, cause);
      }
      return { keys: parseJwks(doc, (e) => this.report(e), this.label), cacheControl: null };
    }
    let jwksUri: string;
    if ('discovery' in loc) {
      // OIDC Discovery §4: <issuer without trailing slash>/.well-known/openid-configuration.
      const { body } = await this.getJson(`${loc.discovery.replace(/\/$/, '')}/.well-known/openid-configuration`, 'discovery document');
      // OIDC Discovery §4.3: the issuer in the document MUST be identical to the configured one.
      if (!isPlainObject(body) || body['issuer'] !== loc.discovery) {
        throw mayflyError('ERR_UNAVAILABLE', `${this.label}: discovery document issuer ${JSON.stringify(isPlainObject(body) ? body['issuer'] : undefined)} does not equal the configured issuer ${JSON.stringify(loc.discovery)}`);
      }
      if (typeof body['jwks_uri'] !== 'string') throw mayflyError('ERR_UNAVAILABLE', `${this.label}: discovery document has no jwks_uri`);
      jwksUri = body['jwks_uri'];
      this.checkUrl(jwksUri, 'ERR_UNAVAILABLE');
    } else {
      jwksUri = loc.jwksUri;
    }
    const { body, cacheControl } = await this.getJson(jwksUri, 'JWKS');
    return { keys: parseJwks(body, (e) => this.report(e), this.label), cacheControl };
  }

  private async getJson(url: string, what: string): Promise<{ body: unknown; cacheControl: string | null }> {
    this.counts.httpRequests++;
    const signal = AbortSignal.any([AbortSignal.timeout(this.timeoutMs), this.closeController.signal]);
    let timer: NodeJS.Timeout | undefined;
    // Belt and braces: a fetchImpl that ignores the signal still cannot stall us past the timeout.
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(mayflyError('ERR_UNAVAILABLE', `${this.label}: ${what} fetch timed out after ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    try {
      return await Promise.race([
        (async () => {
          let res: FetchResponseLike;
          try {
            res = await this.fetchImpl(url, { signal, headers: { accept: 'application/json' } });
          } catch (cause) {
            const timedOut = signal.aborted && !this.closeController.signal.aborted;
            throw mayflyError('ERR_UNAVAILABLE', timedOut ? `${this.label}: ${what} fetch timed out after ${this.timeoutMs} ms` : `${this.label}: ${what} fetch failed`, undefined, cause);
          }
          if (!res.ok) throw mayflyError('ERR_UNAVAILABLE', `${this.label}: ${what} fetch returned HTTP ${res.status}`);
          let text: string;
          try {
            text = await res.text();
          } catch (cause) {
            throw mayflyError('ERR_UNAVAILABLE', `${this.label}: ${what} body could not be read`, undefined, cause);
          }
          if (Buffer.byteLength(text) > this.maxBytes) throw mayflyError('ERR_UNAVAILABLE', `${this.label}: ${what} exceeds ${this.maxBytes} bytes`);
          try {
            return { body: JSON.parse(text) as unknown, cacheControl: res.headers.get('cache-control') };
          } catch {
            throw mayflyError('ERR_UNAVAILABLE', `${this.label}: ${what} is not JSON`);
          }
        })(),
        deadline,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }
}
