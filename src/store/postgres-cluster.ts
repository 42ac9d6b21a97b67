/**
 * PostgreSQL pieces the replicas of a cluster share beyond the Store: a
 * LISTEN connection that wakes the revocation-feed relay and the key manager
 * when another replica committed something, NOTIFY to send those wake-ups,
 * and the registry of feed subscribers' key-set acknowledgements (the key
 * promotion gate counts subscribers of every replica).
 *
 * Notifications are only wake-ups: losing one (a dropped connection) delays
 * a replica until its next poll, it never loses data. After reconnecting the
 * listener calls every handler once, since notifications sent while it was
 * away are gone.
 */
import type pg from 'pg';
import { isMayflyError, mayflyError, type MayflyError } from '../core/errors.js';
import type { AckRegistry, SubscriberAck } from '../core/ports.js';

/** Channel a replica notifies after committing a revocation event (payload: the cursor). */
export const EVENTS_CHANNEL = 'mayfly_events';

/** Tables of the shared acknowledgement registry (applied by the store migrations). */
export const FEED_ACKS_TABLE_SQL = `
CREATE TABLE IF NOT EXISTS feed_acks (
  replica     text NOT NULL,
  subscriber  text NOT NULL,
  kids        jsonb NOT NULL,
  reported_at bigint NOT NULL,
  PRIMARY KEY (replica, subscriber)
)`;

function asError(what: string, err: unknown): MayflyError {
  if (isMayflyError(err)) return err;
  return mayflyError('ERR_UNAVAILABLE', `PostgreSQL ${what} failed: ${(err as Error).message}`, undefined, err);
}

/** Sends a notification on `channel` (delivered to listeners once this statement's implicit transaction commits). */
export async function pgNotify(pool: pg.Pool, channel: string, payload: string): Promise<void> {
  await pool.query('SELECT pg_notify($1, $2)', [channel, payload]);
}

/** One pooled connection kept for LISTEN, reconnecting with backoff when it drops. */
export class PgListener {
  private client: pg.PoolClient | null = null;
  private stopped = false;
  private retry: NodeJS.Timeout | null = null;
  private backoffMs = 100;

  constructor(
    private readonly pool: pg.Pool,
    private readonly handlers: Record<string, (payload: string) => void>,
    private readonly onError?: (err: MayflyError) => void,
  ) {}

  /** Connects and listens; on failure keeps retrying in the background (polling covers the gap). */
  async start(): Promise<void> {
    try {
      await this.connect();
    } catch (e) {
      this.onError?.(asError('LISTEN', e));
      this.schedule();
    }
  }

  private async connect(): Promise<void> {
    const c = await this.pool.connect();
    let done = false;
    const drop = (err?: unknown) => {
      if (done) return;
      done = true;
      if (this.client === c) this.client = null;
      c.removeAllListeners('notification');
      c.release(err instanceof Error ? err : new Error('listener connection dropped'));
      if (!this.stopped) {
        if (err) this.onError?.(asError('LISTEN connection', err));
        this.schedule();
      }
    };
    c.on('error', drop);
    c.on('notification', (n) => this.handlers[n.channel]?.(n.payload ?? ''));
    try {
      for (const ch of Object.keys(this.handlers)) await c.query(`LISTEN ${ch}`);
    } catch (e) {
      drop(e);
      throw e;
    }
    if (this.stopped) {
      drop();
      return;
    }
    this.client = c;
    this.backoffMs = 100;
    // Anything notified while we were not listening is lost: let every handler catch up.
    for (const h of Object.values(this.handlers)) h('');
  }

  private schedule(): void {
    if (this.stopped || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      // A failed checkout (the server still down) must schedule the next try itself: no connection, no 'error' event.
      this.connect().catch(() => this.schedule());
    }, this.backoffMs);
    this.retry.unref();
    this.backoffMs = Math.min(this.backoffMs * 2, 5000);
  }

  /** Whether the LISTEN connection is up (health). */
  listening(): boolean {
    return this.client !== null;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    const c = this.client;
    this.client = null;
    if (c) {
      c.removeAllListeners('notification');
      await c.query('UNLISTEN *').catch(() => undefined);
      // Checked out, its only 'error' listener is ours; the pool adds its own when the client is back.
      c.removeAllListeners('error');
      c.release();
    }
  }
}

/** AckRegistry in the feed_acks table. */
export class PgAckRegistry implements AckRegistry {
  constructor(private readonly pool: pg.Pool) {}

  async report(replica: string, acks: SubscriberAck[], now: number): Promise<void> {
    const c = await this.pool.connect().catch((e: unknown) => {
      throw asError('feed acknowledgement report', e);
    });
    let broken: Error | undefined;
    const onError = (e: Error) => (broken = e);
    c.on('error', onError);
    try {
      await c.query('BEGIN');
      await c.query('DELETE FROM feed_acks WHERE replica = $1', [replica]);
      if (acks.length > 0) {
        await c.query(
          `INSERT INTO feed_acks (replica, subscriber, kids, reported_at)
           SELECT $1, x->>'subscriber', x->'kids', $3 FROM jsonb_array_elements($2::jsonb) AS x`,
          [replica, JSON.stringify(acks), now],
        );
      }
      await c.query('COMMIT');
    } catch (e) {
      await c.query('ROLLBACK').catch((err: unknown) => (broken = err as Error));
      throw asError('feed acknowledgement report', e);
    } finally {
      c.removeListener('error', onError);
      c.release(broken);
    }
  }

  async laggards(kid: string, now: number, freshMs: number): Promise<string[]> {
    try {
      const { rows } = await this.pool.query<{ subscriber: string }>('SELECT DISTINCT subscriber FROM feed_acks WHERE reported_at >= $2 AND NOT (kids ? $1) ORDER BY subscriber', [kid, now - freshMs]);
      return rows.map((r) => r.subscriber);
    } catch (e) {
      throw asError('feed acknowledgement query', e);
    }
  }

  async forget(replica: string): Promise<void> {
    await this.pool.query('DELETE FROM feed_acks WHERE replica = $1', [replica]);
  }
}
