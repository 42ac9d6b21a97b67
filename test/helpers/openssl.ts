/**
 * Test fixtures made with the openssl CLI, independently of node-forge, so
 * the verifier is checked against certificates it did not help produce
 * (including EC P-256 keys, which forge cannot make). Everything lives in a
 * temp dir and is deleted by cleanup(); private keys never leave it.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const OPENSSL = process.env['OPENSSL'] ?? '/usr/bin/openssl';

export interface OpensslCa {
  name: string;
  certPath: string;
  keyPath: string;
  certPem: string;
  certDer: Buffer;
}

export interface LeafSpec {
  /** Raw subjectAltName value, e.g. "URI:spiffe://example.org/w". Omit for no SAN. */
  san?: string;
  basicConstraints?: string;
  /** Raw keyUsage value; null omits the extension. */
  keyUsage?: string | null;
  extendedKeyUsage?: string | null;
  /** Extra raw extension config lines, e.g. "1.2.3.4 = critical,ASN1:NULL". */
  extra?: string[];
  /** openssl `ca` dates, YYYYMMDDHHMMSSZ. */
  startDate?: string;
  endDate?: string;
  /** The leaf's key (default EC P-256). */
  key?: LeafKey;
}

/** Key types a test leaf can have: the default, and ones the key-strength policy refuses. */
export type LeafKey = 'ec-p256' | 'rsa-2048' | 'rsa-1024' | 'ec-secp256k1';

/** Formats epoch ms as the GeneralizedTime `openssl ca -startdate/-enddate` accept. */
export function opensslDate(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z');
}

/** A scratch openssl PKI in a temp dir. */
export class OpensslPki {
  readonly dir: string;
  private n = 0;

  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'mayfly-openssl-'));
    mkdirSync(join(this.dir, 'newcerts'));
    writeFileSync(join(this.dir, 'serial'), '01\n');
    writeFileSync(
      join(this.dir, 'req.cnf'),
      ['[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', 'CN = unused', ''].join('\n'),
    );
  }

  private run(args: string[]): void {
    try {
      execFileSync(OPENSSL, args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      const stderr = (e as { stderr?: Buffer }).stderr?.toString() ?? '';
      throw new Error(`openssl ${args[0]} failed: ${stderr.trim()}`);
    }
  }

  private file(name: string): string {
    return join(this.dir, name);
  }

  private ecKey(name: string, kind: LeafKey = 'ec-p256'): string {
    const path = this.file(`${name}.key`);
    const opts: Record<LeafKey, string[]> = {
      'ec-p256': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'],
      'ec-secp256k1': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:secp256k1'],
      'rsa-2048': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
      'rsa-1024': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024'],
    };
    this.run(['genpkey', ...opts[kind], '-out', path]);
    return path;
  }

  /** An existing CA (e.g. a broker's dev CA) to sign with. */
  caFromFiles(name: string, certPath: string, keyPath: string): OpensslCa {
    return this.toCa(name, certPath, keyPath);
  }

  private toCa(name: string, certPath: string, keyPath: string): OpensslCa {
    const certPem = readFileSync(certPath, 'utf8');
    const b64 = certPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
    return { name, certPath, keyPath, certPem, certDer: Buffer.from(b64, 'base64') };
  }

  /** A self-signed EC P-256 root for a trust domain. */
  root(trustDomain: string, name = `root-${trustDomain}`): OpensslCa {
    const key = this.ecKey(name);
    // OpenSSL 3.0's `req` has no -extfile, so the extensions go in the request config.
    const cnf = this.file(`${name}.cnf`);
    writeFileSync(
      cnf,
      [
        '[req]',
        'distinguished_name = dn',
        'prompt = no',
        '[dn]',
        'CN = unused',
        '[v3]',
        'basicConstraints = critical,CA:TRUE',
        'keyUsage = critical,keyCertSign,cRLSign',
        'subjectKeyIdentifier = hash',
        `subjectAltName = URI:spiffe://${trustDomain}`,
        '',
      ].join('\n'),
    );
    const cert = this.file(`${name}.pem`);
    this.run(['req', '-x509', '-new', '-config', cnf, '-key', key, '-sha256', '-days', '3650', '-subj', `/O=${trustDomain}/CN=${name}`, '-extensions', 'v3', '-out', cert]);
    return this.toCa(name, cert, key);
  }

  /** Signs a CSR for a new EC key with `ca` via `openssl ca` (which, unlike `x509 -req`, takes explicit dates). */
  private sign(ca: OpensslCa, name: string, extLines: string[], startDate?: string, endDate?: string, keyKind?: LeafKey): { certPath: string; keyPath: string } {
    const key = this.ecKey(name, keyKind);
    const csr = this.file(`${name}.csr`);
    this.run(['req', '-new', '-config', this.file('req.cnf'), '-key', key, '-subj', `/CN=${name}`, '-out', csr]);
    const ext = this.file(`${name}.ext`);
    writeFileSync(ext, ['[v3]', ...extLines, ''].join('\n'));
    const db = this.file(`index-${this.n++}.txt`);
    writeFileSync(db, '');
    const cnf = this.file(`${name}.ca.cnf`);
    writeFileSync(
      cnf,
      [
        '[ca]',
        'default_ca = CA_default',
        '[CA_default]',
        `database = ${db}`,
        // Needed by the parser even with -rand_serial, which then ignores it.
        `serial = ${this.file('serial')}`,
        `new_certs_dir = ${this.file('newcerts')}`,
        'default_md = sha256',
        'default_days = 30',
        'policy = policy_any',
        'unique_subject = no',
        'copy_extensions = none',
        '[policy_any]',
        'commonName = optional',
        '',
      ].join('\n'),
    );
    const cert = this.file(`${name}.pem`);
    const args = ['ca', '-batch', '-notext', '-rand_serial', '-config', cnf, '-cert', ca.certPath, '-keyfile', ca.keyPath, '-in', csr, '-out', cert, '-extfile', ext, '-extensions', 'v3'];
    // `openssl ca` starts validity at the current second; backdate so a verifier clock read earlier still accepts it.
    args.push('-startdate', startDate ?? opensslDate(Date.now() - 3600_000), '-enddate', endDate ?? opensslDate(Date.now() + 30 * 86_400_000));
    this.run(args);
    return { certPath: cert, keyPath: key };
  }

  /** An intermediate CA below `ca`. */
  intermediate(ca: OpensslCa, name: string, opts: { trustDomain: string; basicConstraints?: string; keyUsage?: string; extra?: string[]; startDate?: string; endDate?: string }): OpensslCa {
    const lines = [
      `basicConstraints = ${opts.basicConstraints ?? 'critical,CA:TRUE'}`,
      `keyUsage = ${opts.keyUsage ?? 'critical,keyCertSign,cRLSign'}`,
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid',
      `subjectAltName = URI:spiffe://${opts.trustDomain}`,
      ...(opts.extra ?? []),
    ];
    const { certPath, keyPath } = this.sign(ca, name, lines, opts.startDate, opts.endDate);
    return this.toCa(name, certPath, keyPath);
  }

  /** A leaf below `ca`, returned as DER. Defaults are a valid X.509-SVID. */
  leaf(ca: OpensslCa, name: string, spec: LeafSpec): Buffer {
    return this.leafFiles(ca, name, spec).der;
  }

  /** A leaf below `ca` with the paths of its PEM certificate and key (for mTLS clients). */
  leafFiles(ca: OpensslCa, name: string, spec: LeafSpec): { der: Buffer; certPath: string; keyPath: string } {
    const lines = [`basicConstraints = ${spec.basicConstraints ?? 'critical,CA:FALSE'}`, 'subjectKeyIdentifier = hash', 'authorityKeyIdentifier = keyid'];
    if (spec.keyUsage !== null) lines.push(`keyUsage = ${spec.keyUsage ?? 'critical,digitalSignature'}`);
    if (spec.extendedKeyUsage !== null) lines.push(`extendedKeyUsage = ${spec.extendedKeyUsage ?? 'serverAuth,clientAuth'}`);
    if (spec.san !== undefined) lines.push(`subjectAltName = ${spec.san}`);
    lines.push(...(spec.extra ?? []));
    const { certPath, keyPath } = this.sign(ca, name, lines, spec.startDate, spec.endDate, spec.key);
    return { der: this.toCa(name, certPath, '').certDer, certPath, keyPath };
  }

  /** Removes the temp dir and every key in it. */
  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
