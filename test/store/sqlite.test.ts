import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { runStoreContract } from '../contracts/store.contract.js';

// Real SQLite in a temp dir, as SPIRE's fake datastore: no mock of the database.
const dir = mkdtempSync(join(tmpdir(), 'mayfly-sqlite-contract-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

runStoreContract('SqliteStore', () => SqliteStore.open(join(dir, `db-${++n}`, 'mayfly.db')), {
  endOnlyThis: async (store, id, at) => {
    const s = store as unknown as { db: Database.Database; tasks: { clear(): void } };
    s.db.prepare(`UPDATE tasks SET status = 'completed', ended_at = ?, end_reason = 'done' WHERE id = ?`).run(at, id);
    // Behind the store's back: its task cache must not keep the old row.
    s.tasks.clear();
  },
});
