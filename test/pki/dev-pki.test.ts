/**
 * The dev PKI, checked with tools that share no code with it: node:crypto
 * and the openssl CLI (`x509 -text`, `verify`).
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { issueIntermediateCa, issueServerCert, issueX509Svid, pemToDer } from '../../src/pki/dev-pki.js';
import { OPENSSL } from '../helpers/openssl.js';
import { devPki } from '../helpers/pki.js';

let pki: ReturnType<typeof devPki>;
let dir: string;

beforeAll(() => {
  pki = devPki();
  dir = mkdtempSync(join(tmpdir(), 'mayfly-devpki-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function opensslText(pem: string): string {
  return execFileSync(OPENSSL, ['x509', '-noout', '-text'], { input: pem }).toString();
}

function opensslVerify(rootPem: string, untrusted: string[], leafPem: string): string {
  const root = join(dir, 'root.pem');
  const chain = join(dir, 'chain.pem');
  const leaf = join(dir, 'leaf.pem');
  writeFileSync(root, rootPem);
  writeFileSync(chain, untrusted.join('\n') || rootPem);
  writeFileSync(leaf, leafPem);
  return execFileSync(OPENSSL, ['verify', '-CAfile', root, '-untrusted', chain, '-purpose', 'sslclient', leaf]).toString();
}

describe('createDevCa', () => {
  it('is a self-signed CA with keyCertSign and the trust-domain SPIFFE ID (X.509-SVID §3.2)', () => {
    const cert = new X509Certificate(pki.example.certPem);
    expect(cert.ca).toBe(true);
    expect(cert.checkIssued(cert)).toBe(true);
    expect(cert.subjectAltName).toBe('URI:spiffe://example.org');
    const text = opensslText(pki.example.certPem);
    expect(text).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
    expect(text).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
    expect(pki.example.chainPem).toEqual([]);
  });

  it('returns the key as PKCS#8 PEM matching the certificate', () => {
    expect(pki.example.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    const key = createPrivateKey(pki.example.keyPem);
    expect(key.asymmetricKeyType).toBe('rsa');
    expect(key.asymmetricKeyDetails?.modulusLength).toBe(2048);
    expect(new X509Certificate(pki.example.certPem).checkPrivateKey(key)).toBe(true);
  });
});

describe('issueX509Svid', () => {
  it('produces a proper SVID that openssl verifies for client auth', () => {
    const svid = issueX509Svid(pki.example, { spiffeId: 'spiffe://example.org/w', keyPem: pki.leafKeyPem });
    const cert = new X509Certificate(svid.certPem);
    expect(cert.ca).toBe(false);
    expect(cert.subjectAltName).toBe('URI:spiffe://example.org/w');
    expect(cert.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']));
    const text = opensslText(svid.certPem);
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature, Key Encipherment/);
    expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/Extended Key Usage:\s+TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(opensslVerify(pki.example.certPem, [], svid.certPem)).toMatch(/OK/);
    expect(new Date(cert.validTo).getTime() - Date.now()).toBeGreaterThan(3500_000);
  });

  it('issues through an intermediate and returns the chain a peer sends', () => {
    const svid = issueX509Svid(pki.exampleIntermediate, { spiffeId: 'spiffe://example.org/w', validSeconds: 60, keyPem: pki.leafKeyPem });
    expect(svid.chainPem).toHaveLength(2);
    expect(pemToDer(svid.chainPem)).toHaveLength(2);
    expect(opensslVerify(pki.example.certPem, pki.exampleIntermediate.chainPem, svid.certPem)).toMatch(/OK/);
    const intText = opensslText(pki.exampleIntermediate.certPem);
    expect(intText).toMatch(/CA:TRUE/);
    expect(intText).toMatch(/URI:spiffe:\/\/example\.org/);
  });

  it('applies test overrides', () => {
    const svid = issueX509Svid(pki.example, {
      spiffeId: 'spiffe://example.org/w',
      keyPem: pki.leafKeyPem,
      extraUris: ['spiffe://example.org/x'],
      isCA: true,
      keyUsage: { digitalSignature: true, keyCertSign: true },
      extKeyUsage: null,
      notBefore: new Date('2020-01-01T00:00:00Z'),
      notAfter: new Date('2020-01-02T00:00:00Z'),
    });
    const cert = new X509Certificate(svid.certPem);
    expect(cert.subjectAltName).toBe('URI:spiffe://example.org/w, URI:spiffe://example.org/x');
    expect(cert.ca).toBe(true);
    expect(cert.keyUsage).toBeUndefined();
    expect(new Date(cert.validTo).toISOString()).toBe('2020-01-02T00:00:00.000Z');
    expect(opensslText(svid.certPem)).toMatch(/Digital Signature, Certificate Sign/);
    const none = issueX509Svid(pki.example, { spiffeId: 'spiffe://example.org/w', keyPem: pki.leafKeyPem, uris: [], keyUsage: null });
    expect(new X509Certificate(none.certPem).subjectAltName).toBeUndefined();
    expect(opensslText(none.certPem)).not.toMatch(/Key Usage: critical/);
  });

  it('issueIntermediateCa honours pathLen', () => {
    const int = issueIntermediateCa(pki.example, { pathLen: 0, keyPem: pki.caKeyPems[0] });
    expect(opensslText(int.certPem)).toMatch(/CA:TRUE, pathlen:0/);
  });
});

describe('issueServerCert', () => {
  it('carries DNS and IP SANs and serverAuth', () => {
    const s = issueServerCert(pki.example, { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyPem: pki.leafKeyPem });
    const cert = new X509Certificate(s.certPem);
    expect(cert.subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(cert.checkHost('localhost')).toBe('localhost');
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
  });

  it('needs a name', () => {
    let err: unknown;
    try {
      issueServerCert(pki.example, {});
    } catch (e) {
      err = e;
    }
    expect(isMayflyError(err, 'ERR_CONFIG_INVALID')).toBe(true);
  });
});
