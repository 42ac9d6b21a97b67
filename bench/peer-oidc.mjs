// Peer reference for the token-exchange benchmark: oidc-provider (v9) issuing
// ES256 JWT access tokens with the client_credentials grant over HTTPS.
// Started by bench/run.mjs as a child process; prints "ready <port>" when listening.
// Usage: node bench/peer-oidc.mjs <port> <cert.pem> <key.pem> <client_id> <client_secret>
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, clientId, clientSecret] = process.argv.slice(2);
if (!port || !certFile || !keyFile || !clientId || !clientSecret) {
  console.error('usage: peer-oidc.mjs <port> <cert.pem> <key.pem> <client_id> <client_secret>');
  process.exit(2);
}
const issuer = `https://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'bench-peer-1' };

const provider = new Provider(issuer, {
  clients: [{ client_id: clientId, client_secret: clientSecret, grant_types: ['client_credentials'], redirect_uris: [], response_types: [], id_token_signed_response_alg: 'ES256' }],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:bench',
      getResourceServerInfo: () => ({ scope: 'read', accessTokenFormat: 'jwt', accessTokenTTL: 300, jwt: { sign: { alg: 'ES256' } } }),
    },
  },
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
});
provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));

const server = createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, provider.callback());
server.keepAliveTimeout = 60_000;
server.listen(Number(port), '127.0.0.1', () => console.log(`ready ${server.address().port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
