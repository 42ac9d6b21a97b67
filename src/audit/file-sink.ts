/**
 * Append-only JSON-lines audit log with a SHA-256 hash chain.
 *
 * Each record is one synchronous write(2) on a descriptor opened with
 * O_APPEND: the order in the file is the order of `write` calls (no
 * interleaving from async code), and a record is in the page cache before
 * the request continues. Per-record fsync is optional (`fsync: true`); by
 * default a power loss can lose the last records or tear the last line,
 * which the resume logic below handles. The sink assumes it is the only
 * writer of its file (one broker per data dir; no copytruncate rotation).
 *
 * Reopen: only the tail of an existing file is read (O(1) start-up). If the
 * last line is a valid record the chain simply continues from it. If the last
 * line is damaged (a torn write after a crash, or an edit), the sink does NOT
 * continue silently: it terminates that line and appends an `audit.resume`
 * record that chains from the last valid record and carries the SHA-256 and
 * length of the damaged line, so `verifyAuditLog` can tell an acknowledged
 * torn tail from tampering and still report it. Damage beyond the last line
 * is not a crash artefact, so opening throws and the operator must run
 * `mayfly audit verify` and move the file aside.
 */
import { closeSync, fchmodSync, fstatSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { isMayflyError, mayflyError } from '../core/errors.js';
import { ChainedAuditSink, type ChainedSinkOptions } from './chain.js';
import { GENESIS_HEAD, parseRecord, RESUME_EVENT, sha256Hex, type AuditRecord, type ChainHead } from './record.js';

/** File name inside the data dir when no explicit path is given. */
export const AUDIT_LOG_FILE = 'audit.log';

/** How much of an existing log is read on open to find the chain head; a single damaged line longer than this refuses to open. */
export const TAIL_WINDOW_BYTES = 1024 * 1024;

export interface FileAuditSinkOptions extends ChainedSinkOptions {
  /** Log file; defaults to `<dataDir>/audit.log`. */
  path?: string;
  dataDir?: string;
  /** fsync after every record: survives power loss, costs a disk flush per request. Default false. */
  fsync?: boolean;
}

/** What reopening found at the end of an existing log. */
interface TailState {
  head: ChainHead;
  /** The file does not end with "\n" and needs one before the next record. */
  needsNewline: boolean;
  /** Raw bytes of a damaged last line, to acknowledge in an audit.resume record. */
  damaged?: Buffer;
  damagedReason?: string;
}

export class FileAuditSink extends ChainedAuditSink {
  /** Absolute or relative path of the log file. */
  readonly path: string;
  private fd: number;
  private readonly fsync: boolean;
  /** Bytes known to be good; a failed write is truncated back to this so the next record starts on a fresh line. */
  private size: number;
  private dirty = false;

  constructor(options: FileAuditSinkOptions) {
    const path = options.path ?? (options.dataDir !== undefined ? join(options.dataDir, AUDIT_LOG_FILE) : undefined);
    if (path === undefined) throw mayflyError('ERR_CONFIG_INVALID', 'audit: FileAuditSink needs `path` or `dataDir`');
    const cannotOpen = (err: unknown) =>
      isMayflyError(err) ? err : mayflyError('ERR_INTERNAL', `audit: cannot open ${path}: ${(err as Error).message}`, { path }, err);
    let tail: TailState;
    try {
      tail = readTailState(path);
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw cannotOpen(err);
    }
    super(options, tail.head);
    this.path = path;
    this.fsync = options.fsync ?? false;
    try {
      this.fd = openSync(path, 'a', 0o600);
    } catch (err) {
      throw cannotOpen(err);
    }
    try {
      // The mode argument only applies on creation; tighten a pre-existing file too.
      fchmodSync(this.fd, 0o600);
      this.size = fstatSync(this.fd).size;
      if (tail.needsNewline) this.appendBytes(Buffer.from('\n'));
      if (tail.damaged !== undefined) {
        this.writeRecord({
          event: RESUME_EVENT,
          outcome: 'error',
          reason: `last line of the audit log was damaged (${tail.damagedReason}); chain resumed from seq ${tail.head.seq}`,
          damaged_sha256: sha256Hex(tail.damaged),
          damaged_bytes: tail.damaged.length,
        });
      }
    } catch (err) {
      closeSync(this.fd);
      throw cannotOpen(err);
    }
  }

  /** Flushes the file to disk; take a verify anchor (chainHead) after this. */
  sync(): void {
    if (!this.closed) fsyncSync(this.fd);
  }

  protected append(_record: AuditRecord, line: string): void {
    this.appendBytes(Buffer.from(line + '\n', 'utf8'));
  }

  private appendBytes(buf: Buffer): void {
    try {
      if (this.dirty) this.truncateToGood();
      let off = 0;
      while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
      if (this.fsync) fsyncSync(this.fd);
      this.size += buf.length;
    } catch (err) {
      this.dirty = true;
      try {
        this.truncateToGood();
      } catch {
        // Retried before the next write; until then health() already reports the failure.
      }
      throw err;
    }
  }

  /** Removes bytes of a partial write so a half record never fuses with the next one. */
  private truncateToGood(): void {
    // Never extend: if the file shrank under us (external truncation) zero-filling would only add damage.
    if (fstatSync(this.fd).size > this.size) ftruncateSync(this.fd, this.size);
    this.dirty = false;
  }

  protected closeBackend(): void {
    try {
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
    }
  }
}

/** Reads the end of an existing log and decides where the chain resumes. */
function readTailState(path: string): TailState {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { head: { ...GENESIS_HEAD }, needsNewline: false };
    throw err;
  }
  if (size === 0) return { head: { ...GENESIS_HEAD }, needsNewline: false };
  const n = Math.min(size, TAIL_WINDOW_BYTES);
  const tail = Buffer.alloc(n);
  const fd = openSync(path, 'r');
  try {
    let got = 0;
    while (got < n) {
      const r = readSync(fd, tail, got, n - got, size - n + got);
      if (r === 0) break;
      got += r;
    }
  } finally {
    closeSync(fd);
  }
  return analyzeTail(tail, n === size, path);
}

function analyzeTail(tail: Buffer, wholeFile: boolean, path: string): TailState {
  const refuse = (why: string) =>
    mayflyError(
      'ERR_INTERNAL',
      `audit: ${path} is damaged (${why}); run \`mayfly audit verify ${path}\`, move the file aside and restart`,
      { path },
    );
  const terminated = tail[tail.length - 1] === 0x0a;
  const body = terminated ? tail.subarray(0, tail.length - 1) : tail;
  const lastNl = body.lastIndexOf(0x0a);
  if (lastNl === -1 && !wholeFile) throw refuse(`last line longer than ${TAIL_WINDOW_BYTES} bytes`);
  const lastLine = body.subarray(lastNl + 1);
  const last = parseRecord(lastLine.toString('utf8'));
  if (last.ok) {
    // Only the newline was lost: the record itself is whole, so the chain continues from it.
    return { head: { seq: last.record.seq, hash: last.record.hash }, needsNewline: !terminated };
  }
  let head: ChainHead = { ...GENESIS_HEAD };
  if (lastNl !== -1) {
    const before = body.subarray(0, lastNl);
    const prevNl = before.lastIndexOf(0x0a);
    if (prevNl === -1 && !wholeFile) throw refuse(`line before the last is longer than ${TAIL_WINDOW_BYTES} bytes`);
    const prev = parseRecord(before.subarray(prevNl + 1).toString('utf8'));
    if (!prev.ok) throw refuse(`the last two lines are invalid: ${prev.reason}`);
    head = { seq: prev.record.seq, hash: prev.record.hash };
  }
  return { head, needsNewline: !terminated, damaged: Buffer.from(lastLine), damagedReason: last.reason };
}
