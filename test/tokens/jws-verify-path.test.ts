/**
 * The way verifyJwsSignature calls node:crypto: an ECDSA signature (r || s in
 * the JWS) converted to DER here, and the signing input and signature written
 * into reused scratch memory rather than new Buffers. Both must accept exactly
 * what node:crypto's own P1363 path accepts and fail closed on anything else,
 * for every curve and algorithm family, including signatures whose r or s
 * starts with zero bytes or has its high bit set.
 */
import { generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeJws, ecdsaDer, signCompact, verifyJwsSignature, type JwsHeader } from '../../src/tokens/jws.js';
import { failureOf } from '../helpers/codes.js';

const failure = (fn: () => unknown): string => failureOf(fn);

/** An independent DER encoder (BigInt, two's complement), to compare ecdsaDer with. */
function referenceDer(sig: Uint8Array, half: number): Buffer {
  const int = (bytes: Uint8Array): Buffer => {
    const n = BigInt(`0x${Buffer.from(bytes).toString('hex') || '0'}`);
    let hex = n.toString(16);
    if (hex.length % 2) hex = `0${hex}`;
    let b = Buffer.from(hex, 'hex');
    if (b[0]! >= 0x80) b = Buffer.concat([Buffer.from([0]), b]);
    return Buffer.concat([Buffer.from([0x02, b.length]), b]);
  };
  const body = Buffer.concat([int(sig.subarray(0, half)), int(sig.subarray(half, 2 * half))]);
  const len = body.length > 0x7f ? Buffer.from([0x81, body.length]) : Buffer.from([body.length]);
  return Buffer.concat([Buffer.from([0x30]), len, body]);
}

const der = (sig: Uint8Array, half: number): Buffer | null => {
  const out = Buffer.alloc(256);
  const n = ecdsaDer(sig, sig.length, half, out);
  return n === 0 ? null : out.subarray(0, n);
};

const CURVES = [
  { alg: 'ES256', curve: 'P-256', hash: 'sha256', half: 32 },
  { alg: 'ES384', curve: 'P-384', hash: 'sha384', half: 48 },
  { alg: 'ES512', curve: 'P-521', hash: 'sha512', half: 66 },
] as const;

describe('ecdsaDer (JWS r || s to DER)', () => {
  it('encodes the edge cases as DER requires: leading zeros dropped, a zero byte before a set high bit, zero as one byte', () => {
    const half = 32;
    const sig = (r: number[], s: number[]) => Uint8Array.from([...Array(half - r.length).fill(0), ...r, ...Array(half - s.length).fill(0), ...s]);
    const cases: Array<[Uint8Array, string]> = [
      [sig([0x01, 0x02], [0x7f]), '3007020201020201' + '7f'],
      [sig([0x80], [0xff, 0x00]), '300902020080' + '020300ff00'],
      [sig([], []), '3006020100020100'], // r = s = 0: encodable, and refused by the verification itself
      [Uint8Array.from([...Array(32).fill(0xff), ...Array(32).fill(0x01)]), `3045022100${'ff'.repeat(32)}0220${'01'.repeat(32)}`],
    ];
    for (const [input, hex] of cases) {
      expect(der(input, half)!.toString('hex')).toBe(hex);
      expect(der(input, half)!.equals(referenceDer(input, half))).toBe(true);
    }
  });

  it('matches the reference encoder for random and adversarial r || s on every curve (long-form length for P-521)', () => {
    for (const { half } of CURVES) {
      for (let i = 0; i < 300; i++) {
        const sig = new Uint8Array(2 * half);
        for (let j = 0; j < sig.length; j++) sig[j] = Math.floor(Math.random() * 256);
        // Force runs of leading zeros and set high bits in some of them.
        if (i % 3 === 0) sig.fill(0, 0, i % half);
        if (i % 5 === 0) sig.fill(0, half, half + (i % half));
        if (i % 7 === 0) sig[0] = 0x80 | sig[0]!;
        expect(der(sig, half)!.equals(referenceDer(sig, half))).toBe(true);
      }
    }
  });

  it('refuses any length other than exactly 2 × the curve size (fail closed)', () => {
    for (const { half } of CURVES) {
      for (const n of [0, 1, half, 2 * half - 1, 2 * half + 1, 4 * half]) expect(ecdsaDer(new Uint8Array(n).fill(1), n, half)).toBe(0);
    }
  });

  it('gives node:crypto the same bytes OpenSSL itself signs in DER, for real signatures on every curve', () => {
    for (const { curve, hash, half } of CURVES) {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
      let highBit = 0;
      let leadingZero = 0;
      for (let i = 0; i < 200; i++) {
        const data = Buffer.from(`message ${i}`);
        const p1363 = cryptoSign(hash, data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
        if (p1363[0]! >= 0x80 || p1363[half]! >= 0x80) highBit++;
        if (p1363[0] === 0 || p1363[half] === 0) leadingZero++;
        const d = der(p1363, half)!;
        expect(cryptoVerify(hash, data, publicKey, d)).toBe(true);
        expect(d.equals(referenceDer(p1363, half))).toBe(true);
      }
      // P-256 and P-384: r or s has its high bit set about half the time (the zero-byte prefix); P-521's 66-byte
      // halves start with 0x00 or 0x01, so about half of them have a leading zero byte to drop.
      expect(curve === 'P-521' ? leadingZero : highBit).toBeGreaterThan(0);
    }
  });
});

describe('verifyJwsSignature through the scratch path', () => {
  const keyOf = (alg: string): { privateKey: KeyObject; publicKey: KeyObject } => {
    if (alg.startsWith('ES')) return generateKeyPairSync('ec', { namedCurve: CURVES.find((c) => c.alg === alg)!.curve });
    if (alg === 'EdDSA') return generateKeyPairSync('ed25519');
    return generateKeyPairSync('rsa', { modulusLength: 2048 });
  };

  it('verifies every algorithm family, and refuses each token under another key and with a changed signature', () => {
    for (const alg of ['ES256', 'ES384', 'ES512', 'RS256', 'PS256', 'PS512', 'EdDSA']) {
      const k = keyOf(alg);
      const other = keyOf(alg);
      const header: JwsHeader = { alg, typ: 'JWT', kid: alg };
      const token = signCompact(header, { sub: alg, n: 1 }, k.privateKey);
      verifyJwsSignature(decodeJws(token), k.publicKey);
      expect(failure(() => verifyJwsSignature(decodeJws(token), other.publicKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
      // Flip one bit in the middle of the signature (a canonical spelling still).
      const dot = token.lastIndexOf('.');
      const sig = Buffer.from(token.slice(dot + 1), 'base64url');
      sig[sig.length >> 1]! ^= 0x01;
      const flipped = `${token.slice(0, dot)}.${sig.toString('base64url')}`;
      expect(failure(() => verifyJwsSignature(decodeJws(flipped), k.publicKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
    }
  });

  it('fails closed on an ECDSA signature of the wrong length, an all-zero one, and r || s swapped', () => {
    const k = keyOf('ES256');
    const token = signCompact({ alg: 'ES256', typ: 'JWT', kid: 'k' }, { sub: 'x' }, k.privateKey);
    const dot = token.lastIndexOf('.');
    const input = token.slice(0, dot);
    const sig = Buffer.from(token.slice(dot + 1), 'base64url');
    const variants = [
      sig.subarray(0, 63),
      Buffer.concat([sig, Buffer.from([0])]),
      Buffer.concat([Buffer.from([0]), sig]),
      Buffer.alloc(64),
      Buffer.concat([sig.subarray(32), sig.subarray(0, 32)]),
      Buffer.alloc(0),
    ];
    for (const v of variants) {
      expect(failure(() => verifyJwsSignature(decodeJws(`${input}.${v.toString('base64url')}`), k.publicKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
    }
    verifyJwsSignature(decodeJws(token), k.publicKey);
  });

  it('keeps each decoded token its own: decoded tokens verified out of order, after an await, and of different lengths', async () => {
    const k = keyOf('ES256');
    const header: JwsHeader = { alg: 'ES256', typ: 'JWT', kid: 'k' };
    const tokens = Array.from({ length: 8 }, (_, i) => signCompact(header, { sub: 'x'.repeat(i * 13), i }, k.privateKey));
    const decoded = tokens.map((t) => decodeJws(t));
    await new Promise((r) => setTimeout(r, 1));
    for (const d of decoded.reverse()) verifyJwsSignature(d, k.publicKey);
    // The payload of one token with the signature of another (same length) is refused.
    const [a, b] = [tokens[3]!, tokens[4]!];
    const mixed = `${a.slice(0, a.lastIndexOf('.'))}.${b.slice(b.lastIndexOf('.') + 1)}`;
    expect(failure(() => verifyJwsSignature(decodeJws(mixed), k.publicKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
  });

  it('still exposes the signing input and signature bytes of a decoded token', () => {
    const k = keyOf('ES256');
    const token = signCompact({ alg: 'ES256', typ: 'JWT', kid: 'k' }, { sub: 'x' }, k.privateKey);
    const d = decodeJws(token);
    const dot = token.lastIndexOf('.');
    expect(d.signingInput.toString('latin1')).toBe(token.slice(0, dot));
    expect(d.signature.equals(Buffer.from(token.slice(dot + 1), 'base64url'))).toBe(true);
    expect(cryptoVerify('sha256', d.signingInput, { key: k.publicKey, dsaEncoding: 'ieee-p1363' }, d.signature)).toBe(true);
    // A decoded-token-shaped object that did not come from decodeJws takes node:crypto's P1363 path.
    verifyJwsSignature({ header: d.header, payload: d.payload, signingInput: d.signingInput, signature: d.signature }, k.publicKey);
    expect(failure(() => verifyJwsSignature({ header: d.header, payload: d.payload, signingInput: Buffer.from('x'), signature: d.signature }, k.publicKey))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
  });
});
