/**
 * Key administration use-cases: rotation on demand and emergency revocation
 * of a signing key, both for configured admins only; and what the broker does
 * when the published key set changes.
 */
import { mayflyError } from '../core/errors.js';
import type { AuditSink, Clock, Store } from '../core/ports.js';
import type { RevocationEvent } from '../core/types.js';
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
   * Those are two commits; if this broker dies between them, the key
   * lifecycle of any broker finishes the second (finishRevocation). Running
   * the command again also does, and announces the key again.
   */
  async revoke(ctx: CallContext, p: { kid?: unknown }): Promise<KeyRevocationResult> {
    return audited(this.d.audit, this.d.observer, 'key.revoke', ctx, async (rec) => {
      this.d.access.require('admin', ctx.identity);
      const kid = v.text('kid', p.kid, 128);
      rec.kid = kid;
      let ev: RevocationEvent | undefined;
      await this.d.keys.revoke(kid, async () => {
        ev = await this.d.store.revokeTokensByKid(kid, REASON, this.d.clock.now());
        // At once, before the lifecycle run that follows appends later events (a single broker's feed delivers in cursor order).
        this.d.events.publish(ev);
      });
      if (!ev) throw mayflyError('ERR_INTERNAL', 'key revocation ended without revoking its tokens');
      this.d.observer?.revocation?.('key');
      const activeKid = this.d.keys.active().info.kid;
      Object.assign(rec, { revoked_tokens: ev.jtis.length, active_kid: activeKid });
      return { kid, revokedTokens: ev.jtis.length, activeKid };
    });
  }

  /**
   * Finishes the revocation of a revoked key if it is unfinished (its tokens
   * still live and unannounced: the broker that took `keys revoke` died
   * after the key's state and before its tokens). Called by the key
   * lifecycle for every revoked key (KeyManager.setRevocationFinisher), so
   * it does nothing, without writing, once the revocation is finished.
   */
  async finishRevocation(kid: string): Promise<void> {
    const ev = await this.d.store.finishKeyRevocation(kid, REASON, this.d.clock.now());
    if (!ev) return;
    this.d.events.publish(ev);
    this.d.observer?.revocation?.('key');
    this.d.audit.write({ event: 'key.revoke', outcome: 'success', kid, action: 'revocation finished by the key lifecycle', revoked_tokens: ev.jtis.length, cursor: ev.cursor });
  }
}

const REASON = 'signing key revoked';
