/**
 * `mayfly serve --workers N`: N broker processes on one machine sharing the
 * listen ports, so one machine uses every core.
 *
 * node:cluster: the primary process owns the listening sockets and hands
 * accepted connections to the workers round-robin (Node 20 has no
 * SO_REUSEPORT for net servers; `reusePort` arrived in Node 22.12). Both of
 * our listeners are plain net/tls servers underneath (the gRPC one is our own
 * TLS server handing sockets to grpc-js, the HTTPS one is fastify's), so
 * both are shared this way; a client's connection, and so its HTTP/2 stream
 * multiplexing, stays with one worker.
 *
 * Each worker is a full replica of the cluster: it needs the shared
 * PostgreSQL store (tasks, revocations, keys and jobs are coordinated
 * there), so more than one worker on SQLite or memory is refused. Worker i
 * gets broker_id `<broker_id>-w<i>` and data_dir `<data_dir>/worker-<i>`:
 * its own audit chain and audit key, as any replica (docs/clustering.md).
 *
 * The primary migrates the schema once, forks the workers, waits until each
 * reports that it listens (any failure before that stops them all, exit 1),
 * restarts a worker that dies later (giving up if they keep dying), and
 * forwards SIGTERM/SIGINT (graceful stop) and SIGHUP (policy reload).
 */
import cluster, { type Worker } from 'node:cluster';
import { join } from 'node:path';
import type { LoadedConfig } from '../config/load.js';
import { mayflyError } from '../core/errors.js';
import { createPgPool, migratePg } from '../store/postgres.js';
import { resolveStoreUrl } from './build-store.js';

/** Environment variable carrying a worker's index (1..N). */
export const WORKER_ENV = 'MAYFLY_WORKER_INDEX';

const MAX_WORKERS = 64;

/** Parses --workers: an integer 1..64; ERR_CONFIG_INVALID otherwise. */
export function parseWorkers(v: string | undefined): number {
  if (v === undefined) return 1;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isInteger(n) || n < 1 || n > MAX_WORKERS) throw mayflyError('ERR_CONFIG_INVALID', `--workers: must be an integer from 1 to ${MAX_WORKERS} (got ${JSON.stringify(v)})`);
  return n;
}

/** Refuses N > 1 workers unless the store is shared, with the reason. */
export function checkWorkers(loaded: LoadedConfig, n: number): void {
  if (n <= 1) return;
  const backend = loaded.config.store.backend;
  if (backend !== 'postgres') {
    const why =
      backend === 'sqlite'
        ? 'the SQLite store is one file owned by one process; workers could not share tasks, revocations and signing keys, and a revocation made by one would not reach the others'
        : 'the memory store lives inside one process; workers would each have their own tasks and revocations';
    throw mayflyError('ERR_CONFIG_INVALID', `--workers ${n} needs store.backend: postgres (got ${backend}): ${why}. Use --workers 1, or point every worker at PostgreSQL (README, "Running several brokers")`);
  }
}

/** This process's worker index, or null outside `serve --workers`. */
export function workerIndex(): number | null {
  if (!cluster.isWorker) return null;
  const i = Number(process.env[WORKER_ENV]);
  return Number.isInteger(i) && i > 0 ? i : null;
}

/** A worker's config: its own broker_id and data_dir (audit chain and key); unchanged outside a worker. */
export function asWorker(loaded: LoadedConfig): LoadedConfig {
  const i = workerIndex();
  if (i === null) return loaded;
  const c = loaded.config;
  return { ...loaded, config: { ...c, broker_id: `${c.broker_id}-w${i}`.slice(0, 64), data_dir: join(c.data_dir, `worker-${i}`) } };
}

/** Tells the primary that this worker listens (no-op outside a worker). */
export function reportListening(grpc: string, http: string): void {
  if (workerIndex() !== null && process.send) process.send({ mayfly: 'listening', grpc, http });
}

interface ListeningMsg {
  mayfly: 'listening';
  grpc: string;
  http: string;
}

function isListening(m: unknown): m is ListeningMsg {
  return typeof m === 'object' && m !== null && (m as { mayfly?: unknown }).mayfly === 'listening';
}

/**
 * The primary of `serve --workers N`. Resolves once every worker listens;
 * the process then lives until a signal stops the workers (exit 0) or they
 * keep crashing (exit 1).
 */
export async function runPrimary(loaded: LoadedConfig, n: number, log: (line: string) => void = (l) => console.error(l)): Promise<void> {
  checkWorkers(loaded, n);
  const url = resolveStoreUrl(loaded.config, process.env);
  // Migrate once here, so N workers do not race to report the same schema error.
  if (loaded.config.store.migrate) {
    const pool = createPgPool({ url, connectTimeoutMs: loaded.config.store.connect_timeout_ms });
    try {
      await migratePg(pool, url);
    } finally {
      await pool.end().catch(() => undefined);
    }
  }

  const workers = new Map<number, Worker>();
  let stopping = false;
  const deaths: number[] = [];

  const fork = (i: number): Promise<ListeningMsg> =>
    new Promise((resolve, reject) => {
      const w = cluster.fork({ [WORKER_ENV]: String(i) });
      workers.set(i, w);
      let listening = false;
      w.on('message', (m: unknown) => {
        if (!listening && isListening(m)) {
          listening = true;
          resolve(m);
        }
      });
      w.on('exit', (code, signal) => {
        if (workers.get(i) === w) workers.delete(i);
        if (!listening) {
          reject(mayflyError('ERR_INTERNAL', `worker ${i} exited during startup (${signal ?? `exit code ${code}`}); its error is above`));
          return;
        }
        if (stopping) return;
        const now = Date.now();
        deaths.push(now);
        while (deaths.length > 0 && deaths[0]! < now - 60_000) deaths.shift();
        if (deaths.length > 5) {
          log(`mayfly: workers keep dying (${deaths.length} in a minute); stopping`);
          void stopAll('crash loop').then(() => process.exit(1));
          return;
        }
        log(`mayfly: worker ${i} (pid ${w.process.pid}) died (${signal ?? `exit code ${code}`}); starting a new one`);
        setTimeout(() => {
          if (!stopping) fork(i).then((m) => log(`mayfly: worker ${i} back, gRPC on ${m.grpc}`), (e: Error) => log(`mayfly: ${e.message}`));
        }, 500).unref();
      });
    });

  const stopAll = async (why: string): Promise<void> => {
    stopping = true;
    const exits = [...workers.values()].map((w) => new Promise<void>((r) => (w.isDead() ? r() : w.once('exit', () => r()))));
    for (const w of workers.values()) w.process.kill('SIGTERM');
    const timer = setTimeout(() => {
      for (const w of workers.values()) w.process.kill('SIGKILL');
    }, 15_000);
    await Promise.all(exits);
    clearTimeout(timer);
    log(`mayfly: all workers stopped (${why})`);
  };

  let started: ListeningMsg[];
  try {
    started = await Promise.all(Array.from({ length: n }, (_, k) => fork(k + 1)));
  } catch (err) {
    await stopAll('startup failed');
    throw err;
  }
  log(`mayfly: ${n} workers (primary pid ${process.pid}) share gRPC ${started[0]!.grpc} and HTTPS ${started[0]!.http}`);
  const onStop = (sig: string) => {
    if (stopping) return;
    log(`mayfly: ${sig} received, stopping ${workers.size} workers`);
    void stopAll(sig).then(() => process.exit(0));
  };
  process.on('SIGTERM', () => onStop('SIGTERM'));
  process.on('SIGINT', () => onStop('SIGINT'));
  process.on('SIGHUP', () => {
    for (const w of workers.values()) w.process.kill('SIGHUP');
  });
}
