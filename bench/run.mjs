#!/usr/bin/env node
// `npm run bench`: throughput and latency of a real broker process, measured
// from a separate load-generator process, against references taken in the
// same run (no-op Ping = transport limit, raw ES256 sign/verify = crypto
// limit, oidc-provider = peer). Prints markdown to stdout and writes the same
// to bench/results/latest.md. Exits non-zero if anything fails to start or a
// call errors; unmet targets only print ✗.
//
// Scenarios (a)-(e) run against a broker with the built-in rules. Then:
// (f) OPA: DecisionPoint overhead in-process (OpaEngine with a wasm module from
//     bench/opa-module.mjs vs BuiltinEngine), and IssueToken against a broker
//     restarted with `policy.engine: opa`; (g) revocation propagation from
//     CompleteTask to the last of N feed-subscribed verifiers in another process
//     (bench/verifiers.mjs); (h) MayflyVerifier.verify throughput in this process;
//     (i) IssueToken against a broker restarted with a 2 s key rotation.
//
// Knobs (env): BENCH_WARMUP_S (2), BENCH_DURATION_S (8), BENCH_CONCURRENCY (64),
// BENCH_CHANNELS (4), BENCH_TASKS (50), BENCH_SUBJECT_TOKENS (2000),
// BENCH_SKIP_PEER=1, BENCH_KEEP=1 (keep the temp dir), BENCH_OUT (markdown path),
// BENCH_OPA_EVALS (20000), BENCH_VERIFIERS (100), BENCH_REVOCATIONS (200),
// BENCH_VERIFY_TOKENS (5000),
// BENCH_ONLY=<comma list> runs only those scenario groups (Ping always runs, it is
// the reference): issue, pair, issue-open (implies issue), exchange, peer,
// revocation, verifier, opa, rotation. Tables list what ran; the rest is n/a.
// BENCH_PROFILE=<dir> (one CPU profile of the broker per scenario, <dir>/<scenario>.cpuprofile,
// taken by bench/broker-probe.mjs; summarise with `node bench/profile-top.mjs <file>`).
import { execFileSync, fork, spawn } from 'node:child_process';
import { X509Certificate, createPrivateKey, generateKeyPairSync, randomBytes, sign as cryptoSign, verify as cryptoVerify } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { connect, createServer as createNetServer } from 'node:net';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const env = (k, d) => (process.env[k] !== undefined && process.env[k] !== '' ? Number(process.env[k]) : d);
const WARMUP_MS = env('BENCH_WARMUP_S', 2) * 1000;
const DURATION_MS = env('BENCH_DURATION_S', 8) * 1000;
const CONCURRENCY = env('BENCH_CONCURRENCY', 64);
const CHANNELS = env('BENCH_CHANNELS', 4);
const OPEN_TASKS = env('BENCH_TASKS', 50);
const SUBJECT_TOKENS = env('BENCH_SUBJECT_TOKENS', 2000);
const HTTP_CONCURRENCY = env('BENCH_HTTP_CONCURRENCY', CONCURRENCY);
const OPA_EVALS = env('BENCH_OPA_EVALS', 20_000);
const VERIFIERS = env('BENCH_VERIFIERS', 100);
const REVOCATIONS = env('BENCH_REVOCATIONS', 200);
const REVOCATION_WARMUP = env('BENCH_REVOCATION_WARMUP', 20);
const VERIFY_TOKENS = env('BENCH_VERIFY_TOKENS', 5000);
const SCENARIO_GROUPS = ['issue', 'pair', 'issue-open', 'exchange', 'peer', 'revocation', 'verifier', 'opa', 'rotation', 'scaleout'];
const ONLY = new Set((process.env.BENCH_ONLY ?? '').split(',').map((x) => x.trim()).filter(Boolean));
for (const g of ONLY) if (!SCENARIO_GROUPS.includes(g)) {
  console.error(`BENCH_ONLY: unknown scenario group "${g}"; known: ${SCENARIO_GROUPS.join(', ')}`);
  process.exit(2);
}
if (ONLY.has('issue-open')) ONLY.add('issue'); // its rate is half of (b)'s
/** Whether a scenario group runs in this invocation (all of them without BENCH_ONLY). */
const want = (g) => ONLY.size === 0 || ONLY.has(g);
// A partial run never replaces the committed full report.
const OUT = process.env.BENCH_OUT ?? (ONLY.size > 0 ? join(os.tmpdir(), 'mayfly-bench-partial.md') : join(ROOT, 'bench', 'results', 'latest.md'));
// (h) warm-up: VERIFY_WARM_ROUNDS unmeasured rounds shaped like the measured ones (raw, a slice of the
// VERIFY_WARM_TOKENS first-time tokens, the repeated token). With 500 tokens verified once each and no
// repeat, --trace-opt showed TurboFan compiling decodeJws, verifyFresh and validateClaims in measured
// round 0 and recompiling verifyFresh in round 2 (after the repeat path changed what it depends on): the
// first-time row paid for the JIT, which a relying party in steady state does not.
const VERIFY_WARM_TOKENS = 2000;
const VERIFY_WARM_ROUNDS = 2;
const REVOCATION_BUDGET_MS = 60_000; // (g) stops early (and says so) if the iterations take longer
/** (i): the rotating broker's keys section. */
const ROTATION_KEYS = { rotation_period_seconds: 2, pre_publish_seconds: 1, jwks_max_age_seconds: 1, max_promotion_wait_seconds: 1, check_interval_ms: 100 };

// The whole bench takes about 3.5 minutes on a quiet machine (8 at most), plus about 1.5 for the scale-out group (j).
const WATCHDOG_MS = want('scaleout') ? 600_000 : 480_000;
const AUDIENCE = 'demo-api'; // allowed for the dev workload by policies/default-rules.yaml
const OIDC_AUDIENCE = 'bench-api';
const SCOPES = ['read'];

const log = (...a) => console.error('[bench]', ...a); // progress on stderr, results on stdout

// ---------------------------------------------------------------- cleanup
const children = new Set();
let tmpDir = null;
let cleanedUp = false;
function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  if (tmpDir && !process.env.BENCH_KEEP) {
    try {
      rmSync(tmpDir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  } else if (tmpDir) log(`kept ${tmpDir}`);
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`${sig}: stopping`);
    cleanup();
    process.exit(130);
  });
}
function die(msg) {
  console.error(`\nBENCH FAILED: ${msg}`);
  cleanup();
  process.exit(1);
}
process.on('uncaughtException', (e) => die(e?.stack ?? String(e)));
process.on('unhandledRejection', (e) => die(e?.stack ?? String(e)));
setTimeout(() => die(`watchdog: the bench took longer than ${WATCHDOG_MS / 1000}s`), WATCHDOG_MS).unref();

// ---------------------------------------------------------------- helpers
function freePort() {
  return new Promise((res, rej) => {
    const s = createNetServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function canConnect(port) {
  return new Promise((res) => {
    const sock = connect({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      sock.destroy();
      res(true);
    });
    sock.once('error', () => res(false));
  });
}

function tail(file, n = 30) {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '(no output)';
  }
}

async function waitForPorts(child, ports, logFile, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) die(`${what} exited (${child.exitCode ?? child.signalCode}) before listening:\n${tail(logFile)}`);
    const ok = await Promise.all(ports.map(canConnect));
    if (ok.every(Boolean)) return;
    if (Date.now() > deadline) die(`${what} did not accept connections on ${ports.join(', ')} within ${timeoutMs / 1000}s:\n${tail(logFile)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function startChild(what, args, logFile) {
  const fd = openSync(logFile, 'a');
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', fd, fd] });
  children.add(child);
  child.on('exit', (code, sig) => {
    if (!child.expectedExit) die(`${what} exited unexpectedly (${code ?? sig}):\n${tail(logFile)}`);
  });
  return child;
}

async function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.expectedExit = true;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
  children.delete(child);
}

/** A forked helper (load generator, verifiers) with a small request/response protocol over IPC. */
async function startIpcChild(file, what) {
  const child = fork(join(ROOT, 'bench', file), [], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  const waiting = new Map();
  let nextId = 1;
  child.on('exit', (code, sig) => {
    if (!child.expectedExit) die(`${what} exited unexpectedly (${code ?? sig})`);
  });
  const ready = new Promise((res) => waiting.set(0, { res, rej: die }));
  child.on('message', (m) => {
    const w = waiting.get(m.id);
    if (!w) return;
    waiting.delete(m.id);
    if (m.ok) w.res(m.result);
    else w.rej(new Error(m.error));
  });
  await ready;
  return {
    child,
    async stop() {
      child.expectedExit = true;
      const done = new Promise((r) => child.once('exit', r));
      child.disconnect();
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await done;
      clearTimeout(t);
      children.delete(child);
    },
    call(cmd, params = {}) {
      const id = nextId++;
      return new Promise((res, rej) => {
        waiting.set(id, { res, rej });
        child.send({ id, cmd, ...params });
      });
    },
  };
}

/** Single-thread ops per wall second and per CPU second of fn, measured for `durationMs` after a short warm-up. */
function opsPerSecond(fn, durationMs) {
  const warmEnd = performance.now() + 300;
  while (performance.now() < warmEnd) for (let i = 0; i < 50; i++) fn();
  let n = 0;
  const c0 = process.cpuUsage();
  const start = performance.now();
  const end = start + durationMs;
  let t;
  do {
    for (let i = 0; i < 50; i++) fn();
    n += 50;
    t = performance.now();
  } while (t < end);
  const c = process.cpuUsage(c0);
  return { wall: n / ((t - start) / 1000), cpu: n / ((c.user + c.system) / 1e6) };
}

const b64u = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
function signEs256(header, payload, key) {
  const input = `${b64u(header)}.${b64u(payload)}`;
  return `${input}.${cryptoSign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

/** utime+stime of a process in seconds (Linux /proc), or NaN. */
let clkTck = 100;
try {
  clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  /* default */
}
function cpuSeconds(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / clkTck;
  } catch {
    return NaN;
  }
}

/** Machine-wide busy CPU seconds (all cores, /proc/stat) and CPU pressure stall µs (/proc/pressure/cpu "some"). */
function machineCpu() {
  let busy = NaN;
  let stallUs = NaN;
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    busy = (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) / clkTck;
  } catch {
    /* not Linux */
  }
  try {
    stallUs = Number(/total=(\d+)/.exec(readFileSync('/proc/pressure/cpu', 'utf8').split('\n')[0])[1]);
  } catch {
    /* no PSI */
  }
  return { busy, stallUs };
}

/** Established TCP connections to 127.0.0.1:port (client side), from /proc/net/tcp; NaN if unavailable. */
function connectionsTo(port) {
  try {
    const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
    return readFileSync('/proc/net/tcp', 'utf8')
      .split('\n')
      .slice(1)
      .filter((l) => {
        const f = l.trim().split(/\s+/);
        return f[2] === `0100007F:${hexPort}` && f[3] === '01';
      }).length;
  } catch {
    return NaN;
  }
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

const fmtInt = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'n/a');
const fmtMs = (x) => (Number.isFinite(x) ? `${x.toFixed(x < 10 ? 2 : 1)} ms` : 'n/a');
const pct = (x) => `${(x * 100).toFixed(0)}%`;
const mark = (ok) => (ok === null ? 'n/a' : ok ? '✓' : '✗');

// ---------------------------------------------------------------- main
const startedAt = new Date();
const failures = [];

if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) {
  log('dist/cli/main.js is missing: running npm run build');
  execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: ['ignore', 2, 2] });
}
const { issueServerCert } = await import(join(ROOT, 'dist', 'pki', 'dev-pki.js'));
const { loadDevCa } = await import(join(ROOT, 'dist', 'cli', 'dev-init.js'));
const YAML = (await import('yaml')).default;

const machine = {
  node: process.version,
  platform: `${os.platform()} ${os.release()} ${os.arch()}`,
  cpus: `${os.cpus().length} × ${os.cpus()[0]?.model?.trim() ?? 'unknown'}`,
  loadavgBefore: os.loadavg(),
};

// (c) Raw ES256 with node:crypto, single thread, in this process, before any child runs.
log('raw ES256 sign/verify (node:crypto, single thread)');
const { privateKey: rawKey, publicKey: rawPub } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const sampleInput = Buffer.from(
  `${b64u({ alg: 'ES256', kid: 'k1', typ: 'JWT' })}.${b64u({ iss: 'https://localhost:8444', sub: 'spiffe://example.org/demo/workload', aud: 'demo-api', scope: 'read', tid: 'tsk_' + 'x'.repeat(22), jti: 'y'.repeat(22), iat: 1, exp: 2 })}`,
);
const sampleSig = cryptoSign('sha256', sampleInput, { key: rawKey, dsaEncoding: 'ieee-p1363' });
const signs = opsPerSecond(() => cryptoSign('sha256', sampleInput, { key: rawKey, dsaEncoding: 'ieee-p1363' }), 2000);
const verifies = opsPerSecond(() => {
  if (!cryptoVerify('sha256', sampleInput, { key: rawPub, dsaEncoding: 'ieee-p1363' }, sampleSig)) throw new Error('verify failed');
}, 2000);
const signsPerSec = signs.wall;
const verifiesPerSec = verifies.wall;
const cryptoLimit = 1 / (1 / signsPerSec + 1 / verifiesPerSec);
/** CPU seconds of one sign + one verify (contention-robust). */
const cryptoCpuPerExchange = 1 / signs.cpu + 1 / verifies.cpu;
log(`signs/s ${fmtInt(signsPerSec)}, verifies/s ${fmtInt(verifiesPerSec)}`);
// (c′) The same crypto through tokens/jws.ts and through jose, interleaved (backs the header of tokens/jws.ts).
log('ES256 compact JWS: tokens/jws.ts (node:crypto) vs jose (WebCrypto)');
const { compareJws, jwsCompareTable } = await import(pathToFileURL(join(ROOT, 'bench', 'jws-compare.mjs')).href);
const jwsCompared = await compareJws();

// Dev setup in a temp dir.
tmpDir = mkdtempSync(join(os.tmpdir(), 'mayfly-bench-'));
log(`dev init in ${tmpDir}`);
execFileSync(process.execPath, [join(ROOT, 'bin', 'mayfly.js'), 'dev', 'init', '--dir', tmpDir], { cwd: ROOT, stdio: ['ignore', 2, 2] });
const ca = loadDevCa(tmpDir);
const serverCert = issueServerCert(ca, { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], commonName: 'localhost', validDays: 2 });
writeFileSync(join(tmpDir, 'bench-server.pem'), [serverCert.certPem, ...serverCert.chainPem].join(''));
writeFileSync(join(tmpDir, 'bench-server.key'), serverCert.keyPem, { mode: 0o600 });

// (e) A small HTTPS JWKS issuer (in this process; the broker fetches the JWKS once and caches it).
const oidcKid = 'bench-oidc-1';
const { privateKey: oidcKey, publicKey: oidcPub } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwks = JSON.stringify({ keys: [{ ...oidcPub.export({ format: 'jwk' }), kid: oidcKid, alg: 'ES256', use: 'sig' }] });
let jwksFetches = 0;
const jwksServer = createHttpsServer({ cert: readFileSync(join(tmpDir, 'bench-server.pem')), key: readFileSync(join(tmpDir, 'bench-server.key')) }, (req, res) => {
  if (req.url === '/jwks') {
    jwksFetches++;
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=3600' }).end(jwks);
  } else if (req.url === '/.well-known/openid-configuration') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: oidcIssuer, jwks_uri: `${oidcIssuer}/jwks` }));
  } else res.writeHead(404).end();
});
await new Promise((r) => jwksServer.listen(0, '127.0.0.1', r));
jwksServer.unref();
const oidcIssuer = `https://127.0.0.1:${jwksServer.address().port}`;

// GitHub-Actions-shaped subject tokens, pre-minted (valid for an hour).
const nowS = Math.floor(Date.now() / 1000);
const subjectTokens = [];
for (let i = 0; i < SUBJECT_TOKENS; i++) {
  subjectTokens.push(
    signEs256(
      { alg: 'ES256', typ: 'JWT', kid: oidcKid },
      {
        iss: oidcIssuer,
        aud: 'mayfly',
        sub: 'repo:acme/api:ref:refs/heads/main',
        jti: randomBytes(16).toString('hex'),
        iat: nowS - 5,
        nbf: nowS - 5,
        exp: nowS + 3600,
        ref: 'refs/heads/main',
        sha: randomBytes(20).toString('hex'),
        repository: 'acme/api',
        repository_id: '123456789',
        repository_owner: 'acme',
        repository_owner_id: '1234567',
        repository_visibility: 'private',
        run_id: String(9_000_000_000 + i),
        run_number: String(i + 1),
        run_attempt: '1',
        actor: 'octocat',
        actor_id: '583231',
        workflow: 'deploy',
        workflow_ref: 'acme/api/.github/workflows/deploy.yml@refs/heads/main',
        job_workflow_ref: 'acme/api/.github/workflows/deploy.yml@refs/heads/main',
        event_name: 'push',
        ref_type: 'branch',
        ref_protected: 'true',
        runner_environment: 'github-hosted',
      },
      oidcKey,
    ),
  );
}
const subjectTokensFile = join(tmpDir, 'subject-tokens.json');
writeFileSync(subjectTokensFile, JSON.stringify(subjectTokens));

// Broker config: add the bench issuer and a rule for it.
const configFile = join(tmpDir, 'mayfly.yaml');
const cfg = YAML.parseDocument(readFileSync(configFile, 'utf8'));
cfg.set('oidc', { issuers: [{ name: 'bench', issuer: oidcIssuer, audiences: ['mayfly'], algorithms: ['ES256'], jwks_uri: `${oidcIssuer}/jwks`, ca_file: join(tmpDir, 'ca.pem') }] });
writeFileSync(configFile, cfg.toString());
const rulesFile = join(tmpDir, 'rules.yaml');
const rules = YAML.parseDocument(readFileSync(rulesFile, 'utf8'));
rules.get('rules').add(
  rules.createNode({
    name: 'bench-github-oidc',
    description: 'Benchmark: the bench OIDC issuer (GitHub-shaped tokens) for acme/api.',
    match: { oidc: { issuer: oidcIssuer, claims: { repository: 'acme/api' } } },
    audiences: [OIDC_AUDIENCE],
    scopes: ['read', 'write'],
    max_ttl_seconds: 600,
    max_task_ttl_seconds: 3600,
  }),
);
writeFileSync(rulesFile, rules.toString());

const baseConfigText = cfg.toString(); // the built-in-rules config; (f) and (i) derive theirs from it
const ISSUER = cfg.get('issuer');

// (f) OPA decision overhead, in-process, before any child runs: DecisionPoint over
// OpaEngine (a wasm module built by bench/opa-module.mjs, loaded by the real SDK)
// vs DecisionPoint over BuiltinEngine (the dev rules), same demo input.
const { buildOpaWasm, BENCH_POLICY_SPEC } = await import(pathToFileURL(join(ROOT, 'bench', 'opa-module.mjs')).href);
const policyWasm = join(tmpDir, 'policy.wasm');
writeFileSync(policyWasm, await buildOpaWasm(BENCH_POLICY_SPEC));
const opaDecisions = {};
if (want('opa')) {
  const { OpaEngine, DEFAULT_CANARY_INPUT } = await import(join(ROOT, 'dist', 'policy', 'opa.js'));
  const { BuiltinEngine } = await import(join(ROOT, 'dist', 'policy', 'builtin.js'));
  const { DecisionPoint } = await import(join(ROOT, 'dist', 'policy', 'decision-point.js'));
  const input = DEFAULT_CANARY_INPUT; // the dev demo workload asking for a demo-api token with scope read
  const engines = { opa: await OpaEngine.load({ policyFile: policyWasm }), builtin: await BuiltinEngine.fromFile(rulesFile) };
  for (const [name, engine] of Object.entries(engines)) {
    log(`(f) DecisionPoint over ${name}: ${OPA_EVALS} evaluations`);
    const dp = new DecisionPoint(engine);
    const first = await dp.decide(input);
    if (!first.allow || JSON.stringify(first.scopes) !== '["read"]') die(`(f) ${name} did not allow the demo input with scopes [read]: ${JSON.stringify(first)}`);
    for (let i = 0; i < Math.min(5000, OPA_EVALS); i++) await dp.decide(input); // warm-up
    const lat = new Float64Array(OPA_EVALS);
    let denied = 0;
    const c0 = process.cpuUsage();
    const w0 = process.hrtime.bigint();
    for (let i = 0; i < OPA_EVALS; i++) {
      const s = process.hrtime.bigint();
      const d = await dp.decide(input);
      lat[i] = Number(process.hrtime.bigint() - s) / 1000;
      if (!d.allow) denied++;
    }
    const wall = Number(process.hrtime.bigint() - w0) / 1e9;
    const c = process.cpuUsage(c0);
    if (denied > 0) failures.push(`(f) DecisionPoint over ${name}: ${denied} of ${OPA_EVALS} decisions were denies`);
    lat.sort();
    opaDecisions[name] = { n: OPA_EVALS, p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1], perSecond: OPA_EVALS / wall, cpuUs: ((c.user + c.system) / OPA_EVALS), revision: engine.revision() };
    log(`(f) ${name}: p50 ${opaDecisions[name].p50.toFixed(1)} µs p99 ${opaDecisions[name].p99.toFixed(1)} µs`);
    await engine.close();
  }
}

// Broker lifecycle: the built-in-rules broker for (a)-(e), (g), (h); restarted
// on the same data dir with OPA for (f) and with fast rotation for (i).
let broker = null;
let grpcPort = 0;
let httpPort = 0;
let brokerLog = join(tmpDir, 'broker.log');
const probeFile = join(tmpDir, 'probe.json');
process.env.MAYFLY_BENCH_PROBE = probeFile; // inherited by the broker; read by bench/broker-probe.mjs
if (process.env.BENCH_HEAP) {
  mkdirSync(resolve(process.env.BENCH_HEAP), { recursive: true });
  process.env.MAYFLY_BENCH_HEAP_DIR = resolve(process.env.BENCH_HEAP);
}
if (process.env.BENCH_PROFILE) {
  mkdirSync(resolve(process.env.BENCH_PROFILE), { recursive: true });
  process.env.MAYFLY_BENCH_PROFILE_DIR = resolve(process.env.BENCH_PROFILE);
}
let probeSeq = 0;

/** Writes mayfly.yaml (the base config, optionally patched, with the yaml package) and starts `mayfly serve` on fresh ports. */
async function startBroker(tag, patch = () => undefined) {
  const doc = YAML.parseDocument(baseConfigText);
  patch(doc);
  writeFileSync(configFile, doc.toString());
  grpcPort = await freePort();
  httpPort = await freePort();
  brokerLog = join(tmpDir, tag ? `broker-${tag}.log` : 'broker.log');
  log(`starting broker${tag ? ` (${tag})` : ''} (gRPC ${grpcPort}, HTTPS ${httpPort})`);
  rmSync(probeFile, { force: true });
  probeSeq = 0;
  // BENCH_BROKER_NODE_ARGS: extra node options for the broker only (experiments, e.g. --trace-gc; never in a committed run).
  const nodeArgs = (process.env.BENCH_BROKER_NODE_ARGS ?? '').split(' ').filter(Boolean);
  broker = startChild(`broker${tag ? ` (${tag})` : ''}`, [...nodeArgs, '--import', pathToFileURL(join(ROOT, 'bench', 'broker-probe.mjs')).href, join(ROOT, 'bin', 'mayfly.js'), 'serve', '--config', configFile, '--grpc-listen', `127.0.0.1:${grpcPort}`, '--http-listen', `127.0.0.1:${httpPort}`], brokerLog);
  await waitForPorts(broker, [grpcPort, httpPort], brokerLog, `broker${tag ? ` (${tag})` : ''}`);
  await probe();
}

/** Event-loop delay and GC pauses of the broker since the previous call (bench/broker-probe.mjs). */
async function probe(nextProfile = '') {
  writeFileSync(`${probeFile}.next`, nextProfile);
  broker.kill('SIGUSR2');
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      const s = JSON.parse(readFileSync(probeFile, 'utf8'));
      if (s.seq > probeSeq) {
        probeSeq = s.seq;
        return s;
      }
    } catch {
      /* not written yet */
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return null;
}

await startBroker('');
const grpcInit = () => ({
  grpc: { address: `127.0.0.1:${grpcPort}`, ca: join(tmpDir, 'ca.pem'), cert: join(tmpDir, 'workload.pem'), key: join(tmpDir, 'workload.key'), channels: CHANNELS },
  subjectTokensFile,
});
const lg = await startIpcChild('loadgen.mjs', 'load generator');
await lg.call('init', grpcInit());
await lg.call('prepareTasks', { count: OPEN_TASKS }).catch((e) => die(`could not pre-create ${OPEN_TASKS} tasks: ${e.message}\n${tail(brokerLog)}`));

/** Runs one load-generator scenario against the server process `serverPid`, with CPU accounting. */
async function measured(serverPid, params) {
  const cpu0 = [cpuSeconds(serverPid), cpuSeconds(lg.child.pid)];
  const m0 = machineCpu();
  const w0 = performance.now();
  const r = await lg.call('run', params);
  const wall = (performance.now() - w0) / 1000;
  r.brokerCpu = (cpuSeconds(serverPid) - cpu0[0]) / wall;
  r.loadgenCpu = (cpuSeconds(lg.child.pid) - cpu0[1]) / wall;
  const m1 = machineCpu();
  r.otherCpu = Math.max(0, (m1.busy - m0.busy) / wall - r.brokerCpu - r.loadgenCpu);
  r.cpuStall = (m1.stallUs - m0.stallUs) / 1e6 / wall;
  // Server CPU seconds per completed call (throughput over the window ≈ over warm-up too).
  r.cpuPerCall = r.brokerCpu / r.perSecond;
  return r;
}

const base = { concurrency: CONCURRENCY, warmupMs: WARMUP_MS, durationMs: DURATION_MS, audience: AUDIENCE, scopes: SCOPES, tokenTtl: 300 };
const results = {};
async function scenario(name, label, params) {
  log(`${label} …`);
  await probe(name);
  const r = await measured(broker.pid, { ...base, scenario: name, ...params }).catch((e) => die(`${label}: ${e.message}\n${tail(brokerLog)}`));
  r.probe = await probe();
  r.grpcConnections = connectionsTo(grpcPort);
  if (r.errors > 0) failures.push(`${label}: ${r.errors} call(s) failed; first: ${r.firstError}`);
  if (r.count === 0) failures.push(`${label}: no call completed in the measurement window`);
  if (r.dropped > 0) failures.push(`${label}: ${r.dropped} arrival(s) dropped (more than the outstanding cap in flight)`);
  log(`${label}: ${fmtInt(r.perSecond)}/s p50 ${fmtMs(r.p50)} p99 ${fmtMs(r.p99)} errors ${r.errors} broker CPU ${pct(r.brokerCpu)} loadgen CPU ${pct(r.loadgenCpu)}`);
  results[name] = r;
  return r;
}

// Unmeasured pre-warm (JIT, TLS session, SQLite page cache) so the first measured scenario is not penalised.
log('pre-warm (not measured) …');
await lg.call('run', { ...base, scenario: 'pair', warmupMs: 0, durationMs: WARMUP_MS }).catch((e) => die(`pre-warm: ${e.message}\n${tail(brokerLog)}`));
await lg.call('run', { ...base, scenario: 'ping', warmupMs: 0, durationMs: WARMUP_MS / 2 }).catch((e) => die(`pre-warm: ${e.message}\n${tail(brokerLog)}`));

await scenario('ping', '(a) Ping', {});
if (want('issue')) await scenario('issue', '(b) IssueToken on open tasks', {});
if (want('pair')) await scenario('pair', '(b) BeginTask+IssueToken pairs', {});
if (want('issue-open')) {
  const halfRate = Math.max(1, results.issue.perSecond / 2);
  await scenario('issue-open', `(d) IssueToken open loop at ${fmtInt(halfRate)}/s`, { rate: halfRate });
  // (d0) The transport's own tail at the same call rate: Ping, open loop, same clients. (d) cannot be faster than this.
  await scenario('ping-open', `(d0) Ping open loop at ${fmtInt(halfRate)}/s`, { rate: halfRate });
}
// (e′) The HTTPS transport floor: a static document over the same keep-alive sockets (fastify, TLS, HTTP/1.1, no work).
if (want('exchange')) await scenario('http-get', '(e′) GET /.well-known/openid-configuration (HTTPS transport floor)', { concurrency: HTTP_CONCURRENCY, url: `https://127.0.0.1:${httpPort}/.well-known/openid-configuration`, ca: join(tmpDir, 'ca.pem'), agents: 4 });
if (want('exchange')) await scenario('exchange', '(e) token exchange over HTTPS', { concurrency: HTTP_CONCURRENCY, url: `https://127.0.0.1:${httpPort}/oauth2/token`, ca: join(tmpDir, 'ca.pem'), audience: OIDC_AUDIENCE, scopes: SCOPES, agents: 4 });
// (h) tokens for the verifier-throughput measurement, minted now while the load generator is warm.
if (want('verifier')) log(`(h) minting ${VERIFY_WARM_TOKENS + VERIFY_TOKENS} tokens …`);
const mintedTokens = !want('verifier') ? [] : (await lg.call('mint', { count: VERIFY_WARM_TOKENS + VERIFY_TOKENS, concurrency: CONCURRENCY, audience: AUDIENCE, scopes: SCOPES, tokenTtl: 600 }).catch((e) => die(`(h) minting: ${e.message}\n${tail(brokerLog)}`))).tokens;

const { BrokerClient } = await import(join(ROOT, 'dist', 'client', 'broker-client.js'));
const { MayflyVerifier } = await import(join(ROOT, 'dist', 'verifier', 'index.js'));
const pemOf = (who) => ({ cert: readFileSync(join(tmpDir, `${who}.pem`)), key: readFileSync(join(tmpDir, `${who}.key`)) });

// (g) Revocation propagation: CompleteTask here -> the last of VERIFIERS feed-subscribed
// verifiers in bench/verifiers.mjs rejects the task's token. Both ends read
// process.hrtime (CLOCK_MONOTONIC, shared across processes on Linux).
if (want('revocation')) {
  log(`(g) starting ${VERIFIERS} verifiers in a child process …`);
  const vp = await startIpcChild('verifiers.mjs', 'verifier process');
  const init = await vp
    .call('init', { count: VERIFIERS, issuer: ISSUER, audience: AUDIENCE, jwksUrl: `https://127.0.0.1:${httpPort}/.well-known/jwks.json`, grpcAddress: `127.0.0.1:${grpcPort}`, ca: join(tmpDir, 'ca.pem'), cert: join(tmpDir, 'relying-party.pem'), key: join(tmpDir, 'relying-party.key'), clientCert: join(tmpDir, 'workload.pem') })
    .catch((e) => die(`(g) verifiers did not start: ${e.message}\n${tail(brokerLog)}`));
  log(`(g) ${init.verifiers} verifiers synchronized in ${fmtMs(init.startMs)}; ${REVOCATIONS} BeginTask/IssueToken/CompleteTask iterations`);
  const client = new BrokerClient({ address: `127.0.0.1:${grpcPort}`, ca: readFileSync(join(tmpDir, 'ca.pem')), ...pemOf('workload'), timeoutMs: 10_000 });
  await probe('revocation');
  const lat = [];
  const completeLat = [];
  const firstArr = [];
  const lastArr = [];
  const verifyMs = [];
  const vpCpuMs = [];
  let errors = 0;
  let firstError = null;
  let stoppedEarly = false;
  // Unmeasured warm-up iterations first, as every other scenario has its warm-up: the verifier
  // process's first revocations run cold (JIT, TLS and HTTP/2 buffers) at 1.5-3x the steady cost.
  let began = performance.now();
  for (let i = -REVOCATION_WARMUP; i < REVOCATIONS; i++) {
    if (i === 0) began = performance.now();
    if (i >= 0 && performance.now() - began > REVOCATION_BUDGET_MS) {
      stoppedEarly = true;
      break;
    }
    try {
      const task = await client.beginTask({ purpose: `bench revocation ${i}`, ttlSeconds: 600 });
      const { token } = await client.issueToken({ taskId: task.taskId, audience: AUDIENCE, scopes: SCOPES, ttlSeconds: 300 });
      await vp.call('accept', { token }); // all verifiers accept it, then watch it
      const t0 = process.hrtime.bigint();
      await client.completeTask(task.taskId);
      const t1 = process.hrtime.bigint();
      const { tLast, firstArrival, lastArrival, verifyMs: vms, cpuMs } = await vp.call('awaitRevoked', { timeoutMs: 5000 });
      if (i < 0) continue;
      verifyMs.push(vms);
      vpCpuMs.push(cpuMs);
      lat.push(Number(BigInt(tLast) - t0) / 1e6);
      firstArr.push(Number(BigInt(firstArrival) - t0) / 1e6);
      lastArr.push(Number(BigInt(lastArrival) - t0) / 1e6);
      completeLat.push(Number(t1 - t0) / 1e6);
    } catch (e) {
      errors++;
      firstError ??= (e?.message ?? String(e)).split('\n')[0];
      if (errors >= 5) break;
    }
  }
  const wall = (performance.now() - began) / 1000;
  const loop = await probe();
  const stats = await vp.call('stats');
  client.close();
  await vp.call('close');
  await vp.stop();
  lat.sort((a, b) => a - b);
  completeLat.sort((a, b) => a - b);
  firstArr.sort((a, b) => a - b);
  lastArr.sort((a, b) => a - b);
  verifyMs.sort((a, b) => a - b);
  vpCpuMs.sort((a, b) => a - b);
  results.revocation = {
    count: lat.length, errors, firstError, stoppedEarly, seconds: wall, verifiers: init.verifiers, startMs: init.startMs,
    p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1], min: lat[0],
    completeP50: percentile(completeLat, 50), completeP99: percentile(completeLat, 99),
    firstArrP50: percentile(firstArr, 50), firstArrP99: percentile(firstArr, 99), lastArrP50: percentile(lastArr, 50), lastArrP99: percentile(lastArr, 99),
    verifyP50: percentile(verifyMs, 50), verifyP99: percentile(verifyMs, 99), vpCpuP50: percentile(vpCpuMs, 50), vpCpuP99: percentile(vpCpuMs, 99),
    reconnects: stats.reconnects, probe: loop,
  };
  if (errors > 0) failures.push(`(g) revocation propagation: ${errors} iteration(s) failed; first: ${firstError}`);
  if (lat.length < REVOCATIONS) failures.push(`(g) revocation propagation: only ${lat.length} of ${REVOCATIONS} iterations completed${stoppedEarly ? ` (stopped after ${REVOCATION_BUDGET_MS / 1000} s)` : ''}`);
  log(`(g) ${lat.length} revocations in ${wall.toFixed(1)} s: p50 ${fmtMs(results.revocation.p50)} p99 ${fmtMs(results.revocation.p99)} max ${fmtMs(results.revocation.max)}; feed reconnects ${stats.reconnects}`);
}

// (h) MayflyVerifier.verify throughput in this process (single thread), with a
// feed-subscribed verifier as a relying party would run it; raw node:crypto
// ES256 verifies/s measured in interleaved rounds, under the same conditions.
if (want('verifier')) {
  log('(h) verifier throughput in-process …');
  const rpClient = new BrokerClient({ address: `127.0.0.1:${grpcPort}`, ca: readFileSync(join(tmpDir, 'ca.pem')), ...pemOf('relying-party'), timeoutMs: 10_000 });
  const v = new MayflyVerifier({ issuer: ISSUER, audience: AUDIENCE, jwks: { url: `https://127.0.0.1:${httpPort}/.well-known/jwks.json`, ca: readFileSync(join(tmpDir, 'ca.pem')) }, feed: { client: rpClient, subscriberId: 'bench-h' }, reportMisuse: false });
  await v.start().catch((e) => die(`(h) verifier did not start: ${e.message}`));
  const rawOnce = () => {
    if (!cryptoVerify('sha256', sampleInput, { key: rawPub, dsaEncoding: 'ieee-p1363' }, sampleSig)) throw new Error('verify failed');
  };
  let bad = 0;
  const check = (c) => {
    if (c.aud !== AUDIENCE) bad++;
  };
  // The tokens are bound to the load generator's workload certificate; this relying party sees it on the (notional) mTLS connection.
  const vo = { clientCertDer: new X509Certificate(readFileSync(join(tmpDir, 'workload.pem'))).raw };
  // The floor under any first-time verify: the payload base64url-decoded and JSON-parsed, the
  // signature decoded, one ES256 verify over the token's own signing input, awaited like verify().
  // Its tokens are the minted ones re-signed with the raw reference's key (distinct strings, as the
  // first-time tokens are); it checks no claim, revocation or binding, so it is a bound, not a verifier.
  const floorTokens = JSON.parse(JSON.stringify(mintedTokens.map((t) => {
    const input = t.slice(0, t.lastIndexOf('.'));
    return `${input}.${cryptoSign('sha256', Buffer.from(input, 'latin1'), { key: rawKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
  })));
  // No avoidable work, so it stays a lower bound: the verifier makes no Buffer per token and hands node:crypto a
  // DER signature (tokens/jws.ts), so the floor does the same, into its own scratch memory (the same r || s to DER
  // conversion, ecdsaDer, which the tests check against OpenSSL's own DER signatures).
  const { ecdsaDer } = await import(join(ROOT, 'dist', 'tokens', 'jws.js'));
  const floorText = Buffer.allocUnsafeSlow(16 * 1024);
  const floorSig = Buffer.allocUnsafeSlow(16 * 1024);
  const floorDer = Buffer.allocUnsafeSlow(256);
  const floorOnce = async (t) => {
    const a = t.indexOf('.');
    const b = t.indexOf('.', a + 1);
    const claims = JSON.parse(floorText.toString('utf8', 0, floorText.write(t.slice(a + 1, b), 0, 'base64url')));
    const der = ecdsaDer(floorSig, floorSig.write(t.slice(b + 1), 0, 'base64url'), 32, floorDer);
    floorText.write(t, 0, b, 'latin1');
    if (!cryptoVerify('sha256', floorText.subarray(0, b), rawPub, floorDer.subarray(0, der))) throw new Error('floor verify failed');
    return claims;
  };
  for (let i = 0; i < 2000; i++) rawOnce();
  // Diagnostic: raw ES256 verify over the real tokens (the floor's distinct tokens, longer signing inputs than
  // sampleInput), decoded before the clock starts: the crypto alone, for distinct real tokens.
  const preDecoded = floorTokens.map((t) => {
    const b = t.lastIndexOf('.');
    return { input: Buffer.from(t.slice(0, b), 'latin1'), sig: Buffer.from(t.slice(b + 1), 'base64url') };
  });
  // Interleaved rounds (raw, first-time slice, floor slice, repeat), so machine-load drift hits all alike;
  // the first VERIFY_WARM_ROUNDS are the warm-up (the VERIFY_WARM_TOKENS tokens) and are not counted.
  const ROUNDS = 5;
  const acc = () => ({ count: 0, wall: 0, cpu: 0 });
  const rawA = acc();
  const firstA = acc();
  const floorA = acc();
  const repeatA = acc();
  const warmA = acc();
  const warmRepeatA = acc();
  const tokA = acc();
  const timed = async (a, body) => {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    a.count += await body();
    a.wall += (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    a.cpu += (c.user + c.system) / 1e6;
  };
  const first = mintedTokens.slice(VERIFY_WARM_TOKENS);
  const per = Math.ceil(first.length / ROUNDS);
  const warmPer = Math.ceil(VERIFY_WARM_TOKENS / VERIFY_WARM_ROUNDS);
  const same = mintedTokens[0];
  for (let round = -VERIFY_WARM_ROUNDS; round < ROUNDS; round++) {
    const warm = round < 0;
    // Token slices: warm-up rounds take the warm-up tokens, measured rounds the rest.
    const from = warm ? (round + VERIFY_WARM_ROUNDS) * warmPer : VERIFY_WARM_TOKENS + round * per;
    const to = warm ? Math.min(VERIFY_WARM_TOKENS, from + warmPer) : Math.min(mintedTokens.length, from + per);
    await timed(warm ? warmA : rawA, () => {
      let n = 0;
      const end = performance.now() + 300;
      do {
        for (let i = 0; i < 50; i++) rawOnce();
        n += 50;
      } while (performance.now() < end);
      return n;
    });
    await timed(warm ? warmA : firstA, async () => {
      const slice = mintedTokens.slice(from, to);
      for (const t of slice) check(await v.verify(t, vo));
      return slice.length;
    });
    await timed(warm ? warmA : floorA, async () => {
      const slice = floorTokens.slice(from, to);
      for (const t of slice) check(await floorOnce(t));
      return slice.length;
    });
    await timed(warm ? warmA : tokA, () => {
      for (let i = from; i < to; i++) {
        const p = preDecoded[i];
        if (!cryptoVerify('sha256', p.input, { key: rawPub, dsaEncoding: 'ieee-p1363' }, p.sig)) throw new Error('verify failed');
      }
      return to - from;
    });
    await timed(warm ? warmRepeatA : repeatA, async () => {
      let n = 0;
      const end = performance.now() + 300;
      do {
        for (let i = 0; i < 50; i++) check(await v.verify(same, vo));
        n += 50;
      } while (performance.now() < end);
      return n;
    });
  }
  const rate = (a) => ({ count: a.count, perSecond: a.count / a.wall, wall: a.count / a.wall, cpu: a.count / a.cpu });
  const raw = rate(rawA);
  const firstTime = rate(firstA);
  const floor = rate(floorA);
  const repeat = rate(repeatA);
  const rawTokens = rate(tokA);
  const n = repeat.count + warmRepeatA.count;
  const st = v.stats();
  v.close();
  rpClient.close();
  if (bad > 0 || st.accepted !== VERIFY_WARM_TOKENS + first.length + n) failures.push(`(h) verifier: ${bad} wrong claim sets, ${st.accepted} accepted of ${VERIFY_WARM_TOKENS + first.length + n}; rejected ${JSON.stringify(st.rejected)}`);
  results.verifier = { firstTime, repeat, raw, floor, rawTokens };
  log(`(h) first-time ${fmtInt(firstTime.perSecond)}/s, floor ${fmtInt(floor.perSecond)}/s, repeat ${fmtInt(repeat.perSecond)}/s, raw ES256 verify ${fmtInt(raw.wall)}/s, over the real tokens ${fmtInt(rawTokens.wall)}/s`);
  log(`(h) CPU per op: first-time ${(1e6 / firstTime.cpu).toFixed(1)} µs, floor ${(1e6 / floor.cpu).toFixed(1)} µs, raw ${(1e6 / raw.cpu).toFixed(1)} µs, raw over the real tokens ${(1e6 / rawTokens.cpu).toFixed(1)} µs`);
}

// Ping again at the end: the transport reference is the mean of both, so drift in machine load shows.
await scenario('ping2', '(a) Ping again (drift check)', { scenario: 'ping' });
results.ping = { ...results.ping, before: results.ping.perSecond, after: results.ping2.perSecond, perSecond: (results.ping.perSecond + results.ping2.perSecond) / 2, cpuPerCall: (results.ping.cpuPerCall + results.ping2.cpuPerCall) / 2, firstCpuPerCall: results.ping.cpuPerCall };
await stopChild(broker);

// (f) and (i): the broker restarted on the same data dir, once with OPA, once
// with a 2 s key rotation; the same IssueToken scenario as (b), after the same
// unmeasured pre-warm.
/** Audit records (all segments of the broker's audit.log) whose line contains `needle`. */
function auditRecords(needle) {
  const out = [];
  for (const f of readdirSync(tmpDir).filter((n) => n.startsWith('audit.log'))) {
    for (const line of readFileSync(join(tmpDir, f), 'utf8').split('\n')) if (line.includes(needle)) out.push(JSON.parse(line));
  }
  return out;
}
async function restartedIssue(tag, name, label, patch) {
  await startBroker(tag, patch);
  await lg.call('init', grpcInit());
  await lg.call('prepareTasks', { count: OPEN_TASKS }).catch((e) => die(`${label}: could not pre-create ${OPEN_TASKS} tasks: ${e.message}\n${tail(brokerLog)}`));
  await lg.call('run', { ...base, scenario: 'issue', warmupMs: 0, durationMs: WARMUP_MS }).catch((e) => die(`${label} pre-warm: ${e.message}\n${tail(brokerLog)}`));
  const from = Date.now();
  const r = await scenario(name, label, { scenario: 'issue' });
  r.from = from;
  r.to = Date.now();
  await stopChild(broker);
  return r;
}
if (want('opa') || want('rotation')) await restartedIssue('control', 'issue-ctl', '(b) IssueToken, restarted broker, built-in rules (control)');
if (want('opa')) await restartedIssue('opa', 'issue-opa', '(f) IssueToken with OPA', (doc) => doc.set('policy', { engine: 'opa', opa: { policy_file: 'policy.wasm' } }));
if (want('opa') && !auditRecords('"broker.start"').some((rec) => rec.event === 'broker.start' && rec.policy_engine === 'opa')) failures.push('(f) no broker.start audit record with policy_engine "opa": the OPA broker did not run with OPA');
if (want('rotation')) await restartedIssue('rotation', 'issue-rot', '(i) IssueToken during rotation', (doc) => {
  for (const [k, v] of Object.entries(ROTATION_KEYS)) doc.setIn(['keys', k], v);
});
if (want('rotation')) {
  // Promotions (key.state -> active) from the audit log (all segments), during the measured scenario (warm-up included) and overall.
  const rot = results['issue-rot'];
  const promotions = auditRecords('"key.state"').filter((rec) => rec.event === 'key.state' && rec.to === 'active').map((rec) => Date.parse(rec.ts));
  rot.rotations = promotions.filter((t) => t >= rot.from && t <= rot.to).length;
  rot.rotationsTotal = promotions.length;
  try {
    const out = execFileSync(process.execPath, [join(ROOT, 'bin', 'mayfly.js'), 'keys', 'list', '--config', configFile], { cwd: ROOT, encoding: 'utf8' });
    rot.keysListed = out.trim().split('\n').length - 1;
  } catch (e) {
    rot.keysListed = NaN;
    failures.push(`(i) mayfly keys list failed: ${String(e.message).split('\n')[0]}`);
  }
  log(`(i) ${rot.rotations} promotions during the scenario (${rot.rotationsTotal} in all); mayfly keys list shows ${rot.keysListed} keys`);
  if (rot.rotations === 0) failures.push('(i) no key was promoted during the rotation scenario');
}
// (j) Scale-out: SQLite vs PostgreSQL with 1 and 2 workers, and cross-replica revocation propagation (bench/scaleout.mjs).
let scaleOut = null;
if (want('scaleout')) {
  const { runScaleOut } = await import('./scaleout.mjs');
  scaleOut = await runScaleOut({
    ROOT, tmpDir, YAML, lg, log, failures, baseConfigText, base, OPEN_TASKS, CHANNELS, AUDIENCE, SCOPES, ISSUER, subjectTokensFile,
    cpuSeconds, freePort, startChild, stopChild, waitForPorts, startIpcChild, tail,
    verifierCount: env('BENCH_SCALE_VERIFIERS', 20), revocations: env('BENCH_SCALE_REVOCATIONS', 100), revocationWarmup: REVOCATION_WARMUP,
  }).catch((e) => die(`(j) scale-out: ${e.stack ?? e.message}`));
}
const loadavgAfterBroker = os.loadavg();

// Peer reference: oidc-provider, same load generator, broker stopped.
let peer = { note: null, result: null };
if (process.env.BENCH_SKIP_PEER) peer.note = 'skipped (BENCH_SKIP_PEER)';
else if (!want('peer')) peer.note = 'not run (BENCH_ONLY)';
else {
  const peerPort = await freePort();
  const peerLog = join(tmpDir, 'peer.log');
  const clientId = 'bench-client';
  const clientSecret = randomBytes(16).toString('hex');
  const p = startChild('oidc-provider', [join(ROOT, 'bench', 'peer-oidc.mjs'), String(peerPort), join(tmpDir, 'bench-server.pem'), join(tmpDir, 'bench-server.key'), clientId, clientSecret], peerLog);
  p.expectedExit = true; // a peer failure is reported as n/a, not fatal
  const deadline = Date.now() + 20_000;
  let up = false;
  while (Date.now() < deadline && p.exitCode === null) {
    if (await canConnect(peerPort)) {
      up = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!up) peer.note = `n/a: oidc-provider did not start: ${tail(peerLog, 3).replace(/\n/g, ' ')}`;
  else {
    log('(e) peer: oidc-provider client_credentials …');
    try {
      const r = await measured(p.pid, { ...base, scenario: 'peer', concurrency: HTTP_CONCURRENCY, url: `https://127.0.0.1:${peerPort}/token`, ca: join(tmpDir, 'ca.pem'), clientId, clientSecret, agents: 4 });
      results.peer = r;
      if (r.errors > 0 || r.count === 0) peer.note = `n/a: peer calls failed (${r.errors} errors; first: ${r.firstError})`;
      else peer.result = r;
      if (r.count > 0) log(`peer: ${fmtInt(r.perSecond)}/s p50 ${fmtMs(r.p50)} p99 ${fmtMs(r.p99)} errors ${r.errors}`);
    } catch (e) {
      peer.note = `n/a: ${e.message.split('\n')[0]}`;
    }
  }
  await stopChild(p);
}
lg.child.expectedExit = true;
lg.child.disconnect();

// ---------------------------------------------------------------- report
const r = results;
const ping = r.ping.perSecond;
const md = [];
const ran = (k) => r[k] !== undefined;
md.push(`# Mayfly benchmark`, '');
md.push(`Run ${startedAt.toISOString()}. Broker (\`mayfly serve\`, dev config, sqlite store, file audit log) and load generator in separate processes on 127.0.0.1; ` +
  `${CONCURRENCY} calls in flight over ${CHANNELS} BrokerClient instances (gRPC/mTLS with the dev workload SVID), ${HTTP_CONCURRENCY} keep-alive HTTPS sockets for token exchange; ` +
  `${WARMUP_MS / 1000} s warm-up then ${DURATION_MS / 1000} s measured per scenario. Latency is per call (hrtime) as seen by the load generator. ` +
  `(f) and (i) restart the broker on the same data dir with OPA / a ${ROTATION_KEYS.rotation_period_seconds} s key rotation, after (b′), a restart with the unchanged config; (g) and (h) run against the first broker.`, '');
if (ONLY.size > 0) md.push(`**Partial run: BENCH_ONLY=${[...ONLY].join(',')}** (plus Ping and raw crypto, the references). Rows of scenarios that did not run are left out or n/a.`, '');
md.push('## Machine', '');
md.push('| item | value |', '|---|---|');
md.push(`| node | ${machine.node} |`);
md.push(`| platform | ${machine.platform} |`);
md.push(`| cpus | ${machine.cpus} |`);
md.push(`| loadavg before (1/5/15 min) | ${machine.loadavgBefore.map((x) => x.toFixed(2)).join(' / ')} |`);
md.push(`| loadavg after broker runs | ${loadavgAfterBroker.map((x) => x.toFixed(2)).join(' / ')} |`, '');

md.push('## Measurements', '');
md.push('| measurement | throughput | p50 | p99 | completed | errors | server CPU | loadgen CPU | server CPU per call |', '|---|---|---|---|---|---|---|---|---|');
const fmtUs = (sec) => (Number.isFinite(sec) ? `${Math.round(sec * 1e6).toLocaleString('en-US')} µs` : 'n/a');
const cpus = (x) => `${pct(x.brokerCpu)} | ${pct(x.loadgenCpu)} | ${fmtUs(x.cpuPerCall)}`;
const row = (label, x, unit = 'calls/s') => {
  if (x) md.push(`| ${label} | ${fmtInt(x.perSecond)} ${unit} | ${fmtMs(x.p50)} | ${fmtMs(x.p99)} | ${fmtInt(x.count)} | ${x.errors} | ${cpus(x)} |`);
};
row('(a) Ping, no-op unary over mTLS (first run)', { ...r.ping, perSecond: r.ping.before, cpuPerCall: r.ping.firstCpuPerCall });
row('(a) Ping again after all broker scenarios (drift check)', r.ping2);
row('(b) IssueToken on open tasks (50 tasks)', r.issue);
row('(b) BeginTask+IssueToken pair (2 sequential calls)', r.pair, 'pairs/s');
if (ran('pair')) md.push(`| (b) tokens/s from pairs | ${fmtInt(r.pair.perSecond)} tokens/s | | | | | | | |`);
if (ran('issue-open')) {
  md.push(`| (d) IssueToken open loop at ${fmtInt(r['issue-open'].rate)}/s (50% of (b)); latency from scheduled send | ${fmtInt(r['issue-open'].perSecond)} calls/s | ${fmtMs(r['issue-open'].p50)} | ${fmtMs(r['issue-open'].p99)} | ${fmtInt(r['issue-open'].count)} | ${r['issue-open'].errors} | ${cpus(r['issue-open'])} |`);
  md.push(`| (d) same, latency from actual send | | ${fmtMs(r['issue-open'].serviceP50)} | ${fmtMs(r['issue-open'].serviceP99)} | | | | | |`);
  const p0 = r['ping-open'];
  md.push(`| (d0) Ping open loop at the same rate (the transport's own tail); latency from scheduled send | ${fmtInt(p0.perSecond)} calls/s | ${fmtMs(p0.p50)} | ${fmtMs(p0.p99)} | ${fmtInt(p0.count)} | ${p0.errors} | ${cpus(p0)} |`);
}
row('(e′) GET /.well-known/openid-configuration: the HTTPS transport floor (static document, same sockets)', r['http-get']);
row('(e) token exchange, POST /oauth2/token (OIDC ES256 subject token)', r.exchange, 'exchanges/s');
if (peer.result) row('(e) peer: oidc-provider 9 client_credentials, ES256 JWT access token', peer.result, 'tokens/s');
else md.push(`| (e) peer: oidc-provider 9 client_credentials | ${peer.note} | | | | | | | |`);
row('(b′) IssueToken on open tasks, broker restarted with the same built-in-rules config (control for (f), (i))', r['issue-ctl']);
row('(f) IssueToken on open tasks, broker restarted with OPA (policy.wasm)', r['issue-opa']);
row(`(i) IssueToken on open tasks, broker restarted with key rotation every ${ROTATION_KEYS.rotation_period_seconds} s`, r['issue-rot']);
const fmtUsN = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} µs` : 'n/a');
for (const [name, label] of [['opa', 'OpaEngine (wasm via @open-policy-agent/opa-wasm)'], ['builtin', 'BuiltinEngine (dev rules)']]) {
  const d = opaDecisions[name];
  if (d) md.push(`| (f) DecisionPoint.decide over ${label}, in-process, 1 thread, demo input | ${fmtInt(d.perSecond)} decisions/s | ${fmtUsN(d.p50)} | ${fmtUsN(d.p99)} | ${fmtInt(d.n)} | 0 | 100% | | ${fmtUsN(d.cpuUs)} |`);
}
const rv = r.revocation;
if (rv) {
  md.push(`| (g) revocation propagation: CompleteTask sent → last of ${rv.verifiers} feed-subscribed verifiers (other process) rejects the token, after ${REVOCATION_WARMUP} unmeasured warm-up revocations; max ${fmtMs(rv.max)} | ${fmtInt(rv.count)} revocations | ${fmtMs(rv.p50)} | ${fmtMs(rv.p99)} | ${fmtInt(rv.count)} | ${rv.errors} | | | |`);
  md.push(`| (g) breakdown: CompleteTask sent → its response | | ${fmtMs(rv.completeP50)} | ${fmtMs(rv.completeP99)} | | | | | |`);
  md.push(`| (g) breakdown: CompleteTask sent → FIRST verifier receives the revoking feed message | | ${fmtMs(rv.firstArrP50)} | ${fmtMs(rv.firstArrP99)} | | | | | |`);
  md.push(`| (g) breakdown: CompleteTask sent → LAST verifier receives it (before processing) | | ${fmtMs(rv.lastArrP50)} | ${fmtMs(rv.lastArrP99)} | | | | | |`);
  md.push(`| (g) breakdown: the ${rv.verifiers} rejecting verify() calls, summed (verifier process, one thread) | | ${fmtMs(rv.verifyP50)} | ${fmtMs(rv.verifyP99)} | | | | | |`);
  md.push(`| (g) breakdown: verifier process CPU from arming to the last rejection | | ${fmtMs(rv.vpCpuP50)} | ${fmtMs(rv.vpCpuP99)} | | | | | |`);
}
const vr = r.verifier;
if (vr) {
  md.push(`| (h) MayflyVerifier.verify, first-time tokens (${fmtInt(vr.firstTime.count)} distinct, each once), 1 thread | ${fmtInt(vr.firstTime.perSecond)} verifies/s | | | ${fmtInt(vr.firstTime.count)} | 0 | 100% | | ${fmtUs(1 / vr.firstTime.cpu)} |`);
  md.push(`| (h) MayflyVerifier.verify, the same token repeatedly, 1 thread | ${fmtInt(vr.repeat.perSecond)} verifies/s | | | ${fmtInt(vr.repeat.count)} | 0 | 100% | | ${fmtUs(1 / vr.repeat.cpu)} |`);
  md.push(`| (h) floor: payload base64url-decoded + JSON.parse, one ES256 verify of the token's signing input (reused buffers, DER signature), awaited (no checks), 1 thread | ${fmtInt(vr.floor.perSecond)} per second | | | ${fmtInt(vr.floor.count)} | 0 | 100% | | ${fmtUs(1 / vr.floor.cpu)} |`);
  md.push(`| (h) raw ES256 verify, node:crypto, 1 thread, interleaved with the rows above | ${fmtInt(vr.raw.wall)} verifies/s | | | | | 100% | | ${fmtUs(1 / vr.raw.cpu)} |`);
  if (vr.rawTokens) md.push(`| (h) diagnostic: raw ES256 verify over the floor's ${fmtInt(vr.rawTokens.count)} distinct real tokens, decoded before timing (longer signing input than raw's sample), 1 thread | ${fmtInt(vr.rawTokens.wall)} verifies/s | | | ${fmtInt(vr.rawTokens.count)} | 0 | 100% | | ${fmtUs(1 / vr.rawTokens.cpu)} |`);
}
md.push(`| (c) raw ES256 sign, node:crypto, 1 thread | ${fmtInt(signsPerSec)} signs/s | | | | | 100% | | ${fmtUs(1 / signs.cpu)} |`);
md.push(`| (c) raw ES256 verify, node:crypto, 1 thread | ${fmtInt(verifiesPerSec)} verifies/s | | | | | 100% | | ${fmtUs(1 / verifies.cpu)} |`);
md.push(`| (c) crypto of one exchange (1 verify + 1 sign): 1/(1/s+1/v) | ${fmtInt(cryptoLimit)} /s | | | | | | | ${fmtUs(cryptoCpuPerExchange)} |`, '');

md.push("## (c′) ES256 compact JWS: tokens/jws.ts on node:crypto vs jose", '');
md.push('Same header and claims, same P-256 key, one process, five interleaved 300 ms rounds per path (bench/jws-compare.mjs). CPU per op includes the libuv thread pool, where jose\'s WebCrypto work runs; that is also why its wall-clock rate can come close on an otherwise idle machine.', '');
md.push(...jwsCompareTable(jwsCompared), '');
md.push('## Broker event loop and machine contention per scenario', '');
md.push('Measured inside the broker process by bench/broker-probe.mjs (preloaded with `node --import`; a 5 ms timer, the delay is how late it fired), over the whole scenario including warm-up. A large max/p99 here means the broker\'s event loop stalled (synchronous work: SQLite commits and checkpoints, audit writes, signing) and every in-flight call waited.', '');
md.push('"other CPU" = machine-wide busy CPU (/proc/stat) minus broker and load generator, in cores; "CPU stall" = share of wall time in which some runnable task waited for a CPU (/proc/pressure/cpu). Both should be ~0 on a quiet machine.', '');
md.push('"GC pauses" are every collection\'s pause on the broker\'s main thread (count in brackets); "of which full" are the mark-compact ones, which stop every call in flight at once.', '');
md.push('| scenario | loop delay p50 | loop delay p99 | loop delay max | GC pauses total | GC max pause | of which full: total (count), max | other CPU | CPU stall |', '|---|---|---|---|---|---|---|---|---|');
for (const [name, label] of [['ping', '(a) Ping'], ['issue', '(b) IssueToken'], ['pair', '(b) BeginTask+IssueToken'], ['issue-open', '(d) IssueToken at 50%'], ['ping-open', '(d0) Ping at (d)\'s rate'], ['http-get', '(e′) HTTPS transport floor'], ['exchange', '(e) token exchange'], ['revocation', `(g) revocation propagation (${rv?.verifiers} verifiers subscribed)`], ['ping2', '(a) Ping again'], ['issue-ctl', '(b′) IssueToken, restarted (control)'], ['issue-opa', '(f) IssueToken with OPA'], ['issue-rot', '(i) IssueToken during rotation'], ['peer', '(e) peer oidc-provider (its own process; loop probe n/a)']]) {
  if (!ran(name)) continue;
  const p = r[name].probe;
  const x = r[name];
  const contention = `${Number.isFinite(x.otherCpu) ? x.otherCpu.toFixed(2) : 'n/a'} | ${Number.isFinite(x.cpuStall) ? pct(x.cpuStall) : 'n/a'}`;
  if (!p) md.push(`| ${label} | n/a | n/a | n/a | n/a | n/a | n/a | ${contention} |`);
  else md.push(`| ${label} | ${fmtMs(p.loopP50)} | ${fmtMs(p.loopP99)} | ${fmtMs(p.loopMax)} | ${fmtMs(p.gcMs)} (${p.gcCount}) | ${fmtMs(p.gcMax)} | ${p.majorCount === undefined ? 'n/a' : `${fmtMs(p.majorMs)} (${p.majorCount}), ${fmtMs(p.majorMax)}`} | ${contention} |`);
}
md.push('');

// The issue-10 targets, each wall-clock and CPU-normalised, against references from this run.
md.push('## Targets', '');
md.push('Every target, its value and its reference from this run, twice: wall-clock (throughput or latency as the load generator saw it) and CPU-normalised (server CPU per call from /proc: what one dedicated core would sustain; robust when other processes compete for the CPUs, see the contention columns above). The transport reference is Ping, the mean of its first and last run. Latency targets have no CPU form (—).', '');
md.push('| target | wall-clock value | wall-clock reference | met | CPU-normalised value | CPU reference | met |', '|---|---|---|---|---|---|---|');
const na = '| n/a | n/a | n/a | n/a | n/a | n/a |';
const ratioRow = (label, x, refLabel, refWall, refCpu, target, fmtRatio = pct) => {
  if (!x) return md.push(`| ${label} ${na}`);
  const w = x.perSecond / refWall;
  const c = refCpu / x.cpuPerCall;
  md.push(`| ${label} | ${fmtInt(x.perSecond)}/s = ${fmtRatio(w)} | ${refLabel} ${fmtInt(refWall)}/s | ${mark(w >= target)} | ${fmtUs(x.cpuPerCall)} per call = ${fmtRatio(c)} | ${refLabel} ${fmtUs(refCpu)} per call | ${mark(c >= target)} |`);
};
ratioRow('IssueToken ≥ 40% of Ping', r.issue, 'Ping', ping, r.ping.cpuPerCall, 0.4);
ratioRow('BeginTask+IssueToken pair ≥ 25% of Ping', r.pair, 'Ping', ping, r.ping.cpuPerCall, 0.25);
if (peer.result) ratioRow('token exchange ≥ 1.5× the oidc-provider peer', r.exchange, 'peer', peer.result.perSecond, peer.result.cpuPerCall, 1.5, (x) => `${x.toFixed(2)}×`);
else md.push(`| token exchange ≥ 1.5× the oidc-provider peer | ${r.exchange ? `${fmtInt(r.exchange.perSecond)}/s` : 'n/a'} | peer ${peer.note} | n/a | ${r.exchange ? fmtUs(r.exchange.cpuPerCall) : 'n/a'} | n/a | n/a |`);
/** (d)'s latency broken down by where it was spent (written under the Targets table). */
let latencySplit = '';
if (ran('issue-open')) {
  const d = r['issue-open'];
  const p0 = r['ping-open'];
  md.push(`| IssueToken p99 ≤ 10 ms at 50% of peak (${fmtInt(d.rate)}/s, open loop) | p99 ${fmtMs(d.p99)} | p50 ${fmtMs(d.p50)}; peak (b) ${fmtInt(r.issue.perSecond)}/s; Ping at the same rate p99 ${fmtMs(p0.p99)} | ${mark(d.p99 <= 10)} | — | — | — |`);
  const lp = d.probe?.loopP99;
  md.push(`| broker event-loop delay p99 ≤ 5 ms during that scenario | ${fmtMs(lp)} | max ${fmtMs(d.probe?.loopMax)}; Ping at the same rate p99 ${fmtMs(p0.probe?.loopP99)} | ${mark(Number.isFinite(lp) ? lp <= 5 : null)} | — | — | — |`);
  latencySplit = `Where (d)'s latency was spent: p99 ${fmtMs(d.p99)} from the scheduled send, ${fmtMs(d.serviceP99)} from the actual send; in the broker, from a call's HTTP/2 headers to its reply handed to HTTP/2, p50 ${fmtMs(d.probe?.handledP50)}, p99 ${fmtMs(d.probe?.handledP99)} over ${fmtInt(d.probe?.streams ?? 0)} streams (to the stream's close, its last frame gone to the socket: p99 ${fmtMs(d.probe?.closedP99)}); broker event-loop delay p99 ${fmtMs(lp)}; load generator event-loop delay p99 ${fmtMs(d.loadgenLoopP99)} (max ${fmtMs(d.loadgenLoopMax)}), at ${pct(d.loadgenCpu)} of a core beside the broker's ${pct(d.brokerCpu)} on ${os.cpus().length} CPUs. The same split for (d0), a no-op Ping at the same rate: p99 ${fmtMs(p0.p99)} from the scheduled send, ${fmtMs(p0.serviceP99)} from the actual send; in the broker p50 ${fmtMs(p0.probe?.handledP50)}, p99 ${fmtMs(p0.probe?.handledP99)}; broker event-loop delay p99 ${fmtMs(p0.probe?.loopP99)}; load generator event-loop delay p99 ${fmtMs(p0.loadgenLoopP99)} (max ${fmtMs(p0.loadgenLoopMax)}).`;
} else {
  md.push(`| IssueToken p99 ≤ 10 ms at 50% of peak ${na}`);
  md.push(`| broker event-loop delay p99 ≤ 5 ms during that scenario ${na}`);
}
if (rv) md.push(`| revocation propagation p99 ≤ 25 ms to ${rv.verifiers} feed-subscribed verifiers (other process) | p99 ${fmtMs(rv.p99)} | p50 ${fmtMs(rv.p50)}, max ${fmtMs(rv.max)}, ${fmtInt(rv.count)} revocations | ${mark(rv.count > 0 ? rv.p99 <= 25 : null)} | — | — | — |`);
else md.push(`| revocation propagation p99 ≤ 25 ms to ${VERIFIERS} verifiers ${na}`);
if (vr) {
  const w = vr.firstTime.perSecond / vr.raw.wall;
  const c = vr.firstTime.cpu / vr.raw.cpu;
  // The floor (decode + parse + one verify, nothing checked) is the most any verifier could reach: shown beside the target.
  const fw = vr.floor.perSecond / vr.raw.wall;
  const fc = vr.floor.cpu / vr.raw.cpu;
  md.push(`| verifier: first-time verify ≥ 90% of raw ES256 verify | ${fmtInt(vr.firstTime.perSecond)}/s = ${pct(w)} | raw ${fmtInt(vr.raw.wall)}/s (interleaved); floor ${pct(fw)} | ${mark(w >= 0.9)} | ${fmtUs(1 / vr.firstTime.cpu)} per verify = ${pct(c)} | raw ${fmtUs(1 / vr.raw.cpu)} per verify; floor ${fmtUs(1 / vr.floor.cpu)} = ${pct(fc)} | ${mark(c >= 0.9)} |`);
  md.push(`| verifier: a token verified before, again ≥ 200k/s | ${fmtInt(vr.repeat.perSecond)}/s | first-time ${fmtInt(vr.firstTime.perSecond)}/s | ${mark(vr.repeat.perSecond >= 200_000)} | ${fmtUs(1 / vr.repeat.cpu)} per verify = ${fmtInt(vr.repeat.cpu)}/s per core | — | ${mark(vr.repeat.cpu >= 200_000)} |`);
} else {
  md.push(`| verifier: first-time verify ≥ 90% of raw ES256 verify ${na}`);
  md.push(`| verifier: a token verified before, again ≥ 200k/s ${na}`);
}
md.push('');
if (latencySplit) md.push(latencySplit, '');
if (ran('exchange')) {
  md.push(`Exchange vs its own crypto (1 subject-token verify + 1 sign, not a target): ${pct(r.exchange.perSecond / cryptoLimit)} of ${fmtInt(cryptoLimit)}/s wall-clock; ${pct(cryptoCpuPerExchange / r.exchange.cpuPerCall)} CPU-normalised (${fmtUs(cryptoCpuPerExchange)} of ${fmtUs(r.exchange.cpuPerCall)} per exchange).`, '');
  const floor = r['http-get'];
  if (floor && peer.result) {
    // What the 1.5× target leaves per exchange, against what no exchange can go below: the HTTPS floor plus its crypto.
    const budget = peer.result.cpuPerCall / 1.5;
    const least = floor.cpuPerCall + cryptoCpuPerExchange;
    md.push(`Exchange budget (not a target): 1.5× the peer leaves ${fmtUs(budget)} of broker CPU per exchange; the HTTPS transport floor (e′) is ${fmtUs(floor.cpuPerCall)} per request and one ES256 verify + sign ${fmtUs(cryptoCpuPerExchange)}, together ${fmtUs(least)} (${pct(least / budget)} of the budget) before any exchange work: policy, task and token records, audit (a subject token seen before is not verified again, so most exchanges here pay the sign alone, ${fmtUs(1 / signs.cpu)}: floor plus sign ${fmtUs(floor.cpuPerCall + 1 / signs.cpu)}). The exchange itself spends ${fmtUs(r.exchange.cpuPerCall - least)} above that floor.`, '');
  }
}

if (ran('issue-ctl')) {
  md.push('## Targets (f)–(i)', '');
  md.push('References, all from this run: (b) = the built-in-rules IssueToken measured first; (b′) = the same config and scenario on a broker restarted right before the OPA and rotation brokers (same data dir, same pre-warm): the like-for-like reference, since (f) and (i) run later, on restarted brokers, with a bigger store and possibly different machine load. "CPU" rows compare broker CPU per call (contention-robust), as a throughput ratio.', '');
  md.push('| measurement | value | vs reference | target | met |', '|---|---|---|---|---|');
  const ctl = r['issue-ctl'];
  const od = opaDecisions.opa;
  const bd = opaDecisions.builtin;
  if (od && bd) md.push(`| (f) decision overhead, DecisionPoint over OpaEngine, p50 / p99 | ${fmtUsN(od.p50)} / ${fmtUsN(od.p99)} | BuiltinEngine ${fmtUsN(bd.p50)} / ${fmtUsN(bd.p99)} (OPA +${fmtUsN(od.p50 - bd.p50)} at p50) | — | — |`);
  for (const [tag, x, what, extra] of [['(f)', r['issue-opa'], 'with OPA', ''], ['(i)', r['issue-rot'], 'during rotation', ` (${r['issue-rot']?.rotations} promotions in the scenario)`]]) {
    if (!x) continue;
    const target = tag === '(f)' ? '≥ 90% of built-in' : 'within 10% (≥ 90%)';
    const vsC = x.perSecond / ctl.perSecond;
    const cpuC = ctl.cpuPerCall / x.cpuPerCall;
    if (r.issue) {
      const vsB = x.perSecond / r.issue.perSecond;
      md.push(`| ${tag} IssueToken calls/s ${what}${extra} | ${fmtInt(x.perSecond)} | ${pct(vsB)} of (b) (${fmtInt(r.issue.perSecond)}/s) | ${target} | ${mark(vsB >= 0.9)} |`);
    }
    md.push(`| ${tag} IssueToken calls/s ${what}, like-for-like | ${fmtInt(x.perSecond)} | ${pct(vsC)} of (b′) (${fmtInt(ctl.perSecond)}/s) | ${target} | ${mark(vsC >= 0.9)} |`);
    md.push(`| ${tag} IssueToken ${what}, CPU | ${fmtUs(x.cpuPerCall)} per call | ${pct(cpuC)} of (b′) (${fmtUs(ctl.cpuPerCall)} per call)${r.issue ? `; ${pct(r.issue.cpuPerCall / x.cpuPerCall)} of (b) (${fmtUs(r.issue.cpuPerCall)})` : ''} | ${target} | ${mark(cpuC >= 0.9)} |`);
  }
  const keys = ['issue-ctl', 'issue-opa', 'issue-rot'].filter(ran);
  const stalls = keys.map((k) => r[k].cpuStall).filter(Number.isFinite);
  if (stalls.length === keys.length && stalls.length > 1 && Math.max(...stalls) - Math.min(...stalls) > 0.2) {
    md.push('', `**Machine contention differed between ${keys.join(', ')}** (CPU stall ${keys.map((k) => pct(r[k].cpuStall)).join(' / ')}; other CPU ${keys.map((k) => r[k].otherCpu.toFixed(2)).join(' / ')} cores): their ratios mix the effect under test with load from other processes; even CPU per call rises under contention. Rerun on a quiet machine before acting on a ✗ here.`);
  }
  md.push('');
}
if (scaleOut) {
  const { scaleOutMarkdown } = await import('./scaleout.mjs');
  md.push(...scaleOutMarkdown(scaleOut, { fmtInt, fmtMs, fmtUs, pct, mark }));
}
md.push('Notes:', '');
if (machine.loadavgBefore[0] > os.cpus().length * 0.5) md.push(`- **The machine was busy before the run (1-min loadavg ${machine.loadavgBefore[0].toFixed(2)} on ${os.cpus().length} CPUs): other processes compete with the broker and the load generator, so absolute numbers (and the references, measured at different moments) are depressed and noisy; prefer the CPU-normalised columns, and rerun on an idle machine.**`);
md.push('- CPU columns: user+system CPU of the server process (broker, or oidc-provider for the peer row) and of the load generator over the scenario including warm-up, as a share of one core (from /proc).');
if (ran('issue')) md.push(`- gRPC: ${CHANNELS} BrokerClient instances; established TCP connections to the broker's gRPC port after the IssueToken scenario: ${r.issue.grpcConnections} (from /proc/net/tcp). Calls are spread round-robin over the clients.`);
const lgPing = r.ping2.loadgenCpu / r.ping2.perSecond;
if (lgPing > r.ping2.cpuPerCall) md.push(`- The Ping reference is bounded by the load generator, not the broker: the grpc-js client spends ${fmtUs(lgPing)} CPU per Ping against the broker's ${fmtUs(r.ping2.cpuPerCall)}. Wall-clock ratios against Ping therefore flatter the broker; the CPU-normalised columns compare broker CPU only.`);
if (ran('exchange')) {
  md.push(`- HTTPS connections opened by the load generator (TLS handshakes, warm-up included): exchange ${r.exchange.connections ?? 'n/a'}, peer ${peer.result?.connections ?? 'n/a'} (${HTTP_CONCURRENCY} would mean every socket was kept alive).`);
  md.push(`- The JWKS of the bench OIDC issuer was fetched ${jwksFetches} time(s); each of the ${fmtInt(SUBJECT_TOKENS)} subject tokens is verified in full (ES256) the first time the broker sees it and then served from its verified-token cache (key lookup and claims checked again on every exchange; docs/federation.md), so about ${fmtInt(SUBJECT_TOKENS)} of the exchanges (warm-up included) pay a verify; every exchange signs a Mayfly token (ES256) and begins a task.`);
  md.push('- The peer does one ES256 sign per token and no subject-token verification; it runs after the broker is stopped, with the same load generator.');
}
if (ran('issue-opa')) md.push(`- (f) The OPA module is built at bench time by bench/opa-module.mjs (the tests' OPA-ABI 1.2 runtime.wat, compiled with wabt; loaded and evaluated by the real @open-policy-agent/opa-wasm SDK): issue_token for demo-api → {allow: true, scopes: [read]}, begin_task → {allow: true}. Its decision cost is the SDK's JSON in/out plus a byte scan, a lower bound for compiled Rego. Decision latency is one awaited DecisionPoint.decide() (deadline timer, contract check included), ${fmtInt(OPA_EVALS)} calls after warm-up. The OPA and rotation brokers are restarts on the same data dir (same SQLite store, key store and audit log) with the same ${fmtInt(OPEN_TASKS)}-task IssueToken scenario after the same pre-warm; mayfly.yaml is rewritten for each.`);
if (rv) md.push(`- (g) ${rv.verifiers} MayflyVerifier instances in bench/verifiers.mjs, each with its own BrokerClient (gRPC channel, relying-party SVID), default feed heartbeat; synchronized in ${fmtMs(rv.startMs)}; feed reconnects during the run: ${rv.reconnects}. Per iteration: BeginTask, IssueToken, all verifiers accept the token, then t0 and CompleteTask; each verifier checks verify(token) right after it processes each feed message, and the time the last one gets ERR_TOKEN_REVOKED is t_last (process.hrtime, CLOCK_MONOTONIC across processes). Misuse reports are disabled in these verifiers so ${rv.verifiers} ReportMisuse calls do not load the broker mid-measurement.${rv.stoppedEarly ? ` Stopped after ${REVOCATION_BUDGET_MS / 1000} s.` : ''}`);
if (vr) md.push(`- (h) One feed-subscribed MayflyVerifier in the bench process; tokens minted by the broker. ${VERIFY_WARM_ROUNDS} unmeasured warm-up rounds (${fmtInt(VERIFY_WARM_TOKENS)} first-time tokens between them), then five measured ones, each: raw verify (300 ms), a fifth of the first-time tokens, the same number of floor tokens, and the repeated token (300 ms). The floor is what any first-time verify must do at least: the payload base64url-decoded and JSON-parsed, the signature decoded, one ES256 verify over the token's signing input (the minted tokens re-signed with the raw reference's key), awaited; like the verifier, it makes no Buffer per token and passes the signature in DER; it checks nothing else, so it bounds what the first-time row can reach. Each call is an awaited verify() (the async API), so the rate includes a promise per call, with the workload's client certificate (the tokens are bound to it). A repeated token is answered from the verifier's verified-token cache: no signature check (and, after its second use, no JSON parse), but expiry, audience, revocation (token, task, parent, key), the key still current, the certificate binding, scopes and single use on every call. The diagnostic row is raw's call (same key, same options) over the floor's distinct tokens, decoded before the clock starts, in each round after the floor slice: the crypto alone for real tokens, whose signing input is longer than raw's sample. It costs what raw costs, so the first-time row's distance from raw is JavaScript work around the call (decoding, JSON.parse, checks, the cache) and its garbage.`);
if (ran('issue-rot')) md.push(`- (i) keys: ${Object.entries(ROTATION_KEYS).map(([k, v]) => `${k}: ${v}`).join(', ')}. Promotions (audit key.state → active) during the scenario incl. warm-up: ${r['issue-rot'].rotations}; in the whole rotating run: ${r['issue-rot'].rotationsTotal}; \`mayfly keys list\` afterwards lists ${r['issue-rot'].keysListed} keys.`);
if (failures.length) md.push('', '**FAILURES**', '', ...failures.map((f) => `- ${f}`));
md.push('');
const text = md.join('\n');
process.stdout.write(text + '\n');
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, text);
log(`wrote ${OUT}`);
if (failures.length) die(`${failures.length} failure(s):\n${failures.join('\n')}`);
cleanup();
process.exit(0);
