/**
 * Minimal X.509 extension reader on top of forge's ASN.1 DER parser.
 *
 * node:crypto verifies signatures (including ECDSA, which node-forge cannot)
 * but does not expose keyUsage or a faithful SAN list, and forge's
 * certificateFromAsn1 throws on EC keys. So we walk the DER ourselves and read
 * only what SVID validation needs (RFC 5280 §4.1, §4.2.1.3, §4.2.1.6,
 * §4.2.1.9, §4.2.1.12). Pure: no I/O, no clock.
 */
import forge from 'node-forge';

const { asn1 } = forge;

/** Raised for structurally broken DER; callers wrap it in a MayflyError with their own code. */
export class DerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DerError';
  }
}

export const OID = {
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  nameConstraints: '2.5.29.30',
  certificatePolicies: '2.5.29.32',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  anyExtendedKeyUsage: '2.5.29.37.0',
} as const;

/** Key usage bit names in RFC 5280 §4.2.1.3 bit order. */
export const KEY_USAGE_BITS = [
  'digitalSignature',
  'nonRepudiation',
  'keyEncipherment',
  'dataEncipherment',
  'keyAgreement',
  'keyCertSign',
  'cRLSign',
  'encipherOnly',
  'decipherOnly',
] as const;
export type KeyUsageName = (typeof KEY_USAGE_BITS)[number];

/** Extensions we understand; a critical extension outside this set makes a certificate unusable (RFC 5280 §4.2). */
export const UNDERSTOOD_EXTENSIONS: ReadonlySet<string> = new Set([
  OID.subjectKeyIdentifier,
  OID.keyUsage,
  OID.subjectAltName,
  OID.basicConstraints,
  OID.certificatePolicies,
  OID.authorityKeyIdentifier,
  OID.extKeyUsage,
]);

export interface CertificateFields {
  notBefore: number;
  notAfter: number;
  /** undefined when the extension is absent. */
  basicConstraints?: { cA: boolean; pathLen?: number; critical: boolean };
  keyUsage?: { usages: ReadonlySet<KeyUsageName>; critical: boolean };
  extKeyUsage?: { oids: string[]; critical: boolean };
  /** Every uniformResourceIdentifier in the SAN extension, in order. */
  uris: string[];
  /** OIDs of every extension, to spot unknown critical ones. */
  extensions: { oid: string; critical: boolean }[];
}

type Asn1 = forge.asn1.Asn1;

const DER_OPTIONS = { strict: true, parseAllBytes: true, decodeBitStrings: false };

function fromDer(bytes: string, what: string): Asn1 {
  try {
    // The typings only know the legacy boolean argument; the options object is the real API.
    return (asn1.fromDer as unknown as (b: string, o: typeof DER_OPTIONS) => Asn1)(bytes, DER_OPTIONS);
  } catch {
    throw new DerError(`${what} is not valid DER`);
  }
}

function isUniversal(node: Asn1 | undefined, type: number): node is Asn1 {
  return node !== undefined && node.tagClass === asn1.Class.UNIVERSAL && node.type === type;
}

function children(node: Asn1, what: string): Asn1[] {
  if (!Array.isArray(node.value)) throw new DerError(`${what} is not a constructed value`);
  return node.value;
}

function bytesOf(node: Asn1, what: string): string {
  if (typeof node.value !== 'string') throw new DerError(`${what} is not a primitive value`);
  return node.value;
}

function timeOf(node: Asn1 | undefined, what: string): number {
  if (isUniversal(node, asn1.Type.UTCTIME)) return asn1.utcTimeToDate(bytesOf(node, what)).getTime();
  if (isUniversal(node, asn1.Type.GENERALIZEDTIME)) return asn1.generalizedTimeToDate(bytesOf(node, what)).getTime();
  throw new DerError(`${what} is not a UTCTime or GeneralizedTime`);
}

/** Reads validity and the SVID-relevant extensions from a DER certificate. */
export function readCertificateFields(der: Buffer): CertificateFields {
  const cert = fromDer(der.toString('binary'), 'certificate');
  const top = isUniversal(cert, asn1.Type.SEQUENCE) ? children(cert, 'certificate') : [];
  const tbsNode = top[0];
  if (top.length !== 3 || !isUniversal(tbsNode, asn1.Type.SEQUENCE)) throw new DerError('certificate is not an X.509 Certificate SEQUENCE');
  const tbs = children(tbsNode, 'tbsCertificate');
  // RFC 5280 §4.1: version is an optional [0] EXPLICIT, so field positions shift by one when present.
  const first = tbs[0];
  const base = first && first.tagClass === asn1.Class.CONTEXT_SPECIFIC && first.type === 0 ? 1 : 0;
  const validityNode = tbs[base + 3];
  if (!isUniversal(validityNode, asn1.Type.SEQUENCE)) throw new DerError('certificate has no validity');
  const validity = children(validityNode, 'validity');
  const fields: CertificateFields = {
    notBefore: timeOf(validity[0], 'notBefore'),
    notAfter: timeOf(validity[1], 'notAfter'),
    uris: [],
    extensions: [],
  };
  const extWrapper = tbs.slice(base + 6).find((n) => n.tagClass === asn1.Class.CONTEXT_SPECIFIC && n.type === 3);
  if (!extWrapper) return fields;
  const extSeq = children(extWrapper, 'extensions')[0];
  if (!isUniversal(extSeq, asn1.Type.SEQUENCE)) throw new DerError('extensions are not a SEQUENCE');
  const seen = new Set<string>();
  for (const ext of children(extSeq, 'extensions')) {
    const parts = children(ext, 'extension');
    const oidNode = parts[0];
    if (!isUniversal(oidNode, asn1.Type.OID)) throw new DerError('extension has no OID');
    const oid = asn1.derToOid(bytesOf(oidNode, 'extension OID'));
    let critical = false;
    let valueNode = parts[1];
    if (isUniversal(valueNode, asn1.Type.BOOLEAN)) {
      critical = bytesOf(valueNode, 'critical flag') !== '\x00';
      valueNode = parts[2];
    }
    if (!isUniversal(valueNode, asn1.Type.OCTETSTRING)) throw new DerError(`extension ${oid} has no value`);
    // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension.
    if (seen.has(oid)) throw new DerError(`extension ${oid} appears more than once`);
    seen.add(oid);
    fields.extensions.push({ oid, critical });
    const value = bytesOf(valueNode, `extension ${oid}`);
    switch (oid) {
      case OID.subjectAltName:
        fields.uris = readSanUris(value);
        break;
      case OID.basicConstraints:
        fields.basicConstraints = { ...readBasicConstraints(value), critical };
        break;
      case OID.keyUsage:
        fields.keyUsage = { usages: readKeyUsage(value), critical };
        break;
      case OID.extKeyUsage:
        fields.extKeyUsage = { oids: readExtKeyUsage(value), critical };
        break;
      default:
        break;
    }
  }
  return fields;
}

function readSanUris(value: string): string[] {
  const seq = fromDer(value, 'subjectAltName');
  if (!isUniversal(seq, asn1.Type.SEQUENCE)) throw new DerError('subjectAltName is not a SEQUENCE');
  const uris: string[] = [];
  for (const gn of children(seq, 'subjectAltName')) {
    // GeneralName uniformResourceIdentifier is [6] IMPLICIT IA5String (RFC 5280 §4.2.1.6).
    if (gn.tagClass === asn1.Class.CONTEXT_SPECIFIC && gn.type === 6) {
      const raw = bytesOf(gn, 'URI SAN');
      // IA5String is 7-bit ASCII; anything else cannot be a SPIFFE ID and must not be silently re-encoded.
      if (/[^\x00-\x7f]/.test(raw)) throw new DerError('URI SAN contains non-ASCII bytes');
      uris.push(raw);
    }
  }
  return uris;
}

function readBasicConstraints(value: string): { cA: boolean; pathLen?: number } {
  const seq = fromDer(value, 'basicConstraints');
  if (!isUniversal(seq, asn1.Type.SEQUENCE)) throw new DerError('basicConstraints is not a SEQUENCE');
  let cA = false;
  let pathLen: number | undefined;
  for (const n of children(seq, 'basicConstraints')) {
    if (isUniversal(n, asn1.Type.BOOLEAN)) cA = bytesOf(n, 'cA') !== '\x00';
    else if (isUniversal(n, asn1.Type.INTEGER)) {
      const b = bytesOf(n, 'pathLenConstraint');
      if (b.length === 0 || b.length > 4 || b.charCodeAt(0) & 0x80) throw new DerError('pathLenConstraint is out of range');
      pathLen = asn1.derToInteger(b);
    }
  }
  return pathLen === undefined ? { cA } : { cA, pathLen };
}

function readKeyUsage(value: string): Set<KeyUsageName> {
  const bs = fromDer(value, 'keyUsage');
  if (!isUniversal(bs, asn1.Type.BITSTRING)) throw new DerError('keyUsage is not a BIT STRING');
  const raw = bytesOf(bs, 'keyUsage');
  const usages = new Set<KeyUsageName>();
  // First octet is the unused-bit count; bit 0 is the most significant bit of the second octet.
  for (let i = 0; i < KEY_USAGE_BITS.length; i++) {
    const byte = raw.charCodeAt(1 + (i >> 3));
    if (!Number.isNaN(byte) && byte & (0x80 >> (i & 7))) usages.add(KEY_USAGE_BITS[i]!);
  }
  return usages;
}

function readExtKeyUsage(value: string): string[] {
  const seq = fromDer(value, 'extKeyUsage');
  if (!isUniversal(seq, asn1.Type.SEQUENCE)) throw new DerError('extKeyUsage is not a SEQUENCE');
  return children(seq, 'extKeyUsage').map((n) => {
    if (!isUniversal(n, asn1.Type.OID)) throw new DerError('extKeyUsage entry is not an OID');
    return asn1.derToOid(bytesOf(n, 'extKeyUsage entry'));
  });
}
