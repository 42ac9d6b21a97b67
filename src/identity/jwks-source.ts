/**
 * JWKS trust source for OIDC issuers: the one module in identity/ that does
 * I/O. Keys come from an explicit jwks_uri, from OIDC discovery, or from a
 * static JWKS (object or file, for air-gapped deployments).
 *
 * Fetching, caching and refreshing are net/remote-document.ts's; what
 * matters for availability and safety:
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
import type { KeyObject } from 'node:crypto';
import { mayflyError, MayflyError } from '../core/errors.js';
import type { Clock } from '../core/ports.js';
import { parseJsonDocument, RemoteDocument, type BoundedGet, type CaOption, type FetchLike } from '../net/remote-document.js';
import { isPlainObject, keyFitsAlg } from '../tokens/jws.js';
import { parseJwks, type JwkEntry, type JwksDocument } from '../tokens/jwks.js';

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
  ca?: CaOption;
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

type KeyMap = Map<string, JwkEntry[]>;

/**
 * An OIDC issuer's keys: static, from a file, or remote (a RemoteDocument:
 * single flight, rate-limited refresh on unknown kids, bounded fetches, stale
 * serving when the issuer is unreachable, optional background refresh).
 */
export class RemoteJwks implements KeySource {
  private readonly staticKeys: KeyMap | null = null;
  private readonly doc: RemoteDocument<KeyMap> | null = null;
  private closed = false;
  private readonly label: string;

  constructor(
    private readonly location: JwksLocation,
    private readonly options: RemoteJwksOptions = {},
  ) {
    this.label = options.name ?? ('discovery' in location ? location.discovery : 'jwksUri' in location ? location.jwksUri : 'jwksFile' in location ? location.jwksFile : 'static JWKS');
    if ('jwks' in location) {
      try {
        this.staticKeys = parseJwks(location.jwks, (e) => this.report(e), this.label);
      } catch (cause) {
        throw mayflyError('ERR_CONFIG_INVALID', `${this.label}: static JWKS has no "keys" array`, { field: 'jwks' }, cause);
      }
      return;
    }
    for (const url of 'discovery' in location ? [location.discovery] : 'jwksUri' in location ? [location.jwksUri] : []) this.checkUrl(url, 'ERR_CONFIG_INVALID');
    this.doc = new RemoteDocument<KeyMap>({
      name: this.label,
      load: (get) => this.load(get),
      ...(options.fetchImpl ? { fetchImpl: options.fetchImpl } : {}),
      ...(options.ca !== undefined ? { ca: options.ca } : {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
      ...(options.maxDocumentBytes !== undefined ? { maxBytes: options.maxDocumentBytes } : {}),
      ...(options.minRefreshIntervalMs !== undefined ? { minRefreshIntervalMs: options.minRefreshIntervalMs } : {}),
      ...(options.clock ? { clock: options.clock } : {}),
      background: options.backgroundRefresh ?? false,
      onError: (e) => this.report(e),
    });
  }

  /** Number of key-set refreshes attempted so far (for metrics). */
  get fetchCount(): number {
    return this.stats().refreshes;
  }

  /** Refresh attempts, failed refreshes and individual HTTP requests so far. */
  stats(): { refreshes: number; failures: number; httpRequests: number } {
    return this.doc?.stats() ?? { refreshes: 0, failures: 0, httpRequests: 0 };
  }

  /** The kids currently cached (empty before the first successful load). */
  kids(): string[] {
    return [...((this.staticKeys ?? this.doc?.value)?.keys() ?? [])];
  }

  /** Resolves the verification key for (kid, alg); refreshes at most once for an unknown kid, then ERR_KEY_UNKNOWN. */
  async getKey(kid: string, alg: string): Promise<KeyObject> {
    if (this.closed) throw mayflyError('ERR_UNAVAILABLE', `${this.label}: key source is closed`);
    const entries = (await this.keysFor(kid)).get(kid);
    if (entries === undefined) throw mayflyError('ERR_KEY_UNKNOWN', `${this.label}: no key with kid ${JSON.stringify(kid)}`, { kid });
    // RFC 8725 §3.1: when the JWK names an alg, the token's alg must be that one.
    const fit = entries.find((e) => (e.alg === undefined || e.alg === alg) && keyFitsAlg(e.key, alg));
    if (!fit) throw mayflyError('ERR_KEY_UNKNOWN', `${this.label}: key ${JSON.stringify(kid)} cannot verify ${alg} signatures`, { kid, alg });
    return fit.key;
  }

  /** Forces a refresh now (still single-flight, not rate-limited); resolves when it settles, never throws. */
  async refresh(): Promise<void> {
    await this.doc?.refresh().catch(() => undefined);
  }

  /** Stops the background timer and aborts any in-flight fetch. */
  close(): void {
    this.closed = true;
    this.doc?.close();
  }

  /** The key set to look `kid` up in: loads it first if need be, refreshes once (rate-limited) for an unknown kid. */
  private async keysFor(kid: string): Promise<KeyMap> {
    if (this.staticKeys) return this.staticKeys;
    const doc = this.doc as RemoteDocument<KeyMap>;
    const before = doc.value;
    if (before !== undefined && before.has(kid)) return before;
    const outcome = await doc.refreshIfAllowed();
    const keys = doc.value;
    // No keys at all, or the refresh that could have brought this kid failed: say so rather than "unknown key".
    if (keys === undefined || (outcome === 'failed' && !keys.has(kid))) {
      throw doc.lastError ?? mayflyError('ERR_UNAVAILABLE', `${this.label}: keys could not be fetched`);
    }
    return keys;
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

  private async load(get: BoundedGet): Promise<KeyMap> {
    const loc = this.location;
    const report = (e: MayflyError): void => this.report(e);
    if ('jwksFile' in loc) {
      let doc: unknown;
      try {
        doc = JSON.parse(await readFile(loc.jwksFile, 'utf8'));
      } catch (cause) {
        throw mayflyError('ERR_UNAVAILABLE', `${this.label}: JWKS file could not be read as JSON`, undefined, cause);
      }
      return parseJwks(doc, report, this.label);
    }
    const jwksUri = 'discovery' in loc ? await this.discoverJwksUri(get, loc.discovery) : 'jwksUri' in loc ? loc.jwksUri : null;
    if (jwksUri === null) throw mayflyError('ERR_INTERNAL', `${this.label}: a static JWKS is never loaded`);
    return parseJwks(parseJsonDocument(await get(jwksUri, 'JWKS'), `${this.label}: JWKS`), report, this.label);
  }

  /** OIDC Discovery §4: <issuer without trailing slash>/.well-known/openid-configuration names the jwks_uri. */
  private async discoverJwksUri(get: BoundedGet, issuer: string): Promise<string> {
    const body = parseJsonDocument(await get(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`, 'discovery document'), `${this.label}: discovery document`);
    // OIDC Discovery §4.3: the issuer in the document MUST be identical to the configured one.
    if (!isPlainObject(body) || body['issuer'] !== issuer) {
      throw mayflyError('ERR_UNAVAILABLE', `${this.label}: discovery document issuer ${JSON.stringify(isPlainObject(body) ? body['issuer'] : undefined)} does not equal the configured issuer ${JSON.stringify(issuer)}`);
    }
    if (typeof body['jwks_uri'] !== 'string') throw mayflyError('ERR_UNAVAILABLE', `${this.label}: discovery document has no jwks_uri`);
    this.checkUrl(body['jwks_uri'], 'ERR_UNAVAILABLE');
    return body['jwks_uri'];
  }
}
