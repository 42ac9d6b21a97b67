/**
 * PostgreSQL KeyStore: the cluster's one shared key set, one row per key in
 * `signing_keys`, so every replica signs with the same active key and serves
 * the same JWKS (docs/clustering.md says why a shared set and not one key per
 * replica).
 *
 * The private key never reaches the database unencrypted: each row holds the
 * PKCS#8 DER sealed with AES-256-GCM under a wrap key derived from the KEK,
 * and an HMAC over every other column, exactly as the file key store does
 * (same `mayfly.key/v1` derivation, AAD and MAC input). The KEK stays outside
 * the database (environment or file, one per replica, the same value on all).
 * Whoever can write the table but does not hold the KEK can delete keys (an
 * availability problem) but cannot forge, swap or re-state one unnoticed.
 *
 * Cluster behaviour:
 * - `list()` reads the table, so a KeyManager that re-lists sees the other
 *   replicas' changes; every change also sends NOTIFY on `mayfly_keys` (KEYS_CHANNEL) in the
 *   same transaction, so `watch()` wakes the other replicas within a
 *   round-trip instead of waiting for their next poll.
 * - `setState` checks the transition against the row under FOR UPDATE, so two
 *   replicas can never move one key along two paths.
 * - `lock()` is a session advisory lock on its own connection: the lifecycle
 *   (create next, promote, retire, revoke) runs on one replica at a time, and
 *   the lock is released by PostgreSQL if that replica dies.
 * - A pending `keys rotate` is a row of `key_rotation_requests` naming the
 *   active key it rotates away from, written before the request is answered
 *   and deleted in the transaction that moves that key out of `active`: the
 *   replica that took the request may die, the next lifecycle run on any
 *   replica completes it. No MAC: a forged row can only bring a rotation
 *   forward, which still pre-publishes and waits for the acknowledgement gate.
 * - noteTokenExpiry (hot path) only updates memory; a timer writes
 *   GREATEST(stored, noted) under a row lock at most every `flushIntervalMs`.
 *   A signer handed out earlier refuses to sign once this store has seen its
 *   key retired or revoked (by any replica).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Pool, PoolClient } from 'pg';
import { isMayflyError, mayflyError, type MayflyError } from '../core/errors.js';
import type { KeyStore, RotationRequest, Signer } from '../core/ports.js';
import type { EpochMs, KeyInfo, KeyState, SigningAlg } from '../core/types.js';
import { canSign, checkTransition, copyInfo, generateKeyMaterial, localSigner, SIGNING_ALGS } from './key-material.js';
import { checkKek, derive, FORMAT, KEY_STATES, macInput, sealPrivateKey, unsealPrivateKey, type DerivedKeys, type KeyFile, type SealedKey } from './keystore-file.js';

/** Channel the key store notifies on every change (payload: the kid). */
export const KEYS_CHANNEL = 'mayfly_keys';

/** Advisory lock key of the key lifecycle (`hashtext('mayfly.keys.lifecycle')` would vary by version; a constant does not). */
const LIFECYCLE_LOCK = 0x6d61_7966; // "mayf"

export interface PostgresKeyStoreOptions {
  /** Pool shared with the store; the key store never ends it. */
  pool: Pool;
  /** 32-byte key-encryption key (see loadKek); the same on every replica. */
  kek: Buffer;
  /** Longest delay before a noteTokenExpiry change reaches the database (ms, default 2000). */
  flushIntervalMs?: number;
  onFlushError?: (err: MayflyError) => void;
}

interface Row {
  kid: string;
  alg: string;
  state: string;
  created_at: string;
  state_since: string;
  last_token_expires_at: string | null;
  public_jwk: Record<string, string>;
  kek_id: string;
  private_key: SealedKey;
  mac: string;
}

const COLUMNS = 'kid, alg, state, created_at, state_since, last_token_expires_at, public_jwk, kek_id, private_key, mac';

function dbError(what: string, err: unknown): MayflyError {
  if (isMayflyError(err)) return err;
  return mayflyError('ERR_KEYSTORE', `key store: cannot ${what} (${(err as { code?: string }).code ?? (err as Error).message}); check that PostgreSQL is reachable`, undefined, err);
}

/** Shared, encrypted-at-rest KeyStore in PostgreSQL. */
export class PostgresKeyStore implements KeyStore {
  private readonly derived: DerivedKeys;
  /** Last state seen for each kid (any replica's change, once listed); read by every signature. */
  private readonly states = new Map<string, KeyState>();
  /** noteTokenExpiry values not yet written. */
  private readonly pending = new Map<string, EpochMs>();
  private readonly signers = new Map<string, Signer>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly pool: Pool;
  private readonly flushIntervalMs: number;
  private readonly onFlushError: ((err: MayflyError) => void) | undefined;

  private constructor(options: PostgresKeyStoreOptions) {
    checkKek(options.kek, 'the configured KEK');
    this.derived = derive(options.kek);
    this.pool = options.pool;
    this.flushIntervalMs = options.flushIntervalMs ?? 2000;
    this.onFlushError = options.onFlushError;
  }

  /**
   * Opens the store and verifies every row: ERR_KEYSTORE if a key was written
   * under another KEK or fails its integrity check.
   */
  static async open(options: PostgresKeyStoreOptions): Promise<PostgresKeyStore> {
    const ks = new PostgresKeyStore(options);
    await ks.list();
    return ks;
  }

  private check(): void {
    if (this.closed) throw mayflyError('ERR_KEYSTORE', 'key store is closed');
  }

  private sealedMac(body: Omit<KeyFile, 'mac'>): string {
    return createHmac('sha256', this.derived.mac).update(macInput(body)).digest('base64url');
  }

  private body(info: KeyInfo, sealed: SealedKey): Omit<KeyFile, 'mac'> {
    return {
      format: FORMAT,
      kid: info.kid,
      alg: info.alg,
      state: info.state,
      createdAt: info.createdAt,
      stateSince: info.stateSince,
      lastTokenExpiresAt: info.lastTokenExpiresAt,
      publicJwk: info.publicJwk,
      kekId: this.derived.kekId,
      privateKey: sealed,
    };
  }

  /** Checks a row's KEK id and MAC; returns its KeyInfo. */
  private verifyRow(r: Row): KeyInfo {
    const tampered = (why: string) =>
      mayflyError('ERR_KEYSTORE', `key ${r.kid} in signing_keys failed its integrity check (${why}): the row was edited or corrupted; restore it from backup, or revoke the key`, { kid: r.kid });
    if (!SIGNING_ALGS.includes(r.alg as SigningAlg) || !KEY_STATES.includes(r.state as KeyState)) throw tampered('unknown algorithm or state');
    if (r.kek_id !== this.derived.kekId) {
      throw mayflyError('ERR_KEYSTORE', `key store cannot be decrypted with the configured KEK (key ${r.kid} in signing_keys was written under a different KEK); configure the KEK the cluster was created with`, { kid: r.kid });
    }
    const info: KeyInfo = {
      kid: r.kid,
      alg: r.alg as SigningAlg,
      state: r.state as KeyState,
      createdAt: Number(r.created_at),
      stateSince: Number(r.state_since),
      publicJwk: r.public_jwk,
      lastTokenExpiresAt: r.last_token_expires_at === null ? null : Number(r.last_token_expires_at),
    };
    const expected = Buffer.from(this.sealedMac(this.body(info, r.private_key)), 'base64url');
    const got = Buffer.from(r.mac, 'base64url');
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) throw tampered('MAC mismatch');
    if (info.publicJwk['kid'] !== info.kid) throw tampered('kid does not match its public key');
    return info;
  }

  private withPending(info: KeyInfo): KeyInfo {
    const p = this.pending.get(info.kid);
    if (p !== undefined && (info.lastTokenExpiresAt === null || p > info.lastTokenExpiresAt)) info.lastTokenExpiresAt = p;
    return info;
  }

  /** Generates a key in `state` and inserts it before resolving. */
  async create(alg: SigningAlg, state: KeyState, now: EpochMs): Promise<KeyInfo> {
    this.check();
    const material = generateKeyMaterial(alg);
    const sealed = sealPrivateKey(material, alg, this.derived.wrap);
    const info: KeyInfo = { kid: material.kid, alg, state, createdAt: now, stateSince: now, publicJwk: material.publicJwk, lastTokenExpiresAt: null };
    const mac = this.sealedMac(this.body(info, sealed));
    await this.tx('create a key', async (cl) => {
      await cl.query(`INSERT INTO signing_keys (${COLUMNS}) VALUES ($1,$2,$3,$4,$5,NULL,$6,$7,$8,$9)`, [info.kid, alg, state, now, now, JSON.stringify(info.publicJwk), this.derived.kekId, JSON.stringify(sealed), mac]);
      await cl.query('SELECT pg_notify($1, $2)', [KEYS_CHANNEL, info.kid]);
    });
    this.states.set(info.kid, state);
    return copyInfo(info);
  }

  /** Every key in the table, oldest first, verified, with noted expiries not yet written. */
  async list(): Promise<KeyInfo[]> {
    this.check();
    let rows: Row[];
    try {
      rows = (await this.pool.query<Row>(`SELECT ${COLUMNS} FROM signing_keys ORDER BY created_at, kid`)).rows;
    } catch (err) {
      throw dbError('list keys', err);
    }
    this.check();
    const out = rows.map((r) => this.withPending(this.verifyRow(r)));
    for (const k of out) this.states.set(k.kid, k.state);
    return out.map(copyInfo);
  }

  /** Moves a key to `state`, checked against the stored state under a row lock. */
  async setState(kid: string, state: KeyState, now: EpochMs): Promise<void> {
    this.check();
    await this.tx('change a key state', async (cl) => {
      const r = (await cl.query<Row>(`SELECT ${COLUMNS} FROM signing_keys WHERE kid = $1 FOR UPDATE`, [kid])).rows[0];
      if (!r) throw mayflyError('ERR_KEY_NOT_FOUND', `no key with kid ${kid}`, { kid });
      const info = this.withPending(this.verifyRow(r));
      checkTransition(kid, info.state, state);
      if (info.state === state) return;
      info.state = state;
      info.stateSince = now;
      await this.writeRow(cl, info, r.private_key);
      if (state !== 'active') await cl.query('DELETE FROM key_rotation_requests WHERE kid = $1', [kid]);
    });
    this.states.set(kid, state);
    if (!canSign(state)) this.signers.delete(kid);
  }

  /** Inserts the request if `activeKid` is active (waiting out a concurrent state change of its row); keeps an earlier one. */
  async requestRotation(activeKid: string, at: EpochMs): Promise<void> {
    this.check();
    try {
      await this.pool.query(
        `INSERT INTO key_rotation_requests (kid, requested_at)
         SELECT kid, $2 FROM signing_keys WHERE kid = $1 AND state = 'active' FOR SHARE
         ON CONFLICT (kid) DO NOTHING`,
        [activeKid, at],
      );
    } catch (err) {
      throw dbError('record a rotation request', err);
    }
  }

  /** The oldest request whose key is still active. */
  async rotationRequest(): Promise<RotationRequest | null> {
    this.check();
    try {
      const { rows } = await this.pool.query<{ kid: string; requested_at: string }>(
        `SELECT r.kid, r.requested_at FROM key_rotation_requests r JOIN signing_keys k ON k.kid = r.kid AND k.state = 'active'
         ORDER BY r.requested_at LIMIT 1`,
      );
      const r = rows[0];
      return r ? { kid: r.kid, at: Number(r.requested_at) } : null;
    } catch (err) {
      throw dbError('read the rotation request', err);
    }
  }

  private async writeRow(cl: PoolClient, info: KeyInfo, sealed: SealedKey): Promise<void> {
    const mac = this.sealedMac(this.body(info, sealed));
    await cl.query('UPDATE signing_keys SET state = $2, state_since = $3, last_token_expires_at = $4, mac = $5 WHERE kid = $1', [info.kid, info.state, info.stateSince, info.lastTokenExpiresAt, mac]);
    await cl.query('SELECT pg_notify($1, $2)', [KEYS_CHANNEL, info.kid]);
    const p = this.pending.get(info.kid);
    if (p !== undefined && info.lastTokenExpiresAt !== null && p <= info.lastTokenExpiresAt) this.pending.delete(info.kid);
  }

  /** Raises lastTokenExpiresAt in memory; written within flushIntervalMs. Unknown kids are ignored. */
  noteTokenExpiry(kid: string, exp: EpochMs): void {
    if (this.closed || !this.states.has(kid)) return;
    const p = this.pending.get(kid);
    if (p !== undefined && exp <= p) return;
    this.pending.set(kid, exp);
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.flush().catch((err: unknown) => this.onFlushError?.(dbError('write token expiries', err)));
      }, this.flushIntervalMs);
      this.timer.unref();
    }
  }

  /** Writes every noted expiry above the stored one (never lowers it, whichever replica wrote last). */
  async flush(): Promise<void> {
    const run = this.flushing.then(async () => {
      for (const [kid, exp] of [...this.pending]) {
        await this.tx('write a token expiry', async (cl) => {
          const r = (await cl.query<Row>(`SELECT ${COLUMNS} FROM signing_keys WHERE kid = $1 FOR UPDATE`, [kid])).rows[0];
          if (!r) {
            this.pending.delete(kid);
            return;
          }
          const info = this.verifyRow(r);
          if (info.lastTokenExpiresAt !== null && info.lastTokenExpiresAt >= exp) {
            if (this.pending.get(kid) === exp) this.pending.delete(kid);
            return;
          }
          info.lastTokenExpiresAt = exp;
          await this.writeRow(cl, info, r.private_key);
        });
      }
    });
    this.flushing = run.catch(() => undefined);
    return run;
  }

  /** A cached signer; ERR_KEYSTORE if the key is retired or revoked. */
  async signer(kid: string): Promise<Signer> {
    this.check();
    const cached = this.signers.get(kid);
    const known = this.states.get(kid);
    if (cached && known && canSign(known)) return cached;
    let r: Row | undefined;
    try {
      r = (await this.pool.query<Row>(`SELECT ${COLUMNS} FROM signing_keys WHERE kid = $1`, [kid])).rows[0];
    } catch (err) {
      throw dbError('read a key', err);
    }
    this.check();
    if (!r) throw mayflyError('ERR_KEY_NOT_FOUND', `no key with kid ${kid}`, { kid });
    const info = this.verifyRow(r);
    this.states.set(kid, info.state);
    if (!canSign(info.state)) throw mayflyError('ERR_KEYSTORE', `key ${kid} is ${info.state} and can no longer sign`, { kid });
    const material = unsealPrivateKey(r.private_key, kid, info.alg, this.derived.wrap, (why, cause) =>
      mayflyError('ERR_KEYSTORE', `key ${kid} in signing_keys failed its integrity check (${why})`, { kid }, cause));
    const s = this.signers.get(kid) ?? localSigner(kid, info.alg, material.privateKey, () => (this.closed ? undefined : this.states.get(kid)));
    this.signers.set(kid, s);
    return s;
  }

  /**
   * Runs `fn` while holding the cluster-wide key-lifecycle lock (a session
   * advisory lock on a dedicated connection). With `wait: false` it returns
   * `{ ran: false }` at once when another replica holds it.
   */
  async lock<T>(fn: () => Promise<T>, wait: boolean): Promise<{ ran: true; value: T } | { ran: false }> {
    this.check();
    let cl: PoolClient;
    try {
      cl = await this.pool.connect();
    } catch (err) {
      throw dbError('connect for the key lifecycle lock', err);
    }
    let held = false;
    // A checked-out client that loses its connection emits 'error'; unhandled, that would end the process.
    // Losing it also frees the lock; transitions stay safe (checked under row locks), so fn just carries on.
    let lost: Error | undefined;
    const onError = (e: Error) => (lost = e);
    cl.on('error', onError);
    try {
      if (wait) {
        await cl.query('SELECT pg_advisory_lock($1)', [LIFECYCLE_LOCK]);
        held = true;
      } else {
        held = (await cl.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [LIFECYCLE_LOCK])).rows[0]!.ok;
        if (!held) return { ran: false };
      }
      return { ran: true, value: await fn() };
    } catch (err) {
      throw dbError('take the key lifecycle lock', err);
    } finally {
      cl.removeListener('error', onError);
      if (held && !lost) {
        // A failed unlock (connection lost) also frees the lock: PostgreSQL ends the session.
        await cl.query('SELECT pg_advisory_unlock($1)', [LIFECYCLE_LOCK]).then(
          () => cl.release(),
          (e: unknown) => cl.release(e as Error),
        );
      } else cl.release(lost);
    }
  }

  /** Writes pending expiries and forgets every key; later calls fail with ERR_KEYSTORE. Leaves the pool open. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    try {
      await this.flush();
    } finally {
      this.closed = true;
      this.states.clear();
      this.signers.clear();
      this.pending.clear();
    }
  }

  private async tx(what: string, fn: (cl: PoolClient) => Promise<void>): Promise<void> {
    let cl: PoolClient;
    try {
      cl = await this.pool.connect();
    } catch (err) {
      throw dbError(what, err);
    }
    let broken: Error | undefined;
    const onError = (e: Error) => (broken = e);
    cl.on('error', onError);
    try {
      await cl.query('BEGIN');
      await fn(cl);
      await cl.query('COMMIT');
    } catch (err) {
      await cl.query('ROLLBACK').catch((e: unknown) => (broken = e as Error));
      throw dbError(what, err);
    } finally {
      cl.removeListener('error', onError);
      cl.release(broken);
    }
  }
}
