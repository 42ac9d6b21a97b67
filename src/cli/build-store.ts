/**
 * Builds the Store the config asks for (sqlite, memory or postgres), so the
 * wiring in broker.ts and the CLI commands share one place that knows the
 * backends, the MAYFLY_STORE_URL override and how to report store health.
 */
import { formatIssues, resolvePath } from '../config/load.js';
import type { MayflyConfig } from '../config/schema.js';
import { pgUrlSchema, STORE_URL_ENV } from '../config/sections/store.js';
import { mayflyError } from '../core/errors.js';
import type { Coordinator, Store } from '../core/ports.js';
import { LocalCoordinator } from '../store/local-coordinator.js';
import { PgCoordinator } from '../store/postgres-coordinator.js';
import { MemoryStore } from '../store/memory.js';
import { PostgresStore, redactPgUrl } from '../store/postgres.js';
import { SqliteStore } from '../store/sqlite.js';

export interface BuiltStore {
  store: Store;
  /** Runs cluster-wide jobs (sweeper, GC, key promotion) on one broker at a time. */
  coordinator: Coordinator;
  backend: MayflyConfig['store']['backend'];
  /** Where the store lives, safe to log (password redacted). */
  where: string;
  /** Store reachability for /healthz; absent for backends that cannot lose their server. */
  health?: () => { ok: boolean; detail: string };
  /** Whether several broker processes may share this store (`serve --workers N`). */
  shared: boolean;
}

/**
 * The PostgreSQL URL: MAYFLY_STORE_URL when set (it overrides store.url, so
 * the password can stay out of the file), else store.url. ERR_CONFIG_INVALID
 * naming the field when neither is set or the value is malformed; the value
 * itself is never shown.
 */
export function resolveStoreUrl(c: MayflyConfig, env: NodeJS.ProcessEnv): string {
  const fromEnv = env[STORE_URL_ENV];
  if (fromEnv !== undefined && fromEnv !== '') {
    const r = pgUrlSchema.safeParse(fromEnv);
    if (!r.success) throw mayflyError('ERR_CONFIG_INVALID', `${STORE_URL_ENV} is invalid:\n  ${formatIssues(r.error.issues.map((i) => ({ ...i, path: ['store', 'url (from ' + STORE_URL_ENV + ')'] })))}`);
    return fromEnv;
  }
  if (c.store.url) return c.store.url;
  throw mayflyError('ERR_CONFIG_INVALID', `store.url: required when store.backend is postgres (or set ${STORE_URL_ENV})`);
}

/** Options for buildStore. */
export interface BuildStoreOptions {
  env?: NodeJS.ProcessEnv;
  /** Told when an idle PostgreSQL connection fails (server restart); message is password-free. */
  onStoreError?: (message: string) => void;
  /** Apply migrations at startup; defaults to the config's store.migrate. */
  migrate?: boolean;
  /** Ping PostgreSQL this often for health (ms); 0 = only calls tell (CLI commands). */
  healthIntervalMs?: number;
  /** SQLite: checkpoint the WAL from a worker thread (the broker; short-lived CLI commands leave it to SQLite). */
  sqliteCheckpointInWorker?: boolean;
}

/** Opens the configured store; see BuiltStore. */
export async function buildStore(c: MayflyConfig, dataDir: string, opts: BuildStoreOptions = {}): Promise<BuiltStore> {
  switch (c.store.backend) {
    case 'memory':
      return { store: new MemoryStore(), coordinator: new LocalCoordinator(), backend: 'memory', where: 'memory', shared: false };
    case 'sqlite': {
      const path = resolvePath(dataDir, c.store.path);
      return { store: SqliteStore.open(path, { checkpointInWorker: opts.sqliteCheckpointInWorker ?? false }), coordinator: new LocalCoordinator(), backend: 'sqlite', where: path, shared: false };
    }
    case 'postgres': {
      const url = resolveStoreUrl(c, opts.env ?? process.env);
      const store = await PostgresStore.open({
        url,
        poolMax: c.store.pool_max,
        connectTimeoutMs: c.store.connect_timeout_ms,
        statementTimeoutMs: c.store.statement_timeout_ms,
        migrate: opts.migrate ?? c.store.migrate,
        applicationName: `mayfly ${c.broker_id}`.slice(0, 63),
        healthIntervalMs: opts.healthIntervalMs ?? 2000,
        flushTokenRecords: c.store.flush_token_records,
        onIdleError: (e) => opts.onStoreError?.(e.message),
      });
      const coordinator = new PgCoordinator({ url, connectTimeoutMs: c.store.connect_timeout_ms, applicationName: `mayfly ${c.broker_id} jobs`.slice(0, 63) });
      return { store, coordinator, backend: 'postgres', where: redactPgUrl(url), health: () => store.health(), shared: true };
    }
  }
}
