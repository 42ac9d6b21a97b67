/**
 * Shared dev-PKI fixtures for tests, minted with src/pki/dev-pki.ts at test
 * time (never committed). Memoised per worker: RSA keygen is the slow part.
 */
import { parsePemBundle, type TrustBundle } from '../../src/identity/trust-bundle.js';
import { StaticTrustSource } from '../../src/identity/trust-source.js';
import { createDevCa, issueIntermediateCa, type DevCa } from '../../src/pki/dev-pki.js';

export interface DevPkiFixtures {
  example: DevCa;
  other: DevCa;
  exampleIntermediate: DevCa;
  /** One key reused by every test leaf: leaves never sign anything, so sharing is harmless and saves keygen time. */
  leafKeyPem: string;
  /** Distinct keys for extra CAs a test creates; CAs on one path must not share a key or signatures cross-verify. */
  caKeyPems: [string, string];
}

let cached: DevPkiFixtures | undefined;

/** A root for example.org, a root for other.org and an intermediate below the example.org root. */
export function devPki(): DevPkiFixtures {
  if (!cached) {
    const example = createDevCa({ trustDomain: 'example.org' });
    const leaf = createDevCa({ trustDomain: 'keys.invalid' });
    const a = createDevCa({ trustDomain: 'keys.invalid' });
    const b = createDevCa({ trustDomain: 'keys.invalid' });
    cached = {
      example,
      other: createDevCa({ trustDomain: 'other.org' }),
      exampleIntermediate: issueIntermediateCa(example),
      leafKeyPem: leaf.keyPem,
      caKeyPems: [a.keyPem, b.keyPem],
    };
  }
  return cached;
}

/** A PEM bundle for each CA's trust domain, from its certificate. */
export function bundleOf(ca: { trustDomain: string; certPem: string }): TrustBundle {
  return parsePemBundle(ca.trustDomain, ca.certPem);
}

/** A static source with one bundle per given root CA. */
export function sourceOf(...cas: { trustDomain: string; certPem: string }[]): StaticTrustSource {
  return new StaticTrustSource(cas.map(bundleOf));
}
