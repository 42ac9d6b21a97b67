/**
 * OIDC token verification for federated issuers (CI systems, Kubernetes,
 * any OpenID Provider). Each configured issuer has its own JWKS: the token's
 * exact `iss` picks the issuer, and only that issuer's keys are consulted, so
 * a kid published by issuer B can never verify a token claiming issuer A.
 */
import { mayflyError, type MayflyError } from '../core/errors.js';
import type { EpochMs, Identity } from '../core/types.js';
import { ASYMMETRIC_ALGS, decodeJws, verifyJwsSignature, type JwsAlg } from '../tokens/jws.js';
import { validateJwtClaims } from './jwt-claims.js';
import type { FetchLike } from '../net/remote-document.js';
import type { JwksDocument } from '../tokens/jwks.js';
import { RemoteJwks, type KeySource, type RemoteJwksOptions } from './jwks-source.js';
import { deepFreeze, DEFAULT_VERIFIED_TOKENS, VerifiedTokens, type VerifiedTokensOptions } from './verified-tokens.js';
import type { KeyObject } from 'node:crypto';

/** Where an issuer's keys come from. `discovery` uses the issuer URL. */
export type OidcJwksConfig = { discovery: true } | { jwksUri: string } | { jwks: JwksDocument } | { jwksFile: string } | { keySource: KeySource };

/** One trusted OIDC issuer. */
export interface OidcIssuerConfig {
  /** Config name (for example `github`); becomes Identity.source. */
  name: string;
  /** Issuer URL, compared to `iss` exactly. */
  issuer: string;
  /** Accepted audiences; the token's `aud` must contain one. */
  audiences: string[];
  /** Asymmetric algorithms accepted from this issuer. Default ['RS256', 'ES256']. */
  allowedAlgs?: JwsAlg[];
  /** Key source. Default discovery. */
  jwks?: OidcJwksConfig;
  /** Leeway for exp/nbf/iat, seconds. Default 60. */
  clockSkewSeconds?: number;
  /** When set, `iat` is required and may be at most this old. */
  maxTokenAgeSeconds?: number;
  /** Claim that identifies the workload. Default `sub`. */
  subjectClaim?: string;
  /** Custom CA (PEM) for this issuer's HTTPS endpoints. */
  ca?: string | Buffer | Array<string | Buffer>;
}

/** Options shared by every issuer's JWKS source. */
export interface OidcVerifierOptions {
  fetchImpl?: FetchLike;
  timeoutMs?: number;
  minRefreshIntervalMs?: number;
  backgroundRefresh?: boolean;
  allowInsecureHttp?: boolean;
  onJwksError?: (err: MayflyError, issuerName: string) => void;
  clock?: RemoteJwksOptions['clock'];
  /** Limits of the cache of tokens already verified (see verified-tokens.ts); `maxEntries: 0` turns it off. */
  verifiedTokens?: VerifiedTokensOptions;
}

/** What verifying a token once established, kept for the next time the same token is presented. */
interface Verified {
  issuer: ResolvedIssuer;
  kid: string;
  alg: string;
  /** The key the signature verified with. */
  key: KeyObject;
  payload: Readonly<Record<string, unknown>>;
  identity: Identity;
}

interface ResolvedIssuer {
  name: string;
  issuer: string;
  audiences: string[];
  allowedAlgs: readonly string[];
  clockSkewSeconds: number;
  maxTokenAgeSeconds: number | undefined;
  subjectClaim: string;
  keys: KeySource;
}

const DEFAULT_ALGS: JwsAlg[] = ['RS256', 'ES256'];

function configError(message: string, field: string): MayflyError {
  return mayflyError('ERR_CONFIG_INVALID', message, { field });
}

/** Checks one issuer entry and returns it with defaults applied (without building its key source). */
export function resolveIssuerConfig(cfg: OidcIssuerConfig, index = 0): Omit<ResolvedIssuer, 'keys'> {
  const at = `oidc.issuers[${index}]`;
  if (typeof cfg.name !== 'string' || cfg.name.length === 0) throw configError(`${at}.name is required`, `${at}.name`);
  try {
    new URL(cfg.issuer);
  } catch {
    throw configError(`${at}.issuer must be a URL`, `${at}.issuer`);
  }
  if (!Array.isArray(cfg.audiences) || cfg.audiences.length === 0 || cfg.audiences.some((a) => typeof a !== 'string' || a.length === 0)) {
    throw configError(`${at}.audiences must list at least one audience`, `${at}.audiences`);
  }
  const algs = cfg.allowedAlgs ?? DEFAULT_ALGS;
  if (!Array.isArray(algs) || algs.length === 0) throw configError(`${at}.allowedAlgs must list at least one algorithm`, `${at}.allowedAlgs`);
  for (const alg of algs as string[]) {
    // RFC 8725 §3.1–3.2: `none` and HMAC would let anyone holding the public key mint tokens.
    if (!(ASYMMETRIC_ALGS as readonly string[]).includes(alg)) {
      throw configError(`${at}.allowedAlgs: ${JSON.stringify(alg)} is not allowed (asymmetric algorithms only: ${ASYMMETRIC_ALGS.join(', ')})`, `${at}.allowedAlgs`);
    }
  }
  const skew = cfg.clockSkewSeconds ?? 60;
  if (!Number.isFinite(skew) || skew < 0 || skew > 600) throw configError(`${at}.clockSkewSeconds must be between 0 and 600`, `${at}.clockSkewSeconds`);
  if (cfg.maxTokenAgeSeconds !== undefined && !(Number.isFinite(cfg.maxTokenAgeSeconds) && cfg.maxTokenAgeSeconds > 0)) {
    throw configError(`${at}.maxTokenAgeSeconds must be a positive number`, `${at}.maxTokenAgeSeconds`);
  }
  return {
    name: cfg.name,
    issuer: cfg.issuer,
    audiences: [...cfg.audiences],
    allowedAlgs: [...algs],
    clockSkewSeconds: skew,
    maxTokenAgeSeconds: cfg.maxTokenAgeSeconds,
    subjectClaim: cfg.subjectClaim ?? 'sub',
  };
}

/** Verifies OIDC tokens from a fixed set of trusted issuers. */
export class OidcVerifier {
  private readonly byIssuer = new Map<string, ResolvedIssuer>();
  private readonly owned: RemoteJwks[] = [];
  private readonly verified: VerifiedTokens<Verified>;

  constructor(issuers: OidcIssuerConfig[], options: OidcVerifierOptions = {}) {
    this.verified = new VerifiedTokens(options.verifiedTokens ?? DEFAULT_VERIFIED_TOKENS);
    const names = new Set<string>();
    issuers.forEach((cfg, i) => {
      const r = resolveIssuerConfig(cfg, i);
      if (names.has(r.name)) throw configError(`oidc.issuers[${i}].name ${JSON.stringify(r.name)} is used twice`, `oidc.issuers[${i}].name`);
      if (this.byIssuer.has(r.issuer)) throw configError(`oidc.issuers[${i}].issuer ${JSON.stringify(r.issuer)} is configured twice`, `oidc.issuers[${i}].issuer`);
      names.add(r.name);
      const jwks = cfg.jwks ?? { discovery: true };
      let keys: KeySource;
      if ('keySource' in jwks) {
        keys = jwks.keySource;
      } else {
        const remote = new RemoteJwks('discovery' in jwks ? { discovery: r.issuer } : jwks, {
          name: r.name,
          fetchImpl: options.fetchImpl,
          ca: cfg.ca,
          timeoutMs: options.timeoutMs,
          minRefreshIntervalMs: options.minRefreshIntervalMs,
          backgroundRefresh: options.backgroundRefresh,
          allowInsecureHttp: options.allowInsecureHttp,
          clock: options.clock,
          onError: options.onJwksError ? (e) => options.onJwksError?.(e, r.name) : undefined,
        });
        this.owned.push(remote);
        keys = remote;
      }
      this.byIssuer.set(r.issuer, { ...r, keys });
    });
  }

  /** The JWKS source of a configured issuer (by name), for metrics and health. */
  jwksOf(name: string): RemoteJwks | undefined {
    const found = [...this.byIssuer.values()].find((i) => i.name === name);
    return found && this.owned.find((o) => o === found.keys);
  }

  /**
   * Verifies a compact OIDC JWT at `now` and returns the caller's Identity
   * (frozen: the same object is returned for the same token while it is
   * cached).
   *
   * A token verified before is not decoded or signature-checked again, but
   * only while the issuer's key lookup for its kid and alg still returns the
   * key that verified it (a JWKS rotation or removal sends it through the
   * full path, and a lookup failure fails it as it would have failed there).
   * Its claims are checked again on every call, at `now`.
   */
  async verify(token: string, now: EpochMs): Promise<Identity> {
    const known = this.verified.get(token, now);
    if (known !== undefined) {
      const key = await known.issuer.keys.getKey(known.kid, known.alg);
      if (key === known.key || key.equals(known.key)) {
        try {
          checkClaims(known.issuer, known.payload, now);
        } catch (e) {
          this.verified.delete(token);
          throw e;
        }
        return known.identity;
      }
      this.verified.delete(token);
    }
    return this.verifyFully(token, now);
  }

  /**
   * The issuer a cached token verified under, or undefined when the token is
   * not in the cache (routing only: verify() still checks it).
   */
  knownIssuer(token: string, now: EpochMs): string | undefined {
    return this.verified.get(token, now)?.issuer.issuer;
  }

  private async verifyFully(token: string, now: EpochMs): Promise<Identity> {
    // Size, shape, asymmetric alg, crit and nested-JWT checks (tokens/jws.ts).
    const jws = decodeJws(token);
    const { header, payload } = jws;
    const iss = payload['iss'];
    if (typeof iss !== 'string' || iss.length === 0) throw mayflyError('ERR_JWT_INVALID', 'iss is missing', { claim: 'iss' });
    // Exact match: no trailing-slash or case normalisation (OIDC Core §3.1.3.7 step 2).
    const issuer = this.byIssuer.get(iss);
    if (!issuer) throw mayflyError('ERR_ISSUER_UNKNOWN', `issuer ${JSON.stringify(iss)} is not configured`, { claim: 'iss' });
    if (!issuer.allowedAlgs.includes(header.alg)) {
      throw mayflyError('ERR_JWT_INVALID', `alg ${JSON.stringify(header.alg)} is not allowed for issuer ${issuer.name}`, { field: 'alg', issuer: issuer.name });
    }
    if (typeof header.kid !== 'string' || header.kid.length === 0) {
      throw mayflyError('ERR_JWT_INVALID', 'token header has no kid', { field: 'kid', issuer: issuer.name });
    }
    const key = await issuer.keys.getKey(header.kid, header.alg);
    verifyJwsSignature(jws, key);

    const { exp, sub } = checkClaims(issuer, payload, now);
    const identity = deepFreeze<Identity>({
      kind: 'oidc',
      id: `${iss}#${sub}`,
      issuer: iss,
      method: 'oidc',
      claims: payload,
      credentialExpiresAt: exp,
      source: issuer.name,
    });
    this.verified.set(token, { issuer, kid: header.kid, alg: header.alg, key, payload, identity }, exp + issuer.clockSkewSeconds * 1000);
    return identity;
  }

  /** Stops background refreshes and aborts in-flight fetches of every owned JWKS source. */
  close(): void {
    this.verified.clear();
    for (const o of this.owned) o.close();
  }
}

/** The claim checks of an issuer at `now`: time claims, audience, issuer, and the subject claim. */
function checkClaims(issuer: ResolvedIssuer, payload: Readonly<Record<string, unknown>>, now: EpochMs): { exp: EpochMs; sub: string } {
  const checked = validateJwtClaims(payload, {
    now,
    clockSkewSeconds: issuer.clockSkewSeconds,
    audience: issuer.audiences,
    issuer: issuer.issuer,
    requireExp: true,
    maxTokenAgeSeconds: issuer.maxTokenAgeSeconds,
  });
  const sub = payload[issuer.subjectClaim];
  if (typeof sub !== 'string' || sub.length === 0) {
    throw mayflyError('ERR_JWT_INVALID', `${issuer.subjectClaim} is missing or not a string`, { claim: issuer.subjectClaim });
  }
  return { exp: checked.exp, sub };
}
