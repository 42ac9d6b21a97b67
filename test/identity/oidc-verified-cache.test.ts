import { createPublicKey, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mayflyError } from '../../src/core/errors.js';
import { OidcVerifier, type OidcVerifierOptions } from '../../src/identity/oidc.js';
import type { KeySource } from '../../src/identity/jwks-source.js';
import { VerifiedTokens } from '../../src/identity/verified-tokens.js';
import { signCompact } from '../../src/tokens/jws.js';
import { githubClaims, makeKey, type TestKey } from '../helpers/test-issuer.js';
import { codeOf } from '../helpers/codes.js';

const ISS = 'https://ci.example.test';
const NOW = Date.UTC(2026, 0, 1);
const S = NOW / 1000;
const SKEW = 60;

/** A key source whose answer for every kid the test can change, counting lookups. */
class SwappableKeys implements KeySource {
  lookups = 0;
  constructor(public current: KeyObject | (() => never)) {}
  async getKey(): Promise<KeyObject> {
    this.lookups++;
    if (typeof this.current === 'function') return this.current();
    return this.current;
  }
}

function mint(key: TestKey, claims: Record<string, unknown> = {}): string {
  return signCompact({ alg: key.alg, typ: 'JWT', kid: key.kid }, { ...githubClaims(ISS, 'mayfly', S), ...claims }, key.privateKey);
}

function verifier(keys: KeySource, opts: OidcVerifierOptions = {}, maxTokenAgeSeconds?: number): OidcVerifier {
  return new OidcVerifier(
    [{ name: 'ci', issuer: ISS, audiences: ['mayfly'], allowedAlgs: ['ES256'], clockSkewSeconds: SKEW, jwks: { keySource: keys }, ...(maxTokenAgeSeconds ? { maxTokenAgeSeconds } : {}) }],
    opts,
  );
}

describe('OidcVerifier: tokens verified before', () => {
  const key = makeKey('ES256');

  it('the same token again gets the same frozen identity, after a fresh key lookup', async () => {
    const keys = new SwappableKeys(key.publicKey);
    const v = verifier(keys);
    const token = mint(key);
    const first = await v.verify(token, NOW);
    const again = await v.verify(token, NOW + 1000);
    expect(again).toBe(first);
    expect(keys.lookups).toBe(2);
    expect(Object.isFrozen(first)).toBe(true);
    expect(Object.isFrozen(first.claims)).toBe(true);
    expect(() => {
      (first.claims as Record<string, unknown>)['sub'] = 'someone-else';
    }).toThrow(TypeError);
    expect(v.knownIssuer(token, NOW)).toBe(ISS);
  });

  it('a cached token past exp (plus skew) is refused as expired, exactly as the full check refuses it', async () => {
    const v = verifier(new SwappableKeys(key.publicKey));
    const token = mint(key);
    await v.verify(token, NOW);
    const late = (S + 300 + SKEW) * 1000;
    expect(await codeOf(v.verify(token, late - 1))).toBe('OK');
    expect(await codeOf(v.verify(token, late))).toBe('ERR_JWT_EXPIRED');
    expect(await codeOf(verifier(new SwappableKeys(key.publicKey)).verify(token, late))).toBe('ERR_JWT_EXPIRED');
    expect(v.knownIssuer(token, late)).toBeUndefined();
  });

  it('claims are checked again on every call: a maximum token age passes while the token is cached', async () => {
    const v = verifier(new SwappableKeys(key.publicKey), {}, 120);
    const token = mint(key, { iat: S });
    await v.verify(token, NOW);
    expect(await codeOf(v.verify(token, (S + 120 + SKEW) * 1000))).toBe('OK');
    expect(await codeOf(v.verify(token, (S + 121 + SKEW) * 1000))).toBe('ERR_JWT_INVALID');
  });

  it('the issuer now publishes another key under the kid: the cached token is verified again and refused', async () => {
    const keys = new SwappableKeys(key.publicKey);
    const v = verifier(keys);
    const token = mint(key);
    await v.verify(token, NOW);
    keys.current = makeKey('ES256', key.kid).publicKey;
    expect(await codeOf(v.verify(token, NOW))).toBe('ERR_JWT_SIGNATURE');
    // The old key back: verified in full again, and accepted.
    keys.current = key.publicKey;
    expect(await codeOf(v.verify(token, NOW))).toBe('OK');
  });

  it('the kid was removed from the JWKS: the cached token fails with the lookup error', async () => {
    const keys = new SwappableKeys(key.publicKey);
    const v = verifier(keys);
    const token = mint(key);
    await v.verify(token, NOW);
    keys.current = () => {
      throw mayflyError('ERR_KEY_UNKNOWN', `no key with kid ${key.kid}`);
    };
    expect(await codeOf(v.verify(token, NOW))).toBe('ERR_KEY_UNKNOWN');
  });

  it('a refreshed JWKS with the same key material (a new KeyObject) keeps the entry', async () => {
    const keys = new SwappableKeys(key.publicKey);
    const v = verifier(keys);
    const token = mint(key);
    const first = await v.verify(token, NOW);
    keys.current = createPublicKey({ key: key.publicKey.export({ format: 'jwk' }), format: 'jwk' });
    expect(keys.current).not.toBe(key.publicKey);
    expect(await v.verify(token, NOW)).toBe(first);
  });

  it('a refused token is never kept: a bad signature fails every time', async () => {
    const v = verifier(new SwappableKeys(key.publicKey));
    const [h, p] = mint(key).split('.');
    const forged = `${h}.${p}.${mint(makeKey('ES256', key.kid)).split('.')[2]}`;
    expect(await codeOf(v.verify(forged, NOW))).toBe('ERR_JWT_SIGNATURE');
    expect(v.knownIssuer(forged, NOW)).toBeUndefined();
    expect(await codeOf(v.verify(forged, NOW))).toBe('ERR_JWT_SIGNATURE');
  });

  it('a token differing in one byte is a different entry, verified in full', async () => {
    const v = verifier(new SwappableKeys(key.publicKey));
    const token = mint(key);
    await v.verify(token, NOW);
    const sig = token.split('.')[2]!;
    const flipped = `${token.slice(0, token.length - sig.length)}${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`;
    expect(await codeOf(v.verify(flipped, NOW))).toBe('ERR_JWT_SIGNATURE');
  });

  it('maxEntries 0 turns the cache off', async () => {
    const v = verifier(new SwappableKeys(key.publicKey), { verifiedTokens: { maxEntries: 0, maxChars: 1 << 20 } });
    const token = mint(key);
    const first = await v.verify(token, NOW);
    expect(await v.verify(token, NOW)).not.toBe(first);
    expect(v.knownIssuer(token, NOW)).toBeUndefined();
  });
});

describe('VerifiedTokens', () => {
  it('drops the oldest entry beyond maxEntries', () => {
    const c = new VerifiedTokens<number>({ maxEntries: 2, maxChars: 1000 });
    c.set('a', 1, 10);
    c.set('b', 2, 10);
    c.set('c', 3, 10);
    expect([c.get('a', 0), c.get('b', 0), c.get('c', 0)]).toEqual([undefined, 2, 3]);
    expect(c.size).toBe(2);
  });

  it('drops the oldest entries beyond maxChars and never keeps a token longer than the budget', () => {
    const c = new VerifiedTokens<number>({ maxEntries: 100, maxChars: 10 });
    c.set('aaaa', 1, 10);
    c.set('bbbb', 2, 10);
    c.set('cccc', 3, 10);
    expect([c.get('aaaa', 0), c.get('bbbb', 0), c.get('cccc', 0)]).toEqual([undefined, 2, 3]);
    c.set('x'.repeat(11), 4, 10);
    expect(c.get('x'.repeat(11), 0)).toBeUndefined();
    expect(c.size).toBe(2);
  });

  it('an entry is gone from its deadline on', () => {
    const c = new VerifiedTokens<number>({ maxEntries: 10, maxChars: 100 });
    c.set('t', 1, 100);
    expect(c.get('t', 99)).toBe(1);
    expect(c.get('t', 100)).toBeUndefined();
    expect(c.size).toBe(0);
  });

  it('setting a token again replaces its entry without counting it twice', () => {
    const c = new VerifiedTokens<number>({ maxEntries: 10, maxChars: 8 });
    c.set('abcd', 1, 10);
    c.set('abcd', 2, 10);
    c.set('efgh', 3, 10);
    expect([c.get('abcd', 0), c.get('efgh', 0)]).toEqual([2, 3]);
  });
});
