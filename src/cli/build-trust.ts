/** Who the broker believes: SPIFFE trust bundles (static files and bundle endpoints) and OIDC issuers. */
import type { LoadedConfig } from '../config/load.js';
import { resolvePath } from '../config/load.js';
import type { Clock } from '../core/ports.js';
import { OidcVerifier, type OidcIssuerConfig } from '../identity/oidc.js';
import { issuerConfigFromPreset } from '../identity/oidc-presets.js';
import { parseTrustBundle, type TrustBundle } from '../identity/trust-bundle.js';
import { CompositeTrustSource, RefreshingTrustSource, StaticTrustSource, type TrustSource } from '../identity/trust-source.js';
import type { Logger } from '../observability/logger.js';
import type { JwsAlg } from '../tokens/jws.js';
import type { Cleanups } from './cleanups.js';
import { readConfigFile } from './config-files.js';

interface TrustContext {
  clock: Clock;
  log: Logger;
  cleanups: Cleanups;
}

/** One trust source per trust domain: a refreshing bundle endpoint, or the static bundle file. */
export async function buildTrust({ config: c, baseDir }: LoadedConfig, { clock, log, cleanups }: TrustContext): Promise<TrustSource> {
  const staticBundles: TrustBundle[] = [];
  const sources: TrustSource[] = [];
  for (const [td, t] of Object.entries(c.trust_domains)) {
    const initial = t.bundle_file ? parseTrustBundle(td, readConfigFile(baseDir, t.bundle_file, `trust_domains.${td}.bundle_file`).toString('utf8')) : undefined;
    if (t.bundle_endpoint) {
      const r = new RefreshingTrustSource({
        trustDomain: td,
        url: t.bundle_endpoint.url,
        ...(t.bundle_endpoint.ca_file ? { caPem: readConfigFile(baseDir, t.bundle_endpoint.ca_file, `trust_domains.${td}.bundle_endpoint.ca_file`).toString('utf8') } : {}),
        ...(t.bundle_endpoint.refresh_seconds ? { refreshIntervalMs: t.bundle_endpoint.refresh_seconds * 1000 } : {}),
        ...(initial ? { initialBundle: initial } : {}),
        clock,
        onError: (e) => log.warn({ trust_domain: td, code: e.code, err: e.message }, 'bundle endpoint refresh failed; serving the last good bundle'),
      });
      await r.start?.();
      cleanups.push(() => r.close());
      sources.push(r);
    } else if (initial) staticBundles.push(initial);
  }
  if (staticBundles.length > 0) sources.push(new StaticTrustSource(staticBundles));
  return new CompositeTrustSource(sources);
}

/** The OIDC verifier over the configured issuers (presets expanded), or null when there are none. */
export function buildOidc({ config: c, baseDir }: LoadedConfig, { clock, log, cleanups }: TrustContext): OidcVerifier | null {
  const issuers: OidcIssuerConfig[] = c.oidc.issuers.map((i, idx) => {
    const base = {
      name: i.name,
      audiences: i.audiences,
      allowedAlgs: i.algorithms as JwsAlg[],
      clockSkewSeconds: i.clock_skew_seconds,
      ...(i.max_token_age_seconds ? { maxTokenAgeSeconds: i.max_token_age_seconds } : {}),
      ...(i.subject_claim ? { subjectClaim: i.subject_claim } : {}),
      ...(i.ca_file ? { ca: readConfigFile(baseDir, i.ca_file, `oidc.issuers[${idx}].ca_file`) } : {}),
      jwks: i.jwks_file
        ? { jwksFile: resolvePath(baseDir, i.jwks_file) }
        : i.jwks_uri
          ? { jwksUri: i.jwks_uri }
          : ({ discovery: true } as const),
    };
    return i.preset ? issuerConfigFromPreset(i.preset, { ...base, ...(i.issuer ? { issuer: i.issuer } : {}) }) : { ...base, issuer: i.issuer! };
  });
  if (issuers.length === 0) return null;
  const oidc = new OidcVerifier(issuers, {
    clock,
    minRefreshIntervalMs: c.oidc.jwks_refresh_cooldown_seconds * 1000,
    backgroundRefresh: c.oidc.jwks_background_refresh,
    onJwksError: (e, name) => log.warn({ issuer: name, code: e.code, err: e.message }, 'JWKS refresh failed'),
  });
  cleanups.push(() => oidc.close());
  return oidc;
}
