import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type { KeyStore } from '../../src/core/ports.js';
import type { KeyState } from '../../src/core/types.js';
import { KeyManager, type KeyManagerOptions } from '../../src/tokens/keys.js';
import { FileKeyStore } from '../../src/tokens/keystore-file.js';
import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';

const MIN = 60_000;
const OPTS: KeyManagerOptions = { alg: 'ES256', rotationPeriodMs: 60 * MIN, prePublishMs: 10 * MIN, skewMs: MIN, maxPromotionWaitMs: 30 * MIN };

function states(km: KeyManager): Record<string, KeyState> {
  return Object.fromEntries(km.list().map((k) => [k.kid, k.state]));
}
function count(km: KeyManager, state: KeyState): number {
  return km.list().filter((k) => k.state === state).length;
}
function published(km: KeyManager): string[] {
  return (JSON.parse(km.jwks().json) as { keys: { kid: string }[] }).keys.map((k) => k.kid).sort();
}

describe('KeyManager lifecycle', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  async function make(store: KeyStore = new MemoryKeyStore(), clock = new ManualClock(), opts = OPTS) {
    const changes: string[] = [];
    const delayed: string[][] = [];
    const km = new KeyManager(store, clock, opts, {
      onKeySetChange: (v) => changes.push(v),
      onPromotionDelayed: (_kid, laggards) => delayed.push(laggards),
    });
    await km.init();
    return { km, clock, changes, delayed, store };
  }

  it('starts with one active and one pre-published next key, both in the JWKS', async () => {
    const { km } = await make();
    expect(count(km, 'active')).toBe(1);
    expect(count(km, 'next')).toBe(1);
    expect(published(km)).toEqual(km.list().map((k) => k.kid).sort());
  });

  it('promotes next only after rotation period and pre-publication, then retires the old key after its last token expires', async () => {
    const { km, clock } = await make();
    const first = km.active().info.kid;
    const next = km.list().find((k) => k.state === 'next')!.kid;
    km.noteTokenExpiry(first, clock.now() + 60 * MIN + 5 * MIN);
    clock.advance(59 * MIN);
    await km.tick();
    expect(km.active().info.kid).toBe(first);
    clock.advance(MIN);
    await km.tick();
    expect(km.active().info.kid).toBe(next);
    expect(states(km)[first]).toBe('retiring');
    expect(published(km)).toContain(first); // still verifiable
    expect(count(km, 'next')).toBe(1); // a fresh next is pre-published at once
    clock.advance(5 * MIN); // last token expired, skew not yet passed
    await km.tick();
    expect(states(km)[first]).toBe('retiring');
    clock.advance(MIN);
    await km.tick();
    expect(states(km)[first]).toBe('retired');
    expect(published(km)).not.toContain(first);
  });

  it('an on-demand rotation still waits for the next key to be pre-published', async () => {
    const { km, clock } = await make();
    const first = km.active().info.kid;
    // The first next key was created at init; promote it so the fresh next is brand new.
    clock.advance(60 * MIN);
    await km.tick();
    const second = km.active().info.kid;
    expect(second).not.toBe(first);
    await km.rotate();
    expect(km.active().info.kid).toBe(second); // fresh next not yet published long enough
    clock.advance(10 * MIN);
    await km.tick();
    expect(km.active().info.kid).not.toBe(second);
  });

  it('promotion waits for feed subscribers to acknowledge, naming laggards, up to the maximum wait', async () => {
    const { km, clock, delayed } = await make();
    const first = km.active().info.kid;
    km.setPromotionGate(() => ({ ready: false, laggards: ['rp-slow'] }));
    clock.advance(60 * MIN);
    await km.tick();
    expect(km.active().info.kid).toBe(first);
    expect(km.promotionBlockedSince()).toBe(clock.now());
    expect(delayed.at(-1)).toEqual(['rp-slow']);
    clock.advance(29 * MIN);
    await km.tick();
    expect(km.active().info.kid).toBe(first);
    clock.advance(MIN);
    await km.tick();
    expect(km.active().info.kid).not.toBe(first);
    expect(km.promotionBlockedSince()).toBeNull();
  });

  it('promotes as soon as every subscriber has acknowledged', async () => {
    const { km, clock } = await make();
    const first = km.active().info.kid;
    let ready = false;
    km.setPromotionGate(() => ({ ready, laggards: ready ? [] : ['rp-1'] }));
    clock.advance(60 * MIN);
    await km.tick();
    expect(km.active().info.kid).toBe(first);
    ready = true;
    clock.advance(1000);
    await km.tick();
    expect(km.active().info.kid).not.toBe(first);
  });

  it('emergency revoke removes the key from the JWKS and promotes a replacement at once', async () => {
    const { km, changes } = await make();
    const first = km.active().info.kid;
    const before = changes.length;
    await km.revoke(first);
    expect(states(km)[first]).toBe('revoked');
    expect(km.active().info.kid).not.toBe(first);
    expect(published(km)).not.toContain(first);
    expect(km.publicKey(first)).toBeUndefined();
    expect(changes.length).toBeGreaterThan(before);
    expect(count(km, 'active')).toBe(1);
    expect(count(km, 'next')).toBe(1);
  });

  it('marks the active key overdue when rotation has been impossible for too long', async () => {
    const { km, clock } = await make();
    km.setPromotionGate(() => ({ ready: false, laggards: ['x'] }));
    clock.advance(60 * MIN);
    expect(km.overdue()).toBe(false);
    clock.advance(41 * MIN);
    expect(km.overdue()).toBe(true);
  });

  it.each(['next-only', 'active', 'retiring', 'revoked'] as const)('resumes correctly after a restart with a key in state %s', async (scenario) => {
    const dir = mkdtempSync(join(tmpdir(), 'mayfly-keys-'));
    dirs.push(dir);
    const kek = randomBytes(32);
    const clock = new ManualClock();
    const { km } = await make(await FileKeyStore.open({ dataDir: dir, kek }), clock);
    const first = km.active().info.kid;
    if (scenario === 'retiring' || scenario === 'revoked') {
      km.noteTokenExpiry(first, clock.now() + 120 * MIN);
      clock.advance(60 * MIN);
      await km.tick();
      expect(states(km)[first]).toBe('retiring');
      if (scenario === 'revoked') await km.revoke(first);
    }
    const before = states(km);
    const active = km.active().info.kid;
    // @ts-expect-error reach into the store to close it like a shutdown would
    await km.store.close();
    const reopened = await make(await FileKeyStore.open({ dataDir: dir, kek }), clock);
    expect(states(reopened.km)).toEqual(before);
    expect(reopened.km.active().info.kid).toBe(active);
    if (scenario === 'retiring') {
      clock.advance(121 * MIN);
      await reopened.km.tick();
      expect(states(reopened.km)[first]).toBe('retired');
    }
    // The reopened signer still produces signatures the published key verifies.
    const { signer, publicKey } = reopened.km.active();
    const sig = signer.sign(Buffer.from('x.y'));
    const { verify } = await import('node:crypto');
    expect(verify('sha256', Buffer.from('x.y'), { key: publicKey, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
  });

  it('refuses a tampered key store and a wrong KEK with a clear message', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mayfly-keys-'));
    dirs.push(dir);
    const kek = randomBytes(32);
    const ks = await FileKeyStore.open({ dataDir: dir, kek });
    const { km } = await make(ks);
    await ks.close();
    await expect(FileKeyStore.open({ dataDir: dir, kek: randomBytes(32) })).rejects.toMatchObject({ code: 'ERR_KEYSTORE', message: expect.stringMatching(/KEK/) });
    const file = join(dir, 'keys', readdirSync(join(dir, 'keys')).find((f) => f.startsWith(km.active().info.kid))!);
    const doc = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    doc['state'] = doc['state'] === 'active' ? 'retired' : 'active';
    writeFileSync(file, JSON.stringify(doc), { mode: 0o600 });
    await expect(FileKeyStore.open({ dataDir: dir, kek })).rejects.toMatchObject({ code: 'ERR_KEYSTORE' });
  });
});
