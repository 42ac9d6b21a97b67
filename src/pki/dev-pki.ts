/**
 * A development PKI on node-forge: a root per trust domain, intermediates,
 * server certificates and X.509-SVIDs. DEV ONLY: keys live in memory and are
 * returned as PEM; production SVIDs come from SPIRE or another SPIFFE issuer.
 * The overrides exist so tests can mint each malformed SVID the verifier must
 * reject, without hand-editing DER.
 */
import { randomBytes } from 'node:crypto';
import forge from 'node-forge';
import { mayflyError } from '../core/errors.js';

const { pki } = forge;

/** A CA able to issue: its certificate and PKCS#8 key, plus the intermediates above it (excluding the root). */
export interface DevCa {
  trustDomain: string;
  certPem: string;
  keyPem: string;
  /** Certificates from this CA up to, but excluding, the root; empty for a root. */
  chainPem: string[];
}

/** An issued end-entity certificate with its key and the chain a peer would send (leaf first, no root). */
export interface IssuedCert {
  certPem: string;
  keyPem: string;
  chainPem: string[];
}

export interface KeyUsageFlags {
  digitalSignature?: boolean;
  nonRepudiation?: boolean;
  keyEncipherment?: boolean;
  dataEncipherment?: boolean;
  keyAgreement?: boolean;
  keyCertSign?: boolean;
  cRLSign?: boolean;
}

const DAY_MS = 86_400_000;
// Tolerate small clock skew between the machine that issues and the one that verifies.
const BACKDATE_MS = 60_000;

/** A fresh RSA 2048 key pair, or the pair of `keyPem` when the caller reuses a key (tests; re-issuance with the same key). */
function keyPair(keyPem?: string): forge.pki.rsa.KeyPair {
  if (keyPem !== undefined) {
    const privateKey = pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
    return { privateKey, publicKey: pki.setRsaPublicKey(privateKey.n, privateKey.e) };
  }
  // forge delegates to node's native generateKeyPairSync; still the slow step, hence keyPem.
  return pki.rsa.generateKeyPair({ bits: 2048, e: 0x10001 });
}

function pkcs8Pem(key: forge.pki.rsa.PrivateKey): string {
  return pki.privateKeyInfoToPem(pki.wrapRsaPrivateKey(pki.privateKeyToAsn1(key)));
}

function serialHex(): string {
  const b = randomBytes(16);
  // DER INTEGERs are signed: keep the serial positive and minimally encoded.
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString('hex');
}

function loadCa(ca: DevCa): { cert: forge.pki.Certificate; key: forge.pki.rsa.PrivateKey } {
  return { cert: pki.certificateFromPem(ca.certPem), key: pki.privateKeyFromPem(ca.keyPem) as forge.pki.rsa.PrivateKey };
}

function authorityKeyId(caCert: forge.pki.Certificate): string {
  // forge's `keyIdentifier: true` would use the subject's own key; the AKI must name the issuer's key (RFC 5280 §4.2.1.1).
  return caCert.generateSubjectKeyIdentifier().getBytes();
}

function checkTrustDomain(td: string): void {
  if (!/^[a-z0-9._-]+$/.test(td)) throw mayflyError('ERR_CONFIG_INVALID', `dev PKI: ${JSON.stringify(td)} is not a valid trust domain name`);
}

function build(
  subjectCn: string,
  publicKey: forge.pki.PublicKey,
  issuer: { cert: forge.pki.Certificate; key: forge.pki.rsa.PrivateKey } | null,
  selfKey: forge.pki.rsa.PrivateKey,
  notBefore: Date,
  notAfter: Date,
  extensions: unknown[],
): forge.pki.Certificate {
  const cert = pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = serialHex();
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  cert.setSubject([{ name: 'commonName', value: subjectCn }]);
  cert.setIssuer(issuer ? issuer.cert.subject.attributes : [{ name: 'commonName', value: subjectCn }]);
  cert.setExtensions(extensions as never[]);
  cert.sign(issuer ? issuer.key : selfKey, forge.md.sha256.create());
  return cert;
}

/** Creates a self-signed root CA for a trust domain (an SVID signing certificate, X.509-SVID §3.2). */
export function createDevCa(options: { trustDomain: string; commonName?: string; validDays?: number; now?: number; keyPem?: string }): DevCa {
  checkTrustDomain(options.trustDomain);
  const now = options.now ?? Date.now();
  const keys = keyPair(options.keyPem);
  const cert = build(
    options.commonName ?? `Mayfly dev CA ${options.trustDomain}`,
    keys.publicKey,
    null,
    keys.privateKey,
    new Date(now - BACKDATE_MS),
    new Date(now + (options.validDays ?? 365) * DAY_MS),
    [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      { name: 'subjectKeyIdentifier' },
      // X.509-SVID §3.2: a signing certificate SHOULD be an SVID whose ID has no path.
      { name: 'subjectAltName', altNames: [{ type: 6, value: `spiffe://${options.trustDomain}` }] },
    ],
  );
  return { trustDomain: options.trustDomain, certPem: pki.certificateToPem(cert), keyPem: pkcs8Pem(keys.privateKey), chainPem: [] };
}

/** Issues an intermediate CA below `ca`, optionally for another trust domain and with a pathLenConstraint. */
export function issueIntermediateCa(
  ca: DevCa,
  options: { trustDomain?: string; commonName?: string; validDays?: number; pathLen?: number; now?: number; keyUsage?: KeyUsageFlags; isCA?: boolean; keyPem?: string } = {},
): DevCa {
  const td = options.trustDomain ?? ca.trustDomain;
  checkTrustDomain(td);
  const issuer = loadCa(ca);
  const now = options.now ?? Date.now();
  const keys = keyPair(options.keyPem);
  const bc: Record<string, unknown> = { name: 'basicConstraints', cA: options.isCA ?? true, critical: true };
  if (options.pathLen !== undefined) bc['pathLenConstraint'] = options.pathLen;
  const cert = build(
    options.commonName ?? `Mayfly dev intermediate ${td}`,
    keys.publicKey,
    issuer,
    keys.privateKey,
    new Date(now - BACKDATE_MS),
    new Date(now + (options.validDays ?? 180) * DAY_MS),
    [
      bc,
      { name: 'keyUsage', ...(options.keyUsage ?? { keyCertSign: true, cRLSign: true }), critical: true },
      { name: 'subjectKeyIdentifier' },
      { name: 'authorityKeyIdentifier', keyIdentifier: authorityKeyId(issuer.cert) },
      { name: 'subjectAltName', altNames: [{ type: 6, value: `spiffe://${td}` }] },
    ],
  );
  return { trustDomain: td, certPem: pki.certificateToPem(cert), keyPem: pkcs8Pem(keys.privateKey), chainPem: [pki.certificateToPem(cert), ...ca.chainPem] };
}

/** Issues a TLS server certificate (serverAuth) for DNS names and IP addresses. */
export function issueServerCert(ca: DevCa, options: { dnsNames?: string[]; ipAddresses?: string[]; commonName?: string; validDays?: number; now?: number; keyPem?: string }): IssuedCert {
  const dnsNames = options.dnsNames ?? [];
  const ips = options.ipAddresses ?? [];
  if (dnsNames.length + ips.length === 0) throw mayflyError('ERR_CONFIG_INVALID', 'dev PKI: a server certificate needs at least one DNS name or IP address');
  const issuer = loadCa(ca);
  const now = options.now ?? Date.now();
  const keys = keyPair(options.keyPem);
  const cert = build(
    options.commonName ?? dnsNames[0] ?? ips[0]!,
    keys.publicKey,
    issuer,
    keys.privateKey,
    new Date(now - BACKDATE_MS),
    new Date(now + (options.validDays ?? 30) * DAY_MS),
    [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectKeyIdentifier' },
      { name: 'authorityKeyIdentifier', keyIdentifier: authorityKeyId(issuer.cert) },
      { name: 'subjectAltName', altNames: [...dnsNames.map((value) => ({ type: 2, value })), ...ips.map((ip) => ({ type: 7, ip }))] },
    ],
  );
  const certPem = pki.certificateToPem(cert);
  return { certPem, keyPem: pkcs8Pem(keys.privateKey), chainPem: [certPem, ...ca.chainPem] };
}

export interface SvidOptions {
  spiffeId: string;
  /** Lifetime from `now`; default one hour. */
  validSeconds?: number;
  now?: number;
  /** Certify this existing PKCS#8 RSA key instead of generating one. */
  keyPem?: string;
  // Test overrides: each produces a certificate a correct verifier must reject.
  /** Replaces the URI SANs entirely (use [] for none, or any raw string). */
  uris?: string[];
  /** URI SANs added after the SPIFFE ID. */
  extraUris?: string[];
  dnsNames?: string[];
  isCA?: boolean;
  /** Replaces the key usage flags; null omits the extension. */
  keyUsage?: KeyUsageFlags | null;
  /** Replaces the EKU flags; null omits the extension. */
  extKeyUsage?: { serverAuth?: boolean; clientAuth?: boolean } | null;
  notBefore?: Date;
  notAfter?: Date;
}

/** Issues an X.509-SVID: one URI SAN, keyUsage digitalSignature+keyEncipherment critical, CA false, EKU serverAuth+clientAuth (X.509-SVID §4). */
export function issueX509Svid(ca: DevCa, options: SvidOptions): IssuedCert {
  const issuer = loadCa(ca);
  const now = options.now ?? Date.now();
  const keys = keyPair(options.keyPem);
  const uris = options.uris ?? [options.spiffeId, ...(options.extraUris ?? [])];
  const altNames = [...uris.map((value) => ({ type: 6, value })), ...(options.dnsNames ?? []).map((value) => ({ type: 2, value }))];
  const extensions: unknown[] = [
    { name: 'basicConstraints', cA: options.isCA ?? false, critical: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: authorityKeyId(issuer.cert) },
  ];
  // X.509-SVID §4.3: keyEncipherment is allowed for RSA leaves (RSA key transport in older TLS).
  if (options.keyUsage !== null) extensions.push({ name: 'keyUsage', ...(options.keyUsage ?? { digitalSignature: true, keyEncipherment: true }), critical: true });
  if (options.extKeyUsage !== null) extensions.push({ name: 'extKeyUsage', ...(options.extKeyUsage ?? { serverAuth: true, clientAuth: true }) });
  // RFC 5280 §4.2.1.6: with a SAN, the subject may be empty; we keep a CN for readable logs, so the SAN need not be critical.
  if (altNames.length > 0) extensions.push({ name: 'subjectAltName', altNames });
  const cert = build(
    'Mayfly dev SVID',
    keys.publicKey,
    issuer,
    keys.privateKey,
    options.notBefore ?? new Date(now - BACKDATE_MS),
    options.notAfter ?? new Date(now + (options.validSeconds ?? 3600) * 1000),
    extensions,
  );
  const certPem = pki.certificateToPem(cert);
  return { certPem, keyPem: pkcs8Pem(keys.privateKey), chainPem: [certPem, ...ca.chainPem] };
}

/** Converts PEM certificate blocks to DER buffers (what a TLS peer certificate chain looks like). */
export function pemToDer(pem: string | string[]): Buffer[] {
  const text = Array.isArray(pem) ? pem.join('\n') : pem;
  return [...text.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
}
