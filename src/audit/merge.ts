/**
 * The whole cluster's audit history in time order: every replica keeps its
 * own hash chain (docs/clustering.md), and an incident responder reads them
 * merged. A k-way merge by `ts`, ties broken by `broker_id` then `seq`, that
 * never reorders one chain's records (if a replica's clock stepped back, its
 * records still come out in chain order, next to the others by their `ts`).
 *
 * Merging does not verify: run `mayfly audit verify` on every chain first.
 * Lines that do not parse as records are reported, not dropped silently.
 */
import { readFileSync } from 'node:fs';
import { mayflyError } from '../core/errors.js';
import { auditSegments } from './file-sink.js';

export interface MergedRecord {
  ts: string;
  broker_id: string;
  seq: number;
  /** The record's line exactly as written. */
  line: string;
}

export interface MergeResult {
  records: MergedRecord[];
  /** Lines that are not audit records (torn tail, edits): file:line and why. */
  skipped: string[];
}

interface Chain {
  records: MergedRecord[];
  next: number;
}

function readChain(path: string, skipped: string[]): Chain {
  const files = auditSegments(path);
  if (files.length === 0) throw mayflyError('ERR_FILE_NOT_FOUND', `no audit log at ${path}`);
  const records: MergedRecord[] = [];
  for (const file of files) {
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.forEach((line, i) => {
      if (line === '') return;
      let r: Record<string, unknown>;
      try {
        r = JSON.parse(line) as Record<string, unknown>;
      } catch {
        skipped.push(`${file}:${i + 1}: not JSON`);
        return;
      }
      if (typeof r['ts'] !== 'string' || typeof r['broker_id'] !== 'string' || !Number.isSafeInteger(r['seq'])) {
        skipped.push(`${file}:${i + 1}: not an audit record (ts, broker_id, seq)`);
        return;
      }
      records.push({ ts: r['ts'], broker_id: r['broker_id'], seq: r['seq'] as number, line });
    });
  }
  return { records, next: 0 };
}

function before(a: MergedRecord, b: MergedRecord): boolean {
  if (a.ts !== b.ts) return a.ts < b.ts;
  if (a.broker_id !== b.broker_id) return a.broker_id < b.broker_id;
  return a.seq < b.seq;
}

/** Merges the logs at `paths` (each with its rotated segments) into one time-ordered list. */
export function mergeAuditLogs(paths: readonly string[]): MergeResult {
  const skipped: string[] = [];
  const chains = paths.map((p) => readChain(p, skipped));
  const records: MergedRecord[] = [];
  for (;;) {
    let best: Chain | null = null;
    for (const c of chains) {
      const head = c.records[c.next];
      if (head && (!best || before(head, best.records[best.next]!))) best = c;
    }
    if (!best) break;
    records.push(best.records[best.next++]!);
  }
  return { records, skipped };
}
