/**
 * Contract every AuditSink adapter passes: the chain it writes verifies, it
 * never throws on the request path, it redacts, and it keeps call order.
 * Run from test/audit/sink-contract.test.ts for each adapter.
 */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type { AuditEntry, AuditSink } from '../../src/core/ports.js';
import type { AuditSinkHealth } from '../../src/audit/chain.js';
import { GENESIS_HASH, sha256Hex, type AuditRecord, type ChainHead } from '../../src/audit/record.js';
import { verifyAuditLog } from '../../src/audit/verify-chain.js';

export interface ContractSink extends AuditSink {
  health(): AuditSinkHealth;
  chainHead(): ChainHead;
}

export interface AuditSinkHarness {
  sink: ContractSink;
  /** The log lines as persisted by the adapter. */
  lines(): string[];
  cleanup?(): Promise<void>;
}

export type AuditSinkFactory = (opts: { clock: ManualClock; onWrite: (r: AuditRecord) => void }) => Promise<AuditSinkHarness>;

const JWS =
  'eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93In0.MEUCIQDx3y8Qk2n7pXo9vA1bC2dE3fG4hI5jK6lM7nO8pQ9rS';

/** Registers the contract tests for one adapter. */
export function auditSinkContract(name: string, factory: AuditSinkFactory): void {
  describe(`AuditSink contract: ${name}`, () => {
    async function open(): Promise<AuditSinkHarness & { written: AuditRecord[]; clock: ManualClock }> {
      const clock = new ManualClock(Date.UTC(2026, 0, 1));
      const written: AuditRecord[] = [];
      const h = await factory({ clock, onWrite: (r) => written.push(r) });
      return { ...h, written, clock };
    }

    it('writes a chain that starts at genesis and verifies', async () => {
      const h = await open();
      for (let i = 0; i < 10; i++) h.sink.write({ event: 'token.issue', outcome: 'success', jti: `j${i}` });
      const lines = h.lines();
      expect(lines).toHaveLength(10);
      const first = JSON.parse(lines[0]!) as AuditRecord;
      expect(first).toMatchObject({ v: 1, seq: 1, prev: GENESIS_HASH, event: 'token.issue', ts: '2026-01-01T00:00:00.000Z' });
      const result = verifyAuditLog(lines);
      expect(result).toMatchObject({ ok: true, records: 10 });
      expect(h.sink.chainHead()).toEqual(result.head);
      expect(h.sink.health()).toMatchObject({ ok: true, written: 10, errors: 0, seq: 10 });
      await h.sink.close();
      await h.cleanup?.();
    });

    it('calls onWrite with each record, in order', async () => {
      const h = await open();
      h.sink.write({ event: 'task.begin', outcome: 'success', task_id: 't1' });
      h.sink.write({ event: 'task.complete', outcome: 'success', task_id: 't1' });
      expect(h.written.map((r) => [r.seq, r.event])).toEqual([
        [1, 'task.begin'],
        [2, 'task.complete'],
      ]);
      expect(h.written[1]!.prev).toBe(h.written[0]!.hash);
      await h.sink.close();
      await h.cleanup?.();
    });

    it('never persists a raw token or private key', async () => {
      const h = await open();
      h.sink.write({
        event: 'token.exchange',
        outcome: 'denied',
        reason: `bad subject_token ${JWS}`,
        subject_token: JWS,
        request: { Authorization: `Bearer ${JWS}`, nested: [{ private_key: { kty: 'EC', d: 'secret-scalar' } }] },
      } as AuditEntry);
      const text = h.lines().join('\n');
      expect(text).not.toContain(JWS);
      expect(text).not.toContain('secret-scalar');
      const rec = JSON.parse(h.lines()[0]!) as Record<string, unknown>;
      expect(rec.subject_token_sha256).toBe(sha256Hex(JWS));
      expect(rec.reason).toBe(`bad subject_token sha256:${sha256Hex(JWS)}`);
      expect(verifyAuditLog(h.lines()).ok).toBe(true);
      await h.sink.close();
      await h.cleanup?.();
    });

    it('does not throw on odd entries and still verifies', async () => {
      const h = await open();
      const cyclic: Record<string, unknown> = { a: 1 };
      cyclic.self = cyclic;
      const odd = {
        event: 'auth.failure',
        outcome: 'error',
        cyclic,
        big: 10n,
        nan: Number.NaN,
        when: new Date(0),
        bytes: Buffer.from('raw'),
        err: new Error('boom'),
        fn: () => 1,
        seq: 999,
        hash: 'forged',
      } as unknown as AuditEntry;
      expect(() => h.sink.write(odd)).not.toThrow();
      const rec = JSON.parse(h.lines()[0]!) as Record<string, unknown>;
      expect(rec).toMatchObject({ seq: 1, entry_seq: 999, entry_hash: 'forged', big: '10', nan: null, when: '1970-01-01T00:00:00.000Z' });
      expect(rec.cyclic).toEqual({ a: 1, self: '[Circular]' });
      expect(rec.err).toEqual({ name: 'Error', message: 'boom' });
      expect(rec).not.toHaveProperty('fn');
      expect(verifyAuditLog(h.lines()).ok).toBe(true);
      await h.sink.close();
      await h.cleanup?.();
    });

    it('keeps call order across concurrent async writers', async () => {
      const h = await open();
      const order: string[] = [];
      const worker = async (w: number) => {
        for (let i = 0; i < 25; i++) {
          await new Promise((r) => setImmediate(r));
          const id = `w${w}-${i}`;
          order.push(id);
          h.sink.write({ event: 'token.introspect', outcome: 'success', request_id: id });
          if (i % 3 === 0) await Promise.resolve();
        }
      };
      await Promise.all([0, 1, 2, 3].map(worker));
      const lines = h.lines();
      expect(lines.map((l) => (JSON.parse(l) as AuditRecord).request_id)).toEqual(order);
      expect(verifyAuditLog(lines)).toMatchObject({ ok: true, records: 100 });
      await h.sink.close();
      await h.cleanup?.();
    });

    it('counts writes after close as errors instead of throwing', async () => {
      const h = await open();
      h.sink.write({ event: 'broker.start', outcome: 'success' });
      await h.sink.close();
      await h.sink.close();
      expect(() => h.sink.write({ event: 'broker.stop', outcome: 'success' })).not.toThrow();
      expect(h.sink.health()).toMatchObject({ ok: false, closed: true, errors: 1, written: 1, seq: 1 });
      expect(h.lines()).toHaveLength(1);
      await h.cleanup?.();
    });
  });
}
