import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { task, token } from '../contracts/store.contract.js';

// The SQLite store remembers task records so issuing a token does not read its task's row again.
// Whatever it remembers must be what a fresh reader of the same file sees, after every kind of write.
const dir = mkdtempSync(join(tmpdir(), 'mayfly-sqlite-task-cache-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('SqliteStore task records', () => {
  it('reads back exactly what a fresh reader of the file sees, after every kind of write', async () => {
    const path = join(dir, 'coherent.db');
    const store = SqliteStore.open(path);
    const same = async (id: string) => {
      const fresh = SqliteStore.open(path);
      try {
        expect(await store.getTask(id)).toEqual(await fresh.getTask(id));
      } finally {
        await fresh.close();
      }
    };
    const now = Date.now();
    await store.createTask(task('root', { createdAt: now, expiresAt: now + 60_000, labels: { a: '1' }, scopeCeiling: ['read'] }));
    await store.createTask(task('child', { createdAt: now, expiresAt: now + 60_000, parentId: 'root', rootId: 'root', depth: 1, actors: ['x', 'y'] }));
    await same('root');
    await same('child');

    await store.recordToken(token('j1', 'root', { issuedAt: now, expiresAt: now + 30_000 }));
    await store.recordToken(token('j2', 'root', { issuedAt: now, expiresAt: now + 30_000 }));
    expect((await store.getTask('root'))!.tokensIssued).toBe(2);
    await same('root');

    // A token write that fails (duplicate jti) rolls back its tokensIssued bump, in the file and in what is remembered.
    await expect(store.recordToken(token('j1', 'root', { issuedAt: now, expiresAt: now + 30_000 }))).rejects.toMatchObject({ code: 'ERR_STORE' });
    expect((await store.getTask('root'))!.tokensIssued).toBe(2);
    await same('root');

    expect(await store.renewLease('root', now + 5_000)).toBe(true);
    expect((await store.getTask('root'))!.leaseExpiresAt).toBe(now + 5_000);
    await same('root');

    await store.endTask('root', 'completed', 'done', now + 1);
    expect((await store.getTask('root'))!.status).toBe('completed');
    expect((await store.getTask('child'))!.status).toBe('revoked');
    await same('root');
    await same('child');
    await expect(store.recordToken(token('j3', 'child', { issuedAt: now, expiresAt: now + 30_000 }))).rejects.toMatchObject({ code: 'ERR_TASK_NOT_ACTIVE' });

    await store.gc(now + 120_000, 0);
    expect(await store.getTask('root')).toBeNull();
    await same('root');
    await store.close();
  });

  it('hands out records no caller can change for the next one, whether just created or just read', async () => {
    const store = SqliteStore.open(join(dir, 'copies.db'));
    const now = Date.now();
    const created = task('t', { createdAt: now, expiresAt: now + 60_000, labels: { team: 'a' }, scopeCeiling: ['read'] });
    await store.createTask(created);
    created.labels.team = 'changed by its creator';
    for (let i = 0; i < 2; i++) {
      const got = (await store.getTask('t'))!;
      expect(got.labels).toEqual({ team: 'a' });
      expect(got.scopeCeiling).toEqual(['read']);
      expect(got.status).toBe('active');
      got.labels.team = 'b';
      got.scopeCeiling!.push('write');
      got.status = 'revoked';
    }
    await store.close();
  });
});
