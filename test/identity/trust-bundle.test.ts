/**
 * Trust bundles (JWKS and PEM) and trust sources, including a bundle
 * endpoint served over real HTTPS on 127.0.0.1 that rotates and then dies.
 */
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { isMayflyError } from '../../src/core/errors.js';
import { bundleFingerprint, bundleToJwks, parseTrustBundle, parseJwksBundle, parsePemBundle } from '../../src/identity/trust-bundle.js';
import {
  CompositeTrustSource,
  RefreshingTrustSource,
  StaticTrustSource,
  allTrustDomainRootsPem,
} from '../../src/identity/trust-source.js';
import type { FetchLike } from '../../src/net/remote-document.js';
import { issueServerCert, issueX509Svid } from '../../src/pki/dev-pki.js';
import { OpensslPki } from '../helpers/openssl.js';
import { devPki } from '../helpers/pki.js';

let pki: ReturnType<typeof devPki>;
let ecRootPem: string;
let ossl: OpensslPki;
const jwtKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwtJwk = jwtKey.publicKey.export({ format: 'jwk' }) as Record<string, unknown>;

beforeAll(() => {
  pki = devPki();
  ossl = new OpensslPki();
  ecRootPem = ossl.root('example.org').certPem;
});
afterAll(() => ossl?.cleanup());

function b64Der(pem: string): string {
  return new X509Certificate(pem).raw.toString('base64');
}

function x509Entry(pem: string): Record<string, unknown> {
  const cert = new X509Certificate(pem);
  return { ...(cert.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), use: 'x509-svid', x5c: [b64Der(pem)] };
}

function configError(fn: () => unknown, message: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isMayflyError(err, 'ERR_CONFIG_INVALID'), String(err)).toBe(true);
  expect((err as Error).message).toMatch(message);
}

describe('parseJwksBundle', () => {
  it('reads x509-svid and jwt-svid entries, sequence and refresh hint', () => {
    const doc = {
      spiffe_sequence: 7,
      spiffe_refresh_hint: 300,
      keys: [x509Entry(pki.example.certPem), x509Entry(ecRootPem), { ...jwtJwk, use: 'jwt-svid', kid: 'k1' }],
    };
    const b = parseJwksBundle('example.org', JSON.stringify(doc));
    expect(b.trustDomain).toBe('example.org');
    expect(b.sequence).toBe(7);
    expect(b.refreshHintSeconds).toBe(300);
    expect(b.x509Authorities.map((c) => c.raw.toString('base64'))).toEqual([b64Der(pki.example.certPem), b64Der(ecRootPem)]);
    expect(b.jwtAuthorities.get('k1')?.export({ format: 'jwk' })).toEqual(jwtJwk);
  });

  it('round-trips through bundleToJwks with the same fingerprint', () => {
    const b = parseJwksBundle('example.org', { spiffe_sequence: 1, keys: [x509Entry(pki.example.certPem), { ...jwtJwk, use: 'jwt-svid', kid: 'k1' }] });
    const again = parseJwksBundle('example.org', JSON.parse(JSON.stringify(bundleToJwks(b))));
    expect(bundleFingerprint(again)).toBe(bundleFingerprint(b));
    expect((bundleToJwks(b)['keys'] as Record<string, unknown>[])[0]).not.toHaveProperty('kid');
  });

  it('ignores what the spec says to ignore: unknown use, unknown kty, x509-svid without x5c; takes only x5c[0]', () => {
    const b = parseJwksBundle('example.org', {
      keys: [
        { kty: 'EC', use: 'wit-svid', crv: 'P-256', x: 'AA', y: 'AA' },
        { kty: 'FUTURE', use: 'jwt-svid', kid: 'f' },
        { kty: 'RSA', use: 'x509-svid' },
        { kty: 'RSA', use: 'x509-svid', x5c: [] },
        { kty: 'RSA', use: 'x509-svid', x5c: [b64Der(pki.example.certPem), 'ignored'] },
      ],
    });
    expect(b.x509Authorities).toHaveLength(1);
    expect(b.jwtAuthorities.size).toBe(0);
  });

  const priv = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }) as Record<string, unknown>;
  it.each([
    ['not JSON', '{nope', /not valid JSON/],
    ['not an object', '[1]', /not a JSON object/],
    ['no keys', '{}', /no 'keys' array/],
    ['bad sequence', { spiffe_sequence: -1, keys: [] }, /spiffe_sequence/],
    ['bad refresh hint', { spiffe_refresh_hint: '60', keys: [] }, /spiffe_refresh_hint/],
    ['non-object key', { keys: ['x'] }, /keys\[0\] is not a JSON object/],
    ['private EC key', { keys: [{ ...priv, use: 'jwt-svid', kid: 'p' }] }, /keys\[0\] contains private or symmetric key material \(d\)/],
    ['symmetric key', { keys: [{ kty: 'oct', use: 'jwt-svid', kid: 's' }] }, /symmetric/],
    ['symmetric key with k', { keys: [{ kty: 'oct', k: 'c2VjcmV0', use: 'jwt-svid', kid: 's' }] }, /private or symmetric key material \(k\)/],
    ['missing kty', { keys: [{ use: 'jwt-svid', kid: 'x' }] }, /has no kty/],
    ['jwt-svid without kid', { keys: [{ ...jwtJwk, use: 'jwt-svid' }] }, /has no kid/],
    ['duplicate kid', { keys: [{ ...jwtJwk, use: 'jwt-svid', kid: 'a' }, { ...jwtJwk, use: 'jwt-svid', kid: 'a' }] }, /keys\[1\] repeats kid "a"/],
    ['unimportable jwt key', { keys: [{ kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA', use: 'jwt-svid', kid: 'bad' }] }, /could not be imported/],
    ['x5c not base64', { keys: [{ kty: 'RSA', use: 'x509-svid', x5c: ['not_base64!'] }] }, /x5c\[0\] is not standard base64/],
    ['x5c not a certificate', { keys: [{ kty: 'RSA', use: 'x509-svid', x5c: ['AAAA'] }] }, /not a valid X\.509 certificate/],
    ['x5c is not an array', { keys: [{ kty: 'RSA', use: 'x509-svid', x5c: 'AAAA' }] }, /x5c must be an array/],
  ])('rejects %s', (_name, doc, message) => {
    configError(() => parseJwksBundle('example.org', doc), message);
  });

  it('rejects an x5c certificate that is not a CA', () => {
    const leaf = issueX509Svid(pki.example, { spiffeId: 'spiffe://example.org/w', keyPem: pki.leafKeyPem });
    configError(() => parseJwksBundle('example.org', { keys: [{ kty: 'RSA', use: 'x509-svid', x5c: [b64Der(leaf.certPem)] }] }), /not a CA certificate/);
  });

  it('rejects JWK parameters that do not match the x5c certificate (RFC 7517 §4.7)', () => {
    const entry = { ...x509Entry(pki.other.certPem), x5c: [b64Der(pki.example.certPem)] };
    configError(() => parseJwksBundle('example.org', { keys: [entry] }), /do not match the public key of its x5c certificate/);
  });

  it('rejects an invalid trust domain name', () => {
    configError(() => parseJwksBundle('Example.org', { keys: [] }), /uppercase/);
  });
});

describe('parsePemBundle', () => {
  it('reads several CERTIFICATE blocks, with text around them', () => {
    const b = parsePemBundle('example.org', `# roots\n${pki.example.certPem}\nsubject=whatever\n${ecRootPem}`);
    expect(b.x509Authorities).toHaveLength(2);
    expect(b.jwtAuthorities.size).toBe(0);
  });

  it('parseTrustBundle tells the two forms apart', () => {
    expect(parseTrustBundle('example.org', pki.example.certPem).x509Authorities).toHaveLength(1);
    expect(parseTrustBundle('example.org', ` ${JSON.stringify({ keys: [x509Entry(ecRootPem)] })}`).x509Authorities).toHaveLength(1);
  });

  it.each([
    ['a private key', () => `${pki.example.certPem}${pki.example.keyPem}`, /PEM block 1 is a private key \(PRIVATE KEY\)/],
    ['an EC private key', () => `-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n`, /private key \(EC PRIVATE KEY\)/],
    ['a public key', () => `-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n`, /is a PUBLIC KEY, expected CERTIFICATE/],
    ['no certificate', () => 'hello', /no CERTIFICATE block/],
    ['a truncated block', () => `${pki.example.certPem}-----BEGIN CERTIFICATE-----\nMIIB`, /unterminated/],
    ['bad base64', () => `-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n`, /not valid base64/],
    ['not a certificate', () => `-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n`, /PEM certificate 0 is not a valid X\.509 certificate/],
    ['a leaf certificate', () => issueX509Svid(pki.example, { spiffeId: 'spiffe://example.org/w', keyPem: pki.leafKeyPem }).certPem, /not a CA certificate/],
  ])('rejects %s', (_name, pem, message) => {
    configError(() => parsePemBundle('example.org', pem()), message);
  });
});

describe('StaticTrustSource and CompositeTrustSource', () => {
  it('keeps trust domains isolated', () => {
    const src = new StaticTrustSource([parsePemBundle('example.org', pki.example.certPem), parseJwksBundle('other.org', { keys: [{ ...jwtJwk, use: 'jwt-svid', kid: 'k' }] })]);
    expect(src.x509BundleFor('example.org')).toHaveLength(1);
    expect(src.x509BundleFor('other.org')).toEqual([]);
    expect(src.jwtAuthoritiesFor('example.org')?.size).toBe(0);
    expect(src.jwtAuthoritiesFor('other.org')?.has('k')).toBe(true);
    expect(src.x509BundleFor('third.org')).toBeUndefined();
    expect(src.trustDomains()).toEqual(['example.org', 'other.org']);
  });

  it('rejects a trust domain configured twice', () => {
    configError(() => new StaticTrustSource([parsePemBundle('example.org', pki.example.certPem), parsePemBundle('example.org', ecRootPem)]), /configured more than once/);
  });

  it('allTrustDomainRootsPem lists every root once', () => {
    const a = new StaticTrustSource([parsePemBundle('example.org', `${pki.example.certPem}${ecRootPem}`), parsePemBundle('other.org', `${pki.other.certPem}${pki.example.certPem}`)]);
    const pems = allTrustDomainRootsPem(a);
    expect(pems).toHaveLength(3);
    expect(pems.map((p) => new X509Certificate(p).fingerprint256)).toContain(new X509Certificate(pki.other.certPem).fingerprint256);
  });

  it('composes sources and refuses overlapping trust domains', () => {
    const a = new StaticTrustSource([parsePemBundle('example.org', pki.example.certPem)]);
    const b = new StaticTrustSource([parsePemBundle('other.org', pki.other.certPem)]);
    const c = new CompositeTrustSource([a, b]);
    expect(c.x509BundleFor('other.org')).toHaveLength(1);
    expect(c.jwtAuthoritiesFor('example.org')?.size).toBe(0);
    expect(c.x509BundleFor('nope.org')).toBeUndefined();
    expect(allTrustDomainRootsPem(c)).toHaveLength(2);
    configError(() => new CompositeTrustSource([a, a]), /served by more than one trust source/);
  });
});

describe('RefreshingTrustSource (injected fetch)', () => {
  const url = 'https://bundles.example.org/bundle';
  const doc = (seq: number, hint?: number, pems: string[] = []) => JSON.stringify({ spiffe_sequence: seq, ...(hint === undefined ? {} : { spiffe_refresh_hint: hint }), keys: pems.map(x509Entry) });
  const fixed = (body: string, status = 200): FetchLike => async () => ({ ok: status < 300, status, text: async () => body });

  it.each([
    [{ url: 'http://bundles.example.org/b' }, /must use https/],
    [{ url: 'not a url' }, /is not a URL/],
    [{ trustDomain: 'Bad' }, /uppercase/],
    [{ timeoutMs: 0 }, /timeoutMs must be a positive/],
  ])('rejects bad configuration %j', (over, message) => {
    configError(() => new RefreshingTrustSource({ trustDomain: 'example.org', url, ...over }), message);
  });

  it('honours the refresh hint, or the configured interval, and retries sooner after a failure', async () => {
    const clock = new ManualClock(1_000_000);
    let body = doc(1, 120, [pki.example.certPem]);
    let status = 200;
    const src = new RefreshingTrustSource({ trustDomain: 'example.org', url, clock, fetch: async () => ({ ok: status < 300, status, text: async () => body }) });
    try {
      expect(src.version).toBe(0);
      expect(src.x509BundleFor('example.org')).toBeUndefined();
      await src.start();
      expect(src.version).toBe(1);
      expect(src.nextRefreshAt).toBe(1_000_000 + 120_000);
      expect(src.lastSuccessAt).toBe(1_000_000);
      status = 503;
      await expect(src.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: expect.stringMatching(/HTTP 503/) });
      expect(src.nextRefreshAt).toBe(1_000_000 + 30_000);
      expect(src.bundle?.x509Authorities).toHaveLength(1);
      status = 200;
      body = doc(1, 0, [pki.example.certPem]);
      expect(await src.refresh()).toBe(true); // the hint is part of the bundle
      expect(src.nextRefreshAt).toBe(1_000_000 + 1_000); // a hint of 0 is clamped, never a busy loop
      expect(src.lastError).toBeUndefined();
    } finally {
      src.close();
    }
    const fixedInterval = new RefreshingTrustSource({ trustDomain: 'example.org', url, clock, refreshIntervalMs: 5_000, fetch: fixed(doc(1, 120, [pki.example.certPem])) });
    await fixedInterval.start();
    expect(fixedInterval.nextRefreshAt).toBe(1_000_000 + 5_000);
    fixedInterval.close();
    expect(fixedInterval.nextRefreshAt).toBeUndefined();
    await expect(fixedInterval.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: expect.stringMatching(/closed/) });
  });

  it('times out a hanging endpoint and keeps the initial bundle', async () => {
    const hanging: FetchLike = (_url, init) =>
      new Promise((_resolve, reject) => init.signal.addEventListener('abort', () => reject(new Error('aborted'))));
    const initial = parsePemBundle('example.org', pki.example.certPem);
    const errors: string[] = [];
    const src = new RefreshingTrustSource({ trustDomain: 'example.org', url, fetch: hanging, timeoutMs: 50, initialBundle: initial, onError: (e) => errors.push(e.code) });
    try {
      expect(src.version).toBe(1);
      await expect(src.start()).resolves.toBeUndefined();
      expect(src.lastError?.message).toMatch(/timed out after 50 ms/);
      expect(errors).toEqual(['ERR_UNAVAILABLE']);
      expect(src.x509BundleFor('example.org')).toHaveLength(1);
    } finally {
      src.close();
    }
  });

  it('start() rejects when there is nothing to serve', async () => {
    const src = new RefreshingTrustSource({ trustDomain: 'example.org', url, fetch: fixed('{bad') });
    try {
      await expect(src.start()).rejects.toMatchObject({ code: 'ERR_CONFIG_INVALID' });
    } finally {
      src.close();
    }
  });

  it('refuses a bundle with an older sequence number (§4.1.1) and keeps the newer one', async () => {
    let body = doc(5, 60, [pki.example.certPem]);
    const src = new RefreshingTrustSource({ trustDomain: 'example.org', url, fetch: async () => ({ ok: true, status: 200, text: async () => body }) });
    try {
      await src.start();
      body = doc(4, 60, [pki.other.certPem]);
      await expect(src.refresh()).rejects.toMatchObject({ message: expect.stringMatching(/sequence 4, older than 5/) });
      expect(src.bundle?.sequence).toBe(5);
      expect(src.version).toBe(1);
    } finally {
      src.close();
    }
  });

  it('rejects an initial bundle of another trust domain', () => {
    configError(() => new RefreshingTrustSource({ trustDomain: 'example.org', url, initialBundle: parsePemBundle('other.org', pki.other.certPem) }), /initial bundle is for other\.org/);
  });
});

describe('RefreshingTrustSource over HTTPS on 127.0.0.1', () => {
  it('follows a rotation, ignores a re-serialisation, then serves the stale bundle when the endpoint goes down', async () => {
    const serverCert = issueServerCert(pki.example, { ipAddresses: ['127.0.0.1'], keyPem: pki.leafKeyPem });
    let body = JSON.stringify({ spiffe_sequence: 1, spiffe_refresh_hint: 60, keys: [x509Entry(pki.example.certPem)] });
    let hits = 0;
    const server = https.createServer({ cert: serverCert.certPem, key: serverCert.keyPem }, (_req, res) => {
      hits++;
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/bundle`;
    const versions: number[] = [];
    const src = new RefreshingTrustSource({
      trustDomain: 'example.org',
      url,
      caPem: pki.example.certPem,
      refreshIntervalMs: 50,
      timeoutMs: 2_000,
      onUpdate: (_b, v) => versions.push(v),
    });
    try {
      await src.start();
      expect(src.version).toBe(1);
      expect(src.x509BundleFor('example.org')?.[0]?.raw.equals(new X509Certificate(pki.example.certPem).raw)).toBe(true);
      expect(src.x509BundleFor('other.org')).toBeUndefined();

      // Rotation: a second root is published; the background timer picks it up.
      body = JSON.stringify({ spiffe_sequence: 2, spiffe_refresh_hint: 60, keys: [x509Entry(pki.example.certPem), x509Entry(ecRootPem)] });
      await vi.waitFor(() => expect(src.version).toBe(2), { timeout: 5_000, interval: 20 });
      expect(src.x509BundleFor('example.org')).toHaveLength(2);

      // Same content, different serialisation: not a new version.
      body = JSON.stringify({ keys: [x509Entry(pki.example.certPem), x509Entry(ecRootPem)].reverse(), spiffe_refresh_hint: 60, spiffe_sequence: 2 });
      expect(await src.refresh()).toBe(false);
      expect(src.version).toBe(2);
      expect(allTrustDomainRootsPem(src)).toHaveLength(2);

      // The endpoint goes away: keep serving the last good bundle.
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
      await expect(src.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: expect.stringMatching(/bundle endpoint for example\.org failed/) });
      expect(src.version).toBe(2);
      expect(src.x509BundleFor('example.org')).toHaveLength(2);
      expect(src.lastError?.code).toBe('ERR_UNAVAILABLE');
      expect(versions).toEqual([1, 2]);
      expect(hits).toBeGreaterThanOrEqual(3);
    } finally {
      src.close();
      server.close();
    }
  });

  it('does not trust an endpoint whose certificate is not from the configured CA', async () => {
    const serverCert = issueServerCert(pki.example, { ipAddresses: ['127.0.0.1'], keyPem: pki.leafKeyPem });
    const server = https.createServer({ cert: serverCert.certPem, key: serverCert.keyPem }, (_req, res) => res.end('{"keys":[]}'));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const src = new RefreshingTrustSource({
      trustDomain: 'example.org',
      url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/`,
      caPem: pki.other.certPem,
      timeoutMs: 2_000,
    });
    try {
      await expect(src.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE' });
      expect(src.version).toBe(0);
    } finally {
      src.close();
      server.closeAllConnections();
      server.close();
    }
  });
});
