/** The one key-strength policy: a table of key types and sizes, each accepted or refused with ERR_KEY_WEAK. */
import { generateKeyPairSync, createSecretKey, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { assertKeyStrength, keyStrengthProblem } from '../../src/core/key-policy.js';

const pub = (k: { publicKey: KeyObject }) => k.publicKey;
let rsa2048: KeyObject | undefined;
const rsa2048Once = () => (rsa2048 ??= pub(generateKeyPairSync('rsa', { modulusLength: 2048 })));

describe('key-strength policy', () => {
  const cases: Array<[string, () => KeyObject, RegExp | null]> = [
    ['RSA 2048', rsa2048Once, null],
    ['RSA 1024', () => pub(generateKeyPairSync('rsa', { modulusLength: 1024 })), /RSA key of 1024 bits; at least 2048/],
    ['RSA-PSS 1024', () => pub(generateKeyPairSync('rsa-pss', { modulusLength: 1024 })), /RSA key of 1024 bits/],
    ['EC P-256', () => pub(generateKeyPairSync('ec', { namedCurve: 'P-256' })), null],
    ['EC P-384', () => pub(generateKeyPairSync('ec', { namedCurve: 'P-384' })), null],
    ['EC P-521', () => pub(generateKeyPairSync('ec', { namedCurve: 'P-521' })), null],
    ['EC secp256k1', () => pub(generateKeyPairSync('ec', { namedCurve: 'secp256k1' })), /curve secp256k1; only P-256, P-384 and P-521/],
    ['EC P-224', () => pub(generateKeyPairSync('ec', { namedCurve: 'secp224r1' })), /curve secp224r1/],
    ['Ed25519', () => pub(generateKeyPairSync('ed25519')), null],
    ['Ed448', () => pub(generateKeyPairSync('ed448')), null],
    ['X25519', () => pub(generateKeyPairSync('x25519')), /x25519 keys are not accepted/],
    ['DSA 1024', () => pub(generateKeyPairSync('dsa', { modulusLength: 1024, divisorLength: 160 })), /dsa keys are not accepted/],
    ['HMAC secret', () => createSecretKey(Buffer.alloc(32, 1)), /symmetric keys are not accepted/],
  ];

  it.each(cases)('%s', (_name, make, refused) => {
    const key = make();
    const problem = keyStrengthProblem(key);
    if (refused === null) {
      expect(problem).toBeNull();
      expect(() => assertKeyStrength(key, 'test key')).not.toThrow();
    } else {
      expect(problem).toMatch(refused);
      expect(() => assertKeyStrength(key, 'test key')).toThrow(expect.objectContaining({ code: 'ERR_KEY_WEAK', message: expect.stringMatching(/^test key: /) }));
    }
  });
});

describe('JWS verification applies the same policy', () => {
  it('a token signed with an RSA-1024 key → ERR_KEY_WEAK (all JWS paths share verifyJwsSignature)', async () => {
    const { signCompact, decodeJws, verifyJwsSignature } = await import('../../src/tokens/jws.js');
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const token = signCompact({ alg: 'RS256', kid: 'w' }, { sub: 'x' }, weak.privateKey);
    expect(() => verifyJwsSignature(decodeJws(token), weak.publicKey)).toThrow(expect.objectContaining({ code: 'ERR_KEY_WEAK' }));
  });
});
