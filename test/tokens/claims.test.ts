/** Claim validation: every required claim present and well-typed, each failure naming the claim. */
import { describe, expect, it } from 'vitest';
import { validateClaims } from '../../src/tokens/claims.js';
import { failureOf } from '../helpers/codes.js';

const NOW = Date.UTC(2026, 11, 3, 12, 0, 0);
const sec = Math.floor(NOW / 1000);
const good = () => ({ iss: 'https://mayfly.test', sub: 'spiffe://t/w', aud: 'api', iat: sec, nbf: sec, exp: sec + 60, jti: 'j1', scope: 'read', client_id: 'spiffe://t/w', tid: 't1' });
const opts = { issuer: 'https://mayfly.test', audience: 'api', now: NOW, clockSkewSeconds: 0 };

const failure = (payload: Record<string, unknown>): string => failureOf(() => validateClaims(payload, opts));

describe('validateClaims', () => {
  it('accepts a complete claim set and returns it', () => {
    const p = good();
    expect(validateClaims(p, opts)).toBe(p);
  });

  it.each(['iss', 'sub', 'aud', 'jti', 'tid', 'scope'])('names %s when it is missing or not a string', (c) => {
    for (const v of [undefined, 1, null, ['x'], { x: 1 }]) {
      const p: Record<string, unknown> = { ...good(), [c]: v };
      if (v === undefined) delete p[c];
      expect(failure(p)).toBe(`ERR_JWT_INVALID: token claim ${c} is missing or not a string`);
    }
  });

  it.each(['exp', 'iat', 'nbf'])('names %s when it is missing, not a number or not finite', (c) => {
    for (const v of [undefined, '1', null, Number.NaN, Number.POSITIVE_INFINITY]) {
      const p: Record<string, unknown> = { ...good(), [c]: v };
      if (v === undefined) delete p[c];
      expect(failure(p)).toBe(`ERR_JWT_INVALID: token claim ${c} is missing or not a number`);
    }
  });

  it('names the first bad claim in the documented order', () => {
    expect(failure({ ...good(), scope: 1, sub: 2 })).toBe('ERR_JWT_INVALID: token claim sub is missing or not a string');
    expect(failure({ ...good(), nbf: 'x', exp: 'y' })).toBe('ERR_JWT_INVALID: token claim exp is missing or not a number');
  });

  it('checks issuer, audience and the time window after the types', () => {
    expect(failure({ ...good(), iss: 'https://other' })).toMatch(/^ERR_JWT_INVALID: token issuer "https:\/\/other" is not/);
    expect(failure({ ...good(), aud: 'other' })).toMatch(/^ERR_JWT_INVALID: token audience "other" is not accepted/);
    expect(failure({ ...good(), exp: sec })).toBe('ERR_JWT_EXPIRED: token is expired');
    expect(failure({ ...good(), nbf: sec + 1 })).toBe('ERR_JWT_INVALID: token is not yet valid (nbf)');
  });
});
