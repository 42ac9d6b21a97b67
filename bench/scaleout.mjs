// Scale-out group of `npm run bench` (BENCH_ONLY=scaleout): IssueToken and
// BeginTask+IssueToken on SQLite with one broker process against PostgreSQL
// with `serve --workers 1` and `--workers 2`, all in the same run, with the
// same load generator and scenarios as (b); then revocation propagation when
// the verifiers are subscribed to a different replica than the one completing
// the task. PostgreSQL is a throwaway cluster started here (the tests'
// launcher, test/helpers/pg-cluster.mjs) with fsync on, so commits are as
// durable as SQLite's.
//
// Server CPU per call counts every broker process (primary and workers,
// found as descendants of the `mayfly serve` process) and, for PostgreSQL,
// also the database server's processes: the SQLite broker does its database
// work in its own process, so leaving PostgreSQL out would flatter it.
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** Pids of `pid` and all its descendants (from /proc). */
function tree(pid) {
  const kids = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push(Number(d));
    } catch {
      /* exited */
    }
  }
  const out = [];
  const walk = (p) => {
    out.push(p);
    for (const k of kids.get(p) ?? []) walk(k);
  };
  walk(pid);
  return out;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/**
 * Runs the scale-out scenarios. `ctx` gives run.mjs's helpers and state:
 * ROOT, tmpDir, baseConfigText, YAML, lg (load generator), base (scenario
 * parameters), OPEN_TASKS, CHANNELS, AUDIENCE, SCOPES, ISSUER, cpuSeconds,
 * freePort, startChild, stopChild, waitForPorts, startIpcChild, tail, log,
 * failures, verifierCount, revocations.
 */
export async function runScaleOut(ctx) {
  const { ROOT, tmpDir, YAML, lg, log, failures } = ctx;
  const { startPgCluster } = await import(pathToFileURL(join(ROOT, 'test', 'helpers', 'pg-cluster.mjs')).href);
  const pgModule = await import('pg');
  const pg = pgModule.default ?? pgModule;
  log('(j) scale-out: starting PostgreSQL (fsync on) …');
  const pgc = await startPgCluster({ fsync: true });
  const out = { rows: {}, propagation: null, pgVersion: '' };
  const createDb = async (name) => {
    const c = new pg.Client({ connectionString: pgc.url });
    await c.connect();
    try {
      await c.query(`CREATE DATABASE ${name}`);
      out.pgVersion ||= (await c.query('SHOW server_version')).rows[0].server_version;
    } finally {
      await c.end();
    }
    const u = new URL(pgc.url);
    u.pathname = `/${name}`;
    return u.toString();
  };
  const pgPid = pgc.pid();
  const profileDir = process.env.MAYFLY_BENCH_PROFILE_DIR;
  try {
    /** Starts `mayfly serve` with the base config patched; returns the child and its ports. */
    const serve = async (tag, patch, extraArgs = [], profiled = false) => {
      const doc = YAML.parseDocument(ctx.baseConfigText);
      patch(doc);
      const config = join(tmpDir, `scale-${tag}.yaml`);
      writeFileSync(config, doc.toString());
      const grpcPort = await ctx.freePort();
      const httpPort = await ctx.freePort();
      const logFile = join(tmpDir, `broker-scale-${tag}.log`);
      // With BENCH_PROFILE, a one-process broker is CPU-profiled per scenario by bench/broker-probe.mjs,
      // through a probe file of its own (the probe reads the variable at start-up).
      const probeFile = profileDir && profiled ? join(tmpDir, `probe-scale-${tag}.json`) : null;
      const savedProbe = process.env.MAYFLY_BENCH_PROBE;
      if (probeFile) process.env.MAYFLY_BENCH_PROBE = probeFile;
      const preload = probeFile ? ['--import', pathToFileURL(join(ROOT, 'bench', 'broker-probe.mjs')).href] : [];
      const child = ctx.startChild(`broker (scale-out ${tag})`, [...preload, join(ROOT, 'bin', 'mayfly.js'), 'serve', '--config', config, '--grpc-listen', `127.0.0.1:${grpcPort}`, '--http-listen', `127.0.0.1:${httpPort}`, ...extraArgs], logFile);
      process.env.MAYFLY_BENCH_PROBE = savedProbe;
      await ctx.waitForPorts(child, [grpcPort, httpPort], logFile, `broker (scale-out ${tag})`, 60_000);
      return { child, grpcPort, httpPort, logFile, config, probeFile, probeSeq: 0 };
    };
    /** Ends the running profile of `b` (if any) and starts one named `next` (if given); waits until the probe has answered. */
    const profile = async (b, next = '') => {
      if (!b.probeFile) return;
      writeFileSync(`${b.probeFile}.next`, next);
      b.child.kill('SIGUSR2');
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        try {
          const seq = JSON.parse(readFileSync(b.probeFile, 'utf8')).seq;
          if (seq > b.probeSeq) {
            b.probeSeq = seq;
            return;
          }
        } catch {
          /* not written yet */
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const grpcInit = (port) => ({ grpc: { address: `127.0.0.1:${port}`, ca: join(tmpDir, 'ca.pem'), cert: join(tmpDir, 'workload.pem'), key: join(tmpDir, 'workload.key'), channels: ctx.CHANNELS }, subjectTokensFile: ctx.subjectTokensFile });

    /** One measured scenario; CPU of every process in `pids()` (broker tree, PostgreSQL tree). */
    const measure = async (label, params, brokerPid, withPg) => {
      const brokerPids = tree(brokerPid);
      const dbPids = withPg ? tree(pgPid) : [];
      const sum = (pids) => pids.reduce((s, p) => s + (Number.isFinite(ctx.cpuSeconds(p)) ? ctx.cpuSeconds(p) : 0), 0);
      const b0 = sum(brokerPids);
      const d0 = sum(dbPids);
      const l0 = ctx.cpuSeconds(lg.child.pid);
      const w0 = performance.now();
      const r = await lg.call('run', { ...ctx.base, ...params });
      const wall = (performance.now() - w0) / 1000;
      // PostgreSQL forks a backend per connection: one forked during the window counts whole (it started inside it);
      // one that exited during the window is missed (the pools keep their connections, so this is rare).
      const dbNow = withPg ? tree(pgPid) : [];
      r.brokerCpu = (sum(brokerPids) - b0) / wall;
      r.dbCpu = withPg ? (sum(dbNow) - d0) / wall : 0;
      r.loadgenCpu = (ctx.cpuSeconds(lg.child.pid) - l0) / wall;
      r.brokerCpuPerCall = r.brokerCpu / r.perSecond;
      r.serverCpuPerCall = (r.brokerCpu + r.dbCpu) / r.perSecond;
      r.processes = brokerPids.length;
      if (r.errors > 0) failures.push(`(j) ${label}: ${r.errors} call(s) failed; first: ${r.firstError}`);
      if (r.count === 0) failures.push(`(j) ${label}: no call completed`);
      log(`(j) ${label}: ${Math.round(r.perSecond)}/s p50 ${r.p50.toFixed(2)} ms p99 ${r.p99.toFixed(2)} ms; broker CPU ${(r.brokerCpu * 100).toFixed(0)}%${withPg ? ` PostgreSQL CPU ${(r.dbCpu * 100).toFixed(0)}%` : ''} over ${brokerPids.length} broker process(es)`);
      return r;
    };

    /** Broker and PostgreSQL CPU (share of a core) over a few seconds without calls. */
    const measureIdle = async (brokerPid, withPg) => {
      await new Promise((r) => setTimeout(r, 1000));
      const sum = (pids) => pids.reduce((s, p) => s + (Number.isFinite(ctx.cpuSeconds(p)) ? ctx.cpuSeconds(p) : 0), 0);
      const brokerPids = tree(brokerPid);
      const dbPids = withPg ? tree(pgPid) : [];
      const b0 = sum(brokerPids);
      const d0 = sum(dbPids);
      const w0 = performance.now();
      await new Promise((r) => setTimeout(r, 4000));
      const wall = (performance.now() - w0) / 1000;
      return { brokerCpu: (sum(brokerPids) - b0) / wall, dbCpu: withPg ? (sum(withPg ? tree(pgPid) : []) - d0) / wall : 0 };
    };

    const variants = [
      { key: 'sqlite', label: 'SQLite, 1 process', patch: (doc) => doc.set('data_dir', 'scale-sqlite'), args: [], pg: false },
      { key: 'pg1', label: 'PostgreSQL, --workers 1', args: ['--workers', '1'], pg: true },
      { key: 'pg2', label: 'PostgreSQL, --workers 2', args: ['--workers', '2'], pg: true },
    ];
    for (const v of variants) {
      let patch = v.patch;
      if (v.pg) {
        const url = await createDb(`bench_${v.key}`);
        patch = (doc) => {
          doc.set('data_dir', `scale-${v.key}`);
          doc.set('store', { backend: 'postgres', url, pool_max: 16 });
        };
      }
      mkdirSync(join(tmpDir, `scale-${v.key}`), { recursive: true, mode: 0o700 });
      // Profiles only of one-process brokers: SIGUSR2 reaches the primary, not the workers.
      const b = await serve(v.key, patch, v.args, v.key !== 'pg2');
      await lg.call('init', grpcInit(b.grpcPort));
      await lg.call('prepareTasks', { count: ctx.OPEN_TASKS });
      await lg.call('run', { ...ctx.base, scenario: 'pair', warmupMs: 0, durationMs: ctx.base.warmupMs });
      // CPU with no calls at all (timers, the sweeper, cluster sync, PostgreSQL's background processes): a
      // fixed cost per second that the per-call figures below include, spread over the calls of the window.
      const idle = await measureIdle(b.child.pid, v.pg);
      log(`(j) idle, ${v.label}: broker CPU ${(idle.brokerCpu * 100).toFixed(1)}%${v.pg ? ` PostgreSQL CPU ${(idle.dbCpu * 100).toFixed(1)}%` : ''}`);
      await profile(b, `scale-${v.key}-issue`);
      const issue = await measure(`IssueToken, ${v.label}`, { scenario: 'issue' }, b.child.pid, v.pg);
      await profile(b, `scale-${v.key}-pair`);
      const pair = await measure(`BeginTask+IssueToken, ${v.label}`, { scenario: 'pair' }, b.child.pid, v.pg);
      await profile(b);
      out.rows[v.key] = { label: v.label, issue, pair, idle };
      await ctx.stopChild(b.child);
    }

    // Propagation across replicas: verifiers on replica B, CompleteTask on replica A.
    log(`(j) propagation: two replicas, ${ctx.verifierCount} verifiers subscribed to B, CompleteTask on A …`);
    const url = await createDb('bench_propagation');
    const replica = (name) => (doc) => {
      doc.set('broker_id', name);
      doc.set('data_dir', `scale-${name}`);
      doc.set('store', { backend: 'postgres', url, pool_max: 8 });
    };
    for (const n of ['replica-a', 'replica-b']) mkdirSync(join(tmpDir, `scale-${n}`), { recursive: true, mode: 0o700 });
    const a = await serve('replica-a', replica('replica-a'));
    const b = await serve('replica-b', replica('replica-b'));
    const vp = await ctx.startIpcChild('verifiers.mjs', 'verifier process (scale-out)');
    await vp.call('init', { count: ctx.verifierCount, issuer: ctx.ISSUER, audience: ctx.AUDIENCE, jwksUrl: `https://127.0.0.1:${b.httpPort}/.well-known/jwks.json`, grpcAddress: `127.0.0.1:${b.grpcPort}`, ca: join(tmpDir, 'ca.pem'), cert: join(tmpDir, 'relying-party.pem'), key: join(tmpDir, 'relying-party.key'), clientCert: join(tmpDir, 'workload.pem') });
    const { BrokerClient } = await import(pathToFileURL(join(ROOT, 'dist', 'client', 'broker-client.js')).href);
    const client = new BrokerClient({ address: `127.0.0.1:${a.grpcPort}`, ca: readFileSync(join(tmpDir, 'ca.pem')), cert: readFileSync(join(tmpDir, 'workload.pem')), key: readFileSync(join(tmpDir, 'workload.key')), timeoutMs: 10_000 });
    const lat = [];
    let errors = 0;
    let firstError = null;
    // Unmeasured warm-up revocations first, as in (g).
    let began = performance.now();
    for (let i = -ctx.revocationWarmup; i < ctx.revocations && (i < 0 || performance.now() - began < 30_000); i++) {
      if (i === 0) began = performance.now();
      try {
        const task = await client.beginTask({ purpose: `bench cross-replica revocation ${i}`, ttlSeconds: 600 });
        const { token } = await client.issueToken({ taskId: task.taskId, audience: ctx.AUDIENCE, scopes: ctx.SCOPES, ttlSeconds: 300 });
        await vp.call('accept', { token });
        const t0 = process.hrtime.bigint();
        await client.completeTask(task.taskId);
        const { tLast } = await vp.call('awaitRevoked', { timeoutMs: 5000 });
        if (i < 0) continue;
        lat.push(Number(BigInt(tLast) - t0) / 1e6);
      } catch (e) {
        errors++;
        firstError ??= String(e?.message ?? e).split('\n')[0];
        if (errors >= 5) break;
      }
    }
    client.close();
    await vp.call('close');
    await vp.stop();
    await ctx.stopChild(a.child);
    await ctx.stopChild(b.child);
    lat.sort((x, y) => x - y);
    out.propagation = { count: lat.length, warmup: ctx.revocationWarmup, verifiers: ctx.verifierCount, p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1], errors, firstError };
    if (errors > 0) failures.push(`(j) cross-replica propagation: ${errors} iteration(s) failed; first: ${firstError}`);
    log(`(j) cross-replica propagation: ${lat.length} revocations, p50 ${out.propagation.p50?.toFixed(2)} ms p99 ${out.propagation.p99?.toFixed(2)} ms`);
  } finally {
    await pgc.destroy();
  }
  return out;
}

/** The report section for run.mjs. */
export function scaleOutMarkdown(s, fmt) {
  const { fmtInt, fmtMs, fmtUs, pct, mark } = fmt;
  const md = ['## Scale-out (j): PostgreSQL, several broker processes', ''];
  md.push(`Same run, same load generator and scenarios as (b). PostgreSQL ${s.pgVersion} on this machine (throwaway cluster, fsync on). "Server CPU" = every broker process (primary and workers) plus, for PostgreSQL, the database server's processes; "broker CPU" leaves the database out.`, '');
  md.push('| scenario | store, processes | calls/s | p50 | p99 | broker CPU per call | server CPU per call | vs SQLite (server CPU) |', '|---|---|---|---|---|---|---|---|');
  const sq = s.rows.sqlite;
  for (const key of ['sqlite', 'pg1', 'pg2']) {
    const row = s.rows[key];
    if (!row) continue;
    for (const [what, r] of [['IssueToken', row.issue], ['BeginTask+IssueToken', row.pair]]) {
      const ref = what === 'IssueToken' ? sq?.issue : sq?.pair;
      md.push(`| ${what} | ${row.label} | ${fmtInt(r.perSecond)} | ${fmtMs(r.p50)} | ${fmtMs(r.p99)} | ${fmtUs(r.brokerCpuPerCall)} | ${fmtUs(r.serverCpuPerCall)} | ${ref ? `${(r.serverCpuPerCall / ref.serverCpuPerCall).toFixed(2)}×` : 'n/a'} |`);
    }
  }
  md.push('');
  const pct1 = (x) => `${(x * 100).toFixed(1)}%`;
  const idle = ['sqlite', 'pg1', 'pg2'].filter((k) => s.rows[k]?.idle).map((k) => `${s.rows[k].label}: broker ${pct1(s.rows[k].idle.brokerCpu)}${k === 'sqlite' ? '' : `, PostgreSQL ${pct1(s.rows[k].idle.dbCpu)}`}`);
  if (idle.length > 0) md.push(`CPU with no calls (share of one core over 4 s, before the scenarios; included in the per-call figures, spread over the calls): ${idle.join('; ')}.`, '');
  if (sq && s.rows.pg1) {
    const ratio = s.rows.pg1.issue.serverCpuPerCall / sq.issue.serverCpuPerCall;
    const bratio = s.rows.pg1.issue.brokerCpuPerCall / sq.issue.brokerCpuPerCall;
    md.push('| target | value | met |', '|---|---|---|');
    md.push(`| server CPU per IssueToken on PostgreSQL (--workers 1) within 1.3× of SQLite | ${ratio.toFixed(2)}× (broker processes alone ${bratio.toFixed(2)}×) | ${mark(ratio <= 1.3)} |`);
    if (s.rows.pg2) md.push(`| IssueToken throughput, --workers 2 vs --workers 1 (wall-clock; not a target on 2 cores) | ${pct(s.rows.pg2.issue.perSecond / s.rows.pg1.issue.perSecond)} | — |`);
    if (s.propagation) md.push(`| revocation propagation p99 ≤ 25 ms, verifiers on another replica than the completing one | p50 ${fmtMs(s.propagation.p50)}, p99 ${fmtMs(s.propagation.p99)} (${s.propagation.count} revocations after ${s.propagation.warmup} unmeasured, ${s.propagation.verifiers} verifiers) | ${mark(s.propagation.p99 <= 25)} |`);
    md.push('');
  }
  md.push('On this machine the load generator, the brokers and PostgreSQL share 2 cores: `--workers 2` cannot show a second core\'s worth of throughput when the load generator already takes one; read its CPU per call, not its calls/s. Propagation: BeginTask and IssueToken on replica A, all verifiers accept the token, then t0 and CompleteTask on A; latency = when the last verifier (all subscribed to replica B) rejects it (B learns of the commit by NOTIFY and reads the shared event log by cursor).', '');
  return md;
}
