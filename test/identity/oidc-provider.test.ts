/**
 * Interop: a real OpenID Provider (panva/node-oidc-provider v9) on loopback
 * HTTPS issues client_credentials JWT access tokens; OidcVerifier accepts
 * them via discovery, and keeps accepting after the provider's signing key
 * is rotated (a new Provider instance behind the same issuer and port).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { request } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OidcVerifier } from '../../src/identity/oidc.js';
import { decodeJws } from '../../src/tokens/jws.js';
import { makeSelfSignedCert, startHttps, type TestCert } from '../helpers/https-jwks.js';
import { makeKey, type TestKey } from '../helpers/test-issuer.js';

const RESOURCE = 'https://api.mayfly.test';
const SECRET = 'a-test-only-client-secret-of-sufficient-length';

let cert: TestCert;
let issuer: string;
let close: () => Promise<void>;
let handler: (req: IncomingMessage, res: ServerResponse) => void = () => {};

// oidc-provider ships no type declarations and package.json is not ours to change: type the little we use.
type ProviderInstance = { callback(): (req: IncomingMessage, res: ServerResponse) => void };
type ProviderCtor = new (issuer: string, configuration: Record<string, unknown>) => ProviderInstance;
let Provider: ProviderCtor;
let verifier: OidcVerifier;

function providerWith(key: TestKey): ProviderInstance {
  const jwk = { ...(key.privateKey.export({ format: 'jwk' }) as Record<string, unknown>), kid: key.kid, alg: key.alg, use: 'sig' };
  return new Provider(issuer, {
    clients: [
      { client_id: 'ci-runner', client_secret: SECRET, grant_types: ['client_credentials'], redirect_uris: [], response_types: [], token_endpoint_auth_method: 'client_secret_basic', id_token_signed_response_alg: key.alg },
    ],
    jwks: { keys: [jwk] },
    ttl: { ClientCredentials: 300 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({ scope: 'deploy', audience: 'mayfly', accessTokenTTL: 300, accessTokenFormat: 'jwt', jwt: { sign: { alg: key.alg } } }),
      },
    },
  });
}

function clientCredentialsToken(): Promise<string> {
  const body = new URLSearchParams({ grant_type: 'client_credentials', scope: 'deploy', resource: RESOURCE }).toString();
  return new Promise((resolve, reject) => {
    const req = request(
      `${issuer}/token`,
      {
        method: 'POST',
        ca: cert.cert,
        timeout: 5_000,
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: `Basic ${Buffer.from(`ci-runner:${SECRET}`).toString('base64')}`,
        },
      },
      (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new Error(`token endpoint: ${res.statusCode} ${text}`));
          resolve((JSON.parse(text) as { access_token: string }).access_token);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

beforeAll(async () => {
  const moduleName = 'oidc-provider';
  Provider = ((await import(moduleName)) as { default: ProviderCtor }).default;
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
    handler = providerWith(k1).callback();
    const t1 = await clientCredentialsToken();
    expect(decodeJws(t1).header.kid).toBe(k1.kid);
    const id1 = await verifier.verify(t1, Date.now());
    expect(id1).toMatchObject({ kind: 'oidc', id: `${issuer}#ci-runner`, issuer, source: 'idp' });
    expect(id1.claims).toMatchObject({ client_id: 'ci-runner', scope: 'deploy', aud: 'mayfly' });
    const jwks = verifier.jwksOf('idp')!;
    expect(jwks.fetchCount).toBe(1);

    // Rotate: same issuer and port, new Provider with a new RS256 key. The verifier is not restarted.
    const k2 = makeKey('RS256');
    handler = providerWith(k2).callback();
    const t2 = await clientCredentialsToken();
    expect(decodeJws(t2).header.kid).toBe(k2.kid);
    expect((await verifier.verify(t2, Date.now())).id).toBe(`${issuer}#ci-runner`);
    expect(jwks.fetchCount).toBe(2);
    expect(jwks.kids()).toEqual([k2.kid]);

    // The old key is gone from the provider's JWKS, so tokens it signed no longer verify.
    await expect(verifier.verify(t1, Date.now())).rejects.toMatchObject({ code: 'ERR_KEY_UNKNOWN' });
  });
});
