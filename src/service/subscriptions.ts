/**
 * Use-cases of relying parties on the revocation feed: subscribing (gRPC
 * stream or server-sent events) and acknowledging a key set. The feed hub
 * itself (service/feed.ts) knows nothing of callers; this is where they are
 * authorized and audited.
 */
import type { AuditSink } from '../core/ports.js';
import { audited } from './audited.js';
import type { Authorizer } from './authorize.js';
import type { CallContext, ServiceObserver } from './deps.js';
import type { FeedMessage, RevocationFeed, Subscription } from './feed.js';
import * as v from './validate.js';

export interface SubscribeParams {
  /** Who acknowledges key sets on this stream; default the caller's identity. */
  subscriberId?: string;
  /** Resume after this cursor; 0 = fresh (snapshot). */
  cursor: number;
  /** Which transport carries the stream (audit only). */
  transport: 'grpc' | 'sse';
}

/** Where the stream goes: `open` runs once the caller is allowed, before the first message. */
export interface FeedSink {
  open(): void;
  message(m: FeedMessage): void;
  end(): void;
}

export class FeedSubscriptions {
  constructor(
    private readonly d: { feed: RevocationFeed; access: Authorizer; audit: AuditSink; observer?: ServiceObserver },
  ) {}

  /** Opens the caller's feed stream, after the feed-subscriber check; writes one `feed.subscribe` record. */
  async subscribe(ctx: CallContext, p: SubscribeParams, sink: FeedSink): Promise<Subscription> {
    return audited(this.d.audit, this.d.observer, 'feed.subscribe', ctx, async (rec) => {
      this.d.access.require('feed.subscribe', ctx.identity);
      const subscriberId = (p.subscriberId || ctx.identity.id).slice(0, 200);
      Object.assign(rec, { subscriber_id: subscriberId, cursor: p.cursor, transport: p.transport });
      sink.open();
      return this.d.feed.subscribe(subscriberId, p.cursor, (m) => sink.message(m), () => sink.end());
    });
  }

  /** Records that a subscriber has the given key-set version (gates key promotion). */
  ack(ctx: CallContext, p: { subscriberId?: unknown; keysetVersion?: unknown }): void {
    this.d.access.require('keyset.ack', ctx.identity);
    const version = v.text('keyset_version', p.keysetVersion, 64);
    this.d.feed.ack(v.text('subscriber_id', p.subscriberId, 200, false) || ctx.identity.id, version);
  }
}
