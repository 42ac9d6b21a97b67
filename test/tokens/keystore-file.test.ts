import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { FileKeyStore, loadKek } from '../../src/tokens/keystore-file.js';
import { runKeyStoreContract } from '../contracts/keystore.contract.js';

const T0 = Date.UTC(2026, 0, 1);

runKeyStoreContract('FileKeyStore', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'mayfly-keys-'));
  const kek = randomBytes(32);
  return {
    open: () => FileKeyStore.open({ dataDir, kek }),
    persistent: { openWithKek: (other) => FileKeyStore.open({ dataDir, kek: other }) },
    atRest: { keyDir: join(dataDir, 'keys') },
    cleanup: () => rmSync(dataDir, { recursive: true, force: true }),
  };
});

describe('FileKeyStore', () => {
  const dirs: string[] = [];
  const tmp = () => {
    const d = mkdtempSync(join(tmpdir(), 'mayfly-keys-'));
    dirs.push(d);
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('persists noteTokenExpiry lazily: not at once, but within the flush interval', async () => {
    const dataDir = tmp();
    const kek = randomBytes(32);
    const ks = await FileKeyStore.open({ dataDir, kek, flushIntervalMs: 50 });
    const k = await ks.create('ES256', 'active', T0);
    const path = join(dataDir, 'keys', `${k.kid}.json`);
    ks.noteTokenExpiry(k.kid, T0 + 1000);
    expect(JSON.parse(readFileSync(path, 'utf8')).lastTokenExpiresAt).toBeNull();
    await new Promise((r) => setTimeout(r, 200));
    expect(JSON.parse(readFileSync(path, 'utf8')).lastTokenExpiresAt).toBe(T0 + 1000);
    // setState writes the pending expiry along with the state.
    ks.noteTokenExpiry(k.kid, T0 + 2000);
    await ks.setState(k.kid, 'retiring', T0 + 5);
    expect(JSON.parse(readFileSync(path, 'utf8'))).toMatchObject({ state: 'retiring', lastTokenExpiresAt: T0 + 2000 });
    await ks.close();
  });

  it('rejects a KEK that is not 32 bytes and removes stale temp files', async () => {
    const dataDir = tmp();
    await expect(FileKeyStore.open({ dataDir, kek: randomBytes(16) })).rejects.toMatchObject({ code: 'ERR_KEYSTORE' });
    const kek = randomBytes(32);
    await (await FileKeyStore.open({ dataDir, kek })).close();
    writeFileSync(join(dataDir, 'keys', 'abc.json.tmp-0123'), 'partial', { mode: 0o600 });
    const ks = await FileKeyStore.open({ dataDir, kek });
    expect(await ks.list()).toEqual([]);
    await ks.close();
  });

  it('signs on the hot path in microseconds (ES256)', async () => {
    const ks = await FileKeyStore.open({ dataDir: tmp(), kek: randomBytes(32) });
    const k = await ks.create('ES256', 'active', T0);
    const s = await ks.signer(k.kid);
    const input = Buffer.from('eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0');
    for (let i = 0; i < 200; i++) s.sign(input);
    const n = 2000;
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      s.sign(input);
      ks.noteTokenExpiry(k.kid, T0 + i);
    }
    const us = Number(process.hrtime.bigint() - t) / 1000 / n;
    console.log(`FileKeyStore ES256 sign + noteTokenExpiry: ${us.toFixed(1)} µs`);
    expect(us).toBeLessThan(2000);
    await ks.close();
  });
});

describe('loadKek', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mayfly-kek-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const kek = randomBytes(32);
  const file = (name: string, data: string | Buffer, mode = 0o600) => {
    const p = join(dir, name);
    writeFileSync(p, data, { mode });
    chmodSync(p, mode);
    return p;
  };

  it.each([
    ['base64 env', () => loadKek({ env: kek.toString('base64') })],
    ['base64url env', () => loadKek({ env: kek.toString('base64url') })],
    ['env with whitespace', () => loadKek({ env: `  ${kek.toString('base64')}\n` })],
    ['raw file', () => loadKek({ file: file('raw', kek) })],
    ['base64 file', () => loadKek({ file: file('b64', `${kek.toString('base64')}\n`) })],
  ])('reads a KEK from %s', (_, load) => {
    expect(load().equals(kek)).toBe(true);
  });

  it.each([
    ['no source', () => loadKek({}), /no key-encryption key: set MAYFLY_KEK/],
    ['both sources', () => loadKek({ env: kek.toString('base64'), file: '/x' }), /configure exactly one/],
    ['short env', () => loadKek({ env: randomBytes(16).toString('base64'), envName: 'MY_KEK' }), /^MY_KEK must be exactly 32 bytes \(got 16\)/],
    ['non-base64 env', () => loadKek({ env: 'not base64!' }), /MAYFLY_KEK is not base64/],
    ['missing file', () => loadKek({ file: join(dir, 'missing') }), /cannot be read \(ENOENT\)/],
    ['group-readable file', () => loadKek({ file: file('open', kek, 0o640) }), /is accessible by group or others \(mode 0640\); run: chmod 600 /],
    ['world-readable file', () => loadKek({ file: file('world', kek, 0o604) }), /mode 0604/],
    ['wrong-size file', () => loadKek({ file: file('short', randomBytes(31)) }), /must be exactly 32 bytes|not base64/],
  ])('refuses %s with ERR_KEYSTORE', (_, load, msg) => {
    try {
      load();
      throw new Error('expected a failure');
    } catch (e) {
      expect((e as { code?: string }).code).toBe('ERR_KEYSTORE');
      expect((e as Error).message).toMatch(msg);
    }
  });
});
