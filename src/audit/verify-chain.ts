/**
 * Audit log verification: walks the hash chain and reports the FIRST broken
 * link. What each tampering looks like from here:
 *   - edit a field            → that line's hash no longer matches its content;
 *   - truncate a line         → that line is not valid JSON;
 *   - delete a line           → the next line's seq skips one;
 *   - swap / reorder lines    → the first moved line's seq is out of order;
 *   - insert a line (even with a correctly recomputed own hash) → its seq or prev does not link.
 *
 * Removing records from the END leaves a shorter, perfectly valid chain, and
 * so does rewriting a suffix with recomputed hashes (the chain is unkeyed).
 * Only a head kept outside the log detects that: pass the `anchor` (seq +
 * hash, from the Store's audit head, see checkpoint.ts) and the log must
 * contain that exact record (else `end_missing` / `anchor_mismatch`). With
 * `checkpointKeys`, every signed `audit.checkpoint` record is checked too
 * (`checkpoint_invalid`), and an `audit.end_missing` record, written by the
 * broker when it found its log shorter than the stored head, makes the log
 * fail with `end_missing` even after the anchor has moved on.
 *
 * An `audit.resume` record written by the file sink on reopen acknowledges
 * the damaged line just before it (by SHA-256); such a line is not a break,
 * but it is listed in `resumes` so an operator still sees it.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { mayflyError } from '../core/errors.js';
import { checkpointProblem, type CheckpointKeys } from './checkpoint.js';
import { CHECKPOINT_EVENT, END_MISSING_EVENT, GENESIS_HEAD, parseRecord, RESUME_EVENT, sha256Hex, type AuditRecord, type ChainHead } from './record.js';

/** A checkpoint of the chain head kept outside the log (e.g. in the store or a monitoring system). */
export type VerifyAnchor = ChainHead;

export interface VerifyOptions {
  /** The log must contain the record with exactly this seq and hash; detects tail truncation and suffix rewrites. */
  anchor?: VerifyAnchor;
  /** Head before the first line, for a rotated segment verified on its own (default: genesis). */
  start?: ChainHead;
  /** Public audit keys: every checkpoint record's signature is verified, and the anchor must be a checkpoint. */
  checkpointKeys?: CheckpointKeys;
}

/**
 * Stable codes of a broken log, for scripts and alerts:
 *   - `record_invalid`: a line is not a well-formed record or its hash does not match (edit, torn line);
 *   - `seq_mismatch`: a record is missing, duplicated or out of order;
 *   - `prev_mismatch`: a record does not link to the one before it (inserted or replaced);
 *   - `anchor_mismatch`: the record at the stored head's seq is a different record (log rewritten);
 *   - `end_missing`: the log ends before the stored head, or the broker noted at start that it did;
 *   - `checkpoint_invalid`: a signed checkpoint does not verify with the audit key.
 */
export type VerifyBreakCode = 'record_invalid' | 'seq_mismatch' | 'prev_mismatch' | 'anchor_mismatch' | 'end_missing' | 'checkpoint_invalid';

export interface VerifyBreak {
  code: VerifyBreakCode;
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
  /** Signed checkpoint records seen (up to the first break). */
  checkpoints: number;
  /** True when checkpointKeys were given, so every checkpoint counted was signature-checked. */
  checkpointsVerified: boolean;
  /** Records after the last checkpoint: the part of the log no stored head vouches for yet. */
  afterLastCheckpoint: number;
  firstBroken?: VerifyBreak;
}

/** What a walk carries from one file to the next. */
interface WalkState {
  checkpoints: number;
  afterLastCheckpoint: number;
  /** `audit.end_missing` records seen: the log lost its end once, whatever follows. */
  endMissing: VerifyBreak[];
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
  const state: WalkState = { checkpoints: 0, afterLastCheckpoint: 0, endMissing: [] };
  try {
    return finish(walk(src, options.start ?? GENESIS_HEAD, options, true, state), state, options);
  } finally {
    // Closes the file when the walk stops at a break before the end.
    src.return(undefined);
  }
}

/** Adds the checkpoint figures and turns a noted end-missing into the result's break. */
function finish(r: Omit<VerifyResult, 'checkpoints' | 'checkpointsVerified' | 'afterLastCheckpoint'>, state: WalkState, options: VerifyOptions): VerifyResult {
  const out: VerifyResult = { ...r, checkpoints: state.checkpoints, checkpointsVerified: options.checkpointKeys !== undefined, afterLastCheckpoint: state.afterLastCheckpoint };
  if (out.ok && state.endMissing.length > 0) {
    out.ok = false;
    out.firstBroken = state.endMissing[0]!;
  }
  return out;
}

/** Verifies rotated segments and the current file (see auditSegments) as one chain, oldest first. */
export function verifyAuditFiles(paths: readonly string[], options: VerifyOptions = {}): VerifyResult {
  let head = options.start ?? GENESIS_HEAD;
  let records = 0;
  const resumes: VerifyResult['resumes'] = [];
  const state: WalkState = { checkpoints: 0, afterLastCheckpoint: 0, endMissing: [] };
  for (let i = 0; i < paths.length; i++) {
    const file = paths[i]!;
    const src = fileLines(file);
    const notedBefore = state.endMissing.length;
    let r: WalkResult;
    try {
      r = walk(src, head, options, i === paths.length - 1, state);
    } finally {
      src.return(undefined);
    }
    for (let j = notedBefore; j < state.endMissing.length; j++) state.endMissing[j] = { file, ...state.endMissing[j]! };
    records += r.records;
    resumes.push(...r.resumes.map((x) => ({ ...x, file })));
    head = r.head;
    if (!r.ok) return finish({ ok: false, records, head, resumes, firstBroken: { file, ...r.firstBroken! } }, state, options);
  }
  if (paths.length === 0 && options.anchor !== undefined && options.anchor.seq > head.seq) {
    return finish({ ok: false, records, head, resumes, firstBroken: { code: 'end_missing', line: 1, seq: head.seq + 1, reason: 'no audit log files, but an anchor was given' } }, state, options);
  }
  return finish({ ok: true, records, head, resumes }, state, options);
}

type WalkResult = Omit<VerifyResult, 'checkpoints' | 'checkpointsVerified' | 'afterLastCheckpoint'>;

function walk(src: Generator<Line>, start: ChainHead, options: VerifyOptions, final: boolean, state: WalkState): WalkResult {
  const anchor = options.anchor;
  let head: ChainHead = { ...start };
  let records = 0;
  let lineNo = 0;
  // An anchor at or before `start` lies in an earlier file, already checked (or not checkable from here).
  let anchorSeen = anchor === undefined || anchor.seq <= start.seq;
  const resumes: VerifyResult['resumes'] = [];
  const broken = (b: VerifyBreak): WalkResult => ({ ok: false, records, head, resumes, firstBroken: b });

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
        state.afterLastCheckpoint++;
        if (anchor !== undefined && ack.record.seq === anchor.seq) {
          if (ack.record.hash !== anchor.hash || options.checkpointKeys !== undefined) return broken(anchorMismatch(lineNo, anchor));
          anchorSeen = true;
        }
        cur = src.next();
        continue;
      }
      const code = 'record_invalid';
      return broken(parsed.seq === undefined ? { code, line: lineNo, reason: parsed.reason } : { code, line: lineNo, seq: parsed.seq, reason: parsed.reason });
    }
    const rec = parsed.record;
    const expected = head.seq + 1;
    if (rec.seq !== expected) {
      const why = rec.seq > expected ? 'record(s) deleted or reordered' : 'record duplicated, inserted or reordered';
      return broken({ code: 'seq_mismatch', line: lineNo, seq: rec.seq, reason: `seq ${rec.seq} where ${expected} expected (${why})` });
    }
    if (rec.prev !== head.hash) {
      return broken({ code: 'prev_mismatch', line: lineNo, seq: rec.seq, reason: "prev does not match the previous record's hash (record inserted or replaced)" });
    }
    const sealed = sealedRecordBreak(rec, lineNo, options, state);
    if (sealed) return broken(sealed);
    head = { seq: rec.seq, hash: rec.hash };
    records++;
    if (anchor !== undefined && rec.seq === anchor.seq) {
      if (rec.hash !== anchor.hash) return broken(anchorMismatch(lineNo, anchor));
      if (options.checkpointKeys !== undefined && rec.event !== CHECKPOINT_EVENT) {
        return broken({ code: 'anchor_mismatch', line: lineNo, seq: rec.seq, reason: `the stored head at seq ${anchor.seq} is not a signed checkpoint record` });
      }
      anchorSeen = true;
    }
    cur = next;
  }
  if (final && !anchorSeen && anchor !== undefined) {
    return broken({
      code: 'end_missing',
      line: lineNo + 1,
      seq: head.seq + 1,
      reason: `log ends at seq ${head.seq} but the anchor is at seq ${anchor.seq} (records removed from the end)`,
    });
  }
  return { ok: true, records, head, resumes };
}

function anchorMismatch(line: number, anchor: VerifyAnchor): VerifyBreak {
  return { code: 'anchor_mismatch', line, seq: anchor.seq, reason: `record at seq ${anchor.seq} does not match the anchor hash (log rewritten)` };
}

/** Checks a chained record the sink itself wrote: a checkpoint's signature, an end-missing note. Updates the walk's counts. */
function sealedRecordBreak(rec: AuditRecord, line: number, options: VerifyOptions, state: WalkState): VerifyBreak | undefined {
  if (rec.event === CHECKPOINT_EVENT) {
    if (options.checkpointKeys !== undefined) {
      const problem = checkpointProblem(rec, options.checkpointKeys);
      if (problem !== null) return { code: 'checkpoint_invalid', line, seq: rec.seq, reason: problem };
    }
    state.checkpoints++;
    state.afterLastCheckpoint = 0;
    return undefined;
  }
  state.afterLastCheckpoint++;
  if (rec.event === END_MISSING_EVENT) {
    state.endMissing.push({ code: 'end_missing', line, seq: rec.seq, reason: typeof rec.reason === 'string' ? rec.reason : 'the broker found the end of this log missing at start' });
  }
  return undefined;
}

/** One line for humans, e.g. for `mayfly audit verify`. */
export function formatVerifyResult(r: VerifyResult): string {
  const resumed =
    r.resumes.length === 0
      ? ''
      : `; ${r.resumes.length} damaged line(s) acknowledged by audit.resume at ${r.resumes.map((x) => (x.file === undefined ? `line ${x.line}` : `${x.file}:${x.line}`)).join(', ')}`;
  if (r.ok) return `audit log OK: ${r.records} records, head seq ${r.head.seq} hash ${r.head.hash.slice(0, 16)}${resumed}${checkpointNote(r)}`;
  const b = r.firstBroken!;
  const where = b.file === undefined ? `line ${b.line}` : `${b.file}:${b.line}`;
  const at = b.seq === undefined ? where : `${where} (seq ${b.seq})`;
  // A missing end is found after every record present has verified.
  const verified = b.code === 'end_missing' ? `${r.records} records verified` : `${r.records} records verified before it`;
  return `audit log BROKEN at ${at}: [${b.code}] ${b.reason}; ${verified}${resumed}${checkpointNote(r)}`;
}

/** Checkpoint figures, only when the log has checkpoints (older logs and plain sinks print as before). */
function checkpointNote(r: VerifyResult): string {
  if (r.checkpoints === 0) return '';
  return `; ${r.checkpoints} checkpoint(s) ${r.checkpointsVerified ? 'signature-verified' : 'NOT signature-checked (no audit key given)'}, ${r.afterLastCheckpoint} record(s) after the last`;
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
