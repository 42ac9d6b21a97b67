/** Mint, then verify: the signature is checked on a signer's first token, header and claims on every token. */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Signer } from '../../src/core/ports.js';
import { buildClaims } from '../../src/tokens/claims.js';
import { decodeJws, rawSign } from '../../src/tokens/jws.js';
import { mintToken } from '../../src/tokens/mint.js';
import { verifyMayflyToken } from '../../src/tokens/verify.js';
import { failureOf } from '../helpers/codes.js';

const NOW = Date.UTC(2026, 11, 3, 12, 0, 0);
const ISSUER = 'https://mayfly.test';
const claims = (over: { expiresAtMs?: number; audience?: string } = {}) =>
  buildClaims({ issuer: ISSUER, subject: 'spiffe://example.org/w', audience: over.audience ?? 'api', scopes: ['read'], jti: 'j1', taskId: 't1', issuedAtMs: NOW, expiresAtMs: over.expiresAtMs ?? NOW + 60_000 });

function es256(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' });
}

/** A local signer whose signatures can be switched to a wrong key or to garbage after the fact. */
function signer(kid: string, key: KeyObject): Signer & { mode: 'ok' | 'garbage' } {
  const s = {
    kid,
    alg: 'ES256' as const,
    mode: 'ok' as 'ok' | 'garbage',
    sign(input: Buffer): Buffer {
      return s.mode === 'ok' ? rawSign('ES256', input, key) : Buffer.alloc(64, 7);
    },
  };
  return s;
}

const codeOf = (fn: () => unknown): string => failureOf(fn, 'returned');

describe('mintToken', () => {
  it('returns a token that verifies with the public key', () => {
    const { privateKey, publicKey } = es256();
    const t = mintToken(claims(), signer('k1', privateKey), publicKey, NOW);
    expect(verifyMayflyToken(t, () => publicKey, { issuer: ISSUER, audience: 'api', now: NOW }).claims.jti).toBe('j1');
  });

  it('refuses the first token of a signer whose signature does not verify under the published key', () => {
    const { privateKey } = es256();
    const other = es256().publicKey;
    expect(codeOf(() => mintToken(claims(), signer('k1', privateKey), other, NOW))).toBe('ERR_INTERNAL: minted token failed self-verification; not returned');
  });

  it('verifies the signature again for a new signer object or a different public key', () => {
    const { privateKey, publicKey } = es256();
    const s = signer('k1', privateKey);
    mintToken(claims(), s, publicKey, NOW);
    // Same signer, another public key (e.g. a reload that paired it wrongly): checked in full again.
    expect(codeOf(() => mintToken(claims(), s, es256().publicKey, NOW))).toMatch(/^ERR_INTERNAL/);
    // A new signer object over a broken key: its first token is checked in full.
    const broken = signer('k1', privateKey);
    broken.mode = 'garbage';
    expect(codeOf(() => mintToken(claims(), broken, publicKey, NOW))).toMatch(/^ERR_INTERNAL/);
  });

  it('checks header and claims of every token, including after the signer was verified', () => {
    const { privateKey, publicKey } = es256();
    const s = signer('k1', privateKey);
    mintToken(claims(), s, publicKey, NOW);
    expect(codeOf(() => mintToken(claims({ expiresAtMs: NOW - 1000 }), s, publicKey, NOW))).toMatch(/^ERR_INTERNAL/);
    expect(codeOf(() => mintToken({ ...claims(), iss: 42 as unknown as string }, s, publicKey, NOW))).toMatch(/^ERR_INTERNAL/);
  });

  it('does not re-check the signature of later tokens of a verified signer (documented in docs/durability.md)', () => {
    const { privateKey, publicKey } = es256();
    const s = signer('k1', privateKey);
    mintToken(claims(), s, publicKey, NOW);
    s.mode = 'garbage';
    const t = mintToken(claims(), s, publicKey, NOW);
    // The token left the broker; every relying party refuses it, as the verifier SDK does here.
    expect(decodeJws(t).signature.equals(Buffer.alloc(64, 7))).toBe(true);
    expect(codeOf(() => verifyMayflyToken(t, () => publicKey, { issuer: ISSUER, audience: 'api', now: NOW }))).toBe('ERR_JWT_SIGNATURE: signature verification failed');
  });
});
