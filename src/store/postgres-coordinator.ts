/**
 * Coordinator on PostgreSQL session-level advisory locks.
 *
 * Each job maps to one advisory lock key. A broker takes a job with
 * pg_try_advisory_lock on its own dedicated connection (outside the pool) and
 * keeps it for as long as that connection lives, so the job runs on one
 * broker per tick across the cluster and others skip it. The lock belongs to
 * the session: when the holding broker dies (kill -9, crash, host gone) its
 * connection closes, PostgreSQL drops the lock, and the next broker whose
 * tick comes takes the job over. A lapsed task lease is therefore still
 * revoked within sweep_interval_ms (plus the time the server needs to see
 * the connection gone: at once for a killed process, TCP keepalive for a
 * vanished host) after the broker that granted it died.
 *
 * Before every run the holder re-checks its session with a round trip; if
 * the connection broke it forgets every job, reconnects and competes again,
 * so a broker cut off from PostgreSQL stops running exclusive jobs.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import { mayflyError } from '../core/errors.js';
import type { Coordinator, ExclusiveRun } from '../core/ports.js';

/** First key of the two-int advisory lock space for jobs (migrations use the one-bigint space). */
const JOB_NAMESPACE = 0x6d66796a; // "mfyj"

/** Stable 32-bit key of a job name. */
export function jobLockKey(job: string): number {
  return createHash('sha256').update(job).digest().readInt32BE(0);
}

export interface PgCoordinatorOptions {
  url: string;
  connectTimeoutMs?: number;
  applicationName?: string;
}

export class PgCoordinator implements Coordinator {
  private client: pg.Client | null = null;
  private connecting: Promise<pg.Client> | null = null;
  private readonly jobs = new Set<string>();
  private closed = false;
  /** Serialises use of the single session. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: PgCoordinatorOptions) {}

  private async session(): Promise<pg.Client> {
    if (this.client) return this.client;
    this.connecting ??= (async () => {
      const c = new pg.Client({
        connectionString: this.options.url,
        connectionTimeoutMillis: this.options.connectTimeoutMs ?? 5000,
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000,
        application_name: this.options.applicationName ?? 'mayfly coordinator',
      });
      // The session's death is noticed on the next query; the event must not crash the process.
      c.on('error', () => this.drop(c));
      c.on('end', () => this.drop(c));
      try {
        await c.connect();
      } catch (err) {
        await c.end().catch(() => undefined);
        throw err;
      }
      this.client = c;
      return c;
    })().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  /** The session is gone: so are its locks. */
  private drop(c: pg.Client): void {
    if (this.client !== c) return;
    this.client = null;
    this.jobs.clear();
    void c.end().catch(() => undefined);
  }

  /** Holds `job` (taking it if free) on a live session; false if another broker holds it. */
  private async acquire(job: string): Promise<boolean> {
    const c = await this.session();
    try {
      if (this.jobs.has(job)) {
        await c.query('SELECT 1');
        return true;
      }
      const { rows } = await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [JOB_NAMESPACE, jobLockKey(job)]);
      if (rows[0]?.ok) this.jobs.add(job);
      return rows[0]?.ok === true;
    } catch (err) {
      this.drop(c);
      throw err;
    }
  }

  async runExclusive<T>(job: string, fn: () => Promise<T>): Promise<ExclusiveRun<T>> {
    if (this.closed) throw mayflyError('ERR_UNAVAILABLE', `coordinator is closed (${job})`);
    const turn = this.chain.then(() => this.acquire(job));
    this.chain = turn.catch(() => undefined);
    let mine: boolean;
    try {
      mine = await turn;
    } catch (err) {
      throw mayflyError('ERR_UNAVAILABLE', `cannot coordinate job ${job}: PostgreSQL unreachable (${(err as Error).message})`, { job }, err);
    }
    if (!mine) return { ran: false };
    return { ran: true, value: await fn() };
  }

  held(): string[] {
    return [...this.jobs].sort();
  }

  /** Ends the session, which releases every job at once. */
  async close(): Promise<void> {
    this.closed = true;
    await this.chain.catch(() => undefined);
    const c = this.client;
    this.client = null;
    this.jobs.clear();
    await c?.end().catch(() => undefined);
  }
}
