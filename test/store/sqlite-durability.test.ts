/** SQLite-only behaviour: persistence across reopen, WAL, schema versioning, crash durability and failure messages. */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import ts from 'typescript';
import { afterAll, describe, expect, it } from 'vitest';
import { SQLITE_SCHEMA_VERSION, SqliteStore } from '../../src/store/sqlite.js';
import { task, token } from '../contracts/store.contract.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const T0 = Date.UTC(2026, 0, 1);
const MIN = 60_000;
const dir = mkdtempSync(join(tmpdir(), 'mayfly-sqlite-'));
let n = 0;
const freshPath = () => join(dir, `case-${++n}`, 'data', 'mayfly.db');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function codeAndMessage(p: Promise<unknown> | (() => unknown)): Promise<{ code?: string; message: string }> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return { code: (e as { code?: string }).code, message: (e as Error).message };
  }
  throw new Error('expected a failure');
}

describe('SqliteStore', () => {
  it('keeps tasks, tokens, revocations and the cursor across close and reopen', async () => {
    const path = freshPath();
    let s = SqliteStore.open(path);
    await s.createTask(task('root', { labels: { a: 'b' }, scopeCeiling: ['x'] }));
    await s.createTask(task('kept'));
    await s.recordToken(token('j1', 'root'));
    await s.recordToken(token('j2', 'kept', { kid: 'K', expiresAt: T0 + 30 * MIN }));
    const end = await s.endTask('root', 'completed', 'done', T0 + MIN);
    const pruneMe = await s.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'v1', reason: 'r', coversUntil: T0 });
    await s.gc(T0 + 2 * MIN, 0);
    await s.close();

    s = SqliteStore.open(path);
    expect(await s.getTask('root')).toMatchObject({ status: 'completed', labels: { a: 'b' }, scopeCeiling: ['x'], tokensIssued: 1 });
    expect((await s.getToken('j1'))!.revokedAt).toBe(T0 + MIN);
    expect((await s.getToken('j2'))!.revokedAt).toBeNull();
    expect(await s.eventsSince(0, 10)).toEqual([end.event]);
    expect(await s.cursorRange()).toEqual({ oldest: end.event!.cursor, latest: pruneMe.cursor });
    expect((await s.revocationSnapshot(T0 + 2 * MIN)).taskIds).toEqual(['root']);
    const next = await s.revokeTokensByKid('K', 'compromised', T0 + 2 * MIN);
    expect(next.cursor).toBe(pruneMe.cursor + 1);
    await s.close();
  });

  it('runs in WAL mode with schema version stamped, and NORMAL sync outside revocations', async () => {
    const path = freshPath();
    const s = SqliteStore.open(path);
    await s.createTask(task('t'));
    await s.endTask('t', 'revoked', 'x', T0);
    // White-box: the FULL switch around a revocation must be undone afterwards (1 = NORMAL).
    expect((s as unknown as { db: Database.Database }).db.pragma('synchronous', { simple: true })).toBe(1);
    const raw = new Database(path, { readonly: true });
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(raw.pragma('user_version', { simple: true })).toBe(SQLITE_SCHEMA_VERSION);
    raw.close();
    await s.close();
  });

  it('refuses a database written by a newer broker', async () => {
    const path = freshPath();
    await SqliteStore.open(path).close();
    const raw = new Database(path);
    raw.pragma(`user_version = ${SQLITE_SCHEMA_VERSION + 1}`);
    raw.close();
    const err = await codeAndMessage(() => SqliteStore.open(path));
    expect(err.code).toBe('ERR_STORE');
    expect(err.message).toMatch(/newer than this broker supports/);
  });

  it('reports a corrupt file as ERR_STORE naming the file', async () => {
    const path = freshPath();
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, Buffer.alloc(8192, 0x41));
    const err = await codeAndMessage(() => SqliteStore.open(path));
    expect(err.code).toBe('ERR_STORE');
    expect(err.message).toContain(path);
    expect(err.message).toMatch(/corrupt or not a SQLite database/);
  });

  it('reports a database locked by another process as ERR_STORE', async () => {
    const path = freshPath();
    const s = SqliteStore.open(path, { busyTimeoutMs: 20 });
    const other = new Database(path);
    other.exec('BEGIN IMMEDIATE');
    try {
      const err = await codeAndMessage(s.createTask(task('t')));
      expect(err.code).toBe('ERR_STORE');
      expect(err.message).toMatch(/locked by another process/);
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    await s.createTask(task('t'));
    await s.close();
  });

  it('keeps a revocation whose promise resolved even if the process is SIGKILLed right after', async () => {
    const path = freshPath();
    let s = SqliteStore.open(path);
    await s.createTask(task('root'));
    await s.createTask(task('child', { parentId: 'root', depth: 1 }));
    await s.recordToken(token('j-root', 'root'));
    await s.recordToken(token('j-child', 'child'));
    await s.close();

    const out = compileForChild();
    const child = join(out, 'child.mjs');
    writeFileSync(
      child,
      `import { SqliteStore } from './src/store/sqlite.js';
const s = SqliteStore.open(process.argv[2]);
const res = await s.endTask('root', 'revoked', 'killed', ${T0 + MIN});
process.stdout.write(JSON.stringify(res) + '\\n');
process.kill(process.pid, 'SIGKILL');
`,
    );
    const r = spawnSync(process.execPath, [child, path], { encoding: 'utf8', timeout: 20_000 });
    expect(r.signal).toBe('SIGKILL');
    const res = JSON.parse(r.stdout.trim()) as { taskIds: string[]; event: { cursor: number } };
    expect(res.taskIds).toEqual(['root', 'child']);

    s = SqliteStore.open(path);
    expect((await s.getTask('root'))!.status).toBe('revoked');
    expect((await s.getTask('child'))!.status).toBe('revoked');
    expect((await s.getToken('j-child'))!.revokedAt).toBe(T0 + MIN);
    expect((await s.eventsSince(0, 10)).map((e) => e.cursor)).toEqual([res.event.cursor]);
    await s.close();
  });
});

describe('SqliteStore off the event loop', () => {
  it('checkpoints the WAL from a worker thread, and the WAL starts over once copied', async () => {
    const path = freshPath();
    const s = SqliteStore.open(path, { checkpointInWorker: true, checkpointIntervalMs: 20 });
    const db = (s as unknown as { db: Database.Database }).db;
    // The commit-time checkpoint is only a backstop, ten times SQLite's default.
    expect(db.pragma('wal_autocheckpoint', { simple: true })).toBe(10_000);
    for (let i = 0; i < 300; i++) await s.createTask(task(`t${i}`, { purpose: 'x'.repeat(2000) }));
    const deadline = Date.now() + 10_000;
    let st = s.checkpointStats()!;
    while (!(st.lastLogFrames > 0 && st.lastCheckpointed === st.lastLogFrames) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      st = s.checkpointStats()!;
    }
    expect(st).toMatchObject({ running: true, errors: 0 });
    expect(st.lastLogFrames).toBeGreaterThan(0);
    expect(st.lastCheckpointed).toBe(st.lastLogFrames);
    // Everything was copied into the database file, so the next commit may start the WAL over.
    const walFrames = st.lastLogFrames;
    await s.createTask(task('after-checkpoint'));
    const after = new Database(path);
    const frames = (after.pragma('wal_checkpoint(PASSIVE)') as { log: number }[])[0]!.log;
    after.close();
    expect(frames).toBeLessThan(walFrames); // the next commit wrote from the start of the WAL again
    await s.close();
    expect(s.checkpointStats()!.running).toBe(false);
    const reopened = SqliteStore.open(path);
    expect(await reopened.getTask('after-checkpoint')).not.toBeNull();
    expect(await reopened.getTask('t299')).not.toBeNull();
    await reopened.close();
  });

  it('answers revocations only after an fsync that started after their commit, shared by concurrent ones', async () => {
    const path = freshPath();
    const s = SqliteStore.open(path);
    for (let i = 0; i < 20; i++) await s.createTask(task(`t${i}`));
    const internals = s as unknown as { syncing: Promise<void> | null };
    const ends = Array.from({ length: 20 }, (_, i) => s.endTask(`t${i}`, 'completed', 'done', T0 + MIN));
    // All 20 commits are visible at once; their promises wait for the disk.
    expect((await s.getTask('t19'))!.status).toBe('completed');
    expect(internals.syncing).not.toBeNull();
    const res = await Promise.all(ends);
    expect(res.map((r) => r.taskIds)).toEqual(Array.from({ length: 20 }, (_, i) => [`t${i}`]));
    expect(new Set(res.map((r) => r.event!.cursor)).size).toBe(20);
    expect(internals.syncing).toBeNull();
    await s.close();
  });
});

/** Transpiles src/core and src/store to plain ESM in a temp dir so a bare `node` child can run the real adapter. */
function compileForChild(): string {
  const out = join(dir, 'child-build');
  for (const sub of ['src/core', 'src/store']) {
    for (const f of readdirSync(join(ROOT, sub))) {
      if (!f.endsWith('.ts')) continue;
      const src = readFileSync(join(ROOT, sub, f), 'utf8');
      const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText;
      const dest = join(out, relative(ROOT, join(ROOT, sub, f.replace(/\.ts$/, '.js'))));
      mkdirSync(dirname(dest), { recursive: true });
      writeFileSync(dest, js);
    }
  }
  writeFileSync(join(out, 'package.json'), '{"type":"module"}');
  try {
    symlinkSync(join(ROOT, 'node_modules'), join(out, 'node_modules'), 'dir');
  } catch {
    // already linked
  }
  return out;
}
