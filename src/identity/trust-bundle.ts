/**
 * SPIFFE trust bundles: the JWKS format of the SPIFFE Trust Domain and Bundle
 * standard (§4) and plain PEM files of X.509 authorities. Parsing is pure and
 * strict: a bundle decides whom we trust, so anything that looks like a
 * mistake (a private key, an undecodable certificate, a non-CA authority, a
 * duplicate kid) is a configuration error, never silently skipped.
 */
import { X509Certificate, createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import { DerError, readCertificateFields } from './x509-extensions.js';
import { parseTrustDomain } from './spiffe-id.js';

/** The authorities of one trust domain. */
export interface TrustBundle {
  trustDomain: string;
  /** Roots that may sign X.509-SVIDs of this trust domain (X509-SVID §6). */
  x509Authorities: X509Certificate[];
  /** Keys that may sign JWT-SVIDs of this trust domain, by kid (JWT-SVID §6). */
  jwtAuthorities: Map<string, KeyObject>;
  /** `spiffe_refresh_hint`, seconds (Trust Domain and Bundle §4.1.2). */
  refreshHintSeconds?: number;
  /** `spiffe_sequence` (Trust Domain and Bundle §4.1.1). */
  sequence?: number;
}

/** Upper bound on a bundle document; real bundles are a few KiB. */
export const MAX_BUNDLE_BYTES = 1 << 20;

const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const KNOWN_KTY = new Set(['RSA', 'EC', 'OKP']);

function configError(trustDomain: string, problem: string, cause?: unknown): never {
  throw mayflyError('ERR_CONFIG_INVALID', `trust bundle for ${trustDomain}: ${problem}`, { trustDomain }, cause);
}

function checkedTrustDomain(trustDomain: string): string {
  try {
    return parseTrustDomain(trustDomain);
  } catch (cause) {
    throw mayflyError('ERR_CONFIG_INVALID', `trust bundle: ${(cause as Error).message}`, { trustDomain: String(trustDomain) }, cause);
  }
}

/** Parses an X.509 authority and checks it can act as one (X509-SVID §3.2: signing certificates are CAs). */
function authorityFromDer(trustDomain: string, der: Buffer, where: string): X509Certificate {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(der);
  } catch (cause) {
    configError(trustDomain, `${where} is not a valid X.509 certificate`, cause);
  }
  let cA = false;
  try {
    cA = readCertificateFields(der).basicConstraints?.cA === true;
  } catch (cause) {
    configError(trustDomain, `${where} is malformed: ${cause instanceof DerError ? cause.message : 'unreadable'}`, cause);
  }
  if (!cA) configError(trustDomain, `${where} (${cert.subject.replace(/\n/g, ', ')}) is not a CA certificate (basicConstraints cA must be true, SPIFFE X.509-SVID §3.2)`);
  return cert;
}

/** Parses a SPIFFE bundle in JWKS form (Trust Domain and Bundle §4) for a trust domain given by configuration (§5: the document itself does not name it). */
export function parseJwksBundle(trustDomain: string, document: string | unknown): TrustBundle {
  const td = checkedTrustDomain(trustDomain);
  let doc: unknown = document;
  if (typeof document === 'string') {
    if (document.length > MAX_BUNDLE_BYTES) configError(td, `document exceeds ${MAX_BUNDLE_BYTES} bytes`);
    try {
      doc = JSON.parse(document);
    } catch (cause) {
      configError(td, 'document is not valid JSON', cause);
    }
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) configError(td, 'document is not a JSON object');
  const obj = doc as Record<string, unknown>;
  // §4.1.3: `keys` MUST be present.
  if (!Array.isArray(obj['keys'])) configError(td, "document has no 'keys' array");
  const bundle: TrustBundle = { trustDomain: td, x509Authorities: [], jwtAuthorities: new Map() };
  const seq = obj['spiffe_sequence'];
  if (seq !== undefined) {
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) configError(td, 'spiffe_sequence must be a non-negative integer');
    bundle.sequence = seq;
  }
  const hint = obj['spiffe_refresh_hint'];
  if (hint !== undefined) {
    if (typeof hint !== 'number' || !Number.isSafeInteger(hint) || hint < 0) configError(td, 'spiffe_refresh_hint must be a non-negative integer (seconds)');
    bundle.refreshHintSeconds = hint;
  }
  (obj['keys'] as unknown[]).forEach((key, i) => {
    const where = `keys[${i}]`;
    if (typeof key !== 'object' || key === null || Array.isArray(key)) configError(td, `${where} is not a JSON object`);
    const jwk = key as Record<string, unknown>;
    const priv = PRIVATE_JWK_MEMBERS.filter((m) => m in jwk);
    if (priv.length > 0) configError(td, `${where} contains private or symmetric key material (${priv.join(', ')}); a bundle must hold public keys only`);
    if (jwk['kty'] === 'oct') configError(td, `${where} is a symmetric key; a bundle must hold public keys only`);
    if (typeof jwk['kty'] !== 'string') configError(td, `${where} has no kty`);
    const use = jwk['use'];
    if (use === 'x509-svid') addX509Entry(bundle, jwk, where);
    else if (use === 'jwt-svid') addJwtEntry(bundle, jwk, where);
    // §4.2.2: unknown `use` values MUST be ignored, so a newer SVID type does not break us.
  });
  return bundle;
}

function addX509Entry(bundle: TrustBundle, jwk: Record<string, unknown>, where: string): void {
  const td = bundle.trustDomain;
  const x5c = jwk['x5c'];
  // X509-SVID §6.2: an x509-svid entry without x5c MUST be ignored (it grants nothing).
  if (x5c === undefined || (Array.isArray(x5c) && x5c.length === 0)) return;
  if (!Array.isArray(x5c) || typeof x5c[0] !== 'string') configError(td, `${where}.x5c must be an array of base64 DER certificates`);
  const b64 = x5c[0] as string;
  // RFC 7517 §4.7: x5c is standard base64 (not base64url).
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) configError(td, `${where}.x5c[0] is not standard base64`);
  // X509-SVID §6.2: only the first certificate of x5c is the authority; the rest MUST be ignored.
  const der = Buffer.from(b64, 'base64');
  const cert = authorityFromDer(td, der, `${where}.x5c[0]`);
  // RFC 7517 §4.7: the key in the certificate MUST match the JWK's own key parameters when present.
  if (KNOWN_KTY.has(jwk['kty'] as string) && ('n' in jwk || 'x' in jwk)) {
    let jwkKey: KeyObject;
    try {
      jwkKey = createPublicKey({ key: stripToPublic(jwk) as JsonWebKey, format: 'jwk' });
    } catch (cause) {
      configError(td, `${where} key parameters could not be imported`, cause);
    }
    const a = jwkKey.export({ type: 'spki', format: 'der' });
    const b = cert.publicKey.export({ type: 'spki', format: 'der' });
    if (!a.equals(b)) configError(td, `${where} key parameters do not match the public key of its x5c certificate`);
  }
  bundle.x509Authorities.push(cert);
}

function addJwtEntry(bundle: TrustBundle, jwk: Record<string, unknown>, where: string): void {
  const td = bundle.trustDomain;
  // Trust Domain and Bundle §4.2.1: unknown key types MUST be ignored.
  if (!KNOWN_KTY.has(jwk['kty'] as string)) return;
  const kid = jwk['kid'];
  // JWT-SVID §6.1: the kid parameter MUST be set, since tokens select their key by it.
  if (typeof kid !== 'string' || kid.length === 0) configError(td, `${where} (jwt-svid) has no kid`);
  if (bundle.jwtAuthorities.has(kid)) configError(td, `${where} repeats kid ${JSON.stringify(kid)}`);
  let key: KeyObject;
  try {
    key = createPublicKey({ key: stripToPublic(jwk) as JsonWebKey, format: 'jwk' });
  } catch (cause) {
    configError(td, `${where} (kid ${JSON.stringify(kid)}) could not be imported as a public key`, cause);
  }
  bundle.jwtAuthorities.set(kid, key);
}

function stripToPublic(jwk: Record<string, unknown>): Record<string, unknown> {
  const { use: _use, kid: _kid, x5c: _x5c, alg: _alg, ...rest } = jwk;
  return rest;
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;

/** Parses one or more PEM CERTIFICATE blocks as the X.509 authorities of a trust domain. */
export function parsePemBundle(trustDomain: string, pem: string): TrustBundle {
  const td = checkedTrustDomain(trustDomain);
  if (typeof pem !== 'string') configError(td, 'PEM input is not text');
  if (pem.length > MAX_BUNDLE_BYTES) configError(td, `PEM input exceeds ${MAX_BUNDLE_BYTES} bytes`);
  const bundle: TrustBundle = { trustDomain: td, x509Authorities: [], jwtAuthorities: new Map() };
  let n = 0;
  for (const m of pem.matchAll(PEM_BLOCK)) {
    const label = m[1]!;
    if (label.includes('PRIVATE KEY')) configError(td, `PEM block ${n} is a private key (${label}); a bundle must hold certificates only`);
    if (label !== 'CERTIFICATE') configError(td, `PEM block ${n} is a ${label}, expected CERTIFICATE`);
    const body = m[2]!.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body)) configError(td, `PEM block ${n} is not valid base64`);
    bundle.x509Authorities.push(authorityFromDer(td, Buffer.from(body, 'base64'), `PEM certificate ${n}`));
    n++;
  }
  // A BEGIN without a matching END (truncated file) would otherwise be skipped silently.
  if ((pem.match(/-----BEGIN /g) ?? []).length !== n) configError(td, 'PEM input has an unterminated or mismatched block');
  if (n === 0) configError(td, 'PEM input contains no CERTIFICATE block');
  return bundle;
}

/** Parses a bundle document in either form: JWKS JSON when it starts with '{', PEM otherwise. */
export function parseTrustBundle(trustDomain: string, text: string): TrustBundle {
  return text.trimStart().startsWith('{') ? parseJwksBundle(trustDomain, text) : parsePemBundle(trustDomain, text);
}

/** Serialises a bundle to the SPIFFE JWKS form (Trust Domain and Bundle §4; X509-SVID §6.1: x509 entries carry no kid). */
export function bundleToJwks(bundle: TrustBundle): Record<string, unknown> {
  const keys: Record<string, unknown>[] = [];
  for (const cert of bundle.x509Authorities) {
    keys.push({ ...(cert.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), use: 'x509-svid', x5c: [cert.raw.toString('base64')] });
  }
  for (const [kid, key] of bundle.jwtAuthorities) {
    keys.push({ ...(key.export({ format: 'jwk' }) as Record<string, unknown>), use: 'jwt-svid', kid });
  }
  const doc: Record<string, unknown> = {};
  if (bundle.sequence !== undefined) doc['spiffe_sequence'] = bundle.sequence;
  if (bundle.refreshHintSeconds !== undefined) doc['spiffe_refresh_hint'] = bundle.refreshHintSeconds;
  doc['keys'] = keys;
  return doc;
}

/** A stable digest of what a bundle trusts (order-insensitive), to tell a real change from a re-serialisation. */
export function bundleFingerprint(bundle: TrustBundle): string {
  const x509 = bundle.x509Authorities.map((c) => createHash('sha256').update(c.raw).digest('hex')).sort();
  const jwt = [...bundle.jwtAuthorities]
    .map(([kid, k]) => `${kid}:${createHash('sha256').update(k.export({ type: 'spki', format: 'der' })).digest('hex')}`)
    .sort();
  return createHash('sha256')
    .update(JSON.stringify({ td: bundle.trustDomain, x509, jwt, seq: bundle.sequence ?? null, hint: bundle.refreshHintSeconds ?? null }))
    .digest('hex');
}
