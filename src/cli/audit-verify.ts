/**
 * `mayfly audit verify`: the hash chain, the signed checkpoints and the head
 * the broker recorded in its store, in one report.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { LoadedConfig } from '../config/load.js';
import { resolvePath } from '../config/load.js';
import { MayflyError } from '../core/errors.js';
import type { AuditHead } from '../core/types.js';
import { AUDIT_JWKS_FILE, checkpointKeysFromJwks, type CheckpointKeys } from '../audit/checkpoint.js';
import { auditSegments } from '../audit/file-sink.js';
import { formatVerifyResult, verifyAuditFiles, type VerifyResult } from '../audit/verify-chain.js';
import { SqliteStore } from '../store/sqlite.js';
import { buildStore } from './build-store.js';

export interface AuditVerifyOptions {
  /** Log file instead of the configured one. */
  file?: string;
  /** Public audit key JWKS kept off the broker host; default: the copy in the data dir. */
  jwks?: string;
}

export interface AuditVerifyReport {
  result: VerifyResult;
  /** Lines to print, the verdict last. */
  lines: string[];
}

/** Verifies the configured broker's audit log against its stored head and audit key. */
export async function auditVerify(loaded: LoadedConfig, o: AuditVerifyOptions): Promise<AuditVerifyReport> {
  const { config, baseDir } = loaded;
  const dataDir = resolvePath(baseDir, config.data_dir);
  const path = o.file ?? resolvePath(dataDir, config.audit.file);
  if (!existsSync(path)) throw new MayflyError('ERR_FILE_NOT_FOUND', `no audit log at ${path}${o.file ? '' : ' (audit.file in the config; has the broker run yet?)'}`);
  const lines: string[] = [];

  let keys: CheckpointKeys | undefined;
  const jwksPath = o.jwks ?? resolvePath(dataDir, AUDIT_JWKS_FILE);
  if (o.jwks !== undefined || existsSync(jwksPath)) {
    let json: string;
    try {
      json = readFileSync(jwksPath, 'utf8');
    } catch (err) {
      throw new MayflyError('ERR_INVALID_ARGUMENT', `cannot read audit key JWKS ${jwksPath}: ${(err as Error).message}`);
    }
    keys = checkpointKeysFromJwks(json);
    lines.push(`checkpoint signatures checked with ${jwksPath}${o.jwks === undefined ? ' (the copy in the data dir; pass --jwks with a copy kept elsewhere for an independent check)' : ''}`);
  } else {
    lines.push('no audit key JWKS found: checkpoint signatures are not checked');
  }

  const head = await storedHead(loaded, dataDir);
  if (head) lines.push(`head recorded in the store: seq ${head.seq} hash ${head.hash.slice(0, 16)} at ${new Date(head.at).toISOString()}`);
  else lines.push('no audit head recorded in the store: a missing end cannot be detected');

  const result = verifyAuditFiles(auditSegments(path), {
    ...(head ? { anchor: { seq: head.seq, hash: head.hash } } : {}),
    ...(keys ? { checkpointKeys: keys } : {}),
  });
  lines.push(formatVerifyResult(result));
  return { result, lines };
}

/** The head the broker recorded, read from its store without changing it; null for a memory store or a missing database. */
async function storedHead(loaded: LoadedConfig, dataDir: string): Promise<AuditHead | null> {
  const { config } = loaded;
  if (config.store.backend === 'postgres') {
    // The shared database holds every replica's head under its broker_id; read it without migrating.
    const { store } = await buildStore(config, dataDir, { migrate: false, healthIntervalMs: 0 });
    try {
      return await store.getAuditHead(config.broker_id);
    } finally {
      await store.close();
    }
  }
  if (config.store.backend !== 'sqlite') return null;
  const dbPath = resolvePath(dataDir, config.store.path);
  if (!existsSync(dbPath)) return null;
  const store = SqliteStore.open(dbPath);
  try {
    return await store.getAuditHead(config.broker_id);
  } finally {
    await store.close();
  }
}
