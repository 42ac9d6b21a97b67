/**
 * Key administration use-cases: rotation on demand and emergency revocation
 * of a signing key, both for configured admins only; and what the broker does
 * when the published key set changes.
 */
import type { AuditSink, Clock, Store } from '../core/ports.js';
import type { KeyManager } from '../tokens/keys.js';
import { audited } from './audited.js';
import type { Authorizer } from './authorize.js';
import type { CallContext, EventPublisher, ServiceObserver } from './deps.js';
import * as v from './validate.js';

export interface RotationResult {
  activeKid: string;
  nextKid: string | undefined;
  promotionBlockedSince: number | null;
}

export interface KeyRevocationResult {
  kid: string;
  revokedTokens: number;
  activeKid: string;
}

export interface KeyAdministrationDeps {
  keys: KeyManager;
  store: Store;
  events: EventPublisher;
  access: Authorizer;
  audit: AuditSink;
  clock: Clock;
  observer?: ServiceObserver;
}

export class KeyAdministration {
  constructor(private readonly d: KeyAdministrationDeps) {}

  /** Starts a rotation now: a next key is created and pre-published; promotion follows the usual gate. */
  async rotate(ctx: CallContext): Promise<RotationResult> {
    return audited(this.d.audit, this.d.observer, 'key.state', ctx, async (rec) => {
      rec.action = 'rotate requested';
      this.d.access.require('admin', ctx.identity);
      await this.d.keys.rotate();
      const next = this.d.keys.list().find((k) => k.state === 'next');
      return { activeKid: this.d.keys.active().info.kid, nextKid: next?.kid, promotionBlockedSince: this.d.keys.promotionBlockedSince() };
    });
  }

  /**
   * Emergency revocation of a signing key. Order matters: stop publishing and
   * signing with the key, then revoke its tokens durably and tell the feed.
   */
  async revoke(ctx: CallContext, p: { kid?: unknown }): Promise<KeyRevocationResult> {
    return audited(this.d.audit, this.d.observer, 'key.revoke', ctx, async (rec) => {
      this.d.access.require('admin', ctx.identity);
      const kid = v.text('kid', p.kid, 128);
      rec.kid = kid;
      await this.d.keys.revoke(kid);
      const ev = await this.d.store.revokeTokensByKid(kid, 'signing key revoked', this.d.clock.now());
      this.d.events.publish(ev);
      this.d.observer?.revocation?.('key');
      const activeKid = this.d.keys.active().info.kid;
      Object.assign(rec, { revoked_tokens: ev.jtis.length, active_kid: activeKid });
      return { kid, revokedTokens: ev.jtis.length, activeKid };
    });
  }
}
