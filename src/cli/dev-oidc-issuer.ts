/**
 * `mayfly dev oidc-issuer` / `mayfly dev oidc-token`: a local OIDC issuer so
 * the CI and Kubernetes paths can be tried on one machine. DEVELOPMENT ONLY.
 *
 * The issuer serves discovery and its JWKS over HTTPS with a certificate
 * from the dev CA, and signs tokens shaped like the ones GitHub Actions and
 * Kubernetes projected service accounts issue (the real claim names), with
 * an RS256 key kept in the dev directory. Its URL comes from the dev
 * config's `dev-ci` OIDC issuer, so broker and issuer always agree.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { loadConfig } from '../config/load.js';
import { MayflyError } from '../core/errors.js';
import { issueServerCert } from '../pki/dev-pki.js';
import { signCompact } from '../tokens/jws.js';
import { DEV_OIDC_ISSUER_NAME, loadDevCa } from './dev-init.js';
import { fileError } from './errors.js';

const KEY_FILE = 'oidc-issuer.key';

/** The signing key of the dev issuer with its public JWK. */
export interface DevIssuerKey {
  kid: string;
  privateKey: KeyObject;
  jwk: Record<string, unknown>;
}

/** RFC 7638 thumbprint of an RSA public JWK, used as its kid. */
function rsaThumbprint(jwk: Record<string, unknown>): string {
  return createHash('sha256').update(JSON.stringify({ e: jwk['e'], kty: jwk['kty'], n: jwk['n'] })).digest('base64url');
}

/** Loads `<dir>/oidc-issuer.key`, creating an RSA-2048 key (0600) on first use. */
export function loadOrCreateDevIssuerKey(dir: string): DevIssuerKey {
  const path = join(dir, KEY_FILE);
  let privateKey: KeyObject;
  if (existsSync(path)) {
    try {
      privateKey = createPrivateKey(readFileSync(path));
    } catch (e) {
      if ((e as { code?: unknown }).code && String((e as { code?: unknown }).code).startsWith('E')) throw fileError(e, path, 'dev OIDC issuer key');
      throw new MayflyError('ERR_PEM_INVALID', `dev OIDC issuer key ${path} is not a PEM private key: delete it and a new one is made`, { cause: e });
    }
  } else {
    privateKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    try {
      writeFileSync(path, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
    } catch (e) {
      // Another mayfly process made it first: use theirs.
      if ((e as { code?: unknown }).code === 'EEXIST') return loadOrCreateDevIssuerKey(dir);
      throw fileError(e, path, 'cannot write');
    }
  }
  const pub = createPublicKey(privateKey).export({ format: 'jwk' }) as Record<string, unknown>;
  const kid = rsaThumbprint(pub);
  return { kid, privateKey, jwk: { ...pub, kid, alg: 'RS256', use: 'sig' } };
}

/** The dev issuer's URL: the `dev-ci` issuer of `<dir>/mayfly.yaml`. */
export function devIssuerUrl(dir: string): string {
  const { config, path } = loadConfig(join(dir, 'mayfly.yaml'));
  const entry = config.oidc.issuers.find((i) => i.name === DEV_OIDC_ISSUER_NAME);
  if (!entry?.issuer) {
    throw new MayflyError('ERR_CONFIG_INVALID', `${path} has no oidc issuer named ${DEV_OIDC_ISSUER_NAME} with an issuer URL: \`mayfly dev init --force\` writes one, or pass --issuer`);
  }
  return entry.issuer.replace(/\/+$/, '');
}

/** A GitHub Actions OIDC claim set (the real claim names) for acme/api's main branch in environment prod, issued at `nowSec`. */
export function githubActionsClaims(iss: string, aud: string, nowSec: number, lifetimeSeconds = 300): Record<string, unknown> {
  return {
    jti: randomUUID(),
    sub: 'repo:acme/api:environment:prod',
    aud,
    ref: 'refs/heads/main',
    sha: 'd6f0c8a7a1b2c3d4e5f60718293a4b5c6d7e8f90',
    repository: 'acme/api',
    repository_owner: 'acme',
    repository_owner_id: '1234567',
    repository_id: '7654321',
    repository_visibility: 'private',
    run_id: '9876543210',
    run_number: '42',
    run_attempt: '1',
    actor: 'octocat',
    actor_id: '583231',
    workflow: 'deploy',
    workflow_ref: 'acme/api/.github/workflows/deploy.yml@refs/heads/main',
    workflow_sha: 'd6f0c8a7a1b2c3d4e5f60718293a4b5c6d7e8f90',
    head_ref: '',
    base_ref: '',
    event_name: 'push',
    ref_type: 'branch',
    ref_protected: 'true',
    environment: 'prod',
    job_workflow_ref: 'acme/api/.github/workflows/deploy.yml@refs/heads/main',
    job_workflow_sha: 'd6f0c8a7a1b2c3d4e5f60718293a4b5c6d7e8f90',
    runner_environment: 'github-hosted',
    iss,
    nbf: nowSec - 5,
    exp: nowSec + lifetimeSeconds,
    iat: nowSec - 5,
  };
}

/** A Kubernetes projected service-account token's claims (namespace/service account as given). */
export function kubernetesClaims(iss: string, aud: string, nowSec: number, o: { namespace: string; serviceAccount: string; lifetimeSeconds?: number }): Record<string, unknown> {
  return {
    aud: [aud],
    exp: nowSec + (o.lifetimeSeconds ?? 600),
    iat: nowSec,
    nbf: nowSec,
    iss,
    jti: randomUUID(),
    sub: `system:serviceaccount:${o.namespace}:${o.serviceAccount}`,
    'kubernetes.io': {
      namespace: o.namespace,
      node: { name: 'dev-node', uid: randomUUID() },
      pod: { name: `${o.serviceAccount}-dev`, uid: randomUUID() },
      serviceaccount: { name: o.serviceAccount, uid: randomUUID() },
    },
  };
}

export interface DevTokenOptions {
  kind: 'github-actions' | 'kubernetes';
  audience: string;
  lifetimeSeconds: number;
  /** Top-level claims to set (github-actions), e.g. environment=staging. */
  claims?: Record<string, string>;
  namespace?: string;
  serviceAccount?: string;
  nowMs?: number;
}

/** Signs a dev OIDC token of the given shape with the dev issuer key. */
export function mintDevToken(key: DevIssuerKey, issuer: string, o: DevTokenOptions): string {
  const now = Math.floor((o.nowMs ?? Date.now()) / 1000);
  const payload =
    o.kind === 'kubernetes'
      ? kubernetesClaims(issuer, o.audience, now, { namespace: o.namespace ?? 'default', serviceAccount: o.serviceAccount ?? 'default', lifetimeSeconds: o.lifetimeSeconds })
      : { ...githubActionsClaims(issuer, o.audience, now, o.lifetimeSeconds), ...(o.claims ?? {}) };
  return signCompact({ alg: 'RS256', typ: 'JWT', kid: key.kid }, payload, key.privateKey);
}

/** A running dev issuer. */
export interface DevOidcIssuer {
  issuer: string;
  address: { host: string; port: number };
  key: DevIssuerKey;
  close(): Promise<void>;
}

/** Starts the HTTPS issuer for `<dir>` on the host/port of `issuerUrl` (port 0 picks one; the issuer URL then carries it). */
export async function startDevOidcIssuer(dir: string, issuerUrl: string): Promise<DevOidcIssuer> {
  let url: URL;
  try {
    url = new URL(issuerUrl);
  } catch {
    throw new MayflyError('ERR_USAGE', `issuer ${JSON.stringify(issuerUrl)} is not a URL: use e.g. https://localhost:8445`);
  }
  if (url.protocol !== 'https:') throw new MayflyError('ERR_USAGE', `issuer ${issuerUrl} must be https:// (OIDC issuers are HTTPS)`);
  const key = loadOrCreateDevIssuerKey(dir);
  const cert = issueServerCert(loadDevCa(dir), { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1', '::1'], commonName: 'localhost', validDays: 30 });
  const host = url.hostname === 'localhost' ? '127.0.0.1' : url.hostname.replace(/^\[|\]$/g, '');
  let issuer = '';
  const server: Server = createServer({ cert: [cert.certPem, ...cert.chainPem].join(''), key: cert.keyPem }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'max-age=60', ...headers });
      res.end(JSON.stringify(body));
    };
    if (path !== '/.well-known/openid-configuration' && path !== '/.well-known/jwks') return send(404, { error: 'not_found' });
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, { error: 'method_not_allowed' }, { allow: 'GET, HEAD' });
    if (path === '/.well-known/jwks') return send(200, { keys: [key.jwk] });
    // GitHub's discovery document, trimmed to what this issuer does.
    return send(200, {
      issuer,
      jwks_uri: `${issuer}/.well-known/jwks`,
      subject_types_supported: ['public'],
      response_types_supported: ['id_token'],
      claims_supported: ['sub', 'aud', 'exp', 'iat', 'iss', 'jti', 'nbf', 'ref', 'repository', 'repository_owner', 'environment', 'run_id', 'workflow', 'job_workflow_ref', 'kubernetes.io'],
      id_token_signing_alg_values_supported: ['RS256'],
      scopes_supported: ['openid'],
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(url.port || 443), host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  url.port = String(port);
  issuer = url.origin;
  return {
    issuer,
    address: { host, port },
    key,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
