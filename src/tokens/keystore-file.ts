/**
 * File KeyStore: one JSON file per key in `<dataDir>/keys/<kid>.json`, the
 * private key encrypted under a caller-supplied 32-byte key-encryption key
 * (KEK). Format `mayfly.key/v1`:
 *
 *   { format, kid, alg, state, createdAt, stateSince, lastTokenExpiresAt,
 *     publicJwk, kekId, privateKey: { enc: "A256GCM", iv, ciphertext, tag }, mac }
 *
 * - The KEK is never used directly: HKDF-SHA256 derives a wrap key, a MAC
 *   key and a KEK id from it (key separation).
 * - privateKey is the PKCS#8 DER sealed with AES-256-GCM under the wrap key,
 *   with `format|kid|alg` as AAD, so a ciphertext cannot be moved to another
 *   kid or algorithm.
 * - mac is HMAC-SHA256 under the MAC key over every other field, so editing
 *   the state, a timestamp or the public key is detected without
 *   re-encrypting the private key on every metadata write.
 * - kekId (16 bytes of HKDF output) tells "wrong KEK" apart from "tampered".
 *
 * Files are written atomically (temp file, fsync, rename, fsync dir) with mode
 * 0600 in a 0700 directory; open refuses group/world-accessible files. Not
 * detected: replacing a file with an older valid copy of itself, or deleting
 * one (rollback needs a counter outside this directory).
 *
 * A pending `keys rotate` lives in `<dataDir>/keys/rotation-request`
 * (`{"kid","at"}`, written atomically, 0600) until its key leaves `active`, so
 * a restart before promotion does not forget it. It carries no MAC: forging
 * one can only bring a rotation forward, which still pre-publishes the next
 * key and waits for the acknowledgement gate.
 *
 * noteTokenExpiry is on the issuance hot path: it only updates memory, and a
 * timer flushes changed keys at most every `flushIntervalMs` (and on setState
 * and close). After a crash the persisted lastTokenExpiresAt can lag by that
 * interval; the key lifecycle adds clock skew, and Store.liveTokensByKid is
 * the authoritative count.
 */
import { createCipheriv, createDecipheriv, createHmac, createPrivateKey, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { constants as fsc, readFileSync, statSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { isMayflyError, mayflyError, type MayflyError } from '../core/errors.js';
import type { KeyStore, RotationRequest, Signer } from '../core/ports.js';
import type { EpochMs, KeyInfo, KeyState, SigningAlg } from '../core/types.js';
import { canSign, checkTransition, copyInfo, generateKeyMaterial, localSigner, materialFromPrivateKey, SIGNING_ALGS, type KeyMaterial } from './key-material.js';

/** Key record format; also bound into the AEAD of every sealed private key (shared with the PostgreSQL key store). */
export const FORMAT = 'mayfly.key/v1';
export const KEY_STATES: readonly KeyState[] = ['next', 'active', 'retiring', 'retired', 'revoked'];
const CHECK_MODES = process.platform !== 'win32';

/** Options of FileKeyStore.open. */
export interface FileKeyStoreOptions {
  /** Broker data directory; keys live in `<dataDir>/keys`. */
  dataDir: string;
  /** 32-byte key-encryption key (see loadKek). */
  kek: Buffer;
  /** Longest delay before a noteTokenExpiry change reaches disk (ms, default 2000). */
  flushIntervalMs?: number;
  /** Called when a background flush fails (it is retried at the next interval). */
  onFlushError?: (err: MayflyError) => void;
}

export interface SealedKey {
  enc: 'A256GCM';
  iv: string;
  ciphertext: string;
  tag: string;
}

export interface KeyFile {
  format: typeof FORMAT;
  kid: string;
  alg: SigningAlg;
  state: KeyState;
  createdAt: EpochMs;
  stateSince: EpochMs;
  lastTokenExpiresAt: EpochMs | null;
  publicJwk: Record<string, string>;
  kekId: string;
  privateKey: SealedKey;
  mac: string;
}

interface Entry {
  info: KeyInfo;
  material: KeyMaterial;
  sealed: SealedKey;
  signer?: Signer;
}

export interface DerivedKeys {
  wrap: Buffer;
  mac: Buffer;
  kekId: string;
}

/** Wrap key, MAC key and KEK id derived from the KEK (HKDF-SHA256). */
export function derive(kek: Buffer): DerivedKeys {
  const sub = (info: string, n: number) => Buffer.from(hkdfSync('sha256', kek, Buffer.alloc(0), info, n));
  return { wrap: sub('mayfly keystore v1 wrap', 32), mac: sub('mayfly keystore v1 mac', 32), kekId: sub('mayfly keystore v1 kek id', 16).toString('base64url') };
}

export function aad(kid: string, alg: string): Buffer {
  return Buffer.from(`${FORMAT}|${kid}|${alg}`);
}

/** Canonical bytes covered by the MAC: every field but `mac`, in a fixed order, JWK members sorted. */
export function macInput(f: Omit<KeyFile, 'mac'>): Buffer {
  const jwk = Object.keys(f.publicJwk)
    .sort()
    .map((k) => [k, f.publicJwk[k]]);
  return Buffer.from(JSON.stringify([f.format, f.kid, f.alg, f.state, f.createdAt, f.stateSince, f.lastTokenExpiresAt, jwk, f.kekId, f.privateKey.enc, f.privateKey.iv, f.privateKey.ciphertext, f.privateKey.tag]));
}

function modeProblem(mode: number): boolean {
  return CHECK_MODES && (mode & 0o077) !== 0;
}

function octal(mode: number): string {
  return `0${(mode & 0o777).toString(8)}`;
}

/** Encrypts a private key (PKCS#8 DER) under the wrapping key; the AAD binds it to its kid and alg. */
export function sealPrivateKey(material: KeyMaterial, alg: SigningAlg, wrap: Buffer): SealedKey {
  const der = material.privateKey.export({ format: 'der', type: 'pkcs8' });
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', wrap, iv);
  c.setAAD(aad(material.kid, alg));
  const ciphertext = Buffer.concat([c.update(der), c.final()]);
  der.fill(0);
  return { enc: 'A256GCM', iv: iv.toString('base64url'), ciphertext: ciphertext.toString('base64url'), tag: c.getAuthTag().toString('base64url') };
}

/**
 * Decrypts a sealed private key and checks it is the key its kid names.
 * `tampered` builds the error for each failure, so each store can say where the key came from.
 */
export function unsealPrivateKey(sealed: SealedKey, kid: string, alg: SigningAlg, wrap: Buffer, tampered: (why: string, cause?: unknown) => MayflyError): KeyMaterial {
  let der: Buffer;
  try {
    const d = createDecipheriv('aes-256-gcm', wrap, Buffer.from(sealed.iv, 'base64url'));
    d.setAAD(aad(kid, alg));
    d.setAuthTag(Buffer.from(sealed.tag, 'base64url'));
    der = Buffer.concat([d.update(Buffer.from(sealed.ciphertext, 'base64url')), d.final()]);
  } catch (err) {
    throw tampered('private key does not decrypt', err);
  }
  let material: KeyMaterial;
  try {
    material = materialFromPrivateKey(alg, createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }));
  } catch (err) {
    throw tampered('private key is unusable', err);
  } finally {
    der.fill(0);
  }
  if (material.kid !== kid) throw tampered('private key does not match its kid');
  return material;
}

/** Encrypted-at-rest KeyStore in the broker data directory. */
export class FileKeyStore implements KeyStore {
  private readonly keys = new Map<string, Entry>();
  private readonly dirty = new Set<string>();
  private rotation: RotationRequest | null = null;
  private readonly derived: DerivedKeys;
  private writes: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(
    /** `<dataDir>/keys`. */
    readonly dir: string,
    kek: Buffer,
    private readonly flushIntervalMs: number,
    private readonly onFlushError: ((err: MayflyError) => void) | undefined,
  ) {
    this.derived = derive(kek);
  }

  /**
   * Opens the key directory, creating it (0700) if missing, and loads and
   * verifies every key. ERR_KEYSTORE if a file or the directory is group- or
   * world-accessible, a file was written under another KEK, or a file fails
   * its integrity check.
   */
  static async open(options: FileKeyStoreOptions): Promise<FileKeyStore> {
    checkKek(options.kek, 'the configured KEK');
    const dir = join(options.dataDir, 'keys');
    const store = new FileKeyStore(dir, options.kek, options.flushIntervalMs ?? 2000, options.onFlushError);
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw mayflyError('ERR_KEYSTORE', `cannot create key directory ${dir}; check the data dir is writable by the broker user`, { path: dir }, err);
    }
    const st = await lstat(dir);
    if (!st.isDirectory()) throw mayflyError('ERR_KEYSTORE', `key directory ${dir} is not a directory`, { path: dir });
    if (modeProblem(st.mode)) {
      throw mayflyError('ERR_KEYSTORE', `key directory ${dir} is accessible by group or others (mode ${octal(st.mode)}); run: chmod 700 ${dir}`, { path: dir });
    }
    for (const name of (await readdir(dir)).sort()) {
      const path = join(dir, name);
      if (name.includes('.tmp-')) {
        // Left over from a write interrupted before its rename: never a live key.
        await unlink(path).catch(() => undefined);
        continue;
      }
      if (name === ROTATION_FILE) {
        store.rotation = await loadRotationRequest(path);
        continue;
      }
      if (!name.endsWith('.json')) continue;
      const entry = await store.load(path, name.slice(0, -'.json'.length));
      store.keys.set(entry.info.kid, entry);
    }
    return store;
  }

  private async load(path: string, kidFromName: string): Promise<Entry> {
    const st = await lstat(path);
    if (!st.isFile()) throw mayflyError('ERR_KEYSTORE', `key file ${path} is not a regular file (symlinks are refused)`, { path });
    if (modeProblem(st.mode)) {
      throw mayflyError('ERR_KEYSTORE', `key file ${path} is accessible by group or others (mode ${octal(st.mode)}); run: chmod 600 ${path}`, { path });
    }
    const tampered = (why: string, cause?: unknown) =>
      mayflyError('ERR_KEYSTORE', `key file ${path} failed its integrity check (${why}): it was edited or corrupted; restore it from backup, or remove it and rotate keys`, { path }, cause);
    let f: KeyFile;
    try {
      f = JSON.parse(await readFile(path, 'utf8')) as KeyFile;
    } catch (err) {
      throw tampered('not valid JSON', err);
    }
    if (
      typeof f !== 'object' ||
      f === null ||
      f.format !== FORMAT ||
      typeof f.kid !== 'string' ||
      !SIGNING_ALGS.includes(f.alg) ||
      !KEY_STATES.includes(f.state) ||
      typeof f.createdAt !== 'number' ||
      typeof f.stateSince !== 'number' ||
      !(f.lastTokenExpiresAt === null || typeof f.lastTokenExpiresAt === 'number') ||
      typeof f.publicJwk !== 'object' ||
      f.publicJwk === null ||
      typeof f.kekId !== 'string' ||
      typeof f.mac !== 'string' ||
      typeof f.privateKey !== 'object' ||
      f.privateKey === null ||
      f.privateKey.enc !== 'A256GCM'
    ) {
      throw tampered(`not a ${FORMAT} key file`);
    }
    if (f.kid !== kidFromName) throw tampered('kid does not match the file name');
    if (f.kekId !== this.derived.kekId) {
      throw mayflyError('ERR_KEYSTORE', `key store cannot be decrypted with the configured KEK (${path} was written under a different KEK); configure the KEK this data dir was created with`, { path });
    }
    const { mac, ...rest } = f;
    const expected = createHmac('sha256', this.derived.mac).update(macInput(rest)).digest();
    const got = Buffer.from(mac, 'base64url');
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) throw tampered('MAC mismatch');
    const material = unsealPrivateKey(f.privateKey, f.kid, f.alg, this.derived.wrap, tampered);
    const info: KeyInfo = { kid: f.kid, alg: f.alg, state: f.state, createdAt: f.createdAt, stateSince: f.stateSince, publicJwk: material.publicJwk, lastTokenExpiresAt: f.lastTokenExpiresAt };
    return { info, material, sealed: f.privateKey };
  }

  private check(): void {
    if (this.closed) throw mayflyError('ERR_KEYSTORE', 'key store is closed');
  }

  private entry(kid: string): Entry {
    this.check();
    const e = this.keys.get(kid);
    if (!e) throw mayflyError('ERR_KEY_NOT_FOUND', `no key with kid ${kid}`, { kid });
    return e;
  }

  /** Generates a key in `state` and persists it before resolving. */
  async create(alg: SigningAlg, state: KeyState, now: EpochMs): Promise<KeyInfo> {
    this.check();
    const material = generateKeyMaterial(alg);
    const sealed = sealPrivateKey(material, alg, this.derived.wrap);
    const info: KeyInfo = { kid: material.kid, alg, state, createdAt: now, stateSince: now, publicJwk: material.publicJwk, lastTokenExpiresAt: null };
    await this.persist({ info, material, sealed });
    this.keys.set(info.kid, { info, material, sealed });
    return copyInfo(info);
  }

  /** All keys, oldest first, with in-memory lastTokenExpiresAt. */
  async list(): Promise<KeyInfo[]> {
    this.check();
    return [...this.keys.values()].map((e) => copyInfo(e.info)).sort((a, b) => a.createdAt - b.createdAt || (a.kid < b.kid ? -1 : 1));
  }

  /** Moves a key to `state` (see checkTransition) and persists it, with any pending expiry, before resolving. */
  async setState(kid: string, state: KeyState, now: EpochMs): Promise<void> {
    const e = this.entry(kid);
    checkTransition(kid, e.info.state, state);
    if (e.info.state === state) return;
    // Memory first, so a flush queued while this write is in flight cannot persist the old state.
    const before = { state: e.info.state, stateSince: e.info.stateSince };
    e.info.state = state;
    e.info.stateSince = now;
    const exp = e.info.lastTokenExpiresAt;
    try {
      await this.persist({ ...e, info: { ...e.info } });
    } catch (err) {
      if (e.info.state === state && e.info.stateSince === now) Object.assign(e.info, before);
      throw err;
    }
    if (e.info.lastTokenExpiresAt === exp) this.dirty.delete(kid);
    if (this.rotation?.kid === kid) await this.clearRotation();
  }

  /** Persists a rotation request while `activeKid` is the active key (the first one wins). */
  async requestRotation(activeKid: string, at: EpochMs): Promise<void> {
    this.check();
    if (this.keys.get(activeKid)?.info.state !== 'active' || this.rotation?.kid === activeKid) return;
    const req = { kid: activeKid, at };
    const path = join(this.dir, ROTATION_FILE);
    const run = this.writes.then(() => writeAtomic(this.dir, path, `${JSON.stringify(req)}\n`));
    this.writes = run.catch(() => undefined);
    await run;
    this.rotation = req;
  }

  /** The pending rotation request, if its key is still active. */
  async rotationRequest(): Promise<RotationRequest | null> {
    this.check();
    const r = this.rotation;
    return r && this.keys.get(r.kid)?.info.state === 'active' ? { ...r } : null;
  }

  private async clearRotation(): Promise<void> {
    this.rotation = null;
    const path = join(this.dir, ROTATION_FILE);
    const run = this.writes.then(() => unlink(path).catch((err: unknown) => {
      if ((err as { code?: string }).code !== 'ENOENT') throw mayflyError('ERR_KEYSTORE', `cannot remove ${path}; check the key directory is writable`, { path }, err);
    }));
    this.writes = run.catch(() => undefined);
    await run;
  }

  /** Raises lastTokenExpiresAt in memory; flushed within flushIntervalMs. Unknown kids are ignored. */
  noteTokenExpiry(kid: string, exp: EpochMs): void {
    const e = this.keys.get(kid);
    if (!e || this.closed || (e.info.lastTokenExpiresAt !== null && exp <= e.info.lastTokenExpiresAt)) return;
    e.info.lastTokenExpiresAt = exp;
    this.dirty.add(kid);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush().catch((err: unknown) => {
        this.onFlushError?.(isMayflyError(err) ? err : mayflyError('ERR_KEYSTORE', 'key store flush failed', undefined, err));
        if (this.dirty.size > 0) this.scheduleFlush();
      });
    }, this.flushIntervalMs);
    this.timer.unref();
  }

  /** Writes every key whose lastTokenExpiresAt changed since it was last persisted. */
  async flush(): Promise<void> {
    const kids = [...this.dirty];
    for (const kid of kids) {
      const e = this.keys.get(kid);
      if (!e) continue;
      const exp = e.info.lastTokenExpiresAt;
      this.dirty.delete(kid);
      try {
        await this.persist({ ...e, info: { ...e.info } });
      } catch (err) {
        this.dirty.add(kid);
        throw err;
      }
      if (e.info.lastTokenExpiresAt !== exp) this.dirty.add(kid);
    }
  }

  /** A cached signer; ERR_KEYSTORE if the key is retired or revoked. */
  async signer(kid: string): Promise<Signer> {
    const e = this.entry(kid);
    if (!canSign(e.info.state)) throw mayflyError('ERR_KEYSTORE', `key ${kid} is ${e.info.state} and can no longer sign`, { kid });
    e.signer ??= localSigner(kid, e.info.alg, e.material.privateKey, () => (this.closed ? undefined : this.keys.get(kid)?.info.state));
    return e.signer;
  }

  /** Flushes pending expiries and forgets every key; later calls fail with ERR_KEYSTORE. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    try {
      await this.flush();
      await this.writes;
    } finally {
      this.closed = true;
      this.keys.clear();
    }
  }

  /** Queues an atomic write of `e` (serialised with every other write of this store). */
  private persist(e: Entry): Promise<void> {
    const body: Omit<KeyFile, 'mac'> = {
      format: FORMAT,
      kid: e.info.kid,
      alg: e.info.alg,
      state: e.info.state,
      createdAt: e.info.createdAt,
      stateSince: e.info.stateSince,
      lastTokenExpiresAt: e.info.lastTokenExpiresAt,
      publicJwk: e.info.publicJwk,
      kekId: this.derived.kekId,
      privateKey: e.sealed,
    };
    const file: KeyFile = { ...body, mac: createHmac('sha256', this.derived.mac).update(macInput(body)).digest('base64url') };
    const path = join(this.dir, `${e.info.kid}.json`);
    const run = this.writes.then(() => writeAtomic(this.dir, path, `${JSON.stringify(file, null, 2)}\n`));
    this.writes = run.catch(() => undefined);
    return run;
  }
}

/** Name of the pending-rotation file in the key directory (not a key: no `.json`). */
const ROTATION_FILE = 'rotation-request';

async function loadRotationRequest(path: string): Promise<RotationRequest> {
  let r: unknown;
  try {
    r = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw mayflyError('ERR_KEYSTORE', `${path} is not valid JSON; remove it (and run keys rotate again if a rotation was wanted)`, { path }, err);
  }
  const o = r as { kid?: unknown; at?: unknown };
  if (typeof o !== 'object' || o === null || typeof o.kid !== 'string' || typeof o.at !== 'number' || !Number.isFinite(o.at)) {
    throw mayflyError('ERR_KEYSTORE', `${path} is not a rotation request ({"kid","at"}); remove it (and run keys rotate again if a rotation was wanted)`, { path });
  }
  return { kid: o.kid, at: o.at };
}

/** temp file (0600, O_EXCL) → fsync → rename → fsync dir, so a crash leaves the old or the new file, never a torn one. */
async function writeAtomic(dir: string, path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await chmod(tmp, 0o600);
    await rename(tmp, path);
    const dh = await open(dir, fsc.O_RDONLY);
    try {
      await dh.sync();
    } catch {
      // Some file systems refuse fsync on a directory; the rename is still atomic.
    } finally {
      await dh.close();
    }
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    const code = (err as { code?: string }).code ?? 'unknown';
    throw mayflyError('ERR_KEYSTORE', `cannot write key file ${path} (${code}); check the key directory is writable and the disk has space`, { path }, err);
  }
}

export function checkKek(kek: Buffer, source: string): void {
  if (!Buffer.isBuffer(kek) || kek.length !== 32) {
    throw mayflyError('ERR_KEYSTORE', `${source} must be exactly 32 bytes (got ${Buffer.isBuffer(kek) ? kek.length : typeof kek}); generate one with: openssl rand -base64 32`);
  }
}

const B64_RE = /^[A-Za-z0-9+/_-]+={0,2}$/;

function decodeKek(text: string, source: string): Buffer {
  const s = text.trim();
  if (!B64_RE.test(s)) throw mayflyError('ERR_KEYSTORE', `${source} is not base64; generate a KEK with: openssl rand -base64 32`);
  const kek = Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  checkKek(kek, source);
  return kek;
}

/**
 * Loads the KEK from exactly one source: `env`, the base64 value of an
 * environment variable (named `envName` in messages, default MAYFLY_KEK), or
 * `file`, holding 32 raw bytes or their base64. A KEK file readable by group
 * or others is refused.
 */
export function loadKek(source: { env?: string; file?: string; envName?: string }): Buffer {
  const envName = source.envName ?? 'MAYFLY_KEK';
  const hasEnv = source.env !== undefined && source.env !== '';
  const hasFile = source.file !== undefined && source.file !== '';
  if (hasEnv === hasFile) {
    throw mayflyError('ERR_KEYSTORE', hasEnv ? `both ${envName} and a KEK file are set; configure exactly one` : `no key-encryption key: set ${envName} (base64 of 32 random bytes) or a KEK file`);
  }
  if (hasEnv) return decodeKek(source.env!, envName);
  const file = source.file!;
  let st;
  try {
    st = statSync(file);
  } catch (err) {
    throw mayflyError('ERR_KEYSTORE', `KEK file ${file} cannot be read (${(err as { code?: string }).code ?? 'error'})`, { path: file }, err);
  }
  if (!st.isFile()) throw mayflyError('ERR_KEYSTORE', `KEK file ${file} is not a regular file`, { path: file });
  if (modeProblem(st.mode)) {
    throw mayflyError('ERR_KEYSTORE', `KEK file ${file} is accessible by group or others (mode ${octal(st.mode)}); run: chmod 600 ${file}`, { path: file });
  }
  const raw = readFileSync(file);
  if (raw.length === 32) return Buffer.from(raw);
  return decodeKek(raw.toString('utf8'), `KEK file ${file}`);
}
