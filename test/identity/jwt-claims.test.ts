import { describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { validateJwtClaims, type JwtClaimsOptions } from '../../src/identity/jwt-claims.js';

const NOW = Date.UTC(2026, 0, 1);
const S = NOW / 1000;
const base = { iss: 'https://issuer.test', aud: 'mayfly', exp: S + 300, nbf: S - 10, iat: S - 10 };
const opts: JwtClaimsOptions = { now: NOW, clockSkewSeconds: 60, audience: 'mayfly', issuer: 'https://issuer.test', requireExp: true };

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (e) {
    if (isMayflyError(e)) return e.code;
    throw e;
  }
}

describe('validateJwtClaims', () => {
  const cases: Array<[string, Record<string, unknown>, Partial<JwtClaimsOptions>, string, RegExp?]> = [
    ['valid', {}, {}, 'OK'],
    ['exp within skew', { exp: S - 30 }, {}, 'OK'],
    ['exp passed beyond skew', { exp: S - 61 }, {}, 'ERR_JWT_EXPIRED', /exp has passed/],
    ['exp exactly at now+skew boundary', { exp: S - 60 }, {}, 'ERR_JWT_EXPIRED'],
    ['exp missing', { exp: undefined }, {}, 'ERR_JWT_INVALID', /exp is missing/],
    ['exp not a number', { exp: String(S + 300) }, {}, 'ERR_JWT_INVALID', /exp must be a NumericDate/],
    ['nbf within skew', { nbf: S + 30 }, {}, 'OK'],
    ['nbf in the future', { nbf: S + 120 }, {}, 'ERR_JWT_INVALID', /nbf is in the future/],
    ['iat in the future', { iat: S + 120 }, {}, 'ERR_JWT_INVALID', /iat is in the future/],
    ['iat too old with max age', { iat: S - 4000 }, { maxTokenAgeSeconds: 3600 }, 'ERR_JWT_INVALID', /iat is too old/],
    ['iat old but within max age + skew', { iat: S - 3650 }, { maxTokenAgeSeconds: 3600 }, 'OK'],
    ['iat missing with max age', { iat: undefined }, { maxTokenAgeSeconds: 3600 }, 'ERR_JWT_INVALID', /iat is missing/],
    ['iat old without max age', { iat: S - 400000 }, {}, 'OK'],
    ['aud array containing ours', { aud: ['x', 'mayfly'] }, {}, 'OK'],
    ['aud wrong', { aud: ['x'] }, {}, 'ERR_JWT_INVALID', /aud \["x"\] does not include the broker's audience "mayfly"/],
    ['aud missing', { aud: undefined }, {}, 'ERR_JWT_INVALID', /aud is missing/],
    ['aud empty array', { aud: [] }, {}, 'ERR_JWT_INVALID', /aud must be/],
    ['aud non-string member', { aud: ['mayfly', 1] }, {}, 'ERR_JWT_INVALID', /aud must be/],
    ['any of several accepted audiences', { aud: 'b' }, { audience: ['a', 'b'] }, 'OK'],
    ['iss differs by trailing slash', { iss: 'https://issuer.test/' }, {}, 'ERR_JWT_INVALID', /iss "https:\/\/issuer.test\/" is not the expected issuer/],
    ['iss missing when expected', { iss: undefined }, {}, 'ERR_JWT_INVALID', /iss is missing/],
    ['iss not checked when not configured', { iss: 'https://other' }, { issuer: undefined }, 'OK'],
    ['no accepted audience configured', {}, { audience: [] }, 'ERR_CONFIG_INVALID'],
  ];
  it.each(cases)('%s', (_name, patch, o, code, msg) => {
    const payload: Record<string, unknown> = { ...base, ...patch };
    for (const [k, v] of Object.entries(patch)) if (v === undefined) delete payload[k];
    const run = () => validateJwtClaims(payload, { ...opts, ...o });
    expect(codeOf(run)).toBe(code);
    if (msg) expect(() => run()).toThrow(msg);
  });

  it('returns times in epoch ms and the audience as an array', () => {
    expect(validateJwtClaims(base, opts)).toEqual({ exp: (S + 300) * 1000, nbf: (S - 10) * 1000, iat: (S - 10) * 1000, aud: ['mayfly'], iss: 'https://issuer.test' });
  });
});
