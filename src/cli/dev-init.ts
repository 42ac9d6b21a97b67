/** `mayfly dev init`: a working development setup in one directory. DEVELOPMENT ONLY. */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MayflyError } from '../core/errors.js';
import { parseSpiffeId } from '../identity/spiffe-id.js';
import { createDevCa, issueServerCert, issueX509Svid, type DevCa } from '../pki/dev-pki.js';
import { fileError, readPem } from './errors.js';

export const DEV_TRUST_DOMAIN = 'example.org';
export const DEV_WORKLOAD_ID = 'spiffe://example.org/demo/workload';
export const DEV_ADMIN_ID = 'spiffe://example.org/demo/admin';
export const DEV_RELYING_PARTY_ID = 'spiffe://example.org/demo/api';
/** Name of the local issuer `mayfly dev oidc-issuer` serves, in the config `dev init` writes. */
export const DEV_OIDC_ISSUER_NAME = 'dev-ci';

/** Repository root (for the shipped default rules), from dist/cli or src/cli. */
export function packageRoot(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
}

function writeFile(path: string, data: string | Buffer, mode?: number): void {
  try {
    writeFileSync(path, data, mode === undefined ? {} : { mode });
  } catch (e) {
    throw fileError(e, path, 'cannot write');
  }
}

function writePrivate(path: string, data: string | Buffer): void {
  writeFile(path, data, 0o600);
}

/**
 * `mkdir -p` one component at a time. Node's recursive mkdirSync never
 * returns when the kernel answers ENOENT for a directory whose parent exists
 * (e.g. under /proc); here every failure is an error naming the directory.
 */
export function makeDir(dir: string, mode = 0o700): void {
  const missing: string[] = [];
  let cur = resolve(dir);
  for (;;) {
    let st: ReturnType<typeof statSync> | undefined;
    try {
      st = statSync(cur);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw fileError(e, cur, 'cannot create directory in');
    }
    if (st) {
      if (!st.isDirectory()) throw new MayflyError('ERR_FILE_ACCESS', `cannot create directory ${resolve(dir)}: ${cur} is not a directory`);
      break;
    }
    missing.unshift(cur);
    const parent = dirname(cur);
    if (parent === cur) break;
    cur = parent;
  }
  for (const d of missing) {
    try {
      mkdirSync(d, { mode });
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (code === 'EEXIST' && statSync(d).isDirectory()) continue;
      // ENOENT although the parent exists: a file system that takes no new directories (/proc, /sys).
      if (code === 'ENOENT') throw new MayflyError('ERR_FILE_ACCESS', `cannot create directory ${d}: the file system at ${dirname(d)} does not allow it; choose another directory`, { cause: e });
      throw fileError(e, d, 'cannot create directory');
    }
  }
}

/** Issues a dev X.509-SVID from the dev CA in `dir` and writes PREFIX.pem / PREFIX.key. */
export function issueDevSvid(ca: DevCa, spiffeId: string, outPrefix: string, validSeconds = 30 * 24 * 3600): void {
  checkSvidId(spiffeId, ca.trustDomain);
  const svid = issueX509Svid(ca, { spiffeId, validSeconds });
  writeFile(`${outPrefix}.pem`, [svid.certPem, ...svid.chainPem].join(''));
  writePrivate(`${outPrefix}.key`, svid.keyPem);
}

/**
 * Refuses what the broker would refuse: an invalid SPIFFE ID (the broker's own
 * parser), a trust-domain ID without a workload path (X.509-SVID §3.1), or an
 * ID outside the CA's trust domain (its chain must lead to its own domain's bundle).
 */
export function checkSvidId(spiffeId: string, trustDomain: string): void {
  const id = parseSpiffeId(spiffeId);
  if (id.path === '') throw new MayflyError('ERR_SPIFFE_ID_INVALID', `${spiffeId} names only a trust domain: an X.509-SVID needs a workload path, e.g. spiffe://${trustDomain}/ci/runner`);
  if (id.trustDomain !== trustDomain) throw new MayflyError('ERR_SPIFFE_ID_INVALID', `${spiffeId} is in trust domain ${id.trustDomain}, but this CA signs for ${trustDomain}: use spiffe://${trustDomain}/…`);
}

/** Loads the dev CA written by `dev init`. */
export function loadDevCa(dir: string, trustDomain = DEV_TRUST_DOMAIN): DevCa {
  const certPem = readPem(join(dir, 'ca.pem'), 'dev CA certificate', 'CERTIFICATE').toString('utf8');
  const keyPem = readPem(join(dir, 'ca.key'), 'dev CA key', 'PRIVATE KEY').toString('utf8');
  return { trustDomain, certPem, keyPem, chainPem: [] };
}

export interface DevInitResult {
  dir: string;
  config: string;
  created: boolean;
}

/** Writes mayfly.yaml, the dev CA, the broker certificate, demo SVIDs, the KEK and the rules. Keeps an existing setup. */
export function devInit(dirArg: string, options: { force?: boolean; grpcPort?: number; httpPort?: number; oidcPort?: number } = {}): DevInitResult {
  const dir = resolve(dirArg);
  const config = join(dir, 'mayfly.yaml');
  if (existsSync(config) && !options.force) return { dir, config, created: false };
  makeDir(dir);
  const grpcPort = options.grpcPort ?? 8443;
  const httpPort = options.httpPort ?? 8444;
  const oidcIssuer = `https://localhost:${options.oidcPort ?? 8445}`;

  const ca = createDevCa({ trustDomain: DEV_TRUST_DOMAIN, commonName: 'Mayfly dev CA (example.org)', validDays: 365 });
  writeFile(join(dir, 'ca.pem'), ca.certPem);
  writePrivate(join(dir, 'ca.key'), ca.keyPem);
  const server = issueServerCert(ca, { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1', '::1'], commonName: 'localhost', validDays: 365 });
  writeFile(join(dir, 'broker.pem'), [server.certPem, ...server.chainPem].join(''));
  writePrivate(join(dir, 'broker.key'), server.keyPem);
  issueDevSvid(ca, DEV_WORKLOAD_ID, join(dir, 'workload'));
  issueDevSvid(ca, DEV_ADMIN_ID, join(dir, 'admin'));
  issueDevSvid(ca, DEV_RELYING_PARTY_ID, join(dir, 'relying-party'));
  writePrivate(join(dir, 'kek'), randomBytes(32).toString('base64') + '\n');
  const rules = readFileSync(join(packageRoot(), 'policies', 'default-rules.yaml'), 'utf8');
  writeFile(join(dir, 'rules.yaml'), `${rules.trimEnd()}

  # Added by \`mayfly dev init\`: the README's CI rule, for tokens from \`mayfly dev oidc-issuer\`
  # (a local stand-in for https://token.actions.githubusercontent.com).
  - name: ci-push
    description: acme/api's main branch in the prod environment may push, for at most 15 minutes.
    match:
      oidc:
        issuer: ${oidcIssuer}
        claims: { repository: acme/api, ref: refs/heads/main, environment: prod }
    audiences: [registry]
    scopes: [push]
    max_ttl_seconds: 900
    max_task_ttl_seconds: 900
`);
  writeFile(
    config,
    `# Generated by \`mayfly dev init\`. DEVELOPMENT ONLY: a dev CA, a KEK on disk and
# permissive demo rules. See docs/configuration.md for every option.
issuer: https://localhost:${httpPort}
broker_id: mayfly-dev
data_dir: .
listen:
  grpc: 127.0.0.1:${grpcPort}
  http: 127.0.0.1:${httpPort}
tls:
  cert_file: broker.pem
  key_file: broker.key
trust_domains:
  ${DEV_TRUST_DOMAIN}:
    bundle_file: ca.pem
oidc:
  issuers:
    # \`mayfly dev oidc-issuer\`: a local GitHub-Actions-shaped issuer with a dev-CA certificate.
    - name: ${DEV_OIDC_ISSUER_NAME}
      preset: github-actions
      issuer: ${oidcIssuer}
      audiences: [mayfly]
      ca_file: ca.pem
keys:
  alg: ES256
  kek_file: kek
policy:
  engine: builtin
  builtin:
    rules_file: rules.yaml
admins:
  - ${DEV_ADMIN_ID}
`,
  );
  return { dir, config, created: true };
}
