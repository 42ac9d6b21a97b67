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

  constructor(issuers: OidcIssuerConfig[], options: OidcVerifierOptions = {}) {
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

  /** Verifies a compact OIDC JWT at `now` and returns the caller's Identity. */
  async verify(token: string, now: EpochMs): Promise<Identity> {
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
    return {
      kind: 'oidc',
      id: `${iss}#${sub}`,
      issuer: iss,
      method: 'oidc',
      claims: payload,
      credentialExpiresAt: checked.exp,
      source: issuer.name,
    };
  }

  /** Stops background refreshes and aborts in-flight fetches of every owned JWKS source. */
  close(): void {
    for (const o of this.owned) o.close();
  }
}
