/**
 * The audit log a real broker writes: the shipped CLI (`mayfly audit verify`,
 * from dist/, so `npm run build` must have run) accepts it as written and
 * names the first broken line for each kind of tampering; no token ever
 * appears in it in the clear.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyAuditLog } from '../../src/audit/verify-chain.js';
import { codeOf, startTestBroker, type TestBroker } from './helpers.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const CLI = join(ROOT, 'bin', 'mayfly.js');

let tb: TestBroker;
let auditPath: string;
let original: string;
const secrets: string[] = [];

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      res({ code, stdout, stderr });
    });
  });
}

const verify = () => cli(['audit', 'verify', '--config', join(tb.dir, 'mayfly.yaml')]);

beforeAll(async () => {
  tb = await startTestBroker();
  const c = tb.client();
  // Traffic: successes, denials, introspection (live and revoked), HTTP calls with a task token as bearer.
  const t1 = await c.beginTask({ purpose: 'audit traffic 1' });
  const a = await c.issueToken({ taskId: t1.taskId, audience: 'demo-api', scopes: ['read'] });
  const b = await c.issueToken({ taskId: t1.taskId, audience: 'demo-api', scopes: ['write'], singleUse: true });
  secrets.push(a.token, b.token);
  await c.introspect(a.token);
  expect(await codeOf(c.issueToken({ taskId: t1.taskId, audience: 'nope', scopes: ['read'] }))).toBe('ERR_POLICY_DENIED');
  expect(await codeOf(c.beginTask({ purpose: '' }))).toBe('ERR_INVALID_ARGUMENT');
  const introspected = await tb.http('/oauth2/introspect', { form: { token: b.token }, cert: 'relying-party' });
  expect(introspected.json!['active']).toBe(true);
  // A certificate-bound token presented as a bearer without its certificate: refused, and not logged either.
  const unbound = await tb.http('/v1/tasks/complete', { json: {}, bearer: a.token });
  expect(unbound.status).toBe(401);
  const completed = await tb.http('/v1/tasks/complete', { json: { task_id: t1.taskId }, cert: 'workload' });
  expect(completed.status).toBe(200);
  expect(completed.json!['revoked_tokens']).toBe(2);
  expect((await c.introspect(a.token)).reason).toBe('revoked');
  // A revoked token presented as bearer: refused, and must not be logged either.
  const refused = await tb.http('/v1/tasks/complete', { json: {}, bearer: b.token });
  expect(refused.status).toBe(401);
  const t2 = await c.beginTask({ purpose: 'audit traffic 2' });
  secrets.push((await c.issueToken({ taskId: t2.taskId, audience: 'demo-api', scopes: ['read'] })).token);
  await c.completeTask(t2.taskId);
  // Stop so nothing is appended while the file is edited below.
  await tb.stop({ keepDir: true });
  auditPath = join(tb.dir, 'audit.log');
  original = readFileSync(auditPath, 'utf8');
});

afterAll(async () => {
  await tb?.stop();
});

describe('mayfly audit verify (CLI)', () => {
  it('accepts the log as written (exit 0)', async () => {
    const r = await verify();
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const n = original.trim().split('\n').length;
    expect(r.stdout).toContain(`audit log OK: ${n} records`);
    expect(n).toBeGreaterThan(15);
  });

  describe('tampering', () => {
    const lines = () => original.trimEnd().split('\n');
    /** Index (0-based) of a task.begin denial in the middle of the log. */
    const target = () => lines().findIndex((l) => JSON.parse(l).event === 'task.begin' && JSON.parse(l).outcome === 'denied');
    type Outcome = { code: number; stdout: string; stderr: string };
    /** The CLI names the first broken line as `line N` (one file) or `<file>:N` (segments). */
    const brokenAt = (line: number | string) => new RegExp(`BROKEN at (line |\\S+:)(${line})[ :]`);
    const results = new Map<string, Outcome>();

    /** Every variant but the first is verified from a copy via --file, concurrently (the CLI takes ~1 s to start). */
    beforeAll(async () => {
      const { canonicalJson, sha256Hex } = await import('../../src/audit/record.js');
      const i = target();
      expect(i).toBeGreaterThan(0);
      const variants: Record<string, string[]> = {};
      {
        const ls = lines();
        const rec = JSON.parse(ls[i]!) as Record<string, unknown>;
        rec['outcome'] = 'success';
        ls[i] = JSON.stringify(rec);
        variants['edit'] = ls;
      }
      {
        const ls = lines();
        const rec = JSON.parse(ls[i]!) as Record<string, unknown>;
        rec['code'] = 'ERR_NONE';
        delete rec['hash'];
        rec['hash'] = sha256Hex(canonicalJson(rec));
        ls[i] = JSON.stringify(rec);
        variants['rehash'] = ls;
      }
      {
        const ls = lines();
        ls.splice(i, 1);
        variants['delete'] = ls;
      }
      {
        const ls = lines();
        [ls[i], ls[i + 1]] = [ls[i + 1]!, ls[i]!];
        variants['swap'] = ls;
      }
      {
        const ls = lines();
        ls[i] = ls[i]!.slice(0, 40);
        variants['truncate'] = ls;
      }
      // Whole records cut off the end: a shorter log is still a valid chain; only the stored head shows the loss.
      variants['cut-end'] = lines().slice(0, -5);
      // The edit goes into audit.log itself, found through --config like an operator would.
      writeFileSync(auditPath, variants['edit']!.join('\n') + '\n');
      try {
        results.set('edit', await verify());
      } finally {
        writeFileSync(auditPath, original);
      }
      await Promise.all(
        Object.entries(variants)
          .filter(([name]) => name !== 'edit')
          .map(async ([name, ls]) => {
            const file = join(tb.dir, `audit-${name}.log`);
            writeFileSync(file, ls.join('\n') + '\n');
            results.set(name, await cli(['audit', 'verify', '--config', join(tb.dir, 'mayfly.yaml'), '--file', file]));
          }),
      );
    });

    it('an edited field in audit.log → exit 1 naming that line', () => {
      const r = results.get('edit')!;
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(brokenAt(target() + 1));
    });

    it("an edited field with the line's own hash recomputed → exit 1 (the next line's prev no longer links)", () => {
      const r = results.get('rehash')!;
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(brokenAt(`${target() + 1}|${target() + 2}`));
    });

    it('a deleted line → exit 1 naming where the chain breaks', () => {
      const r = results.get('delete')!;
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(brokenAt(target() + 1));
    });

    it('two swapped lines → exit 1 naming the first moved line', () => {
      const r = results.get('swap')!;
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(brokenAt(target() + 1));
    });

    it('a truncated (half-written) line → exit 1', () => {
      const r = results.get('truncate')!;
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(brokenAt(target() + 1));
    });

    it('the last five whole records removed → exit 1 with end_missing (the head recorded in the store is gone)', () => {
      const r = results.get('cut-end')!;
      expect(r.code).toBe(1);
      const n = lines().length;
      expect(r.stdout).toMatch(brokenAt(n - 4));
      expect(r.stdout).toContain('[end_missing]');
      expect(r.stdout).toContain(`log ends at seq ${n - 5} but the anchor is at seq ${n}`);
      expect(r.stdout).toMatch(/checkpoint signatures checked with/);
    });

    it('audit.log itself is restored and verifies again', () => {
      expect(readFileSync(auditPath, 'utf8')).toBe(original);
      // In-process (the CLI already accepted this exact content in the first test).
      expect(verifyAuditLog(original).ok).toBe(true);
    });
  });
});

describe('audit content', () => {
  it('never contains a token, nor any token\'s signature, only hashes', () => {
    expect(secrets.length).toBe(3);
    for (const t of secrets) {
      expect(original.includes(t)).toBe(false);
      const [, payload, sig] = t.split('.');
      expect(original.includes(sig!)).toBe(false);
      expect(original.includes(payload!)).toBe(false);
    }
    // Hashes are there instead (introspection and bearer use record token_sha256).
    const recs = original.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(recs.some((r) => typeof r['token_sha256'] === 'string' && /^[0-9a-f]{64}$/.test(r['token_sha256'] as string))).toBe(true);
  });

  it('records the whole story: issues, denials, completion, misuse', () => {
    const recs = original.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const events = recs.map((r) => `${String(r['event'])}:${String(r['outcome'])}`);
    expect(events[0]).toBe('key.create:success');
    expect(events).toContain('broker.start:success');
    expect(events.filter((e) => e === 'token.issue:success')).toHaveLength(3);
    expect(events).toContain('token.issue:denied');
    expect(events).toContain('task.begin:denied');
    expect(events.filter((e) => e === 'task.complete:success')).toHaveLength(2);
    expect(events).toContain('token.misuse:denied');
    expect(events).toContain('auth.failure:denied');
    // A clean stop seals the log: the last record is a signed checkpoint right after broker.stop.
    expect(events.slice(-2)).toEqual(['broker.stop:success', 'audit.checkpoint:success']);
    expect(recs[recs.length - 1]).toMatchObject({ checkpoint: 'shutdown', alg: 'EdDSA' });
    expect(recs.map((r) => r['seq'])).toEqual(recs.map((_, i) => i + 1));
  });
});

describe('a log cut while the broker was down', () => {
  it('is noticed at the next start (audit.end_missing), and verify keeps reporting it after the stored head moved on', async () => {
    const ls = original.trimEnd().split('\n');
    writeFileSync(auditPath, ls.slice(0, -5).join('\n') + '\n');
    const again = await startTestBroker({ dir: tb.dir });
    await again.stop({ keepDir: true });
    const recs = readFileSync(auditPath, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const note = recs.find((r) => r['event'] === 'audit.end_missing');
    expect(note).toMatchObject({ seq: ls.length - 4, expected_seq: ls.length, outcome: 'error' });
    // The store now holds the new shutdown checkpoint, which the log does reach; the note alone still fails the log.
    const r = await verify();
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('[end_missing]');
    expect(r.stdout).toMatch(brokenAtLine(ls.length - 4));
  });
});

function brokenAtLine(line: number): RegExp {
  return new RegExp(`BROKEN at (line |\\S+:)(${line})[ :]`);
}
