import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { verifyJwtSvid, type JwtBundleSource } from '../../src/identity/jwt-svid.js';
import { signCompact, type JwsHeader } from '../../src/tokens/jws.js';

const NOW = Date.UTC(2026, 0, 1);
const S = NOW / 1000;

const ec = () => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const keyA = ec();
const keyB = ec();
const sharedKidA = ec();
const sharedKidB = ec();
const rsaA = generateKeyPairSync('rsa', { modulusLength: 2048 });
const edA = generateKeyPairSync('ed25519');

const authorities: Record<string, Map<string, KeyObject>> = {
  'a.test': new Map([
    ['ka', keyA.publicKey],
    ['shared', sharedKidA.publicKey],
    ['rsa', rsaA.publicKey],
    ['ed', edA.publicKey],
  ]),
  'b.test': new Map([
    ['kb', keyB.publicKey],
    ['shared', sharedKidB.publicKey],
  ]),
};
const bundles: JwtBundleSource = { jwtAuthoritiesFor: (td) => authorities[td] };

function svid(o: { key?: KeyObject; header?: Partial<JwsHeader>; claims?: Record<string, unknown> } = {}): string {
  const header: JwsHeader = { alg: 'ES256', kid: 'ka', typ: 'JWT', ...o.header };
  const payload: Record<string, unknown> = { sub: 'spiffe://a.test/ns/prod/sa/api', aud: ['mayfly'], exp: S + 300, iat: S - 5, ...o.claims };
  for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k];
  for (const [k, v] of Object.entries(header)) if (v === undefined) delete (header as Record<string, unknown>)[k];
  return signCompact(header, payload, o.key ?? keyA.privateKey);
}

const verify = (t: string) => verifyJwtSvid(t, bundles, { audience: 'mayfly', now: NOW });

describe('verifyJwtSvid', () => {
  it('accepts a valid JWT-SVID and returns a spiffe Identity', () => {
    const id = verify(svid());
    expect(id).toMatchObject({
      kind: 'spiffe',
      id: 'spiffe://a.test/ns/prod/sa/api',
      trustDomain: 'a.test',
      method: 'jwt-svid',
      credentialExpiresAt: (S + 300) * 1000,
      source: 'a.test',
    });
    expect(id.claims['sub']).toBe('spiffe://a.test/ns/prod/sa/api');
  });

  const cases: Array<[string, () => string, string]> = [
    ['trust domain B with its own key', () => svid({ key: keyB.privateKey, header: { kid: 'kb' }, claims: { sub: 'spiffe://b.test/w' } }), 'OK'],
    ['RS256', () => svid({ key: rsaA.privateKey, header: { alg: 'RS256', kid: 'rsa' } }), 'OK'],
    ['typ JOSE', () => svid({ header: { typ: 'JOSE' } }), 'OK'],
    ['no typ', () => svid({ header: { typ: undefined } }), 'OK'],
    ['aud as a string', () => svid({ claims: { aud: 'mayfly' } }), 'OK'],
    ['key of A signing a token claiming B (kid of A)', () => svid({ claims: { sub: 'spiffe://b.test/w' } }), 'ERR_KEY_UNKNOWN'],
    ['key of A signing a token claiming B (kid also exists in B)', () => svid({ key: sharedKidA.privateKey, header: { kid: 'shared' }, claims: { sub: 'spiffe://b.test/w' } }), 'ERR_JWT_SIGNATURE'],
    ['untrusted trust domain', () => svid({ claims: { sub: 'spiffe://c.test/w' } }), 'ERR_ISSUER_UNKNOWN'],
    ['missing aud', () => svid({ claims: { aud: undefined } }), 'ERR_JWT_INVALID'],
    ['wrong aud', () => svid({ claims: { aud: ['other'] } }), 'ERR_JWT_INVALID'],
    ['missing exp', () => svid({ claims: { exp: undefined } }), 'ERR_JWT_INVALID'],
    ['expired', () => svid({ claims: { exp: S - 120 } }), 'ERR_JWT_EXPIRED'],
    ['sub not a SPIFFE ID', () => svid({ claims: { sub: 'https://a.test/w' } }), 'ERR_SPIFFE_ID_INVALID'],
    ['sub with uppercase trust domain', () => svid({ claims: { sub: 'spiffe://A.test/w' } }), 'ERR_SPIFFE_ID_INVALID'],
    ['sub is only a trust domain', () => svid({ claims: { sub: 'spiffe://a.test' } }), 'ERR_SPIFFE_ID_INVALID'],
    ['sub missing', () => svid({ claims: { sub: undefined } }), 'ERR_JWT_INVALID'],
    ['typ at+jwt', () => svid({ header: { typ: 'at+jwt' } }), 'ERR_JWT_INVALID'],
    ['kid missing', () => svid({ header: { kid: undefined } }), 'ERR_JWT_INVALID'],
    ['unknown kid', () => svid({ header: { kid: 'nope' } }), 'ERR_KEY_UNKNOWN'],
    ['EdDSA is not a JWT-SVID alg', () => svid({ key: edA.privateKey, header: { alg: 'EdDSA', kid: 'ed' } }), 'ERR_JWT_INVALID'],
    ['tampered payload', () => {
      const [h, , s] = svid().split('.');
      const p = Buffer.from(JSON.stringify({ sub: 'spiffe://a.test/admin', aud: 'mayfly', exp: S + 300 })).toString('base64url');
      return `${h}.${p}.${s}`;
    }, 'ERR_JWT_SIGNATURE'],
    ['alg none', () => `${Buffer.from('{"alg":"none","kid":"ka"}').toString('base64url')}.${Buffer.from('{"sub":"spiffe://a.test/w","aud":"mayfly","exp":9999999999}').toString('base64url')}.`, 'ERR_JWT_INVALID'],
  ];
  it.each(cases)('%s → %s', (_name, make, code) => {
    let got = 'OK';
    try {
      verify(make());
    } catch (e) {
      if (!isMayflyError(e)) throw e;
      got = e.code;
      expect(e.message).not.toContain('eyJ');
    }
    expect(got).toBe(code);
  });
});
