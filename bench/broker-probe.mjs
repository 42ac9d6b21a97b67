// Preloaded into the broker process by bench/run.mjs (`node --import`), no
// change to the broker itself: measures event-loop delay and GC pauses. On
// SIGUSR2 it writes the stats since the previous SIGUSR2 to $MAYFLY_BENCH_PROBE
// (atomically, with an increasing seq) and resets them.
import { renameSync, writeFileSync } from 'node:fs';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

const out = process.env.MAYFLY_BENCH_PROBE;
if (out) {
  const loop = monitorEventLoopDelay({ resolution: 5 });
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
  let seq = 0;
  process.on('SIGUSR2', () => {
    const s = {
      seq: ++seq,
      loopP50: loop.percentile(50) / 1e6,
      loopP99: loop.percentile(99) / 1e6,
      loopMax: loop.max / 1e6,
      gcMs,
      gcMax,
      gcCount,
    };
    loop.reset();
    gcMs = 0;
    gcMax = 0;
    gcCount = 0;
    writeFileSync(`${out}.tmp`, JSON.stringify(s));
    renameSync(`${out}.tmp`, out);
  });
}
