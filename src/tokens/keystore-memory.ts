/**
 * In-memory KeyStore. DEV/TEST ONLY: keys vanish with the process, so every
 * restart rotates everything and tokens already issued stop verifying.
 */
import { mayflyError } from '../core/errors.js';
import type { KeyStore, RotationRequest, Signer } from '../core/ports.js';
import type { EpochMs, KeyInfo, KeyState, SigningAlg } from '../core/types.js';
import { canSign, checkTransition, copyInfo, generateKeyMaterial, localSigner, type KeyMaterial } from './key-material.js';

interface Entry {
  info: KeyInfo;
  material: KeyMaterial;
  signer?: Signer;
}


/** Dev/test-only KeyStore kept in process memory. */
export class MemoryKeyStore implements KeyStore {
  private readonly keys = new Map<string, Entry>();
  private rotation: RotationRequest | null = null;
  private closed = false;

  private check(): void {
    if (this.closed) throw mayflyError('ERR_KEYSTORE', 'key store is closed');
  }

  private entry(kid: string): Entry {
    this.check();
    const e = this.keys.get(kid);
    if (!e) throw mayflyError('ERR_KEY_NOT_FOUND', `no key with kid ${kid}`, { kid });
    return e;
  }

  /** Generates a key in `state`. */
  async create(alg: SigningAlg, state: KeyState, now: EpochMs): Promise<KeyInfo> {
    this.check();
    const material = generateKeyMaterial(alg);
    const info: KeyInfo = { kid: material.kid, alg, state, createdAt: now, stateSince: now, publicJwk: material.publicJwk, lastTokenExpiresAt: null };
    this.keys.set(info.kid, { info, material });
    return copyInfo(info);
  }

  /** All keys, oldest first. */
  async list(): Promise<KeyInfo[]> {
    this.check();
    return [...this.keys.values()].map((e) => copyInfo(e.info)).sort((a, b) => a.createdAt - b.createdAt || (a.kid < b.kid ? -1 : 1));
  }

  /** Moves a key to `state` (see checkTransition). */
  async setState(kid: string, state: KeyState, now: EpochMs): Promise<void> {
    const e = this.entry(kid);
    checkTransition(kid, e.info.state, state);
    if (e.info.state === state) return;
    e.info.state = state;
    e.info.stateSince = now;
    if (this.rotation?.kid === kid) this.rotation = null;
  }

  /** Remembers a rotation request while `activeKid` is the active key (the first one wins). */
  async requestRotation(activeKid: string, at: EpochMs): Promise<void> {
    this.check();
    if (this.keys.get(activeKid)?.info.state !== 'active' || this.rotation?.kid === activeKid) return;
    this.rotation = { kid: activeKid, at };
  }

  /** The pending rotation request, if its key is still active. */
  async rotationRequest(): Promise<RotationRequest | null> {
    this.check();
    const r = this.rotation;
    return r && this.keys.get(r.kid)?.info.state === 'active' ? { ...r } : null;
  }

  /** Raises lastTokenExpiresAt; unknown kids are ignored (nothing can sign with them). */
  noteTokenExpiry(kid: string, exp: EpochMs): void {
    const e = this.keys.get(kid);
    if (e && (e.info.lastTokenExpiresAt === null || exp > e.info.lastTokenExpiresAt)) e.info.lastTokenExpiresAt = exp;
  }

  /** A cached signer; ERR_KEYSTORE if the key is retired or revoked. */
  async signer(kid: string): Promise<Signer> {
    const e = this.entry(kid);
    if (!canSign(e.info.state)) throw mayflyError('ERR_KEYSTORE', `key ${kid} is ${e.info.state} and can no longer sign`, { kid });
    e.signer ??= localSigner(kid, e.info.alg, e.material.privateKey, () => (this.closed ? undefined : this.keys.get(kid)?.info.state));
    return e.signer;
  }

  /** Forgets every key; later calls fail with ERR_KEYSTORE. */
  async close(): Promise<void> {
    this.closed = true;
    this.keys.clear();
    this.rotation = null;
  }
}
