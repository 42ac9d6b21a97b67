import { parse } from 'node:querystring';
import { describe, expect, it } from 'vitest';
import { parseForm } from '../../src/transport/http/form.js';

/** A deterministic pseudo-random generator, so a failure names a reproducible input. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const PIECES = ['a', 'b', '=', '&', '+', '%', '2', '0', '4', '1', 'F', '%2', '%41', '%zz', '%E2%82%AC', '%E2%82', 'é', '.', '__proto__', 'constructor', ' ', '&&', '=='];

describe('parseForm', () => {
  it('answers what node:querystring answers, on 50,000 generated bodies (malformed escapes, non-ASCII, repeats, __proto__)', () => {
    const next = rng(10);
    for (let i = 0; i < 50_000; i++) {
      let body = '';
      const len = Math.floor(next() * 12);
      for (let j = 0; j < len; j++) body += PIECES[Math.floor(next() * PIECES.length)];
      const ours = parseForm(body);
      expect(Object.getPrototypeOf(ours), body).toBeNull();
      expect({ ...ours }, JSON.stringify(body)).toEqual({ ...parse(body) });
    }
  });

  it('decodes a token exchange body: the JWT as sent, the escaped fields decoded', () => {
    const jwt = `eyJhbGciOiJFUzI1NiJ9.${'x'.repeat(900)}.sig_-`;
    const body = new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: jwt, scope: 'read write' }).toString();
    expect({ ...parseForm(body) }).toEqual({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: jwt, scope: 'read write' });
  });

  it('a repeated name becomes an array (the route refuses it), as node:querystring does', () => {
    expect({ ...parseForm('a=1&a=2&a=3&b') }).toEqual({ a: ['1', '2', '3'], b: '' });
  });

  it('keeps at most 1000 pairs, counting empty ones, as node:querystring does', () => {
    for (const body of [Array.from({ length: 1500 }, (_, i) => `k${i}=v`).join('&'), `${'&'.repeat(1500)}a=1`, `a=1${'&'.repeat(998)}b=2&c=3`]) {
      expect({ ...parseForm(body) }).toEqual({ ...parse(body) });
    }
  });

  it('a 64 KiB body of escapes and separators parses as node:querystring parses it', () => {
    const body = '%&+'.repeat(21_000);
    expect({ ...parseForm(body) }).toEqual({ ...parse(body) });
  });
});
