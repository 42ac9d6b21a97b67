/**
 * `mayfly db migrate` / `mayfly db status` against a real PostgreSQL, through
 * bin/mayfly.js (needs `npm run build`). The password never shows.
 * (store.migrate: false refusing an unmigrated database: test/store/postgres-migrate.test.ts.)
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { PG_SCHEMA_VERSION } from '../../src/store/postgres.js';
import { freshDatabase } from '../helpers/postgres.js';

const BIN = resolve('bin/mayfly.js');
const dir = mkdtempSync(join(tmpdir(), 'mayfly-db-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { cwd: dir, timeout: 30_000, env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

function config(name: string, store: Record<string, unknown>): string {
  const p = join(dir, name);
  writeFileSync(p, YAML.stringify({ issuer: 'https://broker.test', tls: { cert_file: 'c.pem', key_file: 'k.pem' }, store }));
  return p;
}

// Each case starts the CLI several times (a few seconds each on a busy 2-core machine).
describe('mayfly db', () => {
  it('migrates a new database once, then reports it current; status exits 1 while migrations are pending', async () => {
    const url = await freshDatabase('mayfly_db_cli');
    const password = new URL(url).password;
    const cfg = config('pg.yaml', { backend: 'postgres', url });
    const before = await cli(['db', 'status', '--config', cfg]);
    expect(before.code).toBe(1);
    expect(before.stdout).toContain(`schema version 0, this build needs ${PG_SCHEMA_VERSION}`);
    expect(before.stdout).toMatch(/pending 1: tasks, tokens/);
    const first = await cli(['db', 'migrate', '--config', cfg]);
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(`schema version 0 -> ${PG_SCHEMA_VERSION}`);
    expect(first.stdout).toContain('applied 1: ');
    expect(first.stdout).toContain(':***@127.0.0.1');
    const again = await cli(['db', 'migrate', '--config', cfg]);
    expect(again.stdout).toContain(`schema is current (version ${PG_SCHEMA_VERSION})`);
    const after = await cli(['db', 'status', '--config', cfg]);
    expect(after.code).toBe(0);
    for (const out of [before, first, again, after]) expect(out.stdout + out.stderr).not.toContain(password);
  }, 120_000);

  it('takes the URL from MAYFLY_STORE_URL', async () => {
    const url = await freshDatabase('mayfly_db_cli');
    const cfg = config('pg-env.yaml', { backend: 'postgres' });
    const r = await cli(['db', 'migrate', '--config', cfg], { MAYFLY_STORE_URL: url });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`-> ${PG_SCHEMA_VERSION}`);
    const missing = await cli(['db', 'migrate', '--config', cfg], { MAYFLY_STORE_URL: '' });
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('store.url: required when store.backend is postgres (or set MAYFLY_STORE_URL)');
  }, 120_000);

  it('is refused for a SQLite store, saying why', async () => {
    const r = await cli(['db', 'migrate', '--config', config('sqlite.yaml', {})]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('ERR_CONFIG_INVALID');
    expect(r.stderr).toContain('mayfly db migrate is for store.backend: postgres (got sqlite); the SQLite store migrates itself');
  });
});
