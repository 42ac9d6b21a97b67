/**
 * A real OpenID Provider (panva/node-oidc-provider v9) for interop tests:
 * client_credentials with JWT access tokens (resource indicators), signing
 * with a key the test chooses, served by the test's own HTTPS server.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { request } from 'node:https';
import type { TestKey } from './test-issuer.js';

export const PROVIDER_CLIENT_ID = 'ci-runner';
const SECRET = 'a-test-only-client-secret-of-sufficient-length';

// oidc-provider ships no type declarations and package.json is not ours to change: type the little we use.
export type ProviderInstance = { callback(): (req: IncomingMessage, res: ServerResponse) => void };
type ProviderCtor = new (issuer: string, configuration: Record<string, unknown>) => ProviderInstance;

let ctor: ProviderCtor | undefined;

/** A provider for `issuer` signing access tokens (audience `mayfly`, scope `deploy`) with `key`. */
export async function createProvider(issuer: string, key: TestKey, resource: string): Promise<ProviderInstance> {
  if (!ctor) {
    const moduleName = 'oidc-provider';
    ctor = ((await import(moduleName)) as { default: ProviderCtor }).default;
  }
  const jwk = { ...(key.privateKey.export({ format: 'jwk' }) as Record<string, unknown>), kid: key.kid, alg: key.alg, use: 'sig' };
  return new ctor(issuer, {
    clients: [
      { client_id: PROVIDER_CLIENT_ID, client_secret: SECRET, grant_types: ['client_credentials'], redirect_uris: [], response_types: [], token_endpoint_auth_method: 'client_secret_basic', id_token_signed_response_alg: key.alg },
    ],
    jwks: { keys: [jwk] },
    ttl: { ClientCredentials: 300 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({ scope: 'deploy', audience: 'mayfly', accessTokenTTL: 300, accessTokenFormat: 'jwt', jwt: { sign: { alg: key.alg } } }),
      },
    },
  });
}

/** A client_credentials access token from the provider at `issuer`. */
export function providerAccessToken(issuer: string, ca: string, resource: string): Promise<string> {
  const body = new URLSearchParams({ grant_type: 'client_credentials', scope: 'deploy', resource }).toString();
  return new Promise((resolve, reject) => {
    const req = request(
      `${issuer}/token`,
      {
        method: 'POST',
        ca,
        timeout: 5_000,
        headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`${PROVIDER_CLIENT_ID}:${SECRET}`).toString('base64')}` },
      },
      (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => (res.statusCode === 200 ? resolve((JSON.parse(text) as { access_token: string }).access_token) : reject(new Error(`token endpoint: ${res.statusCode} ${text}`))));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}
