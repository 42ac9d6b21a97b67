/**
 * In-memory audit sink, for tests and dev only: the same chain as the file
 * sink, nothing survives a restart.
 */
import { ChainedAuditSink, type ChainedSinkOptions } from './chain.js';
import type { AuditRecord } from './record.js';

/** Options of MemoryAuditSink; brokerId defaults to "memory". */
export type MemoryAuditSinkOptions = Partial<ChainedSinkOptions>;

export class MemoryAuditSink extends ChainedAuditSink {
  private readonly recs: AuditRecord[] = [];
  private readonly lns: string[] = [];

  constructor(options: MemoryAuditSinkOptions = {}) {
    super({ ...options, brokerId: options.brokerId ?? 'memory' });
  }

  /** Records written so far, oldest first. */
  get records(): readonly AuditRecord[] {
    return this.recs;
  }

  /** The log lines exactly as a file sink would have written them (for verifyAuditLog). */
  lines(): string[] {
    return [...this.lns];
  }

  protected append(record: AuditRecord, line: string): void {
    this.recs.push(record);
    this.lns.push(line);
  }

  protected closeBackend(): void {
    // Nothing to release; records stay readable after close for assertions.
  }
}
