/**
 * Audit record schema, hash chain and redaction. Pure: no I/O, the clock is
 * passed in. Sinks (file, memory) and the verifier share this one definition
 * so that what is written and what is checked can never drift apart.
 *
 * A chained record is `{v:1, seq, ts, broker_id, ...entry, prev, hash}`:
 *   - `hash` = SHA-256 hex of the canonical JSON (keys sorted, no whitespace)
 *     of the record without `hash`;
 *   - `prev` = the previous record's `hash` (genesis: 64 zeros, with seq 1).
 */
import type { AuditEntry, AuditEvent } from '../core/ports.js';
import { sha256Hex, tokenHash } from '../tokens/hashes.js';

/** Schema version written in every record (`v`). */
export const AUDIT_RECORD_VERSION = 1;

/** `prev` of the first record of a log. */
export const GENESIS_HASH = '0'.repeat(64);

/**
 * Written by a sink itself (never by callers) when it reopens a log whose
 * last line is damaged; it is not part of the core AuditEvent union because
 * no use-case may emit it.
 */
export const RESUME_EVENT = 'audit.resume';

/** Sink-owned: a signed checkpoint of the chain head (see checkpoint.ts). */
export const CHECKPOINT_EVENT = 'audit.checkpoint';

/** Sink-owned: written at start when the log ends before the head the Store holds (see checkpoint.ts). */
export const END_MISSING_EVENT = 'audit.end_missing';

export type AuditRecordEvent = AuditEvent | typeof RESUME_EVENT | typeof CHECKPOINT_EVENT | typeof END_MISSING_EVENT;

/** Fields the chain owns; an entry field with one of these names is kept as `entry_<name>` so it cannot forge the chain. */
export const RESERVED_FIELDS = ['v', 'seq', 'ts', 'broker_id', 'prev', 'hash'] as const;

/** One line of the audit log. */
export interface AuditRecord extends Omit<AuditEntry, 'event'> {
  v: typeof AUDIT_RECORD_VERSION;
  seq: number;
  /** ISO 8601 with milliseconds, UTC. Informational: ordering is by `seq`, clocks may step back. */
  ts: string;
  broker_id: string;
  event: AuditRecordEvent;
  prev: string;
  hash: string;
}

/** Where the chain stands: the last written seq and hash (seq 0 + GENESIS_HASH for an empty log). */
export interface ChainHead {
  seq: number;
  hash: string;
}

/** Head of an empty chain. */
export const GENESIS_HEAD: Readonly<ChainHead> = Object.freeze({ seq: 0, hash: GENESIS_HASH });

export { sha256Hex } from '../tokens/hashes.js';

export { canonicalJson } from '../core/canonical-json.js';
import { canonicalJson, canonicalMember } from '../core/canonical-json.js';

/** Hash of a record: SHA-256 hex over the canonical JSON of every field except `hash`. */
export function hashRecord(record: Omit<AuditRecord, 'hash'> | Record<string, unknown>): string {
  const { hash: _ignored, ...rest } = record as Record<string, unknown>;
  return sha256Hex(canonicalJson(rest));
}

/**
 * Builds the next record of a chain from an already-redacted entry. Pure:
 * the caller commits `{seq: record.seq, hash: record.hash}` as the new head
 * only after the record is durably written, so a failed write leaves no gap.
 */
export function chainRecord(entry: Record<string, unknown>, head: ChainHead, at: { now: number; brokerId: string }): AuditRecord {
  const body = recordBody(entry, head, at);
  body.hash = sha256Hex(canonicalJson(body));
  return body as unknown as AuditRecord;
}

/**
 * chainRecord together with the record's log line, both from one
 * serialization of its values: the hash is over the members sorted by key
 * (the canonical JSON), the line lists the same members in the record's own
 * order (v, seq, ts first, hash last), so nested objects appear in the line
 * with their keys sorted. Parsing the line gives the record (same values),
 * and its hash checks (hashRecord) as it does for serializeRecord's line.
 *
 * `sorted`: the entry is redactEntry's output with `sorted: true`, whose
 * values JSON.stringify already writes canonically; both texts then come from
 * the engine's own serializer instead of one string per member (a third of the
 * cost of an issuance's record). Any other entry takes the member-wise path.
 */
export function chainRecordLine(
  entry: Record<string, unknown>,
  head: ChainHead,
  at: { now: number; brokerId: string },
  sorted = false,
): { record: AuditRecord; line: string } {
  const body = recordBody(entry, head, at);
  if (sorted) {
    const keys = Object.keys(body).sort();
    const canonical: Record<string, unknown> = {};
    for (const k of keys) canonical[k] = body[k];
    const hash = sha256Hex(JSON.stringify(canonical));
    const text = JSON.stringify(body);
    body.hash = hash;
    return { record: body as unknown as AuditRecord, line: `${text.slice(0, -1)},"hash":"${hash}"}` };
  }
  const members = new Map<string, string>();
  let line = '{';
  for (const k of Object.keys(body)) {
    const m = canonicalMember(k, body[k]);
    if (m === undefined) continue;
    line += members.size === 0 ? m : ',' + m;
    members.set(k, m);
  }
  let canonical = '{';
  let first = true;
  for (const k of [...members.keys()].sort()) {
    canonical += first ? members.get(k)! : ',' + members.get(k)!;
    first = false;
  }
  const hash = sha256Hex(canonical + '}');
  body.hash = hash;
  return { record: body as unknown as AuditRecord, line: `${line},"hash":"${hash}"}` };
}

/** `ts` of the last record built: the records of one flush share their time. */
let lastTs = { now: Number.NaN, iso: '' };

/** A record without its hash: chain fields first, the entry's fields (reserved names renamed), then prev. */
function recordBody(entry: Record<string, unknown>, head: ChainHead, at: { now: number; brokerId: string }): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  // Key order only matters for readability of the log line (v, seq, ts first, hash last); the hash is over sorted keys.
  body.v = AUDIT_RECORD_VERSION;
  body.seq = head.seq + 1;
  if (lastTs.now !== at.now) lastTs = { now: at.now, iso: new Date(at.now).toISOString() };
  body.ts = lastTs.iso;
  body.broker_id = at.brokerId;
  for (const k of Object.keys(entry)) {
    const name = (RESERVED_FIELDS as readonly string[]).includes(k) ? `entry_${k}` : k;
    defineField(body, name, entry[k]);
  }
  body.prev = head.hash;
  return body;
}

/** The log line for a record (no trailing newline). */
export function serializeRecord(record: AuditRecord): string {
  return JSON.stringify(record);
}

// ---------------------------------------------------------------------------
// Redaction

/**
 * Field names that hold credentials. Compared after lower-casing and
 * removing `_`/`-`, so `accessToken`, `Access-Token` and `access_token` all
 * match. `actor_token`, `refresh_token` and `client_secret` are the RFC 8693 /
 * OAuth siblings of the names the audit contract lists.
 */
export const SENSITIVE_FIELDS: readonly string[] = [
  'token',
  'access_token',
  'subject_token',
  'actor_token',
  'refresh_token',
  'id_token',
  'private_key',
  'key',
  'secret',
  'client_secret',
  'password',
  'authorization',
];

const SENSITIVE = new Set(SENSITIVE_FIELDS.map(normalizeName));

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/[_-]/g, '');
}

// Field names repeat across records, so the verdict is memoised; bounded so hostile key names cannot grow it forever.
const sensitiveCache = new Map<string, boolean>();
const SENSITIVE_CACHE_MAX = 4096;

/** True if a field of this name must never reach the log in clear. */
export function isSensitiveField(name: string): boolean {
  let v = sensitiveCache.get(name);
  if (v === undefined) {
    v = SENSITIVE.has(normalizeName(name));
    if (sensitiveCache.size < SENSITIVE_CACHE_MAX) sensitiveCache.set(name, v);
  }
  return v;
}

/**
 * Compact JWS (3 parts) or JWE (5 parts) embedded anywhere in a string. The
 * look-arounds stop a longer dotted name (a.b.c.d) from matching in part;
 * the length check (> 40) is applied to each match. Known false positive: a
 * three-label host name longer than 40 characters is hashed too, which only
 * costs readability.
 */
const JOSE_COMPACT_RE = /(?<![A-Za-z0-9_.-])[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){2}(?:(?:\.[A-Za-z0-9_-]*){2})?(?![A-Za-z0-9_.-])/g;
const MIN_JOSE_LENGTH = 41;

/** Replaces every compact JWS/JWE-looking substring by `sha256:<hex>` of it. */
export function scrubTokens(s: string): string {
  // Cheap pre-check: every candidate has at least two dots and is longer than 40 characters.
  if (s.length < MIN_JOSE_LENGTH || s.indexOf('.') === -1) return s;
  return s.replace(JOSE_COMPACT_RE, (m) => (m.length >= MIN_JOSE_LENGTH ? `sha256:${tokenHash(m)}` : m));
}

const MAX_DEPTH = 32;

/**
 * Returns a copy of `entry` that is plain JSON and holds no credential:
 * sensitive fields (any depth, see SENSITIVE_FIELDS) become `<field>_sha256`
 * with the SHA-256 hex of the value, JWS-looking strings become
 * `sha256:<hex>`, and values JSON cannot carry faithfully are normalised
 * (bigint → string, bytes → `sha256:<hex>`, Error → {name, message},
 * cycles → "[Circular]"). Callers should already pass `token_sha256`; this is
 * defence in depth, and it also makes the record hash stable across a JSON
 * round trip. The entry's own members keep their order; nested objects come
 * out with their keys sorted (the order the log line writes them in).
 */
export function redact(entry: AuditEntry): AuditEntry {
  return redactEntry(entry).entry as AuditEntry;
}

/**
 * redact, and whether JSON.stringify writes every nested value of the copy
 * exactly as canonicalJson does (`sorted`, see chainRecordLine). It does
 * unless some object, at any depth, has a key that is an array index or
 * `__proto__`: the engine lists index keys first in numeric order, whatever
 * order they were added in.
 */
export function redactEntry(entry: AuditEntry): { entry: Record<string, unknown>; sorted: boolean } {
  const walk: RedactWalk = { ancestors: [], sorted: true };
  const out = redactValue(entry, walk, 0) as Record<string, unknown>;
  return { entry: out, sorted: walk.sorted };
}

interface RedactWalk {
  /** Objects on the path from the root to the current value (a repeat is a cycle; a shared sibling is not). */
  ancestors: object[];
  sorted: boolean;
}

const INDEX_KEY_RE = /^(?:0|[1-9][0-9]{0,9})$/;

/** Keys the engine orders on its own: array indices (below 2^32 - 1) and the `__proto__` accessor's name. */
function engineOrdered(key: string): boolean {
  if (key === '__proto__') return true;
  const c = key.charCodeAt(0);
  return c >= 48 && c <= 57 && INDEX_KEY_RE.test(key) && Number(key) < 4294967295;
}

function redactValue(value: unknown, walk: RedactWalk, depth: number): unknown {
  switch (typeof value) {
    case 'string':
      return scrubTokens(value);
    case 'number':
      // JSON has no NaN/Infinity; null is what JSON.stringify would write, so say it explicitly.
      return Number.isFinite(value) ? value : null;
    case 'boolean':
      return value;
    case 'bigint':
      return value.toString();
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (value === null) return null;
  const obj = value as object;
  if (obj instanceof Uint8Array) return `sha256:${sha256Hex(obj)}`;
  if (obj instanceof ArrayBuffer) return `sha256:${sha256Hex(new Uint8Array(obj))}`;
  if (obj instanceof Date) return Number.isNaN(obj.getTime()) ? null : obj.toISOString();
  if (walk.ancestors.includes(obj)) return '[Circular]';
  if (depth >= MAX_DEPTH) return '[Truncated]';
  walk.ancestors.push(obj);
  try {
    if (Array.isArray(obj)) {
      const out: unknown[] = new Array(obj.length);
      for (let i = 0; i < obj.length; i++) {
        const r = redactValue(obj[i], walk, depth + 1);
        out[i] = r === undefined ? null : r;
      }
      return out;
    }
    const source: Record<string, unknown> =
      obj instanceof Error
        ? { name: obj.name, message: obj.message, ...('code' in obj ? { code: (obj as { code: unknown }).code } : {}) }
        : (obj as Record<string, unknown>);
    const out: Record<string, unknown> = {};
    let previous: string | undefined;
    let inOrder = true;
    for (const rawKey of Object.keys(source)) {
      const v = source[rawKey];
      let key: string;
      let r: unknown;
      if (isSensitiveField(rawKey)) {
        if (v === undefined || v === null) continue;
        key = `${rawKey}_sha256`;
        r = digestOf(v);
      } else {
        r = redactValue(v, walk, depth + 1);
        if (r === undefined) continue;
        key = scrubTokens(rawKey);
      }
      if (engineOrdered(key)) walk.sorted = false;
      if (previous !== undefined && !(previous < key)) inOrder = false;
      previous = key;
      defineField(out, key, r);
    }
    return depth === 0 || inOrder ? out : sortedCopy(out);
  } finally {
    walk.ancestors.pop();
  }
}

function sortedCopy(obj: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(obj).sort()) defineField(out, k, obj[k]);
  return out;
}

/** Digest of a sensitive value: of the string itself (so it equals a caller's token_sha256), else of its bytes or canonical JSON. */
function digestOf(v: unknown): string {
  if (typeof v === 'string') return tokenHash(v);
  if (v instanceof Uint8Array) return sha256Hex(v);
  try {
    return sha256Hex(canonicalJson(v));
  } catch {
    // A cyclic secret still must not leak; hash its type so the field's presence is recorded.
    return sha256Hex(`[unserializable ${Object.prototype.toString.call(v)}]`);
  }
}

/** Assignment that treats `__proto__` as a plain field, so an entry cannot change a record's prototype. */
function defineField(target: Record<string, unknown>, key: string, value: unknown): void {
  if (key !== '__proto__') {
    target[key] = value;
    return;
  }
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

// ---------------------------------------------------------------------------
// Parsing

const HEX64_RE = /^[0-9a-f]{64}$/;

/** Result of checking one line on its own (not its link to its neighbours). */
export type ParsedRecord = { ok: true; record: AuditRecord } | { ok: false; reason: string; seq?: number };

/** Parses one log line and checks its shape and self-hash; linkage (seq, prev) is the verifier's job. */
export function parseRecord(line: string): ParsedRecord {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { ok: false, reason: 'not valid JSON (line truncated or edited)' };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { ok: false, reason: 'not a JSON object' };
  }
  const r = value as Record<string, unknown>;
  const seq = Number.isSafeInteger(r.seq) && (r.seq as number) >= 1 ? (r.seq as number) : undefined;
  const fail = (reason: string): ParsedRecord => (seq === undefined ? { ok: false, reason } : { ok: false, reason, seq });
  if (r.v !== AUDIT_RECORD_VERSION) return fail(`unsupported record version ${JSON.stringify(r.v)}`);
  if (seq === undefined) return fail('missing or invalid seq');
  if (typeof r.hash !== 'string' || !HEX64_RE.test(r.hash)) return fail('missing or malformed hash');
  if (typeof r.prev !== 'string' || !HEX64_RE.test(r.prev)) return fail('missing or malformed prev');
  if (hashRecord(r) !== r.hash) return fail('hash mismatch (record edited)');
  return { ok: true, record: r as unknown as AuditRecord };
}
