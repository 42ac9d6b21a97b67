import { describe, expect, it } from 'vitest';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { hashRecord, serializeRecord, type AuditRecord } from '../../src/audit/record.js';
import { formatVerifyResult, verifyAuditLog } from '../../src/audit/verify-chain.js';
import { ManualClock } from '../../src/core/clock.js';

function makeLog(n: number): { lines: string[]; sink: MemoryAuditSink } {
  const clock = new ManualClock();
  const sink = new MemoryAuditSink({ brokerId: 'b1', clock });
  for (let i = 0; i < n; i++) {
    clock.advance(7);
    sink.write({ event: i % 2 ? 'token.issue' : 'task.begin', outcome: 'success', task_id: `t${i}`, request_id: `r${i}` });
  }
  return { lines: sink.lines(), sink };
}

/** Re-serialises a record after `edit`, recomputing its own hash as a careful forger would. */
function forge(line: string, edit: (r: Record<string, unknown>) => void): string {
  const r = JSON.parse(line) as Record<string, unknown>;
  edit(r);
  r.hash = hashRecord(r);
  return serializeRecord(r as unknown as AuditRecord);
}

const N = 1000;
const { lines: LOG, sink: SINK } = makeLog(N);

describe('verifyAuditLog', () => {
  it('accepts an intact chain of 1000 records', () => {
    const r = verifyAuditLog(LOG);
    expect(r).toEqual({ ok: true, records: N, head: SINK.chainHead(), resumes: [], checkpoints: 0, checkpointsVerified: false, afterLastCheckpoint: N });
    expect(formatVerifyResult(r)).toBe(`audit log OK: 1000 records, head seq 1000 hash ${SINK.chainHead().hash.slice(0, 16)}`);
  });

  const cases: Array<{ name: string; tamper: (l: string[]) => void; line: number; seq?: number; reason: RegExp }> = [
    {
      name: 'edit a field',
      tamper: (l) => (l[499] = l[499]!.replace('"outcome":"success"', '"outcome":"denied"')),
      line: 500,
      seq: 500,
      reason: /hash mismatch/,
    },
    {
      name: 'edit a field and recompute its own hash',
      tamper: (l) => (l[499] = forge(l[499]!, (r) => (r.task_id = 'evil'))),
      line: 501,
      seq: 501,
      reason: /prev does not match/,
    },
    { name: 'delete a line', tamper: (l) => l.splice(499, 1), line: 500, seq: 501, reason: /seq 501 where 500 expected \(record\(s\) deleted/ },
    {
      name: 'swap two lines',
      tamper: (l) => ([l[299], l[300]] = [l[300]!, l[299]!]),
      line: 300,
      seq: 301,
      reason: /seq 301 where 300 expected/,
    },
    { name: 'move a line to the end', tamper: (l) => l.push(...l.splice(9, 1)), line: 10, seq: 11, reason: /seq 11 where 10 expected/ },
    { name: 'truncate a line', tamper: (l) => (l[699] = l[699]!.slice(0, 80)), line: 700, reason: /not valid JSON/ },
    {
      name: 'insert a forged line with recomputed hash but wrong prev',
      tamper: (l) => l.splice(200, 0, forge(l[200]!, (r) => ((r.prev = 'e'.repeat(64)), (r.task_id = 'forged')))),
      line: 201,
      seq: 201,
      reason: /prev does not match/,
    },
    { name: 'duplicate a line', tamper: (l) => l.splice(200, 0, l[199]!), line: 201, seq: 200, reason: /seq 200 where 201 expected \(record duplicated/ },
    { name: 'insert an empty line', tamper: (l) => l.splice(5, 0, ''), line: 6, reason: /not valid JSON/ },
    { name: 'replace the genesis prev', tamper: (l) => (l[0] = forge(l[0]!, (r) => (r.prev = '1'.repeat(64)))), line: 1, seq: 1, reason: /prev/ },
    { name: 'change the record version', tamper: (l) => (l[3] = forge(l[3]!, (r) => (r.v = 2))), line: 4, seq: 4, reason: /version/ },
  ];

  it.each(cases)('reports the first broken link: $name', (c) => {
    const lines = [...LOG];
    c.tamper(lines);
    const r = verifyAuditLog(lines);
    expect(r.ok).toBe(false);
    expect(r.firstBroken?.line).toBe(c.line);
    expect(r.firstBroken?.seq).toBe(c.seq);
    expect(r.firstBroken?.reason).toMatch(c.reason);
    expect(r.records).toBe(c.line - 1);
    expect(formatVerifyResult(r)).toMatch(new RegExp(`^audit log BROKEN at line ${c.line}`));
  });

  describe('tail truncation (needs an anchor)', () => {
    const anchor = SINK.chainHead();
    it('is invisible without an anchor: a shorter chain is still a valid chain', () => {
      expect(verifyAuditLog(LOG.slice(0, -1))).toMatchObject({ ok: true, records: N - 1 });
    });
    it('is detected with an anchor', () => {
      const r = verifyAuditLog(LOG.slice(0, -1), { anchor });
      expect(r).toMatchObject({ ok: false, records: N - 1 });
      expect(r.firstBroken).toEqual({ code: 'end_missing', line: N, seq: N, reason: `log ends at seq ${N - 1} but the anchor is at seq ${N} (records removed from the end)` });
    });
    it('detects a rewritten suffix with an anchor', () => {
      const lines = [...LOG];
      lines[N - 1] = forge(lines[N - 1]!, (r) => (r.outcome = 'denied'));
      expect(verifyAuditLog(lines).ok).toBe(true);
      expect(verifyAuditLog(lines, { anchor }).firstBroken).toMatchObject({ line: N, seq: N, reason: /does not match the anchor/ });
    });
    it('accepts records written after the anchor', () => {
      expect(verifyAuditLog(LOG, { anchor: { seq: 10, hash: (JSON.parse(LOG[9]!) as AuditRecord).hash } }).ok).toBe(true);
    });
  });

  it('takes a string with newlines as log content, not a path', () => {
    expect(verifyAuditLog(LOG.join('\n') + '\n')).toMatchObject({ ok: true, records: N });
    expect(verifyAuditLog('')).toMatchObject({ ok: true, records: 0 });
    expect(verifyAuditLog([LOG[1], LOG[0]].join('\n') + '\n').firstBroken).toMatchObject({ line: 1, seq: 2 });
  });

  it('ignores the empty element left by split("\\n") and accepts an empty log', () => {
    expect(verifyAuditLog([...LOG.slice(0, 3), '']).ok).toBe(true);
    expect(verifyAuditLog([])).toMatchObject({ ok: true, records: 0 });
  });
});

describe('verifyAuditLog input errors', () => {
  it('throws a MayflyError naming the path when the log cannot be read', () => {
    expect(() => verifyAuditLog('/nonexistent/mayfly/audit.log')).toThrow(/audit: cannot read \/nonexistent\/mayfly\/audit.log/);
    expect(() => verifyAuditLog('/tmp')).toThrow(/audit: cannot read \/tmp: EISDIR/);
  });
});
