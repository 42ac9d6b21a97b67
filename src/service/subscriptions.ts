/**
 * Use-cases of relying parties on the revocation feed: subscribing (gRPC
 * stream or server-sent events) and acknowledging a key set. The feed hub
 * itself (service/feed.ts) knows nothing of callers; this is where they are
 * authorized and audited.
 */
import { mayflyError } from '../core/errors.js';
import type { AuditSink, Clock, SubscriberRegistry } from '../core/ports.js';
import { audited } from './audited.js';
import type { Authorizer } from './authorize.js';
import type { CallContext, ServiceObserver } from './deps.js';
import type { FeedStream, RevocationFeed, Subscription } from './feed.js';
import * as v from './validate.js';

export interface SubscribeParams {
  /** Who acknowledges key sets on this stream; default the caller's identity. */
  subscriberId?: string;
  /** Resume after this cursor; 0 or absent = fresh (snapshot). Validated here (number, uint64 or decimal text). */
  cursor?: unknown;
  /** Which transport carries the stream (audit only). */
  transport: 'grpc' | 'sse';
}

/** Where the stream goes: `open` runs once the caller is allowed, before the first message; the rest is the hub's view of the stream (backpressure included). */
export interface FeedSink extends FeedStream {
  open(): void;
}

/** Most subscriber names remembered; past it, new names are refused (existing ones keep working). */
export const MAX_SUBSCRIBER_BINDINGS = 10_000;

export interface FeedSubscriptionsDeps {
  feed: RevocationFeed;
  access: Authorizer;
  audit: AuditSink;
  observer?: ServiceObserver;
  /**
   * Set when several replicas share the store: subscriber names and
   * acknowledgements then live in the shared registry, because a verifier's
   * stream and its acknowledgements may reach different replicas.
   */
  shared?: { registry: SubscriberRegistry; clock: Clock };
}

export class FeedSubscriptions {
  /**
   * subscriber_id -> the identity that first opened a stream under it (one
   * broker; a cluster keeps it in the shared registry). Key-set
   * acknowledgements gate key promotion, so a name speaks only for the identity
   * it is bound to: no one can acknowledge, or subscribe, on behalf of another
   * relying party's stream.
   */
  private readonly bindings = new Map<string, string>();

  constructor(private readonly d: FeedSubscriptionsDeps) {}

  /** Binds `subscriberId` to the caller on first use; refuses a name bound to another identity. */
  private async bind(subscriberId: string, identityId: string): Promise<void> {
    const full = () => mayflyError('ERR_RATE_LIMITED', 'too many distinct subscriber ids; reuse one per relying party', { field: 'subscriber_id' });
    let owner: string | undefined;
    if (this.d.shared) {
      const bound = await this.d.shared.registry.bind(subscriberId, identityId, MAX_SUBSCRIBER_BINDINGS);
      if (bound === null) throw full();
      owner = bound;
    } else {
      owner = this.bindings.get(subscriberId);
      if (owner === undefined) {
        if (this.bindings.size >= MAX_SUBSCRIBER_BINDINGS) throw full();
        this.bindings.set(subscriberId, identityId);
        owner = identityId;
      }
    }
    if (owner !== identityId) throw mayflyError('ERR_NOT_AUTHORIZED_CLIENT', `subscriber_id ${JSON.stringify(subscriberId)} belongs to another identity`, { field: 'subscriber_id' });
  }

  /** The subscriber name an ack may use: the caller's own identity, or a name the caller's own stream is bound to (on any replica). */
  private async ackName(subscriberId: string, identityId: string): Promise<string> {
    if (subscriberId === identityId) return subscriberId;
    const owner = this.d.shared ? await this.d.shared.registry.owner(subscriberId) : this.bindings.get(subscriberId);
    if (owner === identityId) return subscriberId;
    throw mayflyError('ERR_NOT_AUTHORIZED_CLIENT', `subscriber_id ${JSON.stringify(subscriberId)} is not bound to ${identityId}: open the feed under that name first`, { field: 'subscriber_id' });
  }

  /** Opens the caller's feed stream, after the feed-subscriber check; writes one `feed.subscribe` record. */
  async subscribe(ctx: CallContext, p: SubscribeParams, sink: FeedSink): Promise<Subscription> {
    return audited(this.d.audit, this.d.observer, 'feed.subscribe', ctx, async (rec) => {
      this.d.access.require('feed.subscribe', ctx.identity);
      const subscriberId = v.text('subscriber_id', p.subscriberId, 200, false) || ctx.identity.id;
      const cursor = v.cursor('cursor', p.cursor);
      Object.assign(rec, { subscriber_id: subscriberId, cursor, transport: p.transport });
      if (subscriberId !== ctx.identity.id) await this.bind(subscriberId, ctx.identity.id);
      sink.open();
      return this.d.feed.subscribe(subscriberId, cursor, sink, undefined, { identity: ctx.identity.id, requestId: ctx.requestId, transport: p.transport, ...(ctx.peer ? { peer: ctx.peer } : {}) });
    });
  }

  /**
   * Records that a subscriber has the given key-set version (gates key
   * promotion). Only feed subscribers, for their own identity or a name their
   * own stream is bound to. In a cluster the acknowledgement is written to the
   * shared registry before the reply, so it counts whichever replica holds
   * the subscriber's stream.
   */
  async ack(ctx: CallContext, p: { subscriberId?: unknown; keysetVersion?: unknown }): Promise<void> {
    return audited(this.d.audit, this.d.observer, 'keyset.ack', ctx, async (rec) => {
      this.d.access.require('keyset.ack', ctx.identity);
      const version = v.text('keyset_version', p.keysetVersion, 64);
      const name = await this.ackName(v.text('subscriber_id', p.subscriberId, 200, false) || ctx.identity.id, ctx.identity.id);
      Object.assign(rec, { subscriber_id: name, keyset_version: version });
      this.d.feed.ack(name, version);
      // Cluster: the subscriber's stream may be on another replica, whose report alone would not carry this ack.
      // A version this replica never published names no kids it could vouch for: the local ack is all it records.
      const kids = this.d.feed.kidsOf(version);
      if (this.d.shared && kids) await this.d.shared.registry.ack(name, ctx.identity.id, kids, this.d.shared.clock.now());
    });
  }
}
