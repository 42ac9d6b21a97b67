/** Opens the configured KeyStore, reading the key-encryption key from the environment or a file. */
import type pg from 'pg';
import type { MayflyConfig } from '../config/schema.js';
import { resolvePath } from '../config/load.js';
import { mayflyError } from '../core/errors.js';
import type { KeyStore } from '../core/ports.js';
import type { Logger } from '../observability/logger.js';
import { FileKeyStore, loadKek } from '../tokens/keystore-file.js';
import { MemoryKeyStore } from '../tokens/keystore-memory.js';
import { PostgresKeyStore } from '../tokens/keystore-postgres.js';

/** keys.store as configured, or its default for the store backend (postgres with a PostgreSQL store, else file). */
export function keyStoreKind(c: MayflyConfig): 'file' | 'memory' | 'postgres' {
  return c.keys.store ?? (c.store.backend === 'postgres' ? 'postgres' : 'file');
}

/**
 * The KeyStore the config asks for. Refuses to start without a usable KEK,
 * and refuses a per-broker key store (file, memory) on a shared PostgreSQL
 * store: each replica would sign with a key the others do not publish.
 * `pool` is the PostgreSQL store's pool (keys.store postgres).
 */
export async function openKeyStore(c: MayflyConfig, dataDir: string, baseDir: string, env: NodeJS.ProcessEnv, log: Pick<Logger, 'warn'>, pool?: pg.Pool): Promise<KeyStore> {
  const kind = keyStoreKind(c);
  if (c.store.backend === 'postgres' && kind !== 'postgres') {
    throw mayflyError('ERR_CONFIG_INVALID', `keys.store: must be postgres when store.backend is postgres (got ${kind}): every broker sharing the database must sign with the same key set, or tokens from one would not verify against another's JWKS`);
  }
  if (kind === 'postgres' && (c.store.backend !== 'postgres' || !pool)) {
    throw mayflyError('ERR_CONFIG_INVALID', 'keys.store: postgres needs store.backend postgres (the keys live in the same database)');
  }
  if (kind === 'memory') {
    log.warn('keys.store is memory: signing keys vanish on restart and every token becomes unverifiable (dev only)');
    return new MemoryKeyStore();
  }
  const kek = loadKek({
    envName: c.keys.kek_env,
    ...(c.keys.kek_file ? { file: resolvePath(baseDir, c.keys.kek_file) } : { env: env[c.keys.kek_env] }),
  });
  if (kind === 'postgres') return PostgresKeyStore.open({ pool: pool!, kek, onFlushError: (e) => log.warn({ code: e.code, err: e.message }, 'could not record token expiries of signing keys; retrying') });
  return FileKeyStore.open({ dataDir, kek });
}
