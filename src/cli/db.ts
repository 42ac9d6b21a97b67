/**
 * `mayfly db migrate` and `mayfly db status`: schema migrations of the
 * PostgreSQL store, for operators who migrate ahead of a rollout (then set
 * store.migrate: false so brokers refuse an unmigrated database instead of
 * migrating it themselves). Migrations run under the same advisory lock as
 * at broker startup, so running this while brokers start is safe.
 */
import type { Command } from 'commander';
import { loadConfig, type LoadedConfig } from '../config/load.js';
import { mayflyError } from '../core/errors.js';
import { PG_MIGRATIONS } from '../store/migrations/postgres.js';
import { createPgPool, migratePg, PG_SCHEMA_VERSION, pgSchemaVersion, redactPgUrl } from '../store/postgres.js';
import { resolveStoreUrl } from './build-store.js';

function pgUrlOf(loaded: LoadedConfig, env: NodeJS.ProcessEnv, command: string): string {
  const backend = loaded.config.store.backend;
  if (backend !== 'postgres') {
    throw mayflyError('ERR_CONFIG_INVALID', `mayfly db ${command} is for store.backend: postgres (got ${backend}); ${backend === 'sqlite' ? 'the SQLite store migrates itself when the broker opens it' : 'the memory store has no schema'}`);
  }
  return resolveStoreUrl(loaded.config, env);
}

/** Applies pending migrations; returns the lines to print. */
export async function dbMigrate(loaded: LoadedConfig, env: NodeJS.ProcessEnv = process.env): Promise<string[]> {
  const url = pgUrlOf(loaded, env, 'migrate');
  const pool = createPgPool({ url, connectTimeoutMs: loaded.config.store.connect_timeout_ms, applicationName: 'mayfly db migrate' });
  try {
    const r = await migratePg(pool, url);
    if (r.applied.length === 0) return [`${redactPgUrl(url)}: schema is current (version ${r.to})`];
    return [`${redactPgUrl(url)}: schema version ${r.from} -> ${r.to}`, ...r.applied.map((m) => `  applied ${m.version}: ${m.name}`)];
  } finally {
    await pool.end().catch(() => undefined);
  }
}

/** Reports the database's schema version against this build's; `current` false when migrations are pending. */
export async function dbStatus(loaded: LoadedConfig, env: NodeJS.ProcessEnv = process.env): Promise<{ current: boolean; lines: string[] }> {
  const url = pgUrlOf(loaded, env, 'status');
  const pool = createPgPool({ url, connectTimeoutMs: loaded.config.store.connect_timeout_ms, applicationName: 'mayfly db status' });
  try {
    const v = await pgSchemaVersion(pool, url);
    const pending = PG_MIGRATIONS.filter((m) => m.version > v);
    const lines = [`${redactPgUrl(url)}: schema version ${v}, this build needs ${PG_SCHEMA_VERSION}`];
    if (v > PG_SCHEMA_VERSION) lines.push('  the database is newer than this build: upgrade mayfly');
    for (const m of pending) lines.push(`  pending ${m.version}: ${m.name}`);
    return { current: v === PG_SCHEMA_VERSION, lines };
  } finally {
    await pool.end().catch(() => undefined);
  }
}

/** Registers `mayfly db …` on the CLI. */
export function registerDbCommands(program: Command): void {
  const db = program.command('db').description('PostgreSQL store schema');
  db.command('migrate')
    .description('apply pending schema migrations to the PostgreSQL store (safe while brokers run or start)')
    .requiredOption('--config <file>', 'config file (store.backend: postgres; MAYFLY_STORE_URL overrides store.url)')
    .action(async (o: { config: string }) => {
      for (const l of await dbMigrate(loadConfig(o.config))) console.log(l);
    });
  db.command('status')
    .description('show the schema version of the PostgreSQL store; exit 1 if migrations are pending')
    .requiredOption('--config <file>', 'config file')
    .action(async (o: { config: string }) => {
      const r = await dbStatus(loadConfig(o.config));
      for (const l of r.lines) console.log(l);
      if (!r.current) process.exitCode = 1;
    });
}
