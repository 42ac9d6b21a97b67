/**
 * Audit log verification: walks the hash chain and reports the FIRST broken
 * link. What each tampering looks like from here:
 *   - edit a field            → that line's hash no longer matches its content;
 *   - truncate a line         → that line is not valid JSON;
 *   - delete a line           → the next line's seq skips one;
 *   - swap / reorder lines    → the first moved line's seq is out of order;
 *   - insert a line (even with a correctly recomputed own hash) → its seq or prev does not link.
 *
 * Limitation: removing records from the END leaves a shorter, perfectly
 * valid chain, and so does rewriting a suffix with recomputed hashes (the
 * chain is unkeyed). Only an external checkpoint detects that: pass the
 * `anchor` (seq + hash from FileAuditSink.chainHead(), stored elsewhere) and
 * the log must contain that exact record.
 *
 * An `audit.resume` record written by the file sink on reopen acknowledges
 * the damaged line just before it (by SHA-256); such a line is not a break,
 * but it is listed in `resumes` so an operator still sees it.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { mayflyError } from '../core/errors.js';
import { GENESIS_HEAD, parseRecord, RESUME_EVENT, sha256Hex, type ChainHead } from './record.js';

/** A checkpoint of the chain head kept outside the log (e.g. in the store or a monitoring system). */
export type VerifyAnchor = ChainHead;

export interface VerifyOptions {
  /** The log must contain the record with exactly this seq and hash; detects tail truncation and suffix rewrites. */
  anchor?: VerifyAnchor;
  /** Head before the first line, for a rotated segment verified on its own (default: genesis). */
  start?: ChainHead;
}

export interface VerifyBreak {
  /** File of the break, when several files were verified. */
  file?: string;
  /** 1-based line number; for a log that ends too early, one past the last line. */
  line: number;
  seq?: number;
  reason: string;
}

export interface VerifyResult {
  ok: boolean;
  /** Records that verified (up to the first break). */
  records: number;
  /** Last verified chain head. */
  head: ChainHead;
  /** Damaged lines acknowledged by an audit.resume record (line of the damaged line, seq of the resume record). */
  resumes: Array<{ line: number; seq: number; file?: string }>;
  firstBroken?: VerifyBreak;
}

interface Line {
  text: string;
  bytes: Uint8Array;
}

const READ_CHUNK = 1024 * 1024;

/**
 * Verifies an audit log given its path or its lines (a trailing empty
 * element, as left by `split('\n')`, is ignored). A string that is empty or
 * contains a newline is taken as the log's content rather than a path (a
 * non-empty log always ends with a newline); prefer the path, which streams
 * and hashes damaged lines byte-exactly. Returns the first broken link;
 * never throws for content problems, only when the file cannot be read.
 */
export function verifyAuditLog(input: string | readonly string[], options: VerifyOptions = {}): VerifyResult {
  const src =
    typeof input !== 'string' ? arrayLines(input) : input === '' || input.includes('\n') ? arrayLines(input.split('\n')) : fileLines(input);
  try {
    return walk(src, options.start ?? GENESIS_HEAD, options.anchor, true);
  } finally {
    // Closes the file when the walk stops at a break before the end.
    src.return(undefined);
  }
}

/** Verifies rotated segments and the current file (see auditSegments) as one chain, oldest first. */
export function verifyAuditFiles(paths: readonly string[], options: VerifyOptions = {}): VerifyResult {
  let head = options.start ?? GENESIS_HEAD;
  let records = 0;
  const resumes: VerifyResult['resumes'] = [];
  for (let i = 0; i < paths.length; i++) {
    const file = paths[i]!;
    const src = fileLines(file);
    let r: VerifyResult;
    try {
      r = walk(src, head, options.anchor, i === paths.length - 1);
    } finally {
      src.return(undefined);
    }
    records += r.records;
    resumes.push(...r.resumes.map((x) => ({ ...x, file })));
    head = r.head;
    if (!r.ok) return { ok: false, records, head, resumes, firstBroken: { file, ...r.firstBroken! } };
  }
  if (paths.length === 0 && options.anchor !== undefined && options.anchor.seq > head.seq) {
    return { ok: false, records, head, resumes, firstBroken: { line: 1, seq: head.seq + 1, reason: 'no audit log files, but an anchor was given' } };
  }
  return { ok: true, records, head, resumes };
}

function walk(src: Generator<Line>, start: ChainHead, anchor: VerifyAnchor | undefined, final: boolean): VerifyResult {
  let head: ChainHead = { ...start };
  let records = 0;
  let lineNo = 0;
  // An anchor at or before `start` lies in an earlier file, already checked (or not checkable from here).
  let anchorSeen = anchor === undefined || anchor.seq <= start.seq;
  const resumes: VerifyResult['resumes'] = [];
  const broken = (b: VerifyBreak): VerifyResult => ({ ok: false, records, head, resumes, firstBroken: b });

  let cur = src.next();
  while (!cur.done) {
    lineNo++;
    const line = cur.value;
    const next = src.next();
    const parsed = parseRecord(line.text);
    if (!parsed.ok) {
      // A damaged line is only excused by a resume record directly after it that names its exact bytes and links to the last good record.
      const ack = next.done ? undefined : parseRecord(next.value.text);
      if (
        ack?.ok === true &&
        ack.record.event === RESUME_EVENT &&
        ack.record.damaged_sha256 === sha256Hex(line.bytes) &&
        ack.record.seq === head.seq + 1 &&
        ack.record.prev === head.hash
      ) {
        resumes.push({ line: lineNo, seq: ack.record.seq });
        lineNo++;
        head = { seq: ack.record.seq, hash: ack.record.hash };
        records++;
        if (anchor !== undefined && ack.record.seq === anchor.seq) {
          if (ack.record.hash !== anchor.hash) return broken(anchorMismatch(lineNo, anchor));
          anchorSeen = true;
        }
        cur = src.next();
        continue;
      }
      return broken(parsed.seq === undefined ? { line: lineNo, reason: parsed.reason } : { line: lineNo, seq: parsed.seq, reason: parsed.reason });
    }
    const rec = parsed.record;
    const expected = head.seq + 1;
    if (rec.seq !== expected) {
      const why = rec.seq > expected ? 'record(s) deleted or reordered' : 'record duplicated, inserted or reordered';
      return broken({ line: lineNo, seq: rec.seq, reason: `seq ${rec.seq} where ${expected} expected (${why})` });
    }
    if (rec.prev !== head.hash) {
      return broken({ line: lineNo, seq: rec.seq, reason: "prev does not match the previous record's hash (record inserted or replaced)" });
    }
    head = { seq: rec.seq, hash: rec.hash };
    records++;
    if (anchor !== undefined && rec.seq === anchor.seq) {
      if (rec.hash !== anchor.hash) return broken(anchorMismatch(lineNo, anchor));
      anchorSeen = true;
    }
    cur = next;
  }
  if (final && !anchorSeen && anchor !== undefined) {
    return broken({
      line: lineNo + 1,
      seq: head.seq + 1,
      reason: `log ends at seq ${head.seq} but the anchor is at seq ${anchor.seq} (records removed from the end)`,
    });
  }
  return { ok: true, records, head, resumes };
}

function anchorMismatch(line: number, anchor: VerifyAnchor): VerifyBreak {
  return { line, seq: anchor.seq, reason: `record at seq ${anchor.seq} does not match the anchor hash (log rewritten)` };
}

/** One line for humans, e.g. for `mayfly audit verify`. */
export function formatVerifyResult(r: VerifyResult): string {
  const resumed =
    r.resumes.length === 0
      ? ''
      : `; ${r.resumes.length} damaged line(s) acknowledged by audit.resume at ${r.resumes.map((x) => (x.file === undefined ? `line ${x.line}` : `${x.file}:${x.line}`)).join(', ')}`;
  if (r.ok) return `audit log OK: ${r.records} records, head seq ${r.head.seq} hash ${r.head.hash.slice(0, 16)}${resumed}`;
  const b = r.firstBroken!;
  const where = b.file === undefined ? `line ${b.line}` : `${b.file}:${b.line}`;
  const at = b.seq === undefined ? where : `${where} (seq ${b.seq})`;
  return `audit log BROKEN at ${at}: ${b.reason}; ${r.records} records verified before it${resumed}`;
}

function* arrayLines(lines: readonly string[]): Generator<Line> {
  const n = lines.length > 0 && lines[lines.length - 1] === '' ? lines.length - 1 : lines.length;
  for (let i = 0; i < n; i++) {
    const text = lines[i]!;
    yield { text, bytes: Buffer.from(text, 'utf8') };
  }
}

/** Streams a file line by line in fixed chunks, so a large log is verified in constant memory. Hashes use raw bytes. */
function* fileLines(path: string): Generator<Line> {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw mayflyError('ERR_INVALID_ARGUMENT', `audit: cannot read ${path}: ${(err as Error).message}`, { path }, err);
  }
  try {
    const chunk = Buffer.alloc(READ_CHUNK);
    let carry: Buffer = Buffer.alloc(0);
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, chunk, 0, chunk.length, null);
      } catch (err) {
        throw mayflyError('ERR_INVALID_ARGUMENT', `audit: cannot read ${path}: ${(err as Error).message}`, { path }, err);
      }
      if (n === 0) break;
      const buf = carry.length === 0 ? chunk.subarray(0, n) : Buffer.concat([carry, chunk.subarray(0, n)]);
      let start = 0;
      for (let nl = buf.indexOf(0x0a, start); nl !== -1; nl = buf.indexOf(0x0a, start)) {
        const bytes = Buffer.from(buf.subarray(start, nl));
        yield { text: bytes.toString('utf8'), bytes };
        start = nl + 1;
      }
      // Copy: `chunk` is reused by the next read.
      carry = Buffer.from(buf.subarray(start));
    }
    if (carry.length > 0) yield { text: carry.toString('utf8'), bytes: carry };
  } finally {
    closeSync(fd);
  }
}
