/**
 * The writer side of the hash chain, shared by every sink: redact, chain,
 * hand the line to a backend-specific `append`, and only then advance the
 * head. Keeping this in one place is what lets the contract suite hold the
 * file and memory sinks to identical records.
 */
import { systemClock } from '../core/clock.js';
import type { AuditEntry, AuditSink, Clock } from '../core/ports.js';
import { chainRecordLine, GENESIS_HEAD, redactEntry, type AuditRecord, type ChainHead } from './record.js';

/** What `health()` reports for a sink; `ok` turns false once a write has failed and stays false until restart. */
export interface AuditSinkHealth {
  ok: boolean;
  /** Records written since the sink was opened. */
  written: number;
  /** Writes that failed (the record is lost; the chain stays intact). */
  errors: number;
  lastError?: string;
  /** Current chain head. */
  seq: number;
  hash: string;
  closed: boolean;
}

/** Options every sink accepts. */
export interface ChainedSinkOptions {
  /** Written into every record so logs of several brokers can be told apart. */
  brokerId: string;
  clock?: Clock;
  /** Called after each record is durably appended (tests, metrics). Exceptions are swallowed. */
  onWrite?: (record: AuditRecord) => void;
  /** Called when a write fails (for example to increment mayfly_audit_write_errors_total). Exceptions are swallowed. */
  onError?: (err: unknown) => void;
}

/** Base for sinks: subclasses implement `append` (throwing on failure) and `closeBackend`. */
export abstract class ChainedAuditSink implements AuditSink {
  protected head: ChainHead;
  /** broker_id written into every record of this log. */
  readonly brokerId: string;
  private readonly clock: Clock;
  private readonly onWrite: ((record: AuditRecord) => void) | undefined;
  private readonly onError: ((err: unknown) => void) | undefined;
  private written = 0;
  private errors = 0;
  private lastError: string | undefined;
  protected closed = false;
  /** Records waiting for the end of this event-loop turn (writeConfirmed). */
  private queued: Array<{ entry: Record<string, unknown>; sorted: boolean; resolve: () => void; reject: (err: unknown) => void }> = [];

  protected constructor(options: ChainedSinkOptions, head: ChainHead = GENESIS_HEAD) {
    this.brokerId = options.brokerId;
    this.clock = options.clock ?? systemClock;
    this.onWrite = options.onWrite;
    this.onError = options.onError;
    this.head = { ...head };
  }

  /** Appends one record. Never throws: the request path must not fail because auditing did; see health(). */
  write(entry: AuditEntry): void {
    try {
      if (this.closed) throw new Error('audit sink is closed');
      const { entry: redacted, sorted } = redactEntry(entry);
      this.writeRecord(redacted, sorted);
    } catch (err) {
      this.errors++;
      this.lastError = err instanceof Error ? err.message : String(err);
      try {
        this.onError?.(err);
      } catch {
        // A broken listener must not turn an audit failure into a request failure.
      }
    }
  }

  /**
   * Appends `entry` together with every record confirmed in the same
   * event-loop turn, in one backend write at setImmediate; resolves once it
   * is written, rejects if it could not be (the chain head then stays where
   * it was, as for write()). A synchronous write, a sealed record, sync() or
   * close() first writes what is queued, so the log keeps call order.
   */
  writeConfirmed(entry: AuditEntry): Promise<void> {
    if (this.closed) return Promise.reject(new Error('audit sink is closed'));
    let redacted: { entry: Record<string, unknown>; sorted: boolean };
    try {
      redacted = redactEntry(entry);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.queued.push({ entry: redacted.entry, sorted: redacted.sorted, resolve, reject });
      if (this.queued.length === 1) setImmediate(() => this.flushQueued());
    });
  }

  /** Chains the queued records from the head and appends them in one backend write, all or none. */
  protected flushQueued(): void {
    if (this.queued.length === 0) return;
    const items = this.queued;
    this.queued = [];
    const at = { now: this.clock.now(), brokerId: this.brokerId };
    const records: AuditRecord[] = [];
    const lines: string[] = [];
    let head = this.head;
    try {
      if (this.closed) throw new Error('audit sink is closed');
      for (const it of items) {
        const { record, line } = chainRecordLine(it.entry, head, at, it.sorted);
        records.push(record);
        lines.push(line);
        head = { seq: record.seq, hash: record.hash };
      }
      this.appendMany(records, lines);
    } catch (err) {
      this.errors += items.length;
      this.lastError = err instanceof Error ? err.message : String(err);
      try {
        this.onError?.(err);
      } catch {
        // Listener errors are not audit errors.
      }
      for (const it of items) it.reject(err);
      return;
    }
    this.head = head;
    this.written += items.length;
    for (const record of records) {
      try {
        this.onWrite?.(record);
      } catch {
        // Listener errors are not audit errors.
      }
    }
    for (const it of items) it.resolve();
  }

  /** Appends several chained records, all or none (throwing on failure); the default appends them one by one. */
  protected appendMany(records: AuditRecord[], lines: string[]): void {
    for (let i = 0; i < records.length; i++) this.append(records[i]!, lines[i]!);
  }

  /** Chains and appends an already-redacted entry (`sorted`: see chainRecordLine); throws on failure (used at open for the resume record). */
  protected writeRecord(entry: Record<string, unknown>, sorted = false): AuditRecord {
    this.flushQueued();
    const { record, line } = chainRecordLine(entry, this.head, { now: this.clock.now(), brokerId: this.brokerId }, sorted);
    this.append(record, line);
    // Advance only after the append succeeded, so a lost record never leaves a seq gap or dangling prev.
    this.head = { seq: record.seq, hash: record.hash };
    this.written++;
    try {
      this.onWrite?.(record);
    } catch {
      // Listener errors are not audit errors.
    }
    return record;
  }

  /**
   * Appends a sink-owned record (checkpoint, end-missing note) built from the
   * current head and this log's broker id; throws if it cannot be written.
   */
  appendSealed(build: (head: ChainHead, brokerId: string) => Record<string, unknown>): AuditRecord {
    if (this.closed) throw new Error('audit sink is closed');
    return this.writeRecord(build(this.chainHead(), this.brokerId));
  }

  /** Makes every record written so far durable; a no-op for sinks with nothing to flush. */
  sync(): void {}

  /** Current chain head: callers that keep a checkpoint pass it as the verify anchor. */
  chainHead(): ChainHead {
    return { ...this.head };
  }

  /** Write counters and chain head. */
  health(): AuditSinkHealth {
    const h: AuditSinkHealth = {
      ok: this.errors === 0 && !this.closed,
      written: this.written,
      errors: this.errors,
      seq: this.head.seq,
      hash: this.head.hash,
      closed: this.closed,
    };
    if (this.lastError !== undefined) h.lastError = this.lastError;
    return h;
  }

  /** Closes the backend; later writes count as errors. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flushQueued();
    this.closed = true;
    this.closeBackend();
  }

  protected abstract append(record: AuditRecord, line: string): void;
  protected abstract closeBackend(): void;
}
