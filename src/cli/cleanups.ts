/** What a starting broker must undo, in reverse order, when it stops or fails to start. */
import type { Logger } from '../observability/logger.js';

export class Cleanups {
  private readonly fns: Array<() => unknown> = [];

  push(fn: () => unknown): void {
    this.fns.push(fn);
  }

  /** Runs every cleanup, last registered first; a failing one is logged (when `log` is given) and the rest still run. */
  async runAll(log?: Pick<Logger, 'warn'>): Promise<void> {
    for (const fn of this.fns.splice(0).reverse()) {
      try {
        await fn();
      } catch (e) {
        log?.warn({ err: (e as Error).message }, 'error during shutdown');
      }
    }
  }
}
