/**
 * Interop: a real OpenID Provider (panva/node-oidc-provider v9) on loopback
 * HTTPS issues client_credentials JWT access tokens; OidcVerifier accepts
 * them via discovery, and keeps accepting after the provider's signing key
 * is rotated (a new Provider instance behind the same issuer and port).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OidcVerifier } from '../../src/identity/oidc.js';
import { decodeJws } from '../../src/tokens/jws.js';
import { makeSelfSignedCert, startHttps, type TestCert } from '../helpers/https-jwks.js';
import { makeKey, type TestKey } from '../helpers/test-issuer.js';
import { createProvider, providerAccessToken } from '../helpers/oidc-provider.js';

const RESOURCE = 'https://api.mayfly.test';
let cert: TestCert;
let issuer: string;
let close: () => Promise<void>;
let handler: (req: IncomingMessage, res: ServerResponse) => void = () => {};
let verifier: OidcVerifier;

const providerWith = async (key: TestKey) => (await createProvider(issuer, key, RESOURCE)).callback();
const clientCredentialsToken = () => providerAccessToken(issuer, cert.cert, RESOURCE);

beforeAll(async () => {
  cert = makeSelfSignedCert();
  const s = await startHttps(cert, (req, res) => handler(req, res));
  issuer = s.origin;
  close = s.close;
  verifier = new OidcVerifier(
    [{ name: 'idp', issuer, audiences: ['mayfly'], allowedAlgs: ['ES256', 'RS256'], ca: cert.cert, subjectClaim: 'client_id' }],
    { minRefreshIntervalMs: 0, timeoutMs: 2_000 },
  );
});

afterAll(async () => {
  verifier?.close();
  await close?.();
});

describe('OidcVerifier against oidc-provider', () => {
  it('accepts client_credentials JWT access tokens via discovery, across a signing-key rotation', async () => {
    const k1 = makeKey('ES256');
    handler = await providerWith(k1);
    const t1 = await clientCredentialsToken();
    expect(decodeJws(t1).header.kid).toBe(k1.kid);
    const id1 = await verifier.verify(t1, Date.now());
    expect(id1).toMatchObject({ kind: 'oidc', id: `${issuer}#ci-runner`, issuer, source: 'idp' });
    expect(id1.claims).toMatchObject({ client_id: 'ci-runner', scope: 'deploy', aud: 'mayfly' });
    const jwks = verifier.jwksOf('idp')!;
    expect(jwks.fetchCount).toBe(1);

    // Rotate: same issuer and port, new Provider with a new RS256 key. The verifier is not restarted.
    const k2 = makeKey('RS256');
    handler = await providerWith(k2);
    const t2 = await clientCredentialsToken();
    expect(decodeJws(t2).header.kid).toBe(k2.kid);
    expect((await verifier.verify(t2, Date.now())).id).toBe(`${issuer}#ci-runner`);
    expect(jwks.fetchCount).toBe(2);
    expect(jwks.kids()).toEqual([k2.kid]);

    // The old key is gone from the provider's JWKS, so tokens it signed no longer verify.
    await expect(verifier.verify(t1, Date.now())).rejects.toMatchObject({ code: 'ERR_KEY_UNKNOWN' });
  });
});
