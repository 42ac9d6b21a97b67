import { appendFileSync, closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { auditSegments, FileAuditSink } from '../../src/audit/file-sink.js';
import { RESUME_EVENT, sha256Hex, type AuditRecord } from '../../src/audit/record.js';
import { formatVerifyResult, verifyAuditFiles, verifyAuditLog } from '../../src/audit/verify-chain.js';
import { ManualClock } from '../../src/core/clock.js';
import { isMayflyError } from '../../src/core/errors.js';

let dir: string;
let path: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mayfly-audit-'));
  path = join(dir, 'sub', 'audit.log');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function open(extra: Partial<ConstructorParameters<typeof FileAuditSink>[0]> = {}): FileAuditSink {
  return new FileAuditSink({ path, brokerId: 'b1', clock: new ManualClock(), ...extra });
}

function writeN(sink: FileAuditSink, n: number, from = 0): void {
  for (let i = from; i < from + n; i++) sink.write({ event: 'token.issue', outcome: 'success', jti: `j${i}` });
}

function fileLines(): string[] {
  return readFileSync(path, 'utf8').split('\n');
}

describe('FileAuditSink', () => {
  it('creates <dataDir>/audit.log with mode 0600', async () => {
    const sink = new FileAuditSink({ dataDir: join(dir, 'data'), brokerId: 'b1' });
    sink.write({ event: 'broker.start', outcome: 'success' });
    await sink.close();
    expect(sink.path).toBe(join(dir, 'data', 'audit.log'));
    expect(statSync(sink.path).mode & 0o777).toBe(0o600);
  });

  it('tightens the mode of an existing file', async () => {
    writeFileSync(join(dir, 'loose.log'), '', { mode: 0o644 });
    const sink = new FileAuditSink({ path: join(dir, 'loose.log'), brokerId: 'b1' });
    await sink.close();
    expect(statSync(join(dir, 'loose.log')).mode & 0o777).toBe(0o600);
  });

  it('requires a path or a data dir', () => {
    expect(() => new FileAuditSink({ brokerId: 'b1' })).toThrow(/path/);
  });

  it('resumes seq and prev after reopen, so the chain stays valid across restarts', async () => {
    let sink = open();
    writeN(sink, 5);
    const head = sink.chainHead();
    await sink.close();
    sink = open();
    expect(sink.chainHead()).toEqual(head);
    writeN(sink, 5, 5);
    await sink.close();
    const r = verifyAuditLog(path);
    expect(r).toMatchObject({ ok: true, records: 10, resumes: [] });
    expect((JSON.parse(fileLines()[5]!) as AuditRecord).prev).toBe(head.hash);
  });

  it('resumes after a lost trailing newline without treating the record as damaged', async () => {
    let sink = open();
    writeN(sink, 3);
    await sink.close();
    truncateSync(path, statSync(path).size - 1);
    sink = open();
    writeN(sink, 1, 3);
    await sink.close();
    expect(verifyAuditLog(path)).toMatchObject({ ok: true, records: 4, resumes: [] });
  });

  it('acknowledges a torn last line with an audit.resume record that the verifier accepts', async () => {
    let sink = open();
    writeN(sink, 4);
    await sink.close();
    // A crash mid-write: the last record is cut in half, no newline.
    const size = statSync(path).size;
    const lines = fileLines();
    truncateSync(path, size - Math.floor(lines[3]!.length / 2));
    const cut = readFileSync(path);
    const torn = cut.subarray(cut.lastIndexOf(0x0a) + 1);
    sink = open();
    expect(sink.chainHead().seq).toBe(4);
    writeN(sink, 2, 4);
    await sink.close();

    const after = fileLines();
    const resume = JSON.parse(after[4]!) as AuditRecord;
    expect(resume).toMatchObject({
      event: RESUME_EVENT,
      outcome: 'error',
      seq: 4,
      prev: (JSON.parse(after[2]!) as AuditRecord).hash,
      damaged_sha256: sha256Hex(torn),
      damaged_bytes: torn.length,
    });
    expect(resume.reason).toMatch(/not valid JSON/);
    const r = verifyAuditLog(path);
    expect(r).toMatchObject({ ok: true, records: 6, resumes: [{ line: 4, seq: 4 }] });
    expect(formatVerifyResult(r)).toMatch(/1 damaged line\(s\) acknowledged by audit.resume at line 4/);
  });

  it('acknowledges an edited last line but a checkpoint anchor still exposes it', async () => {
    let sink = open();
    writeN(sink, 3);
    const anchor = sink.chainHead();
    await sink.close();
    writeFileSync(path, readFileSync(path, 'utf8').replace('"jti":"j2"', '"jti":"jX"'));
    sink = open();
    await sink.close();
    expect(verifyAuditLog(path)).toMatchObject({ ok: true, resumes: [{ line: 3, seq: 3 }] });
    expect(verifyAuditLog(path, { anchor }).firstBroken).toMatchObject({ line: 4, seq: 3, reason: /does not match the anchor/ });
  });

  it('acknowledges a damaged first line by chaining the resume record from genesis', async () => {
    writeFileSync(path.replace('sub/', ''), '{"v":1,"seq":1,"ts":"2026');
    path = path.replace('sub/', '');
    const sink = open();
    writeN(sink, 1);
    await sink.close();
    expect(verifyAuditLog(path)).toMatchObject({ ok: true, records: 2, resumes: [{ line: 1, seq: 1 }] });
  });

  it('refuses to open when damage reaches beyond the last line', async () => {
    const sink = open();
    writeN(sink, 3);
    await sink.close();
    appendFileSync(path, 'garbage\nmore garbage\n');
    let err: unknown;
    try {
      open();
    } catch (e) {
      err = e;
    }
    expect(isMayflyError(err)).toBe(true);
    expect((err as Error).message).toMatch(/is damaged \(the last two lines are invalid.*mayfly audit verify/);
  });

  it('counts a failed write, does not throw, and leaves no gap in the chain', async () => {
    const sink = open();
    writeN(sink, 2);
    const internals = sink as unknown as { fd: number };
    const good = internals.fd;
    const ro = openSync(path, 'r');
    internals.fd = ro; // writes now fail with EBADF
    expect(() => writeN(sink, 1, 2)).not.toThrow();
    expect(sink.health()).toMatchObject({ ok: false, errors: 1, written: 2, seq: 2 });
    expect(sink.health().lastError).toMatch(/EBADF/);
    internals.fd = good;
    closeSync(ro);
    writeN(sink, 1, 3);
    await sink.close();
    expect(verifyAuditLog(path)).toMatchObject({ ok: true, records: 3 });
  });

  it('throughput: µs per record (page cache, and with fsync), verified by streaming a >1 MiB file', async () => {
    const n = 6000;
    const sink = open({ clock: undefined });
    const entry = {
      event: 'token.issue',
      outcome: 'success',
      request_id: 'AAAAAAAAAAAAAAAA',
      task_id: 'task_0123456789abcdef',
      jti: 'jti_0123456789abcdef',
      identity: { kind: 'spiffe', id: 'spiffe://example.org/ns/prod/sa/builder', method: 'x509-svid' },
      audience: 'https://api.example.com',
      scopes: ['read', 'write'],
    } as const;
    // Warm up the JIT first; report CPU time too, because wall time on a shared CI box mostly measures the neighbours.
    for (let i = 0; i < 500; i++) sink.write(entry);
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    for (let i = 0; i < n; i++) sink.write(entry);
    const us = Number(process.hrtime.bigint() - t0) / 1000 / n;
    const cpu = process.cpuUsage(c0);
    const cpuUs = (cpu.user + cpu.system) / n;
    const syncSink = new FileAuditSink({ path: join(dir, 'fsync.log'), brokerId: 'b1', fsync: true });
    const m = 200;
    const t1 = process.hrtime.bigint();
    for (let i = 0; i < m; i++) syncSink.write(entry);
    const usSync = Number(process.hrtime.bigint() - t1) / 1000 / m;
    await sink.close();
    await syncSink.close();
    console.info(`FileAuditSink: ${us.toFixed(1)} µs/record wall, ${cpuUs.toFixed(1)} µs/record CPU (page cache); ${usSync.toFixed(1)} µs/record (fsync)`);
    expect(statSync(path).size).toBeGreaterThan(1024 * 1024);
    expect(verifyAuditLog(path)).toMatchObject({ ok: true, records: n + 500 });
    expect(us).toBeLessThan(1000);
  });
});

describe('FileAuditSink.writeConfirmed', () => {
  it('writes the records confirmed in one event-loop turn with one write, in call order with synchronous writes', async () => {
    const sink = open();
    const internals = sink as unknown as { appendBytes: (b: Buffer) => void };
    const writes: number[] = [];
    const original = internals.appendBytes.bind(sink);
    internals.appendBytes = (b: Buffer) => {
      writes.push(b.toString('utf8').split('\n').filter(Boolean).length);
      original(b);
    };
    const confirmed = [0, 1, 2, 3, 4].map((i) => sink.writeConfirmed({ event: 'token.issue', outcome: 'success', jti: `c${i}` }));
    expect(fileLinesOf(path)).toEqual([]); // nothing before the end of the turn
    await Promise.all(confirmed);
    expect(writes).toEqual([5]);
    // A synchronous write first writes whatever is queued, so the log keeps call order.
    const later = sink.writeConfirmed({ event: 'token.issue', outcome: 'success', jti: 'queued' });
    sink.write({ event: 'task.expire', outcome: 'success', task_id: 'sync' });
    await later;
    expect(writes).toEqual([5, 1, 1]);
    await sink.close();
    const recs = fileLinesOf(path).map((l) => JSON.parse(l) as AuditRecord);
    expect(recs.map((r) => r.jti ?? r.task_id)).toEqual(['c0', 'c1', 'c2', 'c3', 'c4', 'queued', 'sync']);
    expect(verifyAuditLog(path)).toMatchObject({ ok: true, records: 7 });
  });

  it('rejects every record of a group whose write failed and leaves the chain as it was', async () => {
    const sink = open();
    writeN(sink, 2);
    const internals = sink as unknown as { fd: number };
    const good = internals.fd;
    const ro = openSync(path, 'r');
    internals.fd = ro; // writes now fail with EBADF
    const failed = await Promise.allSettled([sink.writeConfirmed({ event: 'token.issue', outcome: 'success', jti: 'x1' }), sink.writeConfirmed({ event: 'token.issue', outcome: 'success', jti: 'x2' })]);
    expect(failed.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(String((failed[0] as PromiseRejectedResult).reason)).toMatch(/EBADF/);
    expect(sink.health()).toMatchObject({ ok: false, errors: 2, written: 2, seq: 2 });
    internals.fd = good;
    closeSync(ro);
    await sink.writeConfirmed({ event: 'token.issue', outcome: 'success', jti: 'after' });
    await sink.close();
    await expect(sink.writeConfirmed({ event: 'token.issue', outcome: 'success' })).rejects.toThrow(/closed/);
    expect(verifyAuditLog(path)).toMatchObject({ ok: true, records: 3 });
  });
});

function fileLinesOf(p: string): string[] {
  return readFileSync(p, 'utf8').split('\n').filter(Boolean);
}

describe('FileAuditSink open errors', () => {
  it('wraps filesystem errors in a MayflyError naming the path', () => {
    const d = mkdtempSync(join(tmpdir(), 'mayfly-audit-'));
    try {
      // The "file" is a directory: opening it for append fails.
      let err: unknown;
      try {
        new FileAuditSink({ path: d, brokerId: 'b1' });
      } catch (e) {
        err = e;
      }
      expect(isMayflyError(err, 'ERR_INTERNAL')).toBe(true);
      expect((err as Error).message).toContain(`audit: cannot open ${d}`);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

describe('FileAuditSink rotation', () => {
  let d: string;
  let p: string;
  beforeEach(() => {
    d = mkdtempSync(join(tmpdir(), 'mayfly-audit-rot-'));
    p = join(d, 'audit.log');
  });
  afterEach(() => rmSync(d, { recursive: true, force: true }));

  function rotating(): FileAuditSink {
    return new FileAuditSink({ path: p, brokerId: 'b1', clock: new ManualClock(), maxBytes: 2000 });
  }

  it('rotates into fixed-width segments that verify as one chain', async () => {
    const sink = rotating();
    writeN(sink, 60);
    await sink.close();
    const files = auditSegments(p);
    expect(files.length).toBeGreaterThan(3);
    expect(files[files.length - 1]).toBe(p);
    expect(files[0]).toMatch(/audit\.log\.\d{12}$/);
    for (const f of files) {
      expect(statSync(f).size).toBeLessThanOrEqual(2000);
      expect(statSync(f).mode & 0o777).toBe(0o600);
    }
    expect(verifyAuditFiles(files)).toMatchObject({ ok: true, records: 60, head: sink.chainHead() });
    // A later segment alone starts mid-chain: it needs the previous segment's head.
    const second = files[1]!;
    expect(verifyAuditLog(second).firstBroken).toMatchObject({ line: 1, reason: /where 1 expected/ });
    const firstHead = verifyAuditLog(files[0]!).head;
    expect(verifyAuditLog(second, { start: firstHead }).ok).toBe(true);
  });

  it('detects a deleted segment and tail truncation with an anchor', async () => {
    const sink = rotating();
    writeN(sink, 60);
    const anchor = sink.chainHead();
    await sink.close();
    const files = auditSegments(p);
    const r = verifyAuditFiles([files[0]!, ...files.slice(2)]);
    expect(r.ok).toBe(false);
    expect(r.firstBroken).toMatchObject({ file: files[2], line: 1, reason: /deleted or reordered/ });
    expect(formatVerifyResult(r)).toContain(`BROKEN at ${files[2]}:1`);
    expect(verifyAuditFiles(files.slice(0, -1)).ok).toBe(true);
    expect(verifyAuditFiles(files.slice(0, -1), { anchor }).firstBroken?.reason).toMatch(/records removed from the end/);
    expect(verifyAuditFiles(files, { anchor }).ok).toBe(true);
  });

  it('resumes from the newest segment when the current file is missing', async () => {
    let sink = rotating();
    writeN(sink, 30);
    await sink.close();
    const segs = auditSegments(p).filter((f) => f !== p);
    const segHead = verifyAuditLog(segs[segs.length - 1]!, { start: verifyAuditFiles(segs.slice(0, -1)).head }).head;
    rmSync(p);
    sink = rotating();
    expect(sink.chainHead()).toEqual(segHead);
    writeN(sink, 1, 30);
    await sink.close();
    expect(verifyAuditFiles(auditSegments(p)).ok).toBe(true);
  });
});
