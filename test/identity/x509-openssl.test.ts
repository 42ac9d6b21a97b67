/**
 * verifyX509Svid against EC P-256 certificates made by the openssl CLI, so
 * the verifier is checked on certificates node-forge did not produce.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { X509Certificate } from 'node:crypto';
import { parseJwksBundle, parsePemBundle } from '../../src/identity/trust-bundle.js';
import { StaticTrustSource } from '../../src/identity/trust-source.js';
import { verifyX509Svid } from '../../src/identity/x509-svid.js';
import { OpensslPki, type LeafSpec, type OpensslCa } from '../helpers/openssl.js';

// Read after the fixtures exist: `openssl req -x509` starts the root's validity at the current second.
let NOW = 0;
const ID = 'spiffe://example.org/workload';

let ossl: OpensslPki;
let root: OpensslCa;
let otherRoot: OpensslCa;
let int: OpensslCa;
let source: StaticTrustSource;

beforeAll(() => {
  ossl = new OpensslPki();
  root = ossl.root('example.org');
  otherRoot = ossl.root('other.org');
  int = ossl.intermediate(root, 'int', { trustDomain: 'example.org' });
  source = new StaticTrustSource([parsePemBundle('example.org', root.certPem), parsePemBundle('other.org', otherRoot.certPem)]);
  NOW = Date.now() + 1000;
});

afterAll(() => ossl?.cleanup());

function verifyError(chain: Buffer[]): { code: string; message: string } {
  try {
    verifyX509Svid(chain, source, { now: NOW });
  } catch (e) {
    expect(isMayflyError(e)).toBe(true);
    return { code: (e as { code: string }).code, message: (e as Error).message };
  }
  throw new Error('expected verification to fail');
}

describe('openssl EC SVIDs: accepted', () => {
  it('leaf signed by the root', () => {
    const r = verifyX509Svid([ossl.leaf(root, 'ok', { san: `URI:${ID}` })], source, { now: NOW });
    expect(r.spiffeId).toBe(ID);
    expect(r.chain[0]!.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(r.certThumbprint).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('leaf via an intermediate, with DNS SANs alongside the URI SAN (X.509-SVID §2)', () => {
    const leaf = ossl.leaf(int, 'ok-int', { san: `URI:${ID},DNS:w.example.org` });
    const r = verifyX509Svid([leaf, int.certDer], source, { now: NOW });
    expect(r.chain).toHaveLength(3);
  });

  it('an RSA-2048 leaf meets the key-strength policy', () => {
    const r = verifyX509Svid([ossl.leaf(root, 'ok-rsa', { san: `URI:${ID}`, key: 'rsa-2048' })], source, { now: NOW });
    expect(r.chain[0]!.publicKey.asymmetricKeyDetails?.modulusLength).toBe(2048);
  });

  it('two intermediates sent in reverse order', () => {
    const int2 = ossl.intermediate(int, 'int2', { trustDomain: 'example.org' });
    const leaf = ossl.leaf(int2, 'ok-int2', { san: `URI:${ID}` });
    expect(verifyX509Svid([leaf, int.certDer, int2.certDer], source, { now: NOW }).chain).toHaveLength(4);
  });
});

describe('openssl EC SVIDs: JWKS bundle', () => {
  it('verifies against an EC root published in a SPIFFE JWKS bundle', () => {
    const entry = { ...(new X509Certificate(root.certDer).publicKey.export({ format: 'jwk' }) as object), use: 'x509-svid', x5c: [root.certDer.toString('base64')] };
    const src = new StaticTrustSource([parseJwksBundle('example.org', { keys: [entry] })]);
    const leaf = ossl.leaf(int, 'ok-jwks', { san: `URI:${ID}` });
    expect(verifyX509Svid([leaf, int.certDer], src, { now: NOW }).trustDomain).toBe('example.org');
  });
});

describe('openssl EC SVIDs: rejected', () => {
  const cases: { name: string; spec: LeafSpec; viaOther?: boolean; code: string; message: RegExp }[] = [
    { name: 'CA leaf', spec: { san: `URI:${ID}`, basicConstraints: 'critical,CA:TRUE' }, code: 'ERR_SVID_INVALID', message: /leaf certificate is a CA \(SPIFFE X\.509-SVID §4\.1\)/ },
    { name: 'missing digitalSignature', spec: { san: `URI:${ID}`, keyUsage: 'critical,keyAgreement' }, code: 'ERR_SVID_INVALID', message: /does not set digitalSignature/ },
    { name: 'keyCertSign set', spec: { san: `URI:${ID}`, keyUsage: 'critical,digitalSignature,keyCertSign' }, code: 'ERR_SVID_INVALID', message: /sets keyCertSign/ },
    { name: 'cRLSign set', spec: { san: `URI:${ID}`, keyUsage: 'critical,digitalSignature,cRLSign' }, code: 'ERR_SVID_INVALID', message: /sets cRLSign/ },
    { name: 'no keyUsage', spec: { san: `URI:${ID}`, keyUsage: null }, code: 'ERR_SVID_INVALID', message: /no keyUsage extension/ },
    { name: 'EKU serverAuth only', spec: { san: `URI:${ID}`, extendedKeyUsage: 'serverAuth' }, code: 'ERR_SVID_INVALID', message: /clientAuth/ },
    { name: 'two URI SANs', spec: { san: `URI:${ID},URI:spiffe://example.org/second` }, code: 'ERR_SVID_INVALID', message: /2 URI SANs/ },
    { name: 'no URI SAN', spec: { san: 'DNS:w.example.org' }, code: 'ERR_SVID_INVALID', message: /no URI SAN/ },
    { name: 'no SAN', spec: {}, code: 'ERR_SVID_INVALID', message: /no URI SAN/ },
    { name: 'uppercase trust domain', spec: { san: 'URI:spiffe://Example.org/w' }, code: 'ERR_SPIFFE_ID_INVALID', message: /uppercase/ },
    { name: 'dot-dot segment', spec: { san: 'URI:spiffe://example.org/a/../b' }, code: 'ERR_SPIFFE_ID_INVALID', message: /dot segment/ },
    { name: 'query', spec: { san: 'URI:spiffe://example.org/w?a=b' }, code: 'ERR_SPIFFE_ID_INVALID', message: /query/ },
    { name: 'port', spec: { san: 'URI:spiffe://example.org:8443/w' }, code: 'ERR_SPIFFE_ID_INVALID', message: /port/ },
    { name: 'userinfo', spec: { san: 'URI:spiffe://admin@example.org/w' }, code: 'ERR_SPIFFE_ID_INVALID', message: /userinfo/ },
    { name: 'wrong scheme', spec: { san: 'URI:https://example.org/w' }, code: 'ERR_SPIFFE_ID_INVALID', message: /scheme/ },
    { name: 'no path', spec: { san: 'URI:spiffe://example.org' }, code: 'ERR_SVID_INVALID', message: /has no path/ },
    { name: 'unknown critical extension', spec: { san: `URI:${ID}`, extra: ['1.2.3.4 = critical,ASN1:NULL'] }, code: 'ERR_SVID_INVALID', message: /critical extensions this broker does not process: 1\.2\.3\.4/ },
    { name: 'expired', spec: { san: `URI:${ID}`, startDate: '20200101000000Z', endDate: '20200102000000Z' }, code: 'ERR_SVID_INVALID', message: /leaf certificate expired at 2020-01-02T00:00:00\.000Z/ },
    { name: 'not yet valid', spec: { san: `URI:${ID}`, startDate: '20990101000000Z', endDate: '20990102000000Z' }, code: 'ERR_SVID_INVALID', message: /not yet valid \(notBefore 2099-01-01/ },
    { name: 'RSA-1024 leaf key', spec: { san: `URI:${ID}`, key: 'rsa-1024' }, code: 'ERR_KEY_WEAK', message: /leaf certificate key: RSA key of 1024 bits; at least 2048 are required/ },
    { name: 'secp256k1 leaf key', spec: { san: `URI:${ID}`, key: 'ec-secp256k1' }, code: 'ERR_KEY_WEAK', message: /leaf certificate key: EC key on curve secp256k1/ },
    { name: 'signed by the CA of another trust domain', spec: { san: `URI:${ID}` }, viaOther: true, code: 'ERR_SVID_INVALID', message: /does not lead to a root trusted for trust domain example\.org/ },
  ];

  it.each(cases)('$name', ({ name, spec, viaOther, code, message }) => {
    const leaf = ossl.leaf(viaOther ? otherRoot : root, `bad-${name.replace(/\W+/g, '-')}`, spec);
    const err = verifyError([leaf]);
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
  });

  it('other.org ID issued by the example.org root', () => {
    const err = verifyError([ossl.leaf(root, 'cross', { san: 'URI:spiffe://other.org/w' })]);
    expect(err).toEqual({ code: 'ERR_SVID_INVALID', message: expect.stringMatching(/trust domain other\.org/) });
  });

  it('intermediate that is not a CA', () => {
    const notCa = ossl.intermediate(root, 'int-not-ca', { trustDomain: 'example.org', basicConstraints: 'critical,CA:FALSE' });
    const err = verifyError([ossl.leaf(notCa, 'leaf-not-ca', { san: `URI:${ID}` }), notCa.certDer]);
    expect(err.message).toMatch(/intermediate certificate 1 .* is not a CA/);
  });

  it('intermediate without keyCertSign', () => {
    const noSign = ossl.intermediate(root, 'int-no-sign', { trustDomain: 'example.org', keyUsage: 'critical,digitalSignature' });
    const err = verifyError([ossl.leaf(noSign, 'leaf-no-sign', { san: `URI:${ID}` }), noSign.certDer]);
    expect(err.message).toMatch(/does not set keyUsage keyCertSign/);
  });

  it('expired intermediate', () => {
    const old = ossl.intermediate(root, 'int-old', { trustDomain: 'example.org', startDate: '20200101000000Z', endDate: '20200102000000Z' });
    const err = verifyError([ossl.leaf(old, 'leaf-old', { san: `URI:${ID}` }), old.certDer]);
    expect(err.message).toMatch(/intermediate certificate 1 .* expired at 2020-01-02/);
  });

  it('intermediate with critical name constraints (not evaluated, so not ignored)', () => {
    const nc = ossl.intermediate(root, 'int-nc', { trustDomain: 'example.org', extra: ['nameConstraints = critical,permitted;URI:example.org'] });
    const err = verifyError([ossl.leaf(nc, 'leaf-nc', { san: `URI:${ID}` }), nc.certDer]);
    expect(err.message).toMatch(/intermediate certificate 1 .* critical extensions this broker does not process: 2\.5\.29\.30/);
  });

  it('intermediate of the other trust domain', () => {
    const otherInt = ossl.intermediate(otherRoot, 'int-other', { trustDomain: 'other.org' });
    const err = verifyError([ossl.leaf(otherInt, 'leaf-other', { san: `URI:${ID}` }), otherInt.certDer]);
    expect(err.message).toMatch(/does not lead to a root trusted for trust domain example\.org/);
  });
});
