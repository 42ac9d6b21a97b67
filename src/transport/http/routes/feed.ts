/** The revocation feed as server-sent events (resume with Last-Event-ID or ?cursor=), key-set acknowledgements and misuse reports: what relying parties call. */
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { MayflyError } from '../../../core/errors.js';
import type { FeedMessage } from '../../../service/feed.js';
import { toJsonError } from '../../errors.js';
import { WritableFeedStream } from '../../feed-stream.js';
import type { RouteKit } from '../kit.js';

// The hub hands one message object to every subscriber: frame it once, not once per subscriber (as the gRPC feed does).
const framed = new WeakMap<FeedMessage, Buffer>();

/** One server-sent event: `id` (the cursor; none for heartbeats), `event` (the kind) and the message as JSON. */
function sseFrame(m: FeedMessage): Buffer {
  let b = framed.get(m);
  if (!b) {
    const id = m.kind === 'heartbeat' ? '' : `id: ${m.cursor}\n`;
    b = Buffer.from(`${id}event: ${m.kind}\ndata: ${JSON.stringify(m)}\n\n`);
    framed.set(m, b);
  }
  return b;
}

/**
 * How long a stream ended with an error may take to flush what it holds
 * (the subscriber reads it, then the `error` event) before its connection is
 * dropped: a subscriber that never reads again must not pin that memory.
 */
const ERROR_FLUSH_MS = 10_000;

/** The SSE response as a revocation-feed stream; its own writableLength is the bytes the subscriber has not taken. */
class SseFeedStream extends WritableFeedStream {
  constructor(
    private readonly res: ServerResponse,
    private readonly start: () => void,
  ) {
    super(res, ['close', 'error']);
  }

  open(): void {
    this.start();
  }

  write(m: FeedMessage): boolean {
    return this.res.write(sseFrame(m));
  }

  bufferedBytes(): number {
    return this.res.writableLength;
  }

  /** With an error: a last `error` event with the JSON error body (`error` is the stable code), after what the stream holds. */
  end(err?: MayflyError): void {
    if (this.isClosed) return;
    if (!err) {
      this.res.end();
      return;
    }
    this.res.end(`event: error\ndata: ${JSON.stringify(toJsonError(err).body)}\n\n`);
    const drop = setTimeout(() => this.res.destroy(), ERROR_FLUSH_MS);
    drop.unref();
    this.onClose(() => clearTimeout(drop));
  }
}

export function registerFeedRoutes(app: FastifyInstance, kit: RouteKit): void {
  const { deps } = kit;

  app.get('/v1/revocations', async (req, reply) => {
    const q = req.query as Record<string, string | undefined>;
    const cursor = (req.headers['last-event-id'] as string | undefined) ?? q['cursor'];
    const res = reply.raw;
    let opened = false;
    try {
      const ctx = await kit.authenticate(req, 'revocations');
      // The stream leaves the feed when the response closes (the hub listens through the stream), replay included.
      const stream = new SseFeedStream(res, () => {
        reply.hijack();
        opened = true;
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
        res.write(': mayfly revocation feed\n\n');
      });
      await deps.subscriptions.subscribe(ctx, { subscriberId: q['subscriber_id'], cursor, transport: 'sse' }, stream);
    } catch (e) {
      if (opened) res.end();
      else return kit.fail(reply, 'revocations', req, e, 'json');
    }
  });

  app.post('/v1/keyset/ack', async (req, reply) => {
    try {
      const ctx = await kit.authenticate(req, 'keyset.ack');
      const body = (req.body ?? {}) as Record<string, unknown>;
      await deps.subscriptions.ack(ctx, { subscriberId: body['subscriber_id'], keysetVersion: body['keyset_version'] });
      return reply.send({});
    } catch (e) {
      return kit.fail(reply, 'keyset.ack', req, e, 'json');
    }
  });

  // Misuse a relying party detected (revoked token presented, cnf mismatch, replay): the HTTPS twin of ReportMisuse.
  app.post('/v1/misuse', async (req, reply) => {
    try {
      const ctx = await kit.authenticate(req, 'misuse.report');
      const body = (req.body ?? {}) as Record<string, unknown>;
      deps.broker.reportMisuse(ctx, { kind: body['kind'], tokenId: body['token_id'], detail: body['detail'] });
      return reply.send({});
    } catch (e) {
      return kit.fail(reply, 'misuse.report', req, e, 'json');
    }
  });
}
