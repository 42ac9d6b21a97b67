/**
 * WAL checkpoints for SqliteStore on a worker thread. A checkpoint copies the
 * WAL into the database file and fsyncs it; SQLite's automatic checkpoint
 * does that inside whichever commit crosses 1000 WAL pages, on the event
 * loop, where it stalls every call in flight. Here a worker with its own
 * connection runs `PRAGMA wal_checkpoint(PASSIVE)` every `intervalMs`:
 * passive checkpoints never block writers. The main connection keeps an
 * automatic checkpoint only as a backstop at 10 times SQLite's default
 * (see SqliteStore). The worker is plain JavaScript evaluated
 * from a string, so it runs the same from the sources (tests) and from
 * dist/.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/** What the worker reports. */
export interface CheckpointStats {
  /** Passive checkpoints run. */
  runs: number;
  /** Frames in the WAL and frames copied back, at the last checkpoint that found any. */
  lastLogFrames: number;
  lastCheckpointed: number;
  /** Checkpoints that failed (the next run retries). */
  errors: number;
  lastError?: string;
  /** False once the worker has exited; the main connection then checkpoints itself. */
  running: boolean;
}

export interface Checkpointer {
  stats(): CheckpointStats;
  /** Runs a last checkpoint and ends the worker. */
  stop(): Promise<void>;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { fileMustExist: true, timeout: 0 });
// A few passes in a row: each copies what was committed during the previous one, and once one
// finds the WAL fully copied, the writer's next commit starts the WAL over from its beginning.
const run = () => {
  try {
    let r;
    for (let pass = 0; pass < 4; pass++) {
      r = db.pragma('wal_checkpoint(PASSIVE)')[0];
      if (r.busy || r.checkpointed >= r.log) break;
    }
    parentPort.postMessage({ kind: 'ran', log: r.log, checkpointed: r.checkpointed });
  } catch (e) {
    parentPort.postMessage({ kind: 'error', message: String(e && e.message || e) });
  }
};
const timer = setInterval(run, workerData.intervalMs);
parentPort.on('message', (m) => {
  if (m === 'stop') {
    clearInterval(timer);
    run();
    db.close();
    parentPort.close();
  }
});
`;

/** Starts the worker on the database at `path`; `onExit` runs if it ends other than by stop(). */
export function startCheckpointer(path: string, intervalMs: number, onExit: () => void): Checkpointer {
  const driver = createRequire(import.meta.url).resolve('better-sqlite3');
  const stats: CheckpointStats = { runs: 0, lastLogFrames: 0, lastCheckpointed: 0, errors: 0, running: true };
  const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { path, driver, intervalMs } });
  worker.unref();
  let stopping = false;
  worker.on('message', (m: { kind: string; log?: number; checkpointed?: number; message?: string }) => {
    if (m.kind === 'ran') {
      stats.runs++;
      if ((m.log ?? 0) > 0) {
        stats.lastLogFrames = m.log ?? 0;
        stats.lastCheckpointed = m.checkpointed ?? 0;
      }
    } else if (m.kind === 'error') {
      stats.errors++;
      stats.lastError = m.message;
    }
  });
  worker.on('error', (e) => {
    stats.errors++;
    stats.lastError = e instanceof Error ? e.message : String(e);
  });
  const exited = new Promise<void>((resolve) =>
    worker.once('exit', () => {
      stats.running = false;
      if (!stopping) onExit();
      resolve();
    }),
  );
  return {
    stats: () => ({ ...stats }),
    async stop() {
      if (!stats.running) return;
      stopping = true;
      worker.postMessage('stop');
      const t = setTimeout(() => void worker.terminate(), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}
