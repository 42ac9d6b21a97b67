/**
 * Conformance suite every KeyStore backend passes (memory, file; later KMS).
 * Persistent backends also get the reopen and at-rest checks.
 */
import { chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { compactVerify, importJWK } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { KeyStore } from '../../src/core/ports.js';
import type { KeyState, SigningAlg } from '../../src/core/types.js';
import { signingInputOf } from '../../src/tokens/jws.js';
import { jwkThumbprint } from '../../src/tokens/key-material.js';

const T0 = Date.UTC(2026, 0, 1);

/** What a backend provides to the suite. */
export interface KeyStoreHarness {
  /** Opens the backend (again, for persistent ones: same backing storage). */
  open(): Promise<KeyStore>;
  /** For persistent backends: how to open the same backing storage with another KEK. */
  persistent?: { openWithKek(kek: Buffer): Promise<KeyStore> };
  /** For file backends: where key files live. */
  atRest?: { keyDir: string };
  cleanup?(): Promise<void> | void;
}

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
}

async function messageOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
  throw new Error('expected a failure');
}

/** Signs a compact JWS with the store's signer and verifies it with jose, as a relying party would. */
async function signAndVerify(store: KeyStore, kid: string, alg: SigningAlg, jwk: Record<string, string>): Promise<void> {
  const signer = await store.signer(kid);
  expect(signer.kid).toBe(kid);
  expect(signer.alg).toBe(alg);
  const input = signingInputOf({ alg, kid, typ: 'JWT' }, { sub: 'x', iat: 1 });
  const jws = `${input}.${signer.sign(Buffer.from(input)).toString('base64url')}`;
  const key = await importJWK(jwk, alg);
  const { protectedHeader } = await compactVerify(jws, key, { algorithms: [alg] });
  expect(protectedHeader.kid).toBe(kid);
}

/** Registers the KeyStore conformance suite for one backend. */
export function runKeyStoreContract(name: string, harness: () => KeyStoreHarness | Promise<KeyStoreHarness>): void {
  describe(`KeyStore contract: ${name}`, () => {
    let h: KeyStoreHarness;
    let store: KeyStore;
    let open: KeyStore[] = [];
    const track = async (s: Promise<KeyStore>) => {
      const ks = await s;
      open.push(ks);
      return ks;
    };
    beforeEach(async () => {
      h = await harness();
      open = [];
      store = await track(h.open());
    });
    afterEach(async () => {
      for (const s of open) await s.close().catch(() => undefined);
      await h.cleanup?.();
    });

    it.each(['ES256', 'EdDSA', 'RS256'] as const)('creates a %s key whose kid is its RFC 7638 thumbprint and signs verifiably', async (alg) => {
      const info = await store.create(alg, 'active', T0);
      expect(info).toMatchObject({ alg, state: 'active', createdAt: T0, stateSince: T0, lastTokenExpiresAt: null });
      expect(info.kid).toBe(jwkThumbprint(info.publicJwk));
      expect(info.kid).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(info.publicJwk).toMatchObject({ kid: info.kid, alg, use: 'sig' });
      for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi']) expect(info.publicJwk).not.toHaveProperty(priv);
      await signAndVerify(store, info.kid, alg, info.publicJwk);
    });

    it('creates keys in every state and lists them oldest first, as copies', async () => {
      const states: KeyState[] = ['next', 'active', 'retiring', 'retired', 'revoked'];
      const made = [];
      for (const [i, state] of states.entries()) made.push(await store.create('ES256', state, T0 + i));
      const listed = await store.list();
      expect(listed).toEqual(made);
      expect(new Set(listed.map((k) => k.kid)).size).toBe(5);
      listed[0]!.state = 'revoked';
      listed[0]!.publicJwk['x'] = 'tampered';
      expect(await store.list()).toEqual(made);
    });

    it('moves keys through the lifecycle and refuses moves back', async () => {
      const k = await store.create('ES256', 'next', T0);
      await store.setState(k.kid, 'active', T0 + 1);
      await store.setState(k.kid, 'active', T0 + 2); // same state: no-op
      expect((await store.list())[0]).toMatchObject({ state: 'active', stateSince: T0 + 1 });
      await store.setState(k.kid, 'retiring', T0 + 3);
      await store.setState(k.kid, 'retired', T0 + 4);
      expect(await codeOf(store.setState(k.kid, 'active', T0 + 5))).toBe('ERR_INVALID_ARGUMENT');
      expect(await codeOf(store.setState(k.kid, 'next', T0 + 5))).toBe('ERR_INVALID_ARGUMENT');
      await store.setState(k.kid, 'revoked', T0 + 6);
      expect(await codeOf(store.setState(k.kid, 'retired', T0 + 7))).toBe('ERR_INVALID_ARGUMENT');
      expect((await store.list())[0]).toMatchObject({ state: 'revoked', stateSince: T0 + 6 });
      expect(await codeOf(store.setState('no-such-kid', 'active', T0))).toBe('ERR_KEY_NOT_FOUND');
    });

    it('hands out a cached signer that refuses to sign once the key is retired or revoked', async () => {
      const k = await store.create('EdDSA', 'active', T0);
      const s1 = await store.signer(k.kid);
      expect(await store.signer(k.kid)).toBe(s1);
      await store.setState(k.kid, 'revoked', T0 + 1);
      expect(await codeOf(() => s1.sign(Buffer.from('x')))).toBe('ERR_KEYSTORE');
      expect(await codeOf(store.signer(k.kid))).toBe('ERR_KEYSTORE');
      expect(await codeOf(store.signer('no-such-kid'))).toBe('ERR_KEY_NOT_FOUND');
      const next = await store.create('ES256', 'next', T0);
      await signAndVerify(store, next.kid, 'ES256', next.publicJwk);
    });

    it('raises lastTokenExpiresAt and never lowers it', async () => {
      const k = await store.create('ES256', 'active', T0);
      store.noteTokenExpiry(k.kid, T0 + 500);
      store.noteTokenExpiry(k.kid, T0 + 100);
      store.noteTokenExpiry('unknown-kid', T0 + 900);
      expect((await store.list())[0]!.lastTokenExpiresAt).toBe(T0 + 500);
      store.noteTokenExpiry(k.kid, T0 + 700);
      expect((await store.list())[0]!.lastTokenExpiresAt).toBe(T0 + 700);
    });

    it('keeps a rotation request for the active key until that key leaves active; the first request wins', async () => {
      expect(await store.rotationRequest()).toBeNull();
      const a = await store.create('ES256', 'active', T0);
      const n = await store.create('ES256', 'next', T0);
      // Only the active key can be rotated away from: a stale kid (another replica already promoted) is ignored.
      await store.requestRotation(n.kid, T0 + 1);
      expect(await store.rotationRequest()).toBeNull();
      await store.requestRotation(a.kid, T0 + 5);
      await store.requestRotation(a.kid, T0 + 9);
      expect(await store.rotationRequest()).toEqual({ kid: a.kid, at: T0 + 5 });
      await store.setState(a.kid, 'retiring', T0 + 10);
      await store.setState(n.kid, 'active', T0 + 10);
      expect(await store.rotationRequest()).toBeNull();
      // The retired request does not come back for the key's later states.
      await store.setState(a.kid, 'retired', T0 + 11);
      expect(await store.rotationRequest()).toBeNull();
      await store.requestRotation(n.kid, T0 + 12);
      expect(await store.rotationRequest()).toEqual({ kid: n.kid, at: T0 + 12 });
      await store.setState(n.kid, 'revoked', T0 + 13);
      expect(await store.rotationRequest()).toBeNull();
    });

    it('fails with ERR_KEYSTORE after close', async () => {
      const k = await store.create('ES256', 'active', T0);
      await store.close();
      expect(await codeOf(store.list())).toBe('ERR_KEYSTORE');
      expect(await codeOf(store.signer(k.kid))).toBe('ERR_KEYSTORE');
      expect(await codeOf(store.create('ES256', 'next', T0))).toBe('ERR_KEYSTORE');
      expect(() => store.noteTokenExpiry(k.kid, T0 + 1)).not.toThrow();
    });

    describe('persistence', () => {
      it('keeps keys, states, timestamps and noted expiries across reopen, and still signs', async () => {
        if (!h.persistent) return;
        const a = await store.create('ES256', 'next', T0);
        const b = await store.create('RS256', 'active', T0 + 1);
        const c = await store.create('EdDSA', 'active', T0 + 2);
        await store.setState(a.kid, 'active', T0 + 10);
        await store.setState(b.kid, 'retiring', T0 + 10);
        await store.setState(c.kid, 'revoked', T0 + 11);
        store.noteTokenExpiry(b.kid, T0 + 999);
        const before = await store.list();
        await store.close();
        const again = await track(h.open());
        expect(await again.list()).toEqual(before);
        expect((await again.list()).find((k) => k.kid === b.kid)!.lastTokenExpiresAt).toBe(T0 + 999);
        await signAndVerify(again, a.kid, 'ES256', a.publicJwk);
        await signAndVerify(again, b.kid, 'RS256', b.publicJwk);
        expect(await codeOf(again.signer(c.kid))).toBe('ERR_KEYSTORE');
      });

      it('keeps a pending rotation request across reopen (a restart before promotion does not forget keys rotate)', async () => {
        if (!h.persistent) return;
        const a = await store.create('ES256', 'active', T0);
        await store.create('ES256', 'next', T0);
        await store.requestRotation(a.kid, T0 + 7);
        await store.close();
        const again = await track(h.open());
        expect(await again.rotationRequest()).toEqual({ kid: a.kid, at: T0 + 7 });
        await again.setState(a.kid, 'retiring', T0 + 8);
        await again.close();
        expect(await (await track(h.open())).rotationRequest()).toBeNull();
      });

      it('stores the private key only encrypted, files 0600 in a 0700 directory', async () => {
        if (!h.atRest) return;
        const k = await store.create('EdDSA', 'active', T0);
        const signer = await store.signer(k.kid);
        expect(signer.sign(Buffer.from('x')).length).toBe(64);
        const dir = h.atRest.keyDir;
        const files = readdirSync(dir);
        expect(files).toEqual([`${k.kid}.json`]);
        const text = readFileSync(join(dir, files[0]!), 'utf8');
        const parsed = JSON.parse(text) as Record<string, unknown>;
        expect(parsed).not.toHaveProperty('d');
        expect(JSON.stringify(parsed['publicJwk'])).not.toContain('"d"');
        expect(text).not.toMatch(/PRIVATE KEY/);
        if (process.platform !== 'win32') {
          const { statSync } = await import('node:fs');
          expect(statSync(dir).mode & 0o777).toBe(0o700);
          expect(statSync(join(dir, files[0]!)).mode & 0o777).toBe(0o600);
        }
      });

      it('detects a tampered key file (state edited, timestamp edited, ciphertext flipped, file renamed)', async () => {
        if (!h.atRest) return;
        const dir = h.atRest.keyDir;
        const k = await store.create('ES256', 'revoked', T0);
        await store.close();
        const path = join(dir, `${k.kid}.json`);
        const original = readFileSync(path, 'utf8');
        const edits: [string, (f: Record<string, any>) => void][] = [
          ['state', (f) => (f['state'] = 'active')],
          ['stateSince', (f) => (f['stateSince'] = T0 + 1)],
          ['lastTokenExpiresAt', (f) => (f['lastTokenExpiresAt'] = 1)],
          ['publicJwk', (f) => (f['publicJwk']['x'] = f['publicJwk']['y'])],
          ['ciphertext', (f) => {
            const ct = Buffer.from(f['privateKey']['ciphertext'], 'base64url');
            ct[5] = ct[5]! ^ 1;
            f['privateKey']['ciphertext'] = ct.toString('base64url');
          }],
          ['mac', (f) => (f['mac'] = Buffer.alloc(32).toString('base64url'))],
        ];
        for (const [what, edit] of edits) {
          const f = JSON.parse(original) as Record<string, any>;
          edit(f);
          writeFileSync(path, JSON.stringify(f), { mode: 0o600 });
          const msg = await messageOf(track(h.open()));
          expect(msg, what).toMatch(/^ERR_KEYSTORE: key file .* failed its integrity check/);
          expect(msg).toContain(path);
        }
        writeFileSync(path, original, { mode: 0o600 });
        // A valid file under another name (kid swap) is refused too.
        const { renameSync } = await import('node:fs');
        const other = join(dir, `${'A'.repeat(43)}.json`);
        renameSync(path, other);
        expect(await messageOf(track(h.open()))).toMatch(/integrity check \(kid does not match the file name\)/);
        renameSync(other, path);
        expect((await (await track(h.open())).list())[0]!.state).toBe('revoked');
      });

      it('refuses to start under a different KEK with a clear message', async () => {
        if (!h.persistent) return;
        await store.create('ES256', 'active', T0);
        await store.close();
        const msg = await messageOf(track(h.persistent.openWithKek(randomBytes(32))));
        expect(msg).toMatch(/^ERR_KEYSTORE: key store cannot be decrypted with the configured KEK/);
      });

      it('refuses group- or world-accessible key files and directories, naming the chmod fix', async () => {
        if (!h.atRest || process.platform === 'win32') return;
        const dir = h.atRest.keyDir;
        const k = await store.create('ES256', 'active', T0);
        await store.close();
        const path = join(dir, `${k.kid}.json`);
        chmodSync(path, 0o644);
        expect(await messageOf(track(h.open()))).toBe(`ERR_KEYSTORE: key file ${path} is accessible by group or others (mode 0644); run: chmod 600 ${path}`);
        chmodSync(path, 0o600);
        chmodSync(dir, 0o750);
        expect(await messageOf(track(h.open()))).toBe(`ERR_KEYSTORE: key directory ${dir} is accessible by group or others (mode 0750); run: chmod 700 ${dir}`);
        chmodSync(dir, 0o700);
        expect((await (await track(h.open())).list()).length).toBe(1);
      });
    });
  });
}
