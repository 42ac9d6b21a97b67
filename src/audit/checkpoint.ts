/**
 * Signed checkpoints: how the audit log learns where it ends.
 *
 * A hash chain proves that the records it has are in order and unedited; it
 * cannot prove that none are missing at the end, because a log cut after any
 * record is itself a valid chain. So the broker periodically, and at a clean
 * shutdown, seals the head:
 *   1. it appends an `audit.checkpoint` record whose `sig` is an Ed25519
 *      signature, with the broker's audit key, over (broker_id, seq, hash) of
 *      the record before it (the checkpoint's own `seq - 1` and `prev`);
 *   2. it flushes the log to disk;
 *   3. it records the checkpoint record's own seq and hash in the Store
 *      (`putAuditHead`), outside the file.
 * `mayfly audit verify` then requires the log to reach that stored head
 * (else: `end_missing`) and checks every checkpoint signature with the public
 * key (else: `checkpoint_invalid`). See docs/audit.md for what this proves
 * against which attacker.
 *
 * The signing key is the broker's audit key, one Ed25519 key per data dir,
 * separate from the token signing keys: those rotate and leave the JWKS,
 * while a checkpoint must stay verifiable for as long as the log is kept.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign as edSign, verify as edVerify, createHash, type KeyObject } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { mayflyError } from '../core/errors.js';
import type { Clock, Store } from '../core/ports.js';
import type { AuditHead } from '../core/types.js';
import type { ChainedAuditSink } from './chain.js';
import { CHECKPOINT_EVENT, END_MISSING_EVENT, type AuditRecord, type ChainHead } from './record.js';

/** Why a checkpoint was written. */
export type CheckpointReason = 'periodic' | 'shutdown';

/** The only signature algorithm of checkpoints. */
export const CHECKPOINT_ALG = 'EdDSA';

/** File names of the audit key inside the data dir. */
export const AUDIT_KEY_FILE = 'audit-key.pem';
export const AUDIT_JWKS_FILE = 'audit-key.jwks.json';

/** Bytes a checkpoint signs: a fixed label, then the broker id and the head it seals, newline-separated. */
export function checkpointSigningInput(brokerId: string, head: ChainHead): Buffer {
  return Buffer.from(`mayfly-audit-checkpoint/v1\n${brokerId}\n${head.seq}\n${head.hash}`, 'utf8');
}

/** RFC 7638 thumbprint of an Ed25519 public key: the kid of checkpoints and of the published JWKS. */
function okpThumbprint(x: string): string {
  return createHash('sha256').update(`{"crv":"Ed25519","kty":"OKP","x":"${x}"}`).digest('base64url');
}

/** The broker's audit signing key. */
export class AuditKey {
  readonly kid: string;
  private constructor(
    private readonly privateKey: KeyObject,
    readonly publicJwk: { kty: 'OKP'; crv: 'Ed25519'; x: string; kid: string; alg: 'EdDSA'; use: 'sig' },
  ) {
    this.kid = publicJwk.kid;
  }

  /** Wraps an Ed25519 private key. */
  static fromPrivateKey(privateKey: KeyObject): AuditKey {
    if (privateKey.asymmetricKeyType !== 'ed25519') throw mayflyError('ERR_CONFIG_INVALID', 'audit key must be an Ed25519 private key');
    const jwk = createPublicKey(privateKey).export({ format: 'jwk' }) as { x: string };
    return new AuditKey(privateKey, { kty: 'OKP', crv: 'Ed25519', x: jwk.x, kid: okpThumbprint(jwk.x), alg: 'EdDSA', use: 'sig' });
  }

  /** A fresh key (tests; the broker uses loadOrCreate). */
  static generate(): AuditKey {
    return AuditKey.fromPrivateKey(generateKeyPairSync('ed25519').privateKey);
  }

  /**
   * Loads the key at `path`, creating it (mode 0600) on first start, and
   * (re)writes the public JWKS next to it for operators to copy off the host.
   */
  static loadOrCreate(path: string, jwksPath: string): AuditKey {
    let key: AuditKey;
    let pem: Buffer | undefined;
    try {
      pem = readFileSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw mayflyError('ERR_CONFIG_INVALID', `audit key ${path} cannot be read: ${(err as Error).message}`, { path }, err);
    }
    if (pem !== undefined) {
      try {
        key = AuditKey.fromPrivateKey(createPrivateKey(pem));
      } catch (err) {
        throw mayflyError('ERR_CONFIG_INVALID', `audit key ${path} is not an Ed25519 private key in PEM; move it aside to generate a new one`, { path }, err);
      }
    } else {
      const kp = generateKeyPairSync('ed25519');
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      writeFileSync(path, kp.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
      key = AuditKey.fromPrivateKey(kp.privateKey);
    }
    chmodSync(path, 0o600);
    writeFileSync(jwksPath, JSON.stringify(key.jwks(), null, 2) + '\n', { mode: 0o644 });
    return key;
  }

  /** The public key as a JWKS document (what `mayfly audit verify --jwks` reads). */
  jwks(): { keys: Array<AuditKey['publicJwk']> } {
    return { keys: [{ ...this.publicJwk }] };
  }

  /** Ed25519 signature, base64url. */
  sign(data: Buffer): string {
    return edSign(null, data, this.privateKey).toString('base64url');
  }
}

/** Public keys that may have signed checkpoints, by kid. */
export type CheckpointKeys = ReadonlyMap<string, KeyObject>;

/** Reads a JWKS document (as written by AuditKey) into verification keys; only Ed25519 keys are taken. */
export function checkpointKeysFromJwks(json: string): CheckpointKeys {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch {
    throw mayflyError('ERR_INVALID_ARGUMENT', 'audit key JWKS is not valid JSON');
  }
  const keys = (doc as { keys?: unknown })?.keys;
  if (!Array.isArray(keys)) throw mayflyError('ERR_INVALID_ARGUMENT', 'audit key JWKS has no "keys" array');
  const out = new Map<string, KeyObject>();
  for (const k of keys as Array<Record<string, unknown>>) {
    if (k?.['kty'] !== 'OKP' || k['crv'] !== 'Ed25519' || typeof k['x'] !== 'string') continue;
    const x = k['x'];
    try {
      out.set(okpThumbprint(x), createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x }, format: 'jwk' }));
    } catch {
      // A malformed entry verifies nothing; the checkpoint it signed is then reported as unverifiable.
    }
  }
  if (out.size === 0) throw mayflyError('ERR_INVALID_ARGUMENT', 'audit key JWKS holds no Ed25519 key');
  return out;
}

/** Why a checkpoint record does not verify, or null when it does. Pure. */
export function checkpointProblem(record: AuditRecord, keys: CheckpointKeys): string | null {
  const kid = record['kid'];
  const sig = record['sig'];
  if (record['alg'] !== CHECKPOINT_ALG || typeof kid !== 'string' || typeof sig !== 'string') return 'checkpoint record lacks alg EdDSA, kid or sig';
  const key = keys.get(kid);
  if (!key) return `checkpoint signed by unknown audit key ${JSON.stringify(kid.slice(0, 64))}`;
  const input = checkpointSigningInput(record.broker_id, { seq: record.seq - 1, hash: record.prev });
  let ok = false;
  try {
    ok = edVerify(null, input, key, Buffer.from(sig, 'base64url'));
  } catch {
    ok = false;
  }
  return ok ? null : 'checkpoint signature does not verify (forged or edited checkpoint)';
}

/**
 * Seals the current head: appends a signed checkpoint record, flushes the log
 * and returns the head to record in the Store. Throws if the record could not
 * be written (the caller must then not move the stored head).
 */
export function writeCheckpoint(sink: ChainedAuditSink, key: AuditKey, reason: CheckpointReason, at: number): AuditHead {
  const record = sink.appendSealed((head, brokerId) => ({
    event: CHECKPOINT_EVENT,
    outcome: 'success',
    checkpoint: reason,
    alg: CHECKPOINT_ALG,
    kid: key.kid,
    sig: key.sign(checkpointSigningInput(brokerId, head)),
  }));
  sink.sync();
  return { brokerId: record.broker_id, seq: record.seq, hash: record.hash, at };
}

/**
 * True when the log does not reach `stored`: it ends before it, or holds a
 * different record at its seq. Only the log's own head is compared (O(1));
 * a rewrite further back is for `mayfly audit verify` to find.
 */
export function endMissing(logHead: ChainHead, stored: AuditHead | null): boolean {
  if (stored === null) return false;
  return logHead.seq < stored.seq || (logHead.seq === stored.seq && logHead.hash !== stored.hash);
}

/** Notes in the log itself that its end was cut off while the broker was down (see END_MISSING_EVENT). */
export function writeEndMissing(sink: ChainedAuditSink, stored: AuditHead): AuditRecord {
  const head = sink.chainHead();
  const record = sink.appendSealed(() => ({
    event: END_MISSING_EVENT,
    outcome: 'error',
    reason: `the audit log ends at seq ${head.seq} but the database holds checkpoint seq ${stored.seq}: the end of the log was removed or rewritten while the broker was stopped`,
    expected_seq: stored.seq,
    expected_hash: stored.hash,
  }));
  sink.sync();
  return record;
}

/**
 * The broker's side of checkpoints: checks the log against the stored head
 * at start, and seals the head (signed record, flush, Store) periodically and
 * at shutdown. Sealing is skipped when nothing was written since the last one.
 */
export class AuditSealer {
  private sealedSeq = -1;

  constructor(
    private readonly sink: ChainedAuditSink,
    private readonly key: AuditKey,
    private readonly store: Pick<Store, 'getAuditHead' | 'putAuditHead'>,
    private readonly clock: Clock,
  ) {}

  /**
   * Compares the log with the head in the Store; if the log falls short,
   * writes an `audit.end_missing` record and returns it (the caller logs an
   * error). Starting anyway keeps an attacker who can cut the log from also
   * stopping the broker; the loss stays visible in the log and to verify.
   */
  async open(): Promise<AuditRecord | null> {
    const stored = await this.store.getAuditHead(this.brokerId());
    if (!endMissing(this.sink.chainHead(), stored)) return null;
    return writeEndMissing(this.sink, stored!);
  }

  /** Seals the current head unless it already is sealed. */
  async seal(reason: CheckpointReason): Promise<AuditHead | null> {
    if (this.sink.chainHead().seq === this.sealedSeq) return null;
    const head = writeCheckpoint(this.sink, this.key, reason, this.clock.now());
    this.sealedSeq = head.seq;
    await this.store.putAuditHead(head);
    return head;
  }

  private brokerId(): string {
    return this.sink.brokerId;
  }
}
