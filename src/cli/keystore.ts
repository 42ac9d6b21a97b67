/** Opens the configured KeyStore, reading the key-encryption key from the environment or a file. */
import type { MayflyConfig } from '../config/schema.js';
import { resolvePath } from '../config/load.js';
import type { KeyStore } from '../core/ports.js';
import type { Logger } from '../observability/logger.js';
import { FileKeyStore, loadKek } from '../tokens/keystore-file.js';
import { MemoryKeyStore } from '../tokens/keystore-memory.js';

/** The KeyStore the config asks for. Refuses to start without a usable KEK. */
export async function openKeyStore(c: MayflyConfig, dataDir: string, baseDir: string, env: NodeJS.ProcessEnv, log: Pick<Logger, 'warn'>): Promise<KeyStore> {
  if (c.keys.store === 'memory') {
    log.warn('keys.store is memory: signing keys vanish on restart and every token becomes unverifiable (dev only)');
    return new MemoryKeyStore();
  }
  const kek = loadKek({
    envName: c.keys.kek_env,
    ...(c.keys.kek_file ? { file: resolvePath(baseDir, c.keys.kek_file) } : { env: env[c.keys.kek_env] }),
  });
  return FileKeyStore.open({ dataDir, kek });
}
