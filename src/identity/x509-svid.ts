/**
 * X.509-SVID verification (SPIFFE X.509-SVID standard). Pure: the chain, the
 * trust source and the time come in, a verified SVID or a MayflyError comes
 * out. We build and check the certification path ourselves rather than lean
 * on OpenSSL's chain building, so that the anchor set is exactly the bundle of
 * the SPIFFE ID's own trust domain (Trust Domain and Bundle §6.4) and every
 * SVID rule is checked with a message an operator can act on.
 */
import { X509Certificate } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import { assertKeyStrength } from '../core/key-policy.js';
import type { EpochMs } from '../core/types.js';
import { certificateThumbprint } from '../tokens/hashes.js';
import { DerError, OID, UNDERSTOOD_EXTENSIONS, readCertificateFields, type CertificateFields } from './x509-extensions.js';
import { parseSpiffeId } from './spiffe-id.js';
import type { X509BundleSource } from './trust-source.js';

export interface VerifiedX509Svid {
  /** Canonical SPIFFE ID string of the leaf. */
  spiffeId: string;
  trustDomain: string;
  leafDer: Buffer;
  /** base64url SHA-256 of the leaf DER: the RFC 8705 §3.1 `x5t#S256` confirmation value. */
  certThumbprint: string;
  /** Earliest notAfter on the verified path: past it the leaf no longer verifies. */
  notAfter: EpochMs;
  /** The verified path, leaf first, ending with the bundle root. */
  chain: X509Certificate[];
}

export interface VerifyX509SvidOptions {
  /** Current time, epoch ms. */
  now: EpochMs;
}

/** Most certificates a peer may present (leaf plus intermediates); real chains are 1 to 3. */
export const MAX_PRESENTED_CERTS = 8;
/** Longest path tried, leaf to root inclusive; bounds the search. */
export const MAX_PATH_LENGTH = 6;
/** Candidate paths validated before giving up, so a crafted chain cannot make the search explode. */
const MAX_CANDIDATE_PATHS = 8;

interface Node {
  index: number; // position in the presented chain; -1 for a bundle root
  cert: X509Certificate;
  fields: CertificateFields;
}

function fail(message: string, details?: Record<string, string | number>): never {
  throw mayflyError('ERR_SVID_INVALID', message, details);
}

function describe(cert: X509Certificate): string {
  return cert.subject.replace(/\n/g, ', ') || '(empty subject)';
}

function iso(t: number): string {
  return new Date(t).toISOString();
}

function checkValidity(node: Node, role: string, now: EpochMs): void {
  // RFC 5280 §4.1.2.5: the validity period includes both notBefore and notAfter.
  if (now < node.fields.notBefore) fail(`${role} is not yet valid (notBefore ${iso(node.fields.notBefore)})`, { subject: describe(node.cert) });
  if (now > node.fields.notAfter) fail(`${role} expired at ${iso(node.fields.notAfter)}`, { subject: describe(node.cert) });
}

function checkCriticalExtensions(node: Node, role: string): void {
  // RFC 5280 §4.2: a certificate with an unrecognised critical extension MUST be rejected.
  // Name constraints (X.509-SVID §4.2) land here too: we do not evaluate them, so we must not ignore them.
  const unknown = node.fields.extensions.filter((e) => e.critical && !UNDERSTOOD_EXTENSIONS.has(e.oid)).map((e) => e.oid);
  if (unknown.length > 0) fail(`${role} has critical extensions this broker does not process: ${unknown.join(', ')} (RFC 5280 §4.2)`);
}

/**
 * True if `issuer`'s key signed `subject`. Path building links on the signature
 * alone; the name, key identifier and keyUsage match (checkIssued) is checked
 * when the path is validated, so a wrong intermediate gets a precise message
 * instead of "no path".
 */
function signedBy(issuer: X509Certificate, subject: X509Certificate): boolean {
  try {
    return subject.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/** Depth-first enumeration of paths from the leaf to a bundle root, using each presented intermediate at most once. */
function candidatePaths(leaf: Node, intermediates: Node[], roots: Node[]): Node[][] {
  const found: Node[][] = [];
  const walk = (path: Node[], used: Set<number>): void => {
    if (found.length >= MAX_CANDIDATE_PATHS) return;
    const current = path[path.length - 1]!;
    // A peer may send the root itself; it anchors the path only because it is byte-identical to a bundle root.
    if (path.length > 1 && roots.some((r) => r.cert.raw.equals(current.cert.raw))) {
      found.push(path);
      return;
    }
    for (const root of roots) {
      if (signedBy(root.cert, current.cert)) found.push([...path, root]);
    }
    if (path.length + 1 >= MAX_PATH_LENGTH) return;
    for (const next of intermediates) {
      if (used.has(next.index) || !signedBy(next.cert, current.cert)) continue;
      used.add(next.index);
      walk([...path, next], used);
      used.delete(next.index);
    }
  };
  walk([leaf], new Set());
  return found;
}

/** Checks the signing certificates of one path (X.509-SVID §3.2, §4.1, §4.3, §5.1) and the validity of each. */
function validatePath(path: Node[], trustDomain: string, now: EpochMs): void {
  const last = path.length - 1;
  for (let k = 1; k <= last; k++) {
    const node = path[k]!;
    const isAnchor = k === last;
    const role = isAnchor ? `root certificate (${describe(node.cert)}) of trust domain ${trustDomain}` : `intermediate certificate ${node.index} (${describe(node.cert)})`;
    if (!isAnchor) {
      // X.509-SVID §3.2 and §4.1: signing certificates MUST have cA true.
      if (node.fields.basicConstraints?.cA !== true) fail(`${role} is not a CA (basicConstraints cA must be true, SPIFFE X.509-SVID §4.1)`);
      // X.509-SVID §4.3: key usage MUST be set on every SVID and signing certificates MUST set keyCertSign.
      if (!node.fields.keyUsage?.usages.has('keyCertSign')) fail(`${role} does not set keyUsage keyCertSign (SPIFFE X.509-SVID §4.3)`);
      checkCriticalExtensions(node, role);
    }
    // RFC 5280 §4.2.1.9: pathLenConstraint caps the intermediates that may follow this CA towards the leaf.
    const pathLen = node.fields.basicConstraints?.pathLen;
    if (pathLen !== undefined && k - 1 > pathLen) fail(`${role} allows at most ${pathLen} intermediate(s) below it, but the chain has ${k - 1} (RFC 5280 §4.2.1.9)`);
    // RFC 5280 §6.1.3 (a)(4), via OpenSSL: the issuer name must equal the subject's issuer field, key identifiers must agree.
    const below = path[k - 1]!;
    if (!below.cert.checkIssued(node.cert)) {
      fail(`${k - 1 === 0 ? 'leaf certificate' : `intermediate certificate ${below.index}`} names an issuer that does not match ${role} (issuer name or key identifier differs)`);
    }
    checkValidity(node, role, now);
    if (isAnchor) assertKeyStrength(node.cert.publicKey, `root certificate key (${describe(node.cert)})`, { trustDomain });
  }
}

/** Verifies an X.509-SVID chain (leaf first, then intermediates in any order) against the bundle of the leaf's own trust domain. */
export function verifyX509Svid(chainDer: Buffer[], source: X509BundleSource, options: VerifyX509SvidOptions): VerifiedX509Svid {
  const { now } = options;
  if (!Number.isFinite(now)) fail('verification time is not set');
  if (!Array.isArray(chainDer) || chainDer.length === 0) fail('no client certificate was presented');
  if (chainDer.length > MAX_PRESENTED_CERTS) fail(`certificate chain has ${chainDer.length} certificates; at most ${MAX_PRESENTED_CERTS} are accepted`);
  const nodes: Node[] = chainDer.map((der, index) => {
    const role = index === 0 ? 'leaf certificate' : `intermediate certificate ${index}`;
    if (!Buffer.isBuffer(der)) fail(`${role} is not DER bytes`);
    try {
      return { index, cert: new X509Certificate(der), fields: readCertificateFields(der) };
    } catch (cause) {
      throw mayflyError('ERR_SVID_INVALID', `${role} could not be parsed${cause instanceof DerError ? `: ${cause.message}` : ''}`, undefined, cause);
    }
  });
  const leaf = nodes[0]!;
  // One key-strength policy for every key (core/key-policy.ts), checked before any signature work.
  for (const n of nodes) assertKeyStrength(n.cert.publicKey, n.index === 0 ? 'leaf certificate key' : `intermediate certificate ${n.index} key`);

  // X.509-SVID §2 and §5.2: the SPIFFE ID is the single URI SAN; more than one MUST be rejected.
  const uris = leaf.fields.uris;
  if (uris.length === 0) fail('leaf certificate has no URI SAN; an X.509-SVID carries its SPIFFE ID as exactly one URI SAN (SPIFFE X.509-SVID §2)');
  if (uris.length > 1) fail(`leaf certificate has ${uris.length} URI SANs; an X.509-SVID must have exactly one (SPIFFE X.509-SVID §5.2)`);
  const id = parseSpiffeId(uris[0]!);
  // X.509-SVID §3.1 and §5.2: a leaf identifies a workload, so its ID must have a path.
  if (id.path === '') fail(`leaf SPIFFE ID ${id} has no path; only signing certificates may carry a trust-domain ID (SPIFFE X.509-SVID §3.1)`);
  // X.509-SVID §4.1 and §5.2: a leaf MUST NOT be a CA.
  if (leaf.fields.basicConstraints?.cA === true) fail('leaf certificate is a CA (SPIFFE X.509-SVID §4.1)', { spiffeId: id.toString() });
  // X.509-SVID §4.3: key usage MUST be present; leaves set digitalSignature and never keyCertSign or cRLSign.
  const ku = leaf.fields.keyUsage;
  if (!ku) fail('leaf certificate has no keyUsage extension (SPIFFE X.509-SVID §4.3)', { spiffeId: id.toString() });
  if (!ku.usages.has('digitalSignature')) fail('leaf certificate keyUsage does not set digitalSignature (SPIFFE X.509-SVID §4.3)', { spiffeId: id.toString() });
  const signing = (['keyCertSign', 'cRLSign'] as const).filter((u) => ku.usages.has(u));
  if (signing.length > 0) fail(`leaf certificate keyUsage sets ${signing.join(' and ')}, which only signing certificates may set (SPIFFE X.509-SVID §4.3, §5.2)`, { spiffeId: id.toString() });
  // X.509-SVID §4.4: when EKU is present it must allow client authentication, which is how callers reach us.
  const eku = leaf.fields.extKeyUsage;
  if (eku && !eku.oids.includes(OID.clientAuth) && !eku.oids.includes(OID.anyExtendedKeyUsage)) {
    fail('leaf certificate extendedKeyUsage does not include clientAuth (SPIFFE X.509-SVID §4.4)', { spiffeId: id.toString() });
  }
  checkCriticalExtensions(leaf, 'leaf certificate');
  checkValidity(leaf, 'leaf certificate', now);

  // Trust Domain and Bundle §6.4: only the authorities of the ID's own trust domain may vouch for it.
  const td = id.trustDomain;
  const authorities = source.x509BundleFor(td);
  if (!authorities || authorities.length === 0) fail(`no X.509 trust bundle is configured for trust domain ${td}`, { trustDomain: td });
  const roots: Node[] = authorities.map((cert) => ({ index: -1, cert, fields: readRootFields(cert) }));
  const paths = candidatePaths(leaf, nodes.slice(1), roots);
  if (paths.length === 0) fail(`certificate chain does not lead to a root trusted for trust domain ${td}`, { trustDomain: td, spiffeId: id.toString() });

  let firstError: unknown;
  for (const path of paths) {
    try {
      validatePath(path, td, now);
    } catch (e) {
      firstError ??= e;
      continue;
    }
    return {
      spiffeId: id.toString(),
      trustDomain: td,
      leafDer: Buffer.from(leaf.cert.raw),
      certThumbprint: certificateThumbprint(leaf.cert.raw),
      notAfter: Math.min(...path.map((n) => n.fields.notAfter)),
      chain: path.map((n) => n.cert),
    };
  }
  throw firstError;
}

function readRootFields(cert: X509Certificate): CertificateFields {
  try {
    return readCertificateFields(cert.raw);
  } catch (cause) {
    // Bundles are checked when loaded, so this means a source handed us something it should not have.
    throw mayflyError('ERR_CONFIG_INVALID', `a trust bundle root (${describe(cert)}) could not be parsed`, undefined, cause);
  }
}
