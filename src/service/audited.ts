/**
 * One audit record per use-case call: the record is opened before the
 * use-case runs, filled in by it, and written once whatever the outcome.
 */
import { MayflyError } from '../core/errors.js';
import type { AuditEntry, AuditEvent, AuditSink } from '../core/ports.js';
import type { Identity } from '../core/types.js';
import type { CallContext, ServiceObserver } from './deps.js';

/** What audit records say about a caller. */
export function auditIdentity(id: Identity): AuditEntry['identity'] {
  return { kind: id.kind, id: id.id, method: id.method, ...(id.certThumbprint ? { cert_sha256: id.certThumbprint } : {}), ...(id.source ? { source: id.source } : {}) };
}

/** Runs a use-case and writes its single audit record, whatever the outcome. */
export async function audited<T>(
  sink: AuditSink,
  observer: ServiceObserver | undefined,
  event: AuditEvent,
  ctx: CallContext,
  fn: (rec: AuditEntry) => Promise<T>,
): Promise<T> {
  const rec: AuditEntry = { event, outcome: 'success', request_id: ctx.requestId, identity: auditIdentity(ctx.identity), ...(ctx.peer ? { peer: ctx.peer } : {}) };
  try {
    return await fn(rec);
  } catch (e) {
    const err = MayflyError.from(e);
    rec.outcome = err.kind === 'internal' || err.kind === 'unavailable' ? 'error' : 'denied';
    rec.code = err.code;
    rec.reason = err.message;
    observer?.denied?.(err.code);
    throw err;
  } finally {
    sink.write(rec);
  }
}
