/**
 * verifyX509Svid against node-forge (RSA) certificates from the dev PKI:
 * one fixture per rule of the SPIFFE X.509-SVID standard.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { StaticTrustSource } from '../../src/identity/trust-source.js';
import { verifyX509Svid } from '../../src/identity/x509-svid.js';
import { createDevCa, issueIntermediateCa, issueX509Svid as issue, pemToDer, type DevCa, type SvidOptions } from '../../src/pki/dev-pki.js';
import { bundleOf, devPki, sourceOf } from '../helpers/pki.js';

const NOW = Date.now();
const ID = 'spiffe://example.org/workload';

function expectError(fn: () => unknown, code: string, message: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a MayflyError').toBeDefined();
  expect(isMayflyError(err)).toBe(true);
  expect((err as { code: string }).code).toBe(code);
  expect((err as Error).message).toMatch(message);
}

/** Issues with the shared leaf key (keygen is the slow part of these tests). */
function issueX509Svid(ca: DevCa, opts: SvidOptions) {
  return issue(ca, { keyPem: pki.leafKeyPem, ...opts });
}

let source: StaticTrustSource;
let pki: ReturnType<typeof devPki>;

beforeAll(() => {
  pki = devPki();
  source = sourceOf(pki.example, pki.other);
});

describe('verifyX509Svid: accepts', () => {
  it('an SVID signed by the trust domain root', () => {
    const svid = issueX509Svid(pki.example, { spiffeId: ID });
    const chain = pemToDer(svid.chainPem);
    const r = verifyX509Svid(chain, source, { now: NOW });
    expect(r.spiffeId).toBe(ID);
    expect(r.trustDomain).toBe('example.org');
    expect(r.leafDer.equals(chain[0]!)).toBe(true);
    expect(r.certThumbprint).toBe(createHash('sha256').update(chain[0]!).digest('base64url'));
    expect(r.chain).toHaveLength(2);
    expect(r.chain[1]!.raw.equals(new X509Certificate(pki.example.certPem).raw)).toBe(true);
    expect(r.notAfter).toBe(new Date(new X509Certificate(svid.certPem).validTo).getTime());
  });

  it('an SVID issued by an intermediate, with the intermediate sent by the peer', () => {
    const svid = issueX509Svid(pki.exampleIntermediate, { spiffeId: ID });
    const r = verifyX509Svid(pemToDer(svid.chainPem), source, { now: NOW });
    expect(r.chain).toHaveLength(3);
  });

  it('a chain that also carries the root itself', () => {
    const svid = issueX509Svid(pki.exampleIntermediate, { spiffeId: ID });
    const r = verifyX509Svid([...pemToDer(svid.chainPem), ...pemToDer(pki.example.certPem)], source, { now: NOW });
    expect(r.chain).toHaveLength(3);
  });

  it('intermediates in any order, and ignores an unrelated extra certificate', () => {
    const int2 = issueIntermediateCa(pki.exampleIntermediate, { commonName: 'second', keyPem: pki.caKeyPems[0] });
    const svid = issueX509Svid(int2, { spiffeId: ID });
    const [leaf, a, b] = pemToDer(svid.chainPem) as [Buffer, Buffer, Buffer];
    const unrelated = pemToDer(pki.other.certPem)[0]!;
    const r = verifyX509Svid([leaf, b, unrelated, a], source, { now: NOW });
    expect(r.chain).toHaveLength(4);
  });

  it('the boundaries of the validity window (inclusive)', () => {
    const notBefore = new Date(Math.floor(NOW / 1000) * 1000 - 10_000);
    const notAfter = new Date(notBefore.getTime() + 20_000);
    const chain = pemToDer(issueX509Svid(pki.example, { spiffeId: ID, notBefore, notAfter }).chainPem);
    expect(verifyX509Svid(chain, source, { now: notBefore.getTime() }).spiffeId).toBe(ID);
    expect(verifyX509Svid(chain, source, { now: notAfter.getTime() }).spiffeId).toBe(ID);
  });

  it('an SVID without EKU (EKU is only SHOULD, X.509-SVID §4.4)', () => {
    const chain = pemToDer(issueX509Svid(pki.example, { spiffeId: ID, extKeyUsage: null }).chainPem);
    expect(verifyX509Svid(chain, source, { now: NOW }).spiffeId).toBe(ID);
  });
});

describe('verifyX509Svid: rejects (one fixture per rule)', () => {
  const past = (ms: number) => new Date(NOW - ms);
  const cases: { name: string; ca?: () => DevCa; opts: Partial<SvidOptions>; code: string; message: RegExp }[] = [
    { name: 'no URI SAN', opts: { uris: [], dnsNames: ['w.example.org'] }, code: 'ERR_SVID_INVALID', message: /no URI SAN/ },
    { name: 'no SAN at all', opts: { uris: [] }, code: 'ERR_SVID_INVALID', message: /no URI SAN/ },
    { name: 'two URI SANs', opts: { extraUris: ['spiffe://example.org/other'] }, code: 'ERR_SVID_INVALID', message: /2 URI SANs.*§5\.2/ },
    { name: 'URI SAN that is not a SPIFFE ID', opts: { uris: ['https://example.org/w'] }, code: 'ERR_SPIFFE_ID_INVALID', message: /scheme/ },
    { name: 'uppercase trust domain', opts: { uris: ['spiffe://Example.org/w'] }, code: 'ERR_SPIFFE_ID_INVALID', message: /uppercase/ },
    { name: 'dot-dot segment', opts: { uris: ['spiffe://example.org/a/../b'] }, code: 'ERR_SPIFFE_ID_INVALID', message: /dot segment/ },
    { name: 'query', opts: { uris: ['spiffe://example.org/w?x=1'] }, code: 'ERR_SPIFFE_ID_INVALID', message: /query/ },
    { name: 'port', opts: { uris: ['spiffe://example.org:443/w'] }, code: 'ERR_SPIFFE_ID_INVALID', message: /port/ },
    { name: 'userinfo', opts: { uris: ['spiffe://u@example.org/w'] }, code: 'ERR_SPIFFE_ID_INVALID', message: /userinfo/ },
    { name: 'trust-domain ID on a leaf', opts: { uris: ['spiffe://example.org'] }, code: 'ERR_SVID_INVALID', message: /has no path.*§3\.1/ },
    { name: 'leaf is a CA', opts: { isCA: true }, code: 'ERR_SVID_INVALID', message: /leaf certificate is a CA \(SPIFFE X\.509-SVID §4\.1\)/ },
    { name: 'no keyUsage', opts: { keyUsage: null }, code: 'ERR_SVID_INVALID', message: /no keyUsage extension.*§4\.3/ },
    { name: 'keyUsage without digitalSignature', opts: { keyUsage: { keyEncipherment: true } }, code: 'ERR_SVID_INVALID', message: /does not set digitalSignature/ },
    { name: 'keyUsage with keyCertSign', opts: { keyUsage: { digitalSignature: true, keyCertSign: true } }, code: 'ERR_SVID_INVALID', message: /sets keyCertSign/ },
    { name: 'keyUsage with cRLSign', opts: { keyUsage: { digitalSignature: true, cRLSign: true } }, code: 'ERR_SVID_INVALID', message: /sets cRLSign/ },
    { name: 'EKU without clientAuth', opts: { extKeyUsage: { serverAuth: true } }, code: 'ERR_SVID_INVALID', message: /clientAuth.*§4\.4/ },
    { name: 'expired', opts: { notBefore: past(7200_000), notAfter: past(3600_000) }, code: 'ERR_SVID_INVALID', message: /leaf certificate expired at/ },
    { name: 'not yet valid', opts: { notBefore: new Date(NOW + 3600_000), notAfter: new Date(NOW + 7200_000) }, code: 'ERR_SVID_INVALID', message: /leaf certificate is not yet valid/ },
    { name: 'signed by the CA of another trust domain', ca: () => pki.other, opts: {}, code: 'ERR_SVID_INVALID', message: /does not lead to a root trusted for trust domain example\.org/ },
    {
      name: 'other.org ID signed by the example.org CA (a CA never vouches outside its trust domain)',
      opts: { spiffeId: 'spiffe://other.org/w' },
      code: 'ERR_SVID_INVALID',
      message: /does not lead to a root trusted for trust domain other\.org/,
    },
    { name: 'trust domain without a bundle', opts: { spiffeId: 'spiffe://unknown.org/w' }, code: 'ERR_SVID_INVALID', message: /no X\.509 trust bundle is configured for trust domain unknown\.org/ },
  ];
  it.each(cases)('$name', ({ ca, opts, code, message }) => {
    const svid = issueX509Svid(ca ? ca() : pki.example, { spiffeId: ID, ...opts });
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem), source, { now: NOW }), code, message);
  });

  it('intermediate of another trust domain cannot issue for example.org', () => {
    const otherInt = issueIntermediateCa(pki.other, { trustDomain: 'other.org', keyPem: pki.caKeyPems[0] });
    const svid = issueX509Svid(otherInt, { spiffeId: ID });
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem), source, { now: NOW }), 'ERR_SVID_INVALID', /does not lead to a root trusted for trust domain example\.org/);
  });

  it('missing intermediate', () => {
    const svid = issueX509Svid(pki.exampleIntermediate, { spiffeId: ID });
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem).slice(0, 1), source, { now: NOW }), 'ERR_SVID_INVALID', /does not lead to a root/);
  });

  it('intermediate that is not a CA', () => {
    const notCa = issueIntermediateCa(pki.example, { isCA: false, keyPem: pki.caKeyPems[0] });
    const svid = issueX509Svid(notCa, { spiffeId: ID });
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem), source, { now: NOW }), 'ERR_SVID_INVALID', /intermediate certificate 1 .* is not a CA/);
  });

  it('intermediate without keyCertSign', () => {
    const noSign = issueIntermediateCa(pki.example, { keyUsage: { digitalSignature: true }, keyPem: pki.caKeyPems[0] });
    const svid = issueX509Svid(noSign, { spiffeId: ID });
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem), source, { now: NOW }), 'ERR_SVID_INVALID', /does not set keyUsage keyCertSign/);
  });

  it('pathLenConstraint exceeded', () => {
    const int1 = issueIntermediateCa(pki.example, { pathLen: 0, keyPem: pki.caKeyPems[0] });
    const int2 = issueIntermediateCa(int1, { keyPem: pki.caKeyPems[1] });
    const svid = issueX509Svid(int2, { spiffeId: ID });
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem), source, { now: NOW }), 'ERR_SVID_INVALID', /allows at most 0 intermediate/);
  });

  it('expired intermediate', () => {
    const old = issueIntermediateCa(pki.example, { now: NOW - 10 * 86_400_000, validDays: 1, keyPem: pki.caKeyPems[0] });
    const svid = issueX509Svid(old, { spiffeId: ID });
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem), source, { now: NOW }), 'ERR_SVID_INVALID', /intermediate certificate 1 .* expired at/);
  });

  it('expired root', () => {
    const oldRoot = createDevCa({ trustDomain: 'example.org', now: NOW - 10 * 86_400_000, validDays: 1, keyPem: pki.caKeyPems[1] });
    const svid = issueX509Svid(oldRoot, { spiffeId: ID });
    const src = new StaticTrustSource([bundleOf(oldRoot)]);
    expectError(() => verifyX509Svid(pemToDer(svid.chainPem), src, { now: NOW }), 'ERR_SVID_INVALID', /root certificate .* of trust domain example\.org expired/);
  });

  it('tampered leaf signature', () => {
    const der = Buffer.from(pemToDer(issueX509Svid(pki.example, { spiffeId: ID }).certPem)[0]!);
    der[der.length - 5]! ^= 0xff;
    expectError(() => verifyX509Svid([der], source, { now: NOW }), 'ERR_SVID_INVALID', /does not lead to a root/);
  });

  it.each([
    ['empty chain', [] as Buffer[], /no client certificate/],
    ['garbage', [Buffer.from('not a certificate')], /leaf certificate could not be parsed/],
    ['too many certificates', Array.from({ length: 9 }, () => Buffer.alloc(1)), /at most 8/],
  ])('%s', (_name, chain, message) => {
    expectError(() => verifyX509Svid(chain, source, { now: NOW }), 'ERR_SVID_INVALID', message);
  });

  it('requires a time', () => {
    const chain = pemToDer(issueX509Svid(pki.example, { spiffeId: ID }).chainPem);
    expectError(() => verifyX509Svid(chain, source, { now: Number.NaN }), 'ERR_SVID_INVALID', /time/);
  });
});
