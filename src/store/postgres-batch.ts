/**
 * Group execution for the PostgreSQL store's hot path (getTask, createTask,
 * recordToken): calls made while a batch of the same kind is in flight, or
 * in the same event-loop turn, are sent together as one statement.
 *
 * Why: on PostgreSQL each statement costs a round trip, a parse/bind/execute
 * in a server process, and, for a write, a commit with its WAL flush. Under
 * load most of IssueToken's database CPU was that fixed cost, paid once per
 * call. Sent as one statement over arrays, N concurrent calls pay it once,
 * the way the SQLite store's group commit makes them share one transaction.
 * With nothing else in flight a call is sent at the next turn of the event
 * loop (setImmediate), so an idle broker adds no wait.
 *
 * Each caller still gets its own outcome: `run` returns one per item, and an
 * item's failure (its task ended meanwhile) fails only that call. When `run`
 * throws, nothing of the batch was committed and every call of it fails with
 * that error (the batch functions fall back to one statement per item where
 * a single bad item could fail the whole statement, see postgres.ts).
 */

/** One item's outcome. */
export type BatchOutcome<O> = { ok: true; value: O } | { ok: false; error: unknown };

interface Pending<I, O> {
  item: I;
  queuedAt: number;
  resolve: (value: O) => void;
  reject: (err: unknown) => void;
}

/** Collects calls and runs them in batches, at most `maxInFlight` batches at a time. */
export class Batcher<I, O> {
  private queue: Pending<I, O>[] = [];
  private inFlight = 0;
  private scheduled = false;

  /**
   * @param refuse Asked for each call before its batch is sent, with the time
   *   it was queued: an error fails that call at once instead (the store
   *   refuses calls that waited while the server was found unreachable, so
   *   they do not wait out another connect timeout behind the batch that
   *   found it).
   */
  constructor(
    private readonly run: (items: I[]) => Promise<BatchOutcome<O>[]>,
    private readonly refuse: (queuedAt: number) => unknown = () => undefined,
    private readonly maxInFlight = 1,
    private readonly maxBatch = 500,
  ) {}

  /** Queues one call; resolves or rejects with that call's outcome once its batch ran. */
  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, queuedAt: Date.now(), resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0 || this.inFlight >= this.maxInFlight) return;
    this.scheduled = true;
    // Not a microtask: the rest of this turn's callers (other requests read off the same socket read) join the batch.
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    this.queue = this.queue.filter((p) => {
      const err = this.refuse(p.queuedAt);
      if (err === undefined) return true;
      p.reject(err);
      return false;
    });
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch = this.queue.length <= this.maxBatch ? this.queue : this.queue.slice(0, this.maxBatch);
      this.queue = this.queue.length <= this.maxBatch ? [] : this.queue.slice(this.maxBatch);
      this.inFlight++;
      void this.execute(batch);
    }
  }

  private async execute(batch: Pending<I, O>[]): Promise<void> {
    try {
      const outcomes = await this.run(batch.map((p) => p.item));
      batch.forEach((p, i) => {
        const o = outcomes[i];
        if (o === undefined) p.reject(new Error('batch returned no outcome for an item'));
        else if (o.ok) p.resolve(o.value);
        else p.reject(o.error);
      });
    } catch (err) {
      for (const p of batch) p.reject(err);
    } finally {
      this.inFlight--;
      this.schedule();
    }
  }
}
