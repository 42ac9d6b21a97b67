// Preloaded into the broker process by bench/run.mjs (`node --import`), no
// change to the broker itself: measures event-loop delay and GC pauses. On
// SIGUSR2 it writes the stats since the previous SIGUSR2 to $MAYFLY_BENCH_PROBE
// (atomically, with an increasing seq) and resets them.
//
// With $MAYFLY_BENCH_PROFILE_DIR set, it also CPU-profiles each scenario: on
// SIGUSR2 it ends the running profile (written as <dir>/<name>.cpuprofile) and,
// if $MAYFLY_BENCH_PROBE.next names a scenario, starts the next one.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

const out = process.env.MAYFLY_BENCH_PROBE;
const profileDir = process.env.MAYFLY_BENCH_PROFILE_DIR;
if (out) {
  // The histogram records the interval between timer wake-ups, which includes
  // the resolution itself (an idle loop reads ~5 ms): the delay is that minus
  // the resolution.
  const RESOLUTION_MS = 5;
  const loop = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  const delay = (ns) => Math.max(0, ns / 1e6 - RESOLUTION_MS);
  loop.enable();
  let gcMs = 0;
  let gcMax = 0;
  let gcCount = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcMs += e.duration;
      gcMax = Math.max(gcMax, e.duration);
      gcCount++;
    }
  }).observe({ entryTypes: ['gc'] });

  let session = null;
  let profiling = null;
  const post = (method, params = {}) => new Promise((res, rej) => session.post(method, params, (err, r) => (err ? rej(err) : res(r))));
  async function switchProfile() {
    if (!profileDir) return;
    if (!session) {
      session = new Session();
      session.connect();
      await post('Profiler.enable');
      await post('Profiler.setSamplingInterval', { interval: 200 });
    }
    if (profiling) {
      const { profile } = await post('Profiler.stop');
      writeFileSync(join(profileDir, `${profiling}.cpuprofile`), JSON.stringify(profile));
      profiling = null;
    }
    let next = '';
    try {
      next = readFileSync(`${out}.next`, 'utf8').trim();
    } catch {
      /* none */
    }
    if (next) {
      await post('Profiler.start');
      profiling = next.replace(/[^a-z0-9_-]/gi, '_');
    }
  }

  let seq = 0;
  process.on('SIGUSR2', async () => {
    const s = {
      seq: ++seq,
      loopP50: delay(loop.percentile(50)),
      loopP99: delay(loop.percentile(99)),
      loopMax: delay(loop.max),
      gcMs,
      gcMax,
      gcCount,
    };
    loop.reset();
    gcMs = 0;
    gcMax = 0;
    gcCount = 0;
    try {
      await switchProfile();
    } catch (e) {
      s.profileError = String(e?.message ?? e);
    }
    writeFileSync(`${out}.tmp`, JSON.stringify(s));
    renameSync(`${out}.tmp`, out);
  });
}
