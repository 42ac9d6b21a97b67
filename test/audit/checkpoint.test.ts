/**
 * Signed checkpoints and the stored head: a log cut at its end, a forged
 * checkpoint and a log shorter than the stored head are each reported with
 * their own code; an intact sealed log verifies.
 */
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuditKey, AuditSealer, checkpointKeysFromJwks, writeCheckpoint } from '../../src/audit/checkpoint.js';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { canonicalJson, sha256Hex } from '../../src/audit/record.js';
import { formatVerifyResult, verifyAuditLog } from '../../src/audit/verify-chain.js';
import { MemoryStore } from '../../src/store/memory.js';

const clock = { now: () => Date.UTC(2026, 0, 1) };

function sealedLog(records = 20, every = 5) {
  const key = AuditKey.generate();
  const sink = new MemoryAuditSink({ brokerId: 'b1', clock });
  let head = null as ReturnType<typeof writeCheckpoint> | null;
  for (let i = 1; i <= records; i++) {
    sink.write({ event: 'task.begin', outcome: 'success', task_id: `t${i}` });
    if (i % every === 0) head = writeCheckpoint(sink, key, 'periodic', clock.now());
  }
  return { key, sink, head: head!, keys: checkpointKeysFromJwks(JSON.stringify(key.jwks())) };
}

/** Re-hashes a record after `edit`, as an attacker without the audit key would. */
function forge(line: string, edit: (r: Record<string, unknown>) => void): string {
  const r = JSON.parse(line) as Record<string, unknown>;
  edit(r);
  delete r['hash'];
  r['hash'] = sha256Hex(canonicalJson(r));
  return JSON.stringify(r);
}

describe('signed checkpoints', () => {
  it('an intact sealed log verifies, counting checkpoints and the unsealed tail', () => {
    const { sink, head, keys } = sealedLog(22, 5);
    const r = verifyAuditLog(sink.lines(), { anchor: head, checkpointKeys: keys });
    expect(r).toMatchObject({ ok: true, records: 26, checkpoints: 4, checkpointsVerified: true, afterLastCheckpoint: 2 });
    expect(formatVerifyResult(r)).toMatch(/4 checkpoint\(s\) signature-verified, 2 record\(s\) after the last$/);
  });

  it('whole records cut off the end (checkpoints included) → end_missing', () => {
    const { sink, head, keys } = sealedLog(20, 5);
    const lines = sink.lines();
    expect(lines).toHaveLength(24);
    const cut = verifyAuditLog(lines.slice(0, -5), { anchor: head, checkpointKeys: keys });
    expect(cut.ok).toBe(false);
    expect(cut.firstBroken).toMatchObject({ code: 'end_missing', line: 20, seq: 20 });
    expect(formatVerifyResult(cut)).toMatch(/^audit log BROKEN at line 20 \(seq 20\): \[end_missing\] log ends at seq 19 but the anchor is at seq 24/);
    // The same cut is invisible to the chain alone: this is what the stored head adds.
    expect(verifyAuditLog(lines.slice(0, -5)).ok).toBe(true);
  });

  it('a checkpoint forged without the key (signature edited, hashes recomputed) → checkpoint_invalid', () => {
    const { sink, keys } = sealedLog(10, 5);
    const lines = sink.lines();
    // Line 6 is the first checkpoint; claim it sealed something else.
    expect(JSON.parse(lines[5]!).event).toBe('audit.checkpoint');
    lines[5] = forge(lines[5]!, (r) => (r['sig'] = Buffer.alloc(64, 7).toString('base64url')));
    // Relink the rest so only the signature can tell.
    let prev = JSON.parse(lines[5]!).hash as string;
    for (let i = 6; i < lines.length; i++) {
      lines[i] = forge(lines[i]!, (r) => (r['prev'] = prev));
      prev = JSON.parse(lines[i]!).hash as string;
    }
    expect(verifyAuditLog(lines).ok).toBe(true);
    const r = verifyAuditLog(lines, { checkpointKeys: keys });
    expect(r.firstBroken).toMatchObject({ code: 'checkpoint_invalid', line: 6, seq: 6, reason: /does not verify/ });
  });

  it('a checkpoint signed by another key → checkpoint_invalid naming the unknown key', () => {
    const { sink } = sealedLog(5, 5);
    const other = checkpointKeysFromJwks(JSON.stringify(AuditKey.generate().jwks()));
    expect(verifyAuditLog(sink.lines(), { checkpointKeys: other }).firstBroken).toMatchObject({ code: 'checkpoint_invalid', reason: /unknown audit key/ });
  });

  it('with keys, a stored head must point at a checkpoint record', () => {
    const { sink, keys } = sealedLog(7, 5);
    const plain = { seq: 7, hash: JSON.parse(sink.lines()[6]!).hash as string };
    expect(verifyAuditLog(sink.lines(), { anchor: plain, checkpointKeys: keys }).firstBroken).toMatchObject({ code: 'anchor_mismatch', line: 7 });
  });

  it('refuses a JWKS without an Ed25519 key', () => {
    expect(() => checkpointKeysFromJwks('{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}')).toThrow(/no Ed25519 key/);
    expect(() => checkpointKeysFromJwks('nope')).toThrow(/not valid JSON/);
  });
});

describe('AuditSealer', () => {
  it('seals into the store only when the head moved', async () => {
    const store = new MemoryStore();
    const sink = new MemoryAuditSink({ brokerId: 'b1', clock });
    const sealer = new AuditSealer(sink, AuditKey.generate(), store, clock);
    expect(await sealer.open()).toBeNull();
    sink.write({ event: 'broker.start', outcome: 'success' });
    const h = await sealer.seal('periodic');
    expect(h).toMatchObject({ brokerId: 'b1', seq: 2 });
    expect(await store.getAuditHead('b1')).toEqual(h);
    expect(await sealer.seal('shutdown')).toBeNull();
    expect(sink.lines()).toHaveLength(2);
  });

  it('a log shorter than the stored head gets an audit.end_missing record, which fails verify by itself', async () => {
    const store = new MemoryStore();
    const key = AuditKey.generate();
    const keys = checkpointKeysFromJwks(JSON.stringify(key.jwks()));
    await store.putAuditHead({ brokerId: 'b1', seq: 40, hash: 'f'.repeat(64), at: clock.now() });
    const sink = new MemoryAuditSink({ brokerId: 'b1', clock });
    sink.write({ event: 'broker.start', outcome: 'success' });
    const sealer = new AuditSealer(sink, key, store, clock);
    const note = await sealer.open();
    expect(note).toMatchObject({ event: 'audit.end_missing', seq: 2, expected_seq: 40 });
    sink.write({ event: 'broker.stop', outcome: 'success' });
    const head = (await sealer.seal('shutdown'))!;
    // The stored head moved on and the log reaches it; the note still fails the log.
    const r = verifyAuditLog(sink.lines(), { anchor: head, checkpointKeys: keys });
    expect(r.ok).toBe(false);
    expect(r.firstBroken).toMatchObject({ code: 'end_missing', line: 2, seq: 2 });
    expect(r.records).toBe(4);
  });

  it('a same-length log with a different last record also counts as a missing end', async () => {
    const store = new MemoryStore();
    const sink = new MemoryAuditSink({ brokerId: 'b1', clock });
    sink.write({ event: 'broker.start', outcome: 'success' });
    await store.putAuditHead({ brokerId: 'b1', seq: 1, hash: 'f'.repeat(64), at: clock.now() });
    expect(await new AuditSealer(sink, AuditKey.generate(), store, clock).open()).toMatchObject({ event: 'audit.end_missing' });
  });
});

describe('AuditKey.loadOrCreate', () => {
  it('creates a 0600 key once, then loads the same key; the JWKS next to it verifies its signatures', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mayfly-audit-key-'));
    const a = AuditKey.loadOrCreate(join(dir, 'k.pem'), join(dir, 'k.jwks.json'));
    expect(statSync(join(dir, 'k.pem')).mode & 0o777).toBe(0o600);
    const b = AuditKey.loadOrCreate(join(dir, 'k.pem'), join(dir, 'k.jwks.json'));
    expect(b.kid).toBe(a.kid);
    expect(checkpointKeysFromJwks(readFileSync(join(dir, 'k.jwks.json'), 'utf8')).has(a.kid)).toBe(true);
    writeFileSync(join(dir, 'bad.pem'), 'not a key');
    expect(() => AuditKey.loadOrCreate(join(dir, 'bad.pem'), join(dir, 'x.json'))).toThrow(/not an Ed25519 private key/);
  });
});
