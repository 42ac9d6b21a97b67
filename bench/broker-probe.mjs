// Preloaded into the broker process by bench/run.mjs (`node --import`), no
// change to the broker itself: measures event-loop delay and GC pauses. On
// SIGUSR2 it writes the stats since the previous SIGUSR2 to $MAYFLY_BENCH_PROBE
// (atomically, with an increasing seq) and resets them.
//
// With $MAYFLY_BENCH_PROFILE_DIR set, it also CPU-profiles each scenario, and
// with $MAYFLY_BENCH_HEAP_DIR it samples the allocations that outlive a
// scavenge: on SIGUSR2 it ends the running recording (written as
// <dir>/<name>.cpuprofile or .heapprofile) and, if $MAYFLY_BENCH_PROBE.next
// names a scenario, starts the next one.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import http2 from 'node:http2';
import v8 from 'node:v8';
import { constants, createHistogram, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

const out = process.env.MAYFLY_BENCH_PROBE;
// Experiments only: V8 flags that V8 reads at each collection, set in the running broker.
if (process.env.MAYFLY_BENCH_V8_FLAGS) for (const f of process.env.MAYFLY_BENCH_V8_FLAGS.split(' ').filter(Boolean)) v8.setFlagsFromString(f);
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
  // Full (mark-compact) collections apart: one of them stalls every call in flight at once.
  let majorMs = 0;
  let majorMax = 0;
  let majorCount = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcMs += e.duration;
      gcMax = Math.max(gcMax, e.duration);
      gcCount++;
      if (e.detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
        majorMs += e.duration;
        majorMax = Math.max(majorMax, e.duration);
        majorCount++;
      }
    }
  }).observe({ entryTypes: ['gc'] });

  // Residence time of each HTTP/2 stream in the broker, two ways: from the
  // moment the broker's event loop saw its headers to the reply being handed
  // to HTTP/2 (the stream's end(): the handler, the store and the audit write
  // are done), and to the stream's close (its last frames left through the
  // socket, which waits on a slow reader too). Wall-clock latency seen by the
  // load generator minus the first is time outside the broker's handling: in
  // the load generator, the kernel, or frames waiting for a busy broker loop.
  // grpc-js creates its servers through http2; HTTP/1.1 requests are not counted.
  const handled = createHistogram();
  const closed = createHistogram();
  const since = (t0) => Math.max(1, Number((process.hrtime.bigint() - t0) / 1000n));
  for (const name of ['createSecureServer', 'createServer']) {
    const create = http2[name];
    http2[name] = function (...args) {
      const server = create.apply(this, args);
      server.on('stream', (stream) => {
        const t0 = process.hrtime.bigint();
        const end = stream.end;
        stream.end = function (...a) {
          handled.record(since(t0));
          stream.end = end;
          return end.apply(this, a);
        };
        stream.once('close', () => closed.record(since(t0)));
      });
      return server;
    };
  }

  // Per-scenario recorders (CPU profile, heap sampling): on each SIGUSR2 the running ones stop and
  // write <dir>/<scenario>.<ext>, and start again for the scenario named in $MAYFLY_BENCH_PROBE.next.
  const heapDir = process.env.MAYFLY_BENCH_HEAP_DIR;
  let session = null;
  let recording = null;
  const post = (method, params = {}) => new Promise((res, rej) => session.post(method, params, (err, r) => (err ? rej(err) : res(r))));
  const recorders = [
    profileDir && {
      dir: profileDir,
      ext: 'cpuprofile',
      enable: async () => {
        await post('Profiler.enable');
        await post('Profiler.setSamplingInterval', { interval: 200 });
      },
      start: () => post('Profiler.start'),
      stop: () => post('Profiler.stop'),
    },
    // Only what outlives a scavenge: objects a young-generation collection promoted, or still live.
    heapDir && {
      dir: heapDir,
      ext: 'heapprofile',
      enable: async () => {},
      start: () => post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: process.env.MAYFLY_BENCH_HEAP_ALL === "1" }),
      stop: () => post('HeapProfiler.stopSampling'),
    },
  ].filter(Boolean);
  async function switchRecorders() {
    if (recorders.length === 0) return;
    if (!session) {
      session = new Session();
      session.connect();
      for (const r of recorders) await r.enable();
    }
    if (recording) {
      for (const r of recorders) writeFileSync(join(r.dir, `${recording}.${r.ext}`), JSON.stringify((await r.stop()).profile));
      recording = null;
    }
    let next = '';
    try {
      next = readFileSync(`${out}.next`, 'utf8').trim();
    } catch {
      /* none */
    }
    if (next) {
      for (const r of recorders) await r.start();
      recording = next.replace(/[^a-z0-9_-]/gi, '_');
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
      majorMs,
      majorMax,
      majorCount,
      streams: handled.count,
      handledP50: handled.count > 0 ? handled.percentile(50) / 1000 : null,
      handledP99: handled.count > 0 ? handled.percentile(99) / 1000 : null,
      closedP99: closed.count > 0 ? closed.percentile(99) / 1000 : null,
    };
    loop.reset();
    handled.reset();
    closed.reset();
    gcMs = 0;
    gcMax = 0;
    gcCount = 0;
    majorMs = 0;
    majorMax = 0;
    majorCount = 0;
    try {
      await switchRecorders();
    } catch (e) {
      s.profileError = String(e?.message ?? e);
    }
    writeFileSync(`${out}.tmp`, JSON.stringify(s));
    renameSync(`${out}.tmp`, out);
  });
}
