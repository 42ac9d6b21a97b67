/**
 * Coordinator for single-process stores (SQLite, memory): this process is
 * the whole cluster, so it always holds every job. `serve --workers N` is
 * refused on these backends, so no second process can run the same job.
 */
import { mayflyError } from '../core/errors.js';
import type { Coordinator, ExclusiveRun } from '../core/ports.js';

export class LocalCoordinator implements Coordinator {
  private readonly jobs = new Set<string>();
  private closed = false;

  async runExclusive<T>(job: string, fn: () => Promise<T>): Promise<ExclusiveRun<T>> {
    if (this.closed) throw mayflyError('ERR_UNAVAILABLE', `coordinator is closed (${job})`);
    this.jobs.add(job);
    return { ran: true, value: await fn() };
  }

  held(): string[] {
    return [...this.jobs].sort();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.jobs.clear();
  }
}
