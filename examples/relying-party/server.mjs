// A tiny relying party: an HTTPS API that accepts Mayfly access tokens.
//
//   npm run build && npm start            # terminal 1: dev broker (writes ./.mayfly)
//   node examples/relying-party/server.mjs # terminal 2
//
// Every request needs `Authorization: Bearer <token>` with scope `read` for
// audience `demo-api`. A certificate-bound token (cnf x5t#S256) must come over
// mutual TLS with the certificate it is bound to; a bare bearer of a bound
// token gets 401 (the verifier's default).
// Configuration (environment): MAYFLY_DEV_DIR (default .mayfly), MAYFLY_BROKER
// (gRPC, default 127.0.0.1:8443), MAYFLY_JWKS_URL (default
// https://127.0.0.1:8444/.well-known/jwks.json), MAYFLY_ISSUER (default: the
// `issuer` line of <dev dir>/mayfly.yaml), AUDIENCE (default demo-api),
// HOST/PORT (default 127.0.0.1:9443; PORT=0 picks a free port),
// TLS_CERT/TLS_KEY (default: a localhost certificate minted from the dev CA at
// start, DEVELOPMENT ONLY).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const { MayflyVerifier } = await import(new URL('dist/verifier/index.js', `file://${root}/`).href);
const { BrokerClient } = await import(new URL('dist/client/index.js', `file://${root}/`).href);

const env = process.env;
const devDir = resolve(env.MAYFLY_DEV_DIR ?? '.mayfly');
const file = (name) => readFileSync(join(devDir, name));
const ca = file('ca.pem');
const issuer = env.MAYFLY_ISSUER ?? /^issuer:\s*(\S+)/m.exec(file('mayfly.yaml').toString('utf8'))?.[1];
const audience = env.AUDIENCE ?? 'demo-api';

// The server's own certificate.
let tls;
if (env.TLS_CERT && env.TLS_KEY) {
  tls = { cert: readFileSync(env.TLS_CERT), key: readFileSync(env.TLS_KEY) };
} else {
  const { loadDevCa } = await import(new URL('dist/cli/dev-init.js', `file://${root}/`).href);
  const { issueServerCert } = await import(new URL('dist/pki/dev-pki.js', `file://${root}/`).href);
  const c = issueServerCert(loadDevCa(devDir), { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], commonName: 'demo-api', validDays: 1 });
  tls = { cert: [c.certPem, ...c.chainPem].join(''), key: c.keyPem };
}

// The relying party's own SVID authenticates it to the broker's revocation feed.
const broker = new BrokerClient({ address: env.MAYFLY_BROKER ?? '127.0.0.1:8443', ca, cert: file('relying-party.pem'), key: file('relying-party.key') });
const verifier = new MayflyVerifier({
  issuer,
  audience,
  jwks: { url: env.MAYFLY_JWKS_URL ?? 'https://127.0.0.1:8444/.well-known/jwks.json', ca },
  feed: { client: broker, subscriberId: `demo-api-${process.pid}`, maxSilenceMs: 15_000, onSilence: 'fail-closed' },
  onEvent: (e) => {
    if (e.type === 'feed.disconnected') console.error(`revocation feed disconnected (${e.error?.message ?? 'closed'}); retrying in ${e.retryInMs} ms`);
    if (e.type === 'misuse') console.error(`misuse detected: ${e.kind} jti=${e.jti}`);
  },
});
await verifier.start();

// RFC 6750 §3 errors.
const STATUS = { ERR_SCOPE_DENIED: [403, 'insufficient_scope'], ERR_UNAVAILABLE: [503, null] };

const server = createServer({ ...tls, ca, requestCert: true, rejectUnauthorized: false }, async (req, res) => {
  const send = (status, body, headers = {}) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
    res.end(JSON.stringify(body));
  };
  if (req.url === '/healthz') return send(200, verifier.stats());
  const m = /^Bearer ([A-Za-z0-9._~+/=-]+)$/.exec(req.headers.authorization ?? '');
  if (!m) return send(401, { error: 'invalid_request', error_description: 'Bearer token required' }, { 'www-authenticate': 'Bearer realm="demo-api"' });
  // The client's leaf certificate, if it presented one (the TLS handshake proved it holds the key).
  const peer = req.socket.getPeerCertificate();
  const clientCertDer = peer && peer.raw ? peer.raw : undefined;
  try {
    const claims = await verifier.verify(m[1], { requiredScopes: ['read'], clientCertDer });
    return send(200, { hello: claims.sub, scope: claims.scope, task: claims.tid, bound: Boolean(claims.cnf), actors: claims.act ?? null });
  } catch (e) {
    const [status, error] = STATUS[e.code] ?? [401, 'invalid_token'];
    const headers = error ? { 'www-authenticate': `Bearer realm="demo-api", error="${error}"` } : { 'retry-after': '5' };
    return send(status, { error: error ?? 'temporarily_unavailable', code: e.code, error_description: e.message }, headers);
  }
});

server.listen(Number(env.PORT ?? 9443), env.HOST ?? '127.0.0.1', () => {
  const { port } = server.address();
  console.log(`demo-api listening on https://${env.HOST ?? '127.0.0.1'}:${port}`);
});

const shutdown = () => {
  server.close();
  verifier.close();
  broker.close();
};
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
