/**
 * A revocation-feed stream over a Node writable (the gRPC call or the SSE
 * response): what the feed hub sees of it (service/feed.ts FeedStream).
 * Close tracking and waiting for 'drain' are shared here; each transport
 * says how a message is written, how many bytes its stream holds, and how it
 * ends with an error.
 */
import type { Writable } from 'node:stream';
import type { MayflyError } from '../core/errors.js';
import type { FeedMessage } from '../service/feed.js';
import type { FeedSink } from '../service/subscriptions.js';

export abstract class WritableFeedStream implements FeedSink {
  private closed = false;
  private closers: Array<() => void> = [];

  /** `closeEvents`: the events after which nothing written reaches the subscriber. Listened to from the start, so a close during the replay is seen. */
  constructor(
    protected readonly out: Writable,
    closeEvents: readonly string[],
  ) {
    const onClose = () => this.markClosed();
    for (const ev of closeEvents) out.once(ev, onClose);
  }

  abstract open(): void;
  abstract write(m: FeedMessage): boolean;
  abstract bufferedBytes(): number;
  abstract end(err?: MayflyError): void;

  get isClosed(): boolean {
    return this.closed;
  }

  onClose(fn: () => void): void {
    if (this.closed) fn();
    else this.closers.push(fn);
  }

  drained(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const settle = (ok: boolean) => {
        this.out.off('drain', onDrain);
        const i = this.closers.indexOf(onClosed);
        if (i >= 0) this.closers.splice(i, 1);
        resolve(ok);
      };
      const onDrain = () => settle(true);
      const onClosed = () => settle(false);
      this.out.on('drain', onDrain);
      this.closers.push(onClosed);
    });
  }

  private markClosed(): void {
    if (this.closed) return;
    this.closed = true;
    const closers = this.closers;
    this.closers = [];
    for (const fn of closers) fn();
  }
}
