import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileAuditSink } from '../../src/audit/file-sink.js';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { auditSinkContract } from '../contracts/audit-sink.contract.js';

auditSinkContract('MemoryAuditSink', async ({ clock, onWrite }) => {
  const sink = new MemoryAuditSink({ brokerId: 'b1', clock, onWrite });
  return { sink, lines: () => sink.lines() };
});

auditSinkContract('FileAuditSink', async ({ clock, onWrite }) => {
  const dir = mkdtempSync(join(tmpdir(), 'mayfly-audit-'));
  const sink = new FileAuditSink({ dataDir: dir, brokerId: 'b1', clock, onWrite });
  return {
    sink,
    lines: () => readFileSync(sink.path, 'utf8').split('\n').filter((l, i, a) => !(l === '' && i === a.length - 1)),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});
