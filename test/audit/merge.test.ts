import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { mergeAuditLogs } from '../../src/audit/merge.js';
import { chainRecord, GENESIS_HEAD, serializeRecord, type ChainHead } from '../../src/audit/record.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Writes a real hash-chained log for `brokerId` with records at the given times. */
function log(dir: string, brokerId: string, times: number[]): string {
  let head: ChainHead = GENESIS_HEAD;
  const lines = times.map((t, i) => {
    const r = chainRecord({ event: 'task.begin', outcome: 'success', task_id: `${brokerId}-${i}` }, head, { now: t, brokerId });
    head = { seq: r.seq, hash: r.hash };
    return serializeRecord(r);
  });
  const path = join(dir, `${brokerId}.log`);
  writeFileSync(path, lines.map((l) => `${l}\n`).join(''));
  return path;
}

describe('mergeAuditLogs', () => {
  it('interleaves replicas by time, ties by broker_id, and never reorders one chain even if its clock stepped back', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mayfly-merge-'));
    dirs.push(dir);
    const T = Date.UTC(2026, 0, 1);
    const a = log(dir, 'replica-a', [T + 10, T + 30, T + 20 /* clock stepped back */, T + 40]);
    const b = log(dir, 'replica-b', [T + 5, T + 30, T + 35]);
    const r = mergeAuditLogs([b, a]);
    expect(r.skipped).toEqual([]);
    expect(r.records.map((x) => `${x.broker_id}:${x.seq}`)).toEqual(['replica-b:1', 'replica-a:1', 'replica-a:2', 'replica-a:3', 'replica-b:2', 'replica-b:3', 'replica-a:4']);
    for (const x of r.records) expect(JSON.parse(x.line)).toMatchObject({ broker_id: x.broker_id, seq: x.seq });
  });

  it('reports lines that are not records and refuses a missing log', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mayfly-merge-'));
    dirs.push(dir);
    const a = log(dir, 'replica-a', [Date.UTC(2026, 0, 1)]);
    writeFileSync(a, '{"torn', { flag: 'a' });
    const r = mergeAuditLogs([a]);
    expect(r.records).toHaveLength(1);
    expect(r.skipped).toEqual([`${a}:2: not JSON`]);
    expect(() => mergeAuditLogs([join(dir, 'nope.log')])).toThrow(/no audit log at/);
  });
});
