/** A WatchRevocations call as a revocation-feed stream, with the byte count grpc-js's object-mode writable does not keep. */
import type * as grpc from '@grpc/grpc-js';
import type { MayflyError } from '../../core/errors.js';
import type { FeedMessage } from '../../service/feed.js';
import { WritableFeedStream } from '../feed-stream.js';
import { endStream } from './calls.js';
import { encodeEvent } from './feed-encoding.js';

export class GrpcFeedStream extends WritableFeedStream {
  // grpc-js's writable is in object mode: its writableLength counts messages. The bytes of the messages
  // handed to it and not yet written to HTTP/2 are counted here from its write callbacks, which come in
  // write order: a ring of their sizes, grown when full, so a write allocates nothing.
  private sizes = new Uint32Array(64);
  private head = 0;
  private count = 0;
  private bytes = 0;
  private readonly flushed = (): void => {
    this.bytes -= this.sizes[this.head]!;
    this.head = (this.head + 1) & (this.sizes.length - 1);
    this.count--;
  };

  constructor(
    private readonly call: grpc.ServerWritableStream<Buffer, Buffer>,
    private readonly requestId: string,
  ) {
    super(call, ['cancelled', 'close', 'error', 'finish']);
  }

  open(): void {
    /* the call is open already */
  }

  write(m: FeedMessage): boolean {
    const b = encodeEvent(m);
    if (this.count === this.sizes.length) this.grow();
    this.sizes[(this.head + this.count) & (this.sizes.length - 1)] = b.length;
    this.count++;
    this.bytes += b.length;
    return this.call.write(b, this.flushed);
  }

  bufferedBytes(): number {
    return this.bytes;
  }

  /** With an error: the status follows the messages already queued (the subscriber reads them, then the status). */
  end(err?: MayflyError): void {
    if (err) endStream(this.call, err, this.requestId);
    else this.call.end();
  }

  private grow(): void {
    const next = new Uint32Array(this.sizes.length * 2);
    for (let i = 0; i < this.count; i++) next[i] = this.sizes[(this.head + i) & (this.sizes.length - 1)]!;
    this.sizes = next;
    this.head = 0;
  }
}
