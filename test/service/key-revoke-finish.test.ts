/**
 * A `keys revoke` interrupted between its two commits (the key's state, then
 * its tokens and the feed event) is finished by the key lifecycle, with no
 * operator action, and announced once however often the lifecycle runs.
 */
import { describe, expect, it } from 'vitest';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { ManualClock } from '../../src/core/clock.js';
import type { RevocationEvent } from '../../src/core/types.js';
import { Authorizer } from '../../src/service/authorize.js';
import { KeyAdministration } from '../../src/service/keys.js';
import { MemoryStore } from '../../src/store/memory.js';
import { KeyManager } from '../../src/tokens/keys.js';
import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';
import { mayflyError } from '../../src/core/errors.js';
import type { EpochMs } from '../../src/core/types.js';
import { task, token } from '../contracts/store.contract.js';

const ADMIN = { identity: { kind: 'spiffe' as const, id: 'spiffe://example.org/ops', method: 'x509-svid' as const, claims: {} }, requestId: 'r' };

/** A store whose next revokeTokensByKid fails, as a PostgreSQL that went away between the two commits would. */
class FlakyStore extends MemoryStore {
  failNext = false;
  override async revokeTokensByKid(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent> {
    if (this.failNext) {
      this.failNext = false;
      throw mayflyError('ERR_UNAVAILABLE', 'store unavailable (revokeTokensByKid)');
    }
    return super.revokeTokensByKid(kid, reason, now);
  }
}

async function broker() {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const store = new FlakyStore();
  const keys = new KeyManager(new MemoryKeyStore(), clock, { alg: 'ES256', rotationPeriodMs: 86_400_000, prePublishMs: 600_000, skewMs: 60_000, maxPromotionWaitMs: 3_600_000 });
  await keys.init();
  const events: RevocationEvent[] = [];
  const audit = new MemoryAuditSink();
  const admin = new KeyAdministration({ keys, store, events: { publish: (e) => events.push(e) }, access: new Authorizer({ admins: [ADMIN.identity.id] }), audit, clock });
  const kid = keys.active().info.kid;
  await store.createTask(task('t', { createdAt: clock.now(), expiresAt: clock.now() + 3_600_000 }));
  for (const jti of ['j1', 'j2']) await store.recordToken(token(jti, 't', { kid, issuedAt: clock.now(), expiresAt: clock.now() + 600_000 }));
  return { clock, store, keys, events, audit, admin, kid };
}

describe('an interrupted keys revoke', () => {
  it('is finished by the next lifecycle run and announced once', async () => {
    const { clock, store, keys, events, audit, admin, kid } = await broker();
    // The command got as far as the key's state (keys.revoke commits the key set before the tokens), then
    // its broker died; the restarted broker installs the finisher as the composition root does.
    await keys.revoke(kid);
    keys.setRevocationFinisher((k) => admin.finishRevocation(k));
    expect(keys.stateOf(kid)).toBe('revoked');
    expect((await store.getToken('j1'))!.revokedAt).toBeNull();
    expect(events).toHaveLength(0);

    clock.advance(1000);
    await keys.tick();
    expect((await store.getToken('j1'))!.revokedAt).toBe(clock.now());
    expect((await store.getToken('j2'))!.revokedAt).toBe(clock.now());
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ kind: 'key', kid, jtis: ['j1', 'j2'], reason: 'signing key revoked' });
    expect(audit.records.filter((e) => e.event === 'key.revoke')).toEqual([
      expect.objectContaining({ outcome: 'success', kid, revoked_tokens: 2, cursor: events[0]!.cursor, action: 'revocation finished by the key lifecycle' }),
    ]);

    for (let i = 0; i < 3; i++) {
      clock.advance(5000);
      await keys.tick();
    }
    expect(events).toHaveLength(1);
    expect(await store.eventsSince(0, 10)).toHaveLength(1);

    // The command run again still works: it announces the key again (an operator's explicit request).
    const r = await admin.revoke(ADMIN, { kid });
    expect(r).toMatchObject({ kid, revokedTokens: 0 });
    expect(events).toHaveLength(2);
    await keys.tick();
    expect(events).toHaveLength(2);
  });

  it('a lifecycle run during the command never announces the revocation a second time', async () => {
    const { store, keys, events, admin, kid } = await broker();
    keys.setRevocationFinisher((k) => admin.finishRevocation(k));
    const [r] = await Promise.all([admin.revoke(ADMIN, { kid }), keys.tick(), keys.tick().then(() => keys.tick())]);
    await keys.tick();
    expect(r).toMatchObject({ kid, revokedTokens: 2 });
    expect(events).toHaveLength(1);
    expect(await store.eventsSince(0, 10)).toHaveLength(1);
  });

  it('a command whose second commit fails answers with the error, and the lifecycle finishes it', async () => {
    const { clock, store, keys, events, audit, admin, kid } = await broker();
    keys.setRevocationFinisher((k) => admin.finishRevocation(k));
    store.failNext = true;
    await expect(admin.revoke(ADMIN, { kid })).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE' });
    expect(keys.stateOf(kid)).toBe('revoked');
    expect(keys.jwks().kids).not.toContain(kid);
    expect((await store.getToken('j1'))!.revokedAt).toBeNull();
    expect(events).toHaveLength(0);
    expect(audit.records.filter((r) => r.event === 'key.revoke')).toEqual([expect.objectContaining({ outcome: 'error', code: 'ERR_UNAVAILABLE', kid })]);

    clock.advance(1000);
    await keys.tick();
    expect((await store.getToken('j1'))!.revokedAt).toBe(clock.now());
    expect(events).toEqual([expect.objectContaining({ kind: 'key', kid, jtis: ['j1', 'j2'] })]);
    await keys.tick();
    expect(events).toHaveLength(1);
  });
});
