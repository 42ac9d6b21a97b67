/**
 * Compact JWS decoding and signature checks, including their fast paths: a
 * header equal to the previous token's is not parsed again, and a key that
 * passed the type, strength and algorithm checks is not inspected again.
 * Neither may let a token through that the full checks refuse.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeJws, signCompact, verifyJwsSignature, type JwsHeader } from '../../src/tokens/jws.js';
import { failureOf } from '../helpers/codes.js';

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const HEADER: JwsHeader = { alg: 'ES256', typ: 'at+jwt', kid: 'k1' };
const token = (payload: object = { jti: 'j1', n: 1 }, header: JwsHeader = HEADER, key: KeyObject = p256.privateKey) => signCompact(header, payload, key);

const failure = (fn: () => unknown): string => failureOf(fn);

describe('decodeJws', () => {
  it('decodes a run of tokens sharing a header, each with its own payload', () => {
    for (let i = 0; i < 5; i++) {
      const d = decodeJws(token({ jti: `j${i}`, name: 'Zoë ✓' }));
      expect(d.header).toEqual(HEADER);
      expect(Object.isFrozen(d.header)).toBe(true);
      expect(d.payload).toEqual({ jti: `j${i}`, name: 'Zoë ✓' });
      expect(() => verifyJwsSignature(d, p256.publicKey)).not.toThrow();
    }
  });

  it('checks every character of payload and signature after a remembered header', () => {
    const good = token();
    decodeJws(good); // the header is now the remembered one
    const [h, p, s] = good.split('.') as [string, string, string];
    const cases: Array<[string, string]> = [
      [`${h}.${p.slice(0, 10)}+${p.slice(11)}.${s}`, 'payload is not base64url'],
      [`${h}.${p.slice(0, 10)}/${p.slice(11)}.${s}`, 'payload is not base64url'],
      [`${h}.${p}=.${s}`, 'payload is not base64url'],
      [`${h}.${p.slice(0, 10)} ${p.slice(11)}.${s}`, 'payload is not base64url'],
      // Non-ASCII: the signing input is built as latin1, where Ł (U+0141) would read as A.
      [`${h}.${p.slice(0, 10)}Ł${p.slice(11)}.${s}`, 'payload is not base64url'],
      [`${h}.${p}.${s.slice(0, 10)}+${s.slice(11)}`, 'signature is not base64url'],
      [`${h}.${p}.${s}=`, 'signature is not base64url'],
      [`${h}.${p}.${s}\n`, 'signature is not base64url'],
    ];
    for (const [bad, message] of cases) expect(failure(() => decodeJws(bad))).toBe(`ERR_JWT_INVALID: malformed token: ${message}`);
  });

  it('accepts only the canonical spelling of the signature (its unused low bits zero)', () => {
    const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const good = token();
    const [h, p, sig] = good.split('.') as [string, string, string];
    expect(sig.length % 4).toBe(2); // 64 bytes: the last character carries 2 bits and 4 unused ones
    const last = ALPHABET.indexOf(sig.at(-1)!);
    expect(() => verifyJwsSignature(decodeJws(good), p256.publicKey)).not.toThrow();
    for (let unused = 1; unused < 16; unused++) {
      const respelled = `${h}.${p}.${sig.slice(0, -1)}${ALPHABET[last + unused]}`;
      // Same bytes once decoded: without the check this token would verify.
      expect(Buffer.from(respelled.split('.')[2]!, 'base64url').equals(Buffer.from(sig, 'base64url'))).toBe(true);
      expect(failure(() => decodeJws(respelled))).toBe('ERR_JWT_INVALID: malformed token: signature is not canonical base64url');
    }
    // A signature of a length no byte string has (4n + 1 characters) is refused too.
    expect(failure(() => decodeJws(`${h}.${p}.${sig}AAA`))).toMatch(/^ERR_JWT_INVALID/);
  });

  it('parses and checks any other header in full, right after a remembered one', () => {
    const good = token();
    decodeJws(good);
    const [h, p, s] = good.split('.') as [string, string, string];
    const refused: Array<[string, string]> = [
      [`${b64({ alg: 'none', typ: 'at+jwt', kid: 'k1' })}.${p}.`, 'not allowed'],
      [`${b64({ alg: 'HS256', typ: 'at+jwt', kid: 'k1' })}.${p}.${s}`, 'not allowed'],
      [`${b64({ ...HEADER, crit: ['exp'] })}.${p}.${s}`, 'critical header parameters'],
      [`${b64({ ...HEADER, cty: 'JWT' })}.${p}.${s}`, 'nested JWTs'],
      [`${h}A.${p}.${s}`, 'header is not JSON'], // the remembered header text as a prefix is not the same header
      [`${h.slice(0, 4)}+${h.slice(5)}.${p}.${s}`, 'header is not base64url'],
    ];
    for (const [bad, message] of refused) {
      decodeJws(good);
      expect(failure(() => decodeJws(bad))).toContain(message);
    }
    // The same header text with understood crit goes through the full check too.
    const critical = token({ jti: 'c' }, { ...HEADER, crit: ['exp'], exp: 1 });
    expect(failure(() => decodeJws(critical))).toContain('critical header parameters');
    expect(decodeJws(critical, { understoodCrit: ['exp'] }).header.crit).toEqual(['exp']);
    expect(failure(() => decodeJws(critical))).toContain('critical header parameters');
  });
});

describe('verifyJwsSignature', () => {
  it('re-checks a remembered key against each token\'s algorithm', () => {
    const good = decodeJws(token());
    verifyJwsSignature(good, p256.publicKey); // remembered as fit for ES256
    const es384 = decodeJws(token({ jti: 'x' }, { ...HEADER, alg: 'ES384' }, generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey));
    expect(failure(() => verifyJwsSignature(es384, p256.publicKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
    verifyJwsSignature(good, p256.publicKey); // and still fit for ES256 afterwards
  });

  it('refuses private and weak keys every time, and a wrong key whatever was verified before', () => {
    const good = decodeJws(token());
    for (let i = 0; i < 2; i++) {
      expect(failure(() => verifyJwsSignature(good, p256.privateKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
      const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
      const rs = decodeJws(token({ jti: 'r' }, { ...HEADER, alg: 'RS256' }, weak.privateKey));
      expect(failure(() => verifyJwsSignature(rs, weak.publicKey))).toMatch(/^ERR_KEY_WEAK: /);
    }
    // A key remembered as fit for ES256 still verifies only its own signatures.
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    verifyJwsSignature(decodeJws(token({ jti: 'o' }, HEADER, other.privateKey)), other.publicKey);
    expect(failure(() => verifyJwsSignature(good, other.publicKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
    verifyJwsSignature(good, p256.publicKey);
  });
});
