/** `mayfly audit verify` with one config per replica: each chain verified on its own, one verdict line per replica. */
import { loadConfig } from '../config/load.js';
import { mayflyError } from '../core/errors.js';
import { auditVerify, type AuditVerifyOptions } from './audit-verify.js';

export interface ClusterAuditReport {
  ok: boolean;
  lines: string[];
}

/** Verifies every replica's audit chain (configs of the replicas); `file` is refused, `jwks` applies to none (each replica has its own audit key). */
export async function auditVerifyCluster(configs: readonly string[], o: AuditVerifyOptions): Promise<ClusterAuditReport> {
  if (o.file !== undefined || o.jwks !== undefined) throw mayflyError('ERR_INVALID_ARGUMENT', '--file and --jwks apply to one replica: give one --config with them');
  const lines: string[] = [];
  const summary: string[] = [];
  const seen = new Map<string, string>();
  let ok = true;
  for (const path of configs) {
    const loaded = loadConfig(path);
    const id = loaded.config.broker_id;
    if (seen.has(id)) throw mayflyError('ERR_INVALID_ARGUMENT', `${path} and ${seen.get(id)} have the same broker_id ${id}: every replica needs its own (and its own data_dir)`);
    seen.set(id, path);
    lines.push(`== ${id} (${path})`);
    try {
      const r = await auditVerify(loaded, {});
      lines.push(...r.lines);
      ok &&= r.result.ok;
      summary.push(`${id}: ${r.result.ok ? 'OK' : 'BROKEN'} (${r.result.records} records)`);
    } catch (e) {
      ok = false;
      lines.push(`mayfly: ${(e as { code?: string }).code ?? 'ERR'}: ${(e as Error).message}`);
      summary.push(`${id}: not verified (${(e as Error).message})`);
    }
  }
  lines.push(`cluster: ${summary.join('; ')}`);
  return { ok, lines };
}
