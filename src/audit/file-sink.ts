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
 *
 * Rotation (optional, `maxBytes`): when the next record would push the file
 * past the limit, the file becomes the segment `<path>.<last seq, 12
 * digits>` and a new file starts. The chain continues across segments (the
 * new file's first record links to the segment's last), so segments are
 * verified together with `verifyAuditFiles(auditSegments(path))`. On reopen
 * an empty or missing current file resumes from the newest segment.
 */
import {
  closeSync,
  fchmodSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
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
  /** Rotate to a new segment when the file would exceed this many bytes. Default: never rotate. */
  maxBytes?: number;
}

const SEGMENT_DIGITS = 12;

/** Rotated segments of the log at `path`, oldest first, followed by `path` itself if it exists. */
export function auditSegments(path: string): string[] {
  const dir = dirname(path);
  const prefix = basename(path) + '.';
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  // Fixed-width seq suffix: lexicographic order is chain order.
  const segs = names
    .filter((n) => n.startsWith(prefix) && n.length === prefix.length + SEGMENT_DIGITS && /^\d+$/.test(n.slice(prefix.length)))
    .sort()
    .map((n) => join(dir, n));
  return names.includes(basename(path)) ? [...segs, path] : segs;
}

function segmentPath(path: string, lastSeq: number): string {
  return `${path}.${String(lastSeq).padStart(SEGMENT_DIGITS, '0')}`;
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
  private readonly maxBytes: number | undefined;
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
    this.maxBytes = options.maxBytes;
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
  override sync(): void {
    this.flushQueued();
    if (!this.closed) fsyncSync(this.fd);
  }

  protected append(_record: AuditRecord, line: string): void {
    const buf = Buffer.from(line + '\n', 'utf8');
    if (this.maxBytes !== undefined && this.size > 0 && this.size + buf.length > this.maxBytes) this.rotate();
    this.appendBytes(buf);
  }

  /** One write(2) for a group of records (writeConfirmed); a failed write is truncated away, so it is all or none. */
  protected override appendMany(_records: AuditRecord[], lines: string[]): void {
    const buf = Buffer.from(lines.join('\n') + '\n', 'utf8');
    // A group never straddles a rotation: the file rotates before it, and may end a group past maxBytes.
    if (this.maxBytes !== undefined && this.size > 0 && this.size + buf.length > this.maxBytes) this.rotate();
    this.appendBytes(buf);
  }

  /** Moves the current file to its segment name and starts a new one; on failure the current file stays in use. */
  private rotate(): void {
    if (this.dirty) this.truncateToGood();
    fsyncSync(this.fd);
    const seg = segmentPath(this.path, this.head.seq);
    // link+unlink rather than rename: link fails if the segment exists, so an old segment is never overwritten.
    linkSync(this.path, seg);
    let fd: number;
    try {
      unlinkSync(this.path);
      fd = openSync(this.path, 'a', 0o600);
    } catch (err) {
      try {
        linkSync(seg, this.path);
      } catch {
        // The current name may still exist (unlink failed); either way the segment link is undone next.
      }
      unlinkSync(seg);
      throw err;
    }
    closeSync(this.fd);
    this.fd = fd;
    this.size = 0;
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
  const base = segmentHead(path);
  const state = readFileTail(path, base);
  return state ?? { head: base, needsNewline: false };
}

/** Head of the newest rotated segment (genesis if none). A segment was closed cleanly, so any damage in it is refused. */
function segmentHead(path: string): ChainHead {
  const segs = auditSegments(path).filter((p) => p !== path);
  const newest = segs[segs.length - 1];
  if (newest === undefined) return { ...GENESIS_HEAD };
  const state = readFileTail(newest, GENESIS_HEAD);
  if (state === undefined || state.damaged !== undefined || state.needsNewline) {
    throw mayflyError(
      'ERR_INTERNAL',
      `audit: segment ${newest} does not end with a valid record; run \`mayfly audit verify\` and move the damaged files aside`,
      { path: newest },
    );
  }
  return state.head;
}

/** Tail state of one file, or undefined if it is missing or empty. `base` is the head before the file's first line. */
function readFileTail(path: string, base: ChainHead): TailState | undefined {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  if (size === 0) return undefined;
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
  return analyzeTail(tail, n === size, path, base);
}

function analyzeTail(tail: Buffer, wholeFile: boolean, path: string, base: ChainHead): TailState {
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
  let head: ChainHead = { ...base };
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
