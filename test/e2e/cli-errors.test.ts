/**
 * Every failing CLI command prints exactly one `mayfly: ERR_<CODE>: …` line
 * on stderr, exits non-zero and ends (no hang). The table drives the built
 * CLI (bin/mayfly.js) as child processes: usage errors, files, listen
 * addresses, TLS material, and HTTP/gRPC-backed commands against a real
 * broker, where the code printed must be the one the broker sent.
 * ERR_INTERNAL is never acceptable here: every cause below is user input.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { devInit } from '../../src/cli/dev-init.js';
import { makeSelfSignedCert } from '../helpers/https-jwks.js';
import { TestIssuer, type TestKey } from '../helpers/test-issuer.js';
import { startTestBroker, type TestBroker } from './helpers.js';

const BIN = resolve('bin/mayfly.js');
const AUD = 'https://deploy.acme.internal';
const HANG_MS = 20_000;

interface Run {
  code: number | null;
  signal: string | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
}

function run(args: string[], cwd: string): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { cwd, timeout: HANG_MS, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: unknown; killed?: boolean; signal?: string | null }) | null;
      done({
        code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
        signal: e?.signal ?? null,
        timedOut: !!e?.killed,
        stdout,
        stderr,
      });
    });
  });
}

let work: string;
let tb: TestBroker;
let issuer: TestIssuer;
let key: TestKey;
let serveDir: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'mayfly-cli-errors-'));
  const cert = makeSelfSignedCert();
  issuer = await new TestIssuer(cert).start();
  key = issuer.addKey('ES256');
  tb = await startTestBroker({
    configPatch: (cfg, dir) => {
      writeFileSync(join(dir, 'issuer-ca.pem'), cert.cert);
      cfg['oidc'] = { issuers: [{ name: 'gha', issuer: issuer.issuer, audiences: ['mayfly'], jwks_uri: issuer.server.jwksUri, ca_file: 'issuer-ca.pem' }] };
    },
    extraRules: [
      {
        name: 'gha-deploy',
        match: { oidc: { issuer: issuer.issuer, claims: { repository: 'acme/api', ref: 'refs/heads/main' } } },
        actions: ['begin_task', 'issue_token', 'exchange'],
        audiences: [AUD],
        scopes: ['deploy'],
        max_ttl_seconds: 600,
      },
    ],
  });
  writeFileSync(join(work, 'ok.jwt'), issuer.mint({ kid: key.kid, nowMs: Date.now() }));
  writeFileSync(join(work, 'expired.jwt'), issuer.mint({ kid: key.kid, nowMs: Date.now() - 3_600_000 }));
  writeFileSync(join(work, 'garbage.txt'), 'not a token\n');
  writeFileSync(join(work, 'empty.txt'), '');
  writeFileSync(join(work, 'a-file'), 'x');
  writeFileSync(join(work, 'input.json'), '{"identity": ');
  // A second dev setup for `serve` cases, so they never touch the running broker's files.
  serveDir = join(work, 'serve');
  devInit(serveDir);
  const cfg = readFileSync(join(serveDir, 'mayfly.yaml'), 'utf8');
  writeFileSync(join(serveDir, 'mismatch.yaml'), cfg.replace('key_file: broker.key', 'key_file: workload.key'));
  writeFileSync(join(serveDir, 'not-pem.yaml'), cfg.replace('key_file: broker.key', 'key_file: kek'));
  writeFileSync(join(serveDir, 'bad-field.yaml'), cfg.replace('alg: ES256', 'alg: HS256'));
  mkdirSync(join(work, 'a-dir'));
}, 60_000);

afterAll(async () => {
  await tb?.stop();
  await issuer?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

type Case = [name: string, args: () => string[], code: string, message?: RegExp];

const client = () => ['--dev-dir', tb.dir, '--broker', tb.grpcAddr];
const http = () => ['--url', tb.httpUrl, '--dev-dir', tb.dir];
const exchange = (file: string, scope: string) => ['exchange', '--subject-token-file', join(work, file), '--audience', AUD, '--scope', scope, '--url', tb.httpUrl, '--ca', join(tb.dir, 'ca.pem')];
const serve = (config: string, grpc = '127.0.0.1:0', httpListen = '127.0.0.1:0') => ['serve', '--config', join(serveDir, config), '--grpc-listen', grpc, '--http-listen', httpListen];

const CASES: Case[] = [
  // Usage.
  ['no command', () => [], 'ERR_USAGE'],
  ['unknown command', () => ['tsk'], 'ERR_USAGE', /unknown command 'tsk'/],
  ['unknown subcommand', () => ['task', 'finish'], 'ERR_USAGE'],
  ['group without a subcommand', () => ['keys'], 'ERR_USAGE', /mayfly keys/],
  ['unknown option', () => ['token', 'inspect', '--bogus', 'x.y.z'], 'ERR_USAGE', /unknown option '--bogus'.*mayfly token inspect --help/],
  ['missing required option', () => ['task', 'begin', ...client()], 'ERR_USAGE', /--purpose/],
  ['missing argument', () => ['keys', 'revoke', ...http()], 'ERR_USAGE', /kid/],
  ['too many arguments', () => ['token', 'inspect', 'a', 'b'], 'ERR_USAGE'],
  ['invalid choice', () => ['exchange', '--subject-token-file', 'x', '--audience', 'a', '--subject-token-type', 'saml'], 'ERR_USAGE', /saml/],
  ['task complete without a task', () => ['task', 'complete', ...client()], 'ERR_USAGE', /--task/],
  ['bad --broker', () => ['task', 'begin', '--purpose', 'p', '--dev-dir', tb.dir, '--broker', 'nonsense'], 'ERR_USAGE', /host:port/],
  ['bad --url', () => ['keys', 'rotate', '--url', 'not a url', '--dev-dir', tb.dir], 'ERR_USAGE', /--url/],
  ['http --url', () => ['keys', 'rotate', '--url', 'http://127.0.0.1:8444', '--dev-dir', tb.dir], 'ERR_USAGE', /https/],
  // Values.
  ['bad duration', () => ['task', 'begin', ...client(), '--purpose', 'p', '--ttl', '10x'], 'ERR_TTL_INVALID'],
  ['bad label', () => ['task', 'begin', ...client(), '--purpose', 'p', '--label', 'novalue'], 'ERR_INVALID_ARGUMENT', /key=value/],
  ['malformed token', () => ['token', 'inspect', 'not-a-jwt'], 'ERR_JWT_INVALID'],
  ['empty token file', () => ['token', 'inspect', `@${join(work, 'empty.txt')}`], 'ERR_JWT_INVALID', /empty/],
  ['token file that is no token', () => ['task', 'complete', ...client(), '--token-file', join(work, 'garbage.txt')], 'ERR_JWT_INVALID'],
  ['svid for an invalid SPIFFE ID', () => ['svid', 'issue', '--ca-dir', tb.dir, '--spiffe-id', 'spiffe://Example.org/x', '--out', join(work, 'x')], 'ERR_SPIFFE_ID_INVALID'],
  ['svid for a trust-domain ID', () => ['svid', 'issue', '--ca-dir', tb.dir, '--spiffe-id', 'spiffe://example.org', '--out', join(work, 'x')], 'ERR_SPIFFE_ID_INVALID', /workload path/],
  ['svid for another trust domain', () => ['svid', 'issue', '--ca-dir', tb.dir, '--spiffe-id', 'spiffe://other.org/x', '--out', join(work, 'x')], 'ERR_SPIFFE_ID_INVALID', /example\.org/],
  ['revoke-identity of a non-identity', () => ['revoke-identity', 'not-an-id', ...client()], 'ERR_INVALID_ARGUMENT', /SPIFFE ID/],
  ['policy eval with non-JSON input', () => ['policy', 'eval', '--config', join(serveDir, 'mayfly.yaml'), '--input', join(work, 'input.json')], 'ERR_INVALID_ARGUMENT', /not JSON/],
  // Files.
  ['missing config', () => ['serve', '--config', join(work, 'nope.yaml')], 'ERR_FILE_NOT_FOUND', /nope\.yaml/],
  ['config is a directory', () => ['keys', 'list', '--config', join(work, 'a-dir')], 'ERR_FILE_ACCESS', /directory/],
  ['config with a bad field', () => ['audit', 'verify', '--config', join(serveDir, 'bad-field.yaml')], 'ERR_CONFIG_INVALID', /keys\.alg/],
  ['missing dev dir', () => ['task', 'begin', '--purpose', 'p', '--dev-dir', join(work, 'nope')], 'ERR_FILE_NOT_FOUND', /ca\.pem/],
  ['CA file that is no PEM', () => ['task', 'begin', ...client(), '--purpose', 'p', '--ca', join(work, 'garbage.txt')], 'ERR_PEM_INVALID', /--ca/],
  ['--cert without --key', () => ['task', 'complete', ...client(), '--token-file', join(work, 'ok.jwt'), '--task', 't', '--cert', join(tb.dir, 'workload.pem')], 'ERR_USAGE', /--key/],
  ['missing token file', () => ['token', 'introspect', ...client(), `@${join(work, 'nope.jwt')}`], 'ERR_FILE_NOT_FOUND'],
  ['missing subject token file', () => ['exchange', '--subject-token-file', join(work, 'nope.jwt'), '--audience', 'a'], 'ERR_FILE_NOT_FOUND'],
  ['missing input', () => ['policy', 'eval', '--config', join(serveDir, 'mayfly.yaml'), '--input', join(work, 'nope.json')], 'ERR_FILE_NOT_FOUND'],
  ['missing audit log', () => ['audit', 'verify', '--config', join(serveDir, 'mayfly.yaml'), '--file', join(work, 'nope.log')], 'ERR_FILE_NOT_FOUND'],
  ['missing dev CA', () => ['svid', 'issue', '--ca-dir', join(work, 'nope'), '--spiffe-id', 'spiffe://example.org/x', '--out', join(work, 'x')], 'ERR_FILE_NOT_FOUND', /ca\.pem/],
  ['svid out into a missing directory', () => ['svid', 'issue', '--ca-dir', tb.dir, '--spiffe-id', 'spiffe://example.org/x', '--out', join(work, 'nope', 'x')], 'ERR_FILE_NOT_FOUND'],
  ['dev init under a file', () => ['dev', 'init', '--dir', join(work, 'a-file', 'sub')], 'ERR_FILE_ACCESS', /not a directory/],
  ...(existsSync('/proc/self') ? ([['dev init under /proc (used to spin forever)', () => ['dev', 'init', '--dir', '/proc/nope'], 'ERR_FILE_ACCESS', /\/proc\/nope/]] as Case[]) : []),
  // Listeners and TLS material.
  ['listen address not host:port', () => serve('mayfly.yaml', 'nonsense'), 'ERR_LISTEN_ADDRESS_INVALID', /--grpc-listen/],
  ['listen port out of range', () => serve('mayfly.yaml', '127.0.0.1:0', '127.0.0.1:70000'), 'ERR_LISTEN_ADDRESS_INVALID', /--http-listen/],
  ['listen address not on this machine', () => serve('mayfly.yaml', '192.0.2.1:0'), 'ERR_LISTEN_ADDRESS_INVALID', /192\.0\.2\.1/],
  ['gRPC address in use', () => serve('mayfly.yaml', tb.grpcAddr), 'ERR_ADDRESS_IN_USE', /already in use/],
  ['HTTP address in use', () => serve('mayfly.yaml', '127.0.0.1:0', `127.0.0.1:${new URL(tb.httpUrl).port}`), 'ERR_ADDRESS_IN_USE', /already in use/],
  ['certificate and key do not match', () => serve('mismatch.yaml'), 'ERR_TLS_KEY_MISMATCH'],
  ['key file is not PEM', () => serve('not-pem.yaml'), 'ERR_PEM_INVALID'],
  // The broker's own code, as it sent it.
  ['exchange refused by policy', () => exchange('ok.jwt', 'admin'), 'ERR_POLICY_DENIED'],
  ['exchange of an expired subject token', () => exchange('expired.jwt', 'deploy'), 'ERR_JWT_EXPIRED'],
  ['exchange of garbage', () => exchange('garbage.txt', 'deploy'), 'ERR_JWT_INVALID'],
  ['revoke of an unknown key', () => ['keys', 'revoke', 'nosuchkid', ...http()], 'ERR_KEY_NOT_FOUND', /nosuchkid/],
  ['key rotation as a non-admin', () => ['keys', 'rotate', ...http(), '--cert', join(tb.dir, 'workload.pem'), '--key', join(tb.dir, 'workload.key')], 'ERR_NOT_AUTHORIZED_CLIENT'],
  ['token for an unknown task', () => ['token', 'issue', ...client(), '--task', 'AAAAAAAAAAAAAAAAAAAAAAAA', '--audience', 'demo-api'], 'ERR_TASK_NOT_FOUND'],
  ['revoke-identity as a workload', () => ['revoke-identity', 'spiffe://example.org/other', ...client(), '--cert', join(tb.dir, 'workload.pem'), '--key', join(tb.dir, 'workload.key')], 'ERR_NOT_AUTHORIZED_CLIENT'],
  // Nobody there.
  ['no broker at --broker', () => ['task', 'begin', '--purpose', 'p', '--dev-dir', tb.dir, '--broker', '127.0.0.1:1'], 'ERR_UNAVAILABLE', /127\.0\.0\.1:1/],
  ['no broker at --url', () => ['keys', 'rotate', '--url', 'https://127.0.0.1:1', '--dev-dir', tb.dir], 'ERR_UNAVAILABLE'],
];

describe('every failing CLI command: one line, the right code, non-zero exit, no hang', { timeout: 60_000 }, () => {
  it.each(CASES)('%s', async (_name, args, code, message) => {
    const r = await run(args(), work);
    expect(r.timedOut, `hung for ${HANG_MS} ms`).toBe(false);
    const lines = r.stderr.split('\n').filter((l) => l !== '');
    expect(lines, r.stderr).toHaveLength(1);
    const m = /^mayfly: (ERR_[A-Z_]+): (.+)$/.exec(lines[0]!);
    expect(m, lines[0]).not.toBeNull();
    expect(m![1], lines[0]).not.toBe('ERR_INTERNAL');
    expect(m![1], lines[0]).toBe(code);
    expect(m![2]).not.toMatch(/Resolution note:\s*$/);
    if (message) expect(m![2]).toMatch(message);
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBeNull();
  });
});

describe('CLI basics', { timeout: 60_000 }, () => {
  it('--version prints the package version and exits 0', async () => {
    const r = await run(['--version'], work);
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
    expect(r.stderr).toBe('');
  });

  it('--help exits 0 with the commands on stdout', async () => {
    const r = await run(['--help'], work);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/revoke-identity/);
    expect(r.stderr).toBe('');
  });

  it('revoke-identity uses the admin certificate by default, as keys rotate does', async () => {
    const r = await run(['revoke-identity', 'spiffe://example.org/nobody', ...client(), '--reason', 'offboarded'], work);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/0 task\(s\) and 0 token\(s\) revoked/);
  });
});
