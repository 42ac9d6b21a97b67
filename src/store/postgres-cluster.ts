/**
 * PostgreSQL pieces the replicas of a cluster share beyond the Store: a
 * LISTEN connection that wakes the revocation-feed relay and the key manager
 * when another replica committed something, NOTIFY to send those wake-ups,
 * the registry of feed subscribers' key-set acknowledgements (the key
 * promotion gate counts subscribers of every replica), and the subscriber
 * names and acknowledgements every replica shares (a stream on one replica,
 * its acknowledgements sent to another).
 *
 * Notifications are only wake-ups: losing one (a dropped connection) delays
 * a replica until its next poll, it never loses data. After reconnecting the
 * listener calls every handler once, since notifications sent while it was
 * away are gone.
 */
import type pg from 'pg';
import { isMayflyError, mayflyError, type MayflyError } from '../core/errors.js';
import type { AckRegistry, SubscriberAck, SubscriberRegistry } from '../core/ports.js';

/** Channel a replica notifies after committing a revocation event (payload: the cursor). */
export const EVENTS_CHANNEL = 'mayfly_events';

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
      // An acknowledgement counts whichever replica received it: the one holding the stream (a.kids, its report)
      // or any other (s.kids, written by SubscriberRegistry.ack).
      const { rows } = await this.pool.query<{ subscriber: string }>(
        `SELECT DISTINCT a.subscriber FROM feed_acks a LEFT JOIN feed_subscribers s ON s.subscriber = a.subscriber
         WHERE a.reported_at >= $2 AND NOT (a.kids ? $1) AND NOT COALESCE(s.kids ? $1, false)
         ORDER BY a.subscriber`,
        [kid, now - freshMs],
      );
      return rows.map((r) => r.subscriber);
    } catch (e) {
      throw asError('feed acknowledgement query', e);
    }
  }

  async forget(replica: string): Promise<void> {
    await this.pool.query('DELETE FROM feed_acks WHERE replica = $1', [replica]);
  }
}

/** SubscriberRegistry in the feed_subscribers table. */
export class PgSubscriberRegistry implements SubscriberRegistry {
  constructor(private readonly pool: pg.Pool) {}

  private async query<R extends pg.QueryResultRow>(what: string, sql: string, params: unknown[]): Promise<R[]> {
    try {
      return (await this.pool.query<R>(sql, params)).rows;
    } catch (e) {
      throw asError(what, e);
    }
  }

  async owner(subscriber: string): Promise<string | undefined> {
    return (await this.query<{ identity: string }>('feed subscriber lookup', 'SELECT identity FROM feed_subscribers WHERE subscriber = $1', [subscriber]))[0]?.identity;
  }

  /** The cap is checked before inserting, not under a lock: concurrent first uses may pass it by a few names. */
  async bind(subscriber: string, identity: string, max: number): Promise<string | null> {
    const bound = await this.owner(subscriber);
    if (bound !== undefined) return bound;
    const ins = await this.query<{ identity: string }>(
      'feed subscriber binding',
      `INSERT INTO feed_subscribers (subscriber, identity) SELECT $1, $2 WHERE (SELECT count(*) FROM feed_subscribers) < $3
       ON CONFLICT (subscriber) DO NOTHING RETURNING identity`,
      [subscriber, identity, max],
    );
    if (ins[0]) return ins[0].identity;
    // Either another replica bound it meanwhile (committed by now: ON CONFLICT waited for it), or the registry is full.
    return (await this.owner(subscriber)) ?? null;
  }

  async ack(subscriber: string, identity: string, kids: string[], at: number): Promise<void> {
    await this.query(
      'feed acknowledgement',
      `INSERT INTO feed_subscribers (subscriber, identity, kids, acked_at) VALUES ($1, $2, $3, $4)
       ON CONFLICT (subscriber) DO UPDATE SET kids = EXCLUDED.kids, acked_at = EXCLUDED.acked_at
       WHERE feed_subscribers.acked_at IS NULL OR feed_subscribers.acked_at <= EXCLUDED.acked_at`,
      [subscriber, identity, JSON.stringify(kids), at],
    );
  }
}
