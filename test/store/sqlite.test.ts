import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { runStoreContract } from '../contracts/store.contract.js';

// Real SQLite in a temp dir, as SPIRE's fake datastore: no mock of the database.
const dir = mkdtempSync(join(tmpdir(), 'mayfly-sqlite-contract-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

runStoreContract('SqliteStore', () => SqliteStore.open(join(dir, `db-${++n}`, 'mayfly.db')));
