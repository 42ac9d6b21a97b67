/**
 * `keys revoke KID` is two commits: the key's state, then its tokens and the
 * feed event. A replica that dies in between leaves the first without the
 * second; running the command again (on any replica) must finish the job.
 */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type { RevocationEvent } from '../../src/core/types.js';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { Authorizer } from '../../src/service/authorize.js';
import { KeyAdministration } from '../../src/service/keys.js';
import { MemoryStore } from '../../src/store/memory.js';
import { KeyManager } from '../../src/tokens/keys.js';
import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';
import { task, token } from '../contracts/store.contract.js';

describe('keys revoke after a half-done revocation', () => {
  it('revokes the live tokens of an already revoked key and announces it', async () => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1));
    const store = new MemoryStore();
    const keys = new KeyManager(new MemoryKeyStore(), clock, { alg: 'ES256', rotationPeriodMs: 86_400_000, prePublishMs: 600_000, skewMs: 60_000, maxPromotionWaitMs: 3_600_000 });
    await keys.init();
    const kid = keys.active().info.kid;
    await store.createTask(task('t', { createdAt: clock.now(), expiresAt: clock.now() + 3_600_000 }));
    await store.recordToken(token('j1', 't', { kid, issuedAt: clock.now(), expiresAt: clock.now() + 600_000 }));
    const events: RevocationEvent[] = [];
    const admin = new KeyAdministration({ keys, store, events: { publish: (e) => events.push(e) }, access: new Authorizer({ admins: ['spiffe://example.org/ops'] }), audit: new MemoryAuditSink(), clock });
    // The first attempt got as far as the key's state (its replica died before the tokens).
    await keys.revoke(kid);
    expect((await store.getToken('j1'))!.revokedAt).toBeNull();
    const r = await admin.revoke({ identity: { kind: 'spiffe', id: 'spiffe://example.org/ops', method: 'x509-svid', claims: {} }, requestId: 'r' }, { kid });
    expect(r).toMatchObject({ kid, revokedTokens: 1 });
    expect((await store.getToken('j1'))!.revokedAt).toBe(clock.now());
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ kind: 'key', kid, jtis: ['j1'] });
  });
});
