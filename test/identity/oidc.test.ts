import { createHmac, type KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { isMayflyError, type MayflyError } from '../../src/core/errors.js';
import { OidcVerifier, type OidcIssuerConfig, type OidcVerifierOptions } from '../../src/identity/oidc.js';
import { makeSelfSignedCert, type TestCert } from '../helpers/https-jwks.js';
import { TestIssuer, type TestKey } from '../helpers/test-issuer.js';
import { codeOf } from '../helpers/codes.js';

const NOW = Date.UTC(2026, 0, 1);
const S = NOW / 1000;
const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

let cert: TestCert;
let A: TestIssuer;
let B: TestIssuer;
let aEs: TestKey;
let aRs: TestKey;
let bEs: TestKey;
let aShared: TestKey;
let bShared: TestKey;
const open: OidcVerifier[] = [];

beforeAll(async () => {
  cert = makeSelfSignedCert();
  A = await new TestIssuer(cert).start();
  B = await new TestIssuer(cert).start();
  aEs = A.addKey('ES256');
  aRs = A.addKey('RS256');
  aShared = A.addKey('ES256', { kid: 'shared' });
  bEs = B.addKey('ES256');
  bShared = B.addKey('ES256', { kid: 'shared' });
});

afterAll(async () => {
  for (const v of open) v.close();
  await Promise.all([A?.close(), B?.close()]);
});

function verifier(o: { a?: Partial<OidcIssuerConfig>; opts?: OidcVerifierOptions; clock?: ManualClock } = {}): { v: OidcVerifier; clock: ManualClock; errors: MayflyError[] } {
  const clock = o.clock ?? new ManualClock(NOW);
  const errors: MayflyError[] = [];
  const v = new OidcVerifier(
    [
      { name: 'github', issuer: A.issuer, audiences: ['mayfly'], allowedAlgs: ['ES256', 'RS256'], ca: cert.cert, maxTokenAgeSeconds: 900, ...o.a },
      { name: 'other', issuer: B.issuer, audiences: ['mayfly'], allowedAlgs: ['ES256'], ca: cert.cert },
    ],
    { timeoutMs: 1000, clock, onJwksError: (e) => errors.push(e), ...o.opts },
  );
  open.push(v);
  return { v, clock, errors };
}


describe('OidcVerifier', () => {
  it('accepts a GitHub-shaped token via discovery over HTTPS with a custom CA', async () => {
    const { v } = verifier();
    const id = await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
    expect(id).toMatchObject({
      kind: 'oidc',
      id: `${A.issuer}#repo:acme/api:environment:prod`,
      issuer: A.issuer,
      method: 'oidc',
      source: 'github',
      credentialExpiresAt: (S + 300) * 1000,
    });
    expect(id.claims).toMatchObject({ repository: 'acme/api', ref: 'refs/heads/main', environment: 'prod', repository_owner_id: '1234567' });
  });

  it('uses subjectClaim for the identity id', async () => {
    const { v } = verifier({ a: { subjectClaim: 'repository' } });
    expect((await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW)).id).toBe(`${A.issuer}#acme/api`);
  });

  describe('rejections (one verifier, keys cached)', () => {
    let v: OidcVerifier;
    beforeAll(async () => {
      v = verifier().v;
      await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
      await v.verify(B.mint({ kid: bEs.kid, nowMs: NOW }), NOW);
    });

    const hs256WithPublicKey = (pub: KeyObject, iss: string) => {
      const input = `${b64({ alg: 'HS256', kid: aRs.kid, typ: 'JWT' })}.${b64({ iss, sub: 'x', aud: 'mayfly', exp: S + 300, iat: S })}`;
      const secret = pub.export({ type: 'spki', format: 'pem' });
      return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
    };

    const cases: Array<[string, () => string, string]> = [
      ['RS256 key', () => A.mint({ kid: aRs.kid, nowMs: NOW }), 'OK'],
      ['issuer B with its own key', () => B.mint({ kid: bEs.kid, nowMs: NOW }), 'OK'],
      ['expired', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { exp: S - 120 } }), 'ERR_JWT_EXPIRED'],
      ['nbf in the future', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { nbf: S + 600 } }), 'ERR_JWT_INVALID'],
      ['iat in the future', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { iat: S + 600, nbf: undefined } }), 'ERR_JWT_INVALID'],
      ['too old (maxTokenAgeSeconds)', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { iat: S - 2000, nbf: undefined } }), 'ERR_JWT_INVALID'],
      ['wrong aud', () => A.mint({ kid: aEs.kid, nowMs: NOW, aud: 'https://github.com/acme' }), 'ERR_JWT_INVALID'],
      ['unknown iss', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { iss: 'https://evil.example' } }), 'ERR_ISSUER_UNKNOWN'],
      ['iss with trailing slash', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { iss: `${A.issuer}/` } }), 'ERR_ISSUER_UNKNOWN'],
      ['iss missing', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { iss: undefined } }), 'ERR_JWT_INVALID'],
      ['sub missing', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { sub: undefined } }), 'ERR_JWT_INVALID'],
      ['alg none', () => `${b64({ alg: 'none', kid: aEs.kid })}.${b64({ iss: A.issuer, sub: 'x', aud: 'mayfly', exp: S + 300 })}.`, 'ERR_JWT_INVALID'],
      ['HS256 signed with the RSA public key PEM as secret', () => hs256WithPublicKey(aRs.publicKey, A.issuer), 'ERR_JWT_INVALID'],
      ['alg not on the issuer allow-list (RS384)', () => A.mint({ kid: aRs.kid, nowMs: NOW, header: { alg: 'RS384' } }), 'ERR_JWT_INVALID'],
      ['ES256-only issuer B given RS256', () => `${b64({ alg: 'RS256', kid: bEs.kid })}.${b64({ iss: B.issuer })}.AAAA`, 'ERR_JWT_INVALID'],
      ['token over 16 KiB', () => A.mint({ kid: aEs.kid, nowMs: NOW, claims: { pad: 'x'.repeat(17 * 1024) } }), 'ERR_TOO_LARGE'],
      ['crit header', () => A.mint({ kid: aEs.kid, nowMs: NOW, header: { crit: ['b64'], b64: false } }), 'ERR_JWT_INVALID'],
      ['nested JWT (cty JWT)', () => A.mint({ kid: aEs.kid, nowMs: NOW, header: { cty: 'JWT' } }), 'ERR_JWT_INVALID'],
      ['kid missing', () => A.mint({ kid: aEs.kid, nowMs: NOW, header: { kid: undefined } }), 'ERR_JWT_INVALID'],
      ['kid of RS key used with ES256 alg', () => A.mint({ kid: aEs.kid, nowMs: NOW, header: { kid: aRs.kid } }), 'ERR_KEY_UNKNOWN'],
      ['same kid in A and B: B-signed token claiming iss A', () => {
        const t = B.mint({ kid: bShared.kid, nowMs: NOW, claims: { iss: A.issuer } });
        return t;
      }, 'ERR_JWT_SIGNATURE'],
      ['tampered payload', () => {
        const [h, , s] = A.mint({ kid: aEs.kid, nowMs: NOW }).split('.');
        return `${h}.${b64({ iss: A.issuer, sub: 'repo:acme/admin:ref:refs/heads/main', aud: 'mayfly', exp: S + 300, iat: S })}.${s}`;
      }, 'ERR_JWT_SIGNATURE'],
    ];
    it.each(cases)('%s → %s', async (_name, make, code) => {
      const token = make();
      let got = 'OK';
      try {
        await v.verify(token, NOW);
      } catch (e) {
        if (!isMayflyError(e)) throw e;
        got = e.code;
        expect(e.message).not.toContain(token.slice(0, 20));
      }
      expect(got).toBe(code);
    });

    it('names the audience in the message', async () => {
      await expect(v.verify(A.mint({ kid: aEs.kid, nowMs: NOW, aud: 'x' }), NOW)).rejects.toThrow(`aud ["x"] does not include the broker's audience "mayfly"`);
    });
    void aShared;
  });

  it('an issuer key below the key-strength policy (RSA-1024 in its JWKS) → ERR_KEY_WEAK, not a generic failure', async () => {
    const weak = A.addKey('RS256', { rsaBits: 1024 });
    const { v } = verifier();
    await expect(v.verify(A.mint({ kid: weak.kid, nowMs: NOW }), NOW)).rejects.toMatchObject({ code: 'ERR_KEY_WEAK', message: /RSA key of 1024 bits/ });
  });

  it('kid of issuer B on a token of issuer A: one refresh of A only, then ERR_KEY_UNKNOWN', async () => {
    const { v } = verifier();
    await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
    const bHits = B.server.jwksHits;
    const forged = B.mint({ kid: bEs.kid, nowMs: NOW, claims: { iss: A.issuer } });
    expect(await codeOf(v.verify(forged, NOW))).toBe('ERR_KEY_UNKNOWN');
    expect(B.server.jwksHits).toBe(bHits);
  });

  it('rotation: unknown kid triggers one refresh and the new key is accepted', async () => {
    const { v, clock } = verifier();
    await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
    const jwks = v.jwksOf('github')!;
    expect(jwks.fetchCount).toBe(1);
    clock.advance(31_000);
    const rotated = A.addKey('ES256');
    expect((await v.verify(A.mint({ kid: rotated.kid, nowMs: NOW }), NOW)).source).toBe('github');
    expect(jwks.fetchCount).toBe(2);
  });

  it('unknown kid twice quickly: the second lookup does not fetch (rate limit)', async () => {
    const { v } = verifier();
    await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
    const jwks = v.jwksOf('github')!;
    const hits = A.server.jwksHits;
    const unpublished = A.addKey('ES256', { publish: false });
    const t = A.mint({ kid: unpublished.kid, nowMs: NOW });
    // The first fetch happened at startup; within 30 s no unknown-kid refresh is allowed at all.
    expect(await codeOf(v.verify(t, NOW))).toBe('ERR_KEY_UNKNOWN');
    expect(await codeOf(v.verify(t, NOW))).toBe('ERR_KEY_UNKNOWN');
    expect(A.server.jwksHits).toBe(hits);
    expect(jwks.fetchCount).toBe(1);
  });

  it('unknown kid after the interval: exactly one fetch, the repeat within the interval none', async () => {
    const { v, clock } = verifier();
    await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
    const jwks = v.jwksOf('github')!;
    clock.advance(60_000);
    const t = A.mint({ kid: A.addKey('ES256', { publish: false }).kid, nowMs: NOW });
    expect(await codeOf(v.verify(t, NOW))).toBe('ERR_KEY_UNKNOWN');
    expect(jwks.fetchCount).toBe(2);
    clock.advance(1_000);
    expect(await codeOf(v.verify(t, NOW))).toBe('ERR_KEY_UNKNOWN');
    expect(jwks.fetchCount).toBe(2);
  });

  it('concurrent unknown-kid lookups share a single fetch', async () => {
    const { v } = verifier();
    const before = A.server.jwksHits;
    const tokens = Array.from({ length: 20 }, () => A.mint({ kid: aEs.kid, nowMs: NOW }));
    const ids = await Promise.all(tokens.map((t) => v.verify(t, NOW)));
    expect(ids).toHaveLength(20);
    expect(A.server.jwksHits - before).toBe(1);
    expect(v.jwksOf('github')!.fetchCount).toBe(1);
  });

  it('JWKS server down: cached keys keep verifying and the failure is reported', async () => {
    const { v, clock, errors } = verifier();
    await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
    A.server.state.down = true;
    try {
      clock.advance(60_000);
      const unknown = A.mint({ kid: A.addKey('ES256').kid, nowMs: NOW });
      expect(await codeOf(v.verify(unknown, NOW))).toBe('ERR_UNAVAILABLE');
      expect(errors.map((e) => e.code)).toContain('ERR_UNAVAILABLE');
      expect(errors.some((e) => /HTTP 503/.test(e.message))).toBe(true);
      expect((await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW)).source).toBe('github');
    } finally {
      A.server.state.down = false;
    }
  });

  it('slow JWKS server: the refresh times out in bounded time while cached-key verification is unaffected', async () => {
    const { v, clock } = verifier({ opts: { timeoutMs: 300 } });
    await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
    A.server.state.delayMs = 5_000;
    try {
      clock.advance(60_000);
      const started = Date.now();
      const slow = codeOf(v.verify(A.mint({ kid: A.addKey('ES256').kid, nowMs: NOW }), NOW)).then((c) => ({ c, ms: Date.now() - started }));
      const cachedStart = Date.now();
      await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW);
      expect(Date.now() - cachedStart).toBeLessThan(250);
      const { c, ms } = await slow;
      expect(c).toBe('ERR_UNAVAILABLE');
      expect(ms).toBeGreaterThanOrEqual(250);
      expect(ms).toBeLessThan(2_000);
    } finally {
      A.server.state.delayMs = 0;
    }
  });

  it('discovery document with a different issuer is refused', async () => {
    A.server.state.discoveryIssuer = `${A.issuer}/`;
    try {
      const { v, errors } = verifier();
      expect(await codeOf(v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW))).toBe('ERR_UNAVAILABLE');
      expect(errors[0]?.message).toMatch(/does not equal the configured issuer/);
    } finally {
      A.server.state.discoveryIssuer = undefined;
    }
  });

  it('without the custom CA the self-signed issuer is not trusted', async () => {
    const { v } = verifier({ a: { ca: undefined } });
    expect(await codeOf(v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW))).toBe('ERR_UNAVAILABLE');
  });

  it('static JWKS (air-gapped) needs no network', async () => {
    const { v } = verifier({ a: { jwks: { jwks: { keys: [aEs.jwk] } }, ca: undefined } });
    expect((await v.verify(A.mint({ kid: aEs.kid, nowMs: NOW }), NOW)).source).toBe('github');
    expect(await codeOf(v.verify(A.mint({ kid: aRs.kid, nowMs: NOW }), NOW))).toBe('ERR_KEY_UNKNOWN');
  });

  it('explicit jwksUri', async () => {
    const { v } = verifier({ a: { jwks: { jwksUri: A.server.jwksUri } } });
    expect((await v.verify(A.mint({ kid: aRs.kid, nowMs: NOW }), NOW)).source).toBe('github');
    expect(A.server.hits['/.well-known/openid-configuration']).toBeGreaterThan(0);
  });

  describe('configuration', () => {
    const base: OidcIssuerConfig = { name: 'x', issuer: 'https://x.test', audiences: ['mayfly'], jwks: { jwks: { keys: [] } } };
    const cases: Array<[string, OidcIssuerConfig[], string]> = [
      ['valid', [base], 'OK'],
      ['HS256 on the allow-list', [{ ...base, allowedAlgs: ['HS256' as never] }], 'ERR_CONFIG_INVALID'],
      ['none on the allow-list', [{ ...base, allowedAlgs: ['none' as never] }], 'ERR_CONFIG_INVALID'],
      ['empty allow-list', [{ ...base, allowedAlgs: [] }], 'ERR_CONFIG_INVALID'],
      ['no audiences', [{ ...base, audiences: [] }], 'ERR_CONFIG_INVALID'],
      ['issuer not a URL', [{ ...base, issuer: 'github' }], 'ERR_CONFIG_INVALID'],
      ['duplicate name', [base, { ...base, issuer: 'https://y.test' }], 'ERR_CONFIG_INVALID'],
      ['duplicate issuer', [base, { ...base, name: 'y' }], 'ERR_CONFIG_INVALID'],
      ['http discovery without allowInsecureHttp', [{ ...base, issuer: 'http://x.test', jwks: { discovery: true } }], 'ERR_CONFIG_INVALID'],
    ];
    it.each(cases)('%s → %s', (_n, issuers, code) => {
      let got = 'OK';
      try {
        new OidcVerifier(issuers).close();
      } catch (e) {
        if (!isMayflyError(e)) throw e;
        got = e.code;
      }
      expect(got).toBe(code);
    });
  });
});
