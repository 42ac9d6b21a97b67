/** No request is answered that could not be audited: the use-cases wait for their record to be written. */
import { describe, expect, it } from 'vitest';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { ManualClock, systemRandom } from '../../src/core/clock.js';
import type { Identity } from '../../src/core/types.js';
import { BuiltinEngine } from '../../src/policy/builtin.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { BrokerService } from '../../src/service/broker.js';
import { MemoryStore } from '../../src/store/memory.js';
import { KeyManager } from '../../src/tokens/keys.js';
import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';

const RULES = `
rules:
  - name: demo
    match: { spiffe: "spiffe://example.org/demo/workload" }
    audiences: [demo-api]
    scopes: [read]
    max_ttl_seconds: 600
    max_task_ttl_seconds: 3600
`;
const workload: Identity = { kind: 'spiffe', id: 'spiffe://example.org/demo/workload', trustDomain: 'example.org', method: 'x509-svid', claims: {}, certThumbprint: 'thumb-1' };
const ctx = { identity: workload, requestId: 'r1' };

/** A memory sink whose group writes can be made to fail. */
class FlakySink extends MemoryAuditSink {
  failing = false;
  protected override appendMany(records: AuditRecord[], lines: string[]): void {
    if (this.failing) throw new Error('disk full');
    super.appendMany(records, lines);
  }
}

async function setup() {
  const clock = new ManualClock(Date.UTC(2026, 11, 3, 12, 0, 0));
  const store = new MemoryStore();
  const audit = new FlakySink({ brokerId: 'test', clock });
  const keys = new KeyManager(new MemoryKeyStore(), clock, { alg: 'ES256', rotationPeriodMs: 86_400_000, prePublishMs: 600_000, skewMs: 60_000, maxPromotionWaitMs: 3_600_000 });
  await keys.init();
  const service = new BrokerService({
    store,
    keys,
    policy: new DecisionPoint(BuiltinEngine.fromText(RULES)),
    audit,
    clock,
    random: systemRandom,
    events: { publish: () => undefined },
    config: { issuer: 'https://mayfly.test', brokerId: 'test', clockSkewSeconds: 0, tokens: { defaultTtlSeconds: 300, maxTtlSeconds: 3600 }, tasks: { defaultTtlSeconds: 900, maxTtlSeconds: 86_400, maxDelegationDepth: 2, maxLeaseSeconds: 3600 }, admins: [] },
  });
  return { store, audit, service };
}

const codeOf = async (p: Promise<unknown>) => p.then(() => 'resolved', (e: { code?: string }) => e.code);

describe('audited use-cases', () => {
  it('answer after their record is in the log, one record per request', async () => {
    const s = await setup();
    const before = s.audit.records.length;
    const task = await s.service.beginTask(ctx, { purpose: 'p' });
    const issued = await Promise.all([1, 2, 3].map(() => s.service.issueToken(ctx, { taskId: task.id, audience: 'demo-api', scopes: ['read'] })));
    const recs = s.audit.records.slice(before);
    expect(recs.map((r) => r.event)).toEqual(['task.begin', 'token.issue', 'token.issue', 'token.issue']);
    expect(recs.slice(1).map((r) => r.jti).sort()).toEqual(issued.map((t) => t.tokenId).sort());
  });

  it('a token whose record cannot be written is not returned: ERR_UNAVAILABLE, and the next request works again', async () => {
    const s = await setup();
    const task = await s.service.beginTask(ctx, { purpose: 'p' });
    s.audit.failing = true;
    expect(await codeOf(s.service.issueToken(ctx, { taskId: task.id, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_UNAVAILABLE');
    // A denial that cannot be audited is not answered as a denial either.
    expect(await codeOf(s.service.issueToken(ctx, { taskId: 'no-such-task', audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_UNAVAILABLE');
    expect(s.audit.health()).toMatchObject({ ok: false, errors: 2 });
    s.audit.failing = false;
    const t = await s.service.issueToken(ctx, { taskId: task.id, audience: 'demo-api', scopes: ['read'] });
    expect(s.audit.records[s.audit.records.length - 1]).toMatchObject({ event: 'token.issue', jti: t.tokenId });
  });

  it('a completion whose record cannot be written fails, but the revocation it made stays made', async () => {
    const s = await setup();
    const task = await s.service.beginTask(ctx, { purpose: 'p' });
    s.audit.failing = true;
    expect(await codeOf(s.service.completeTask(ctx, { taskId: task.id }))).toBe('ERR_UNAVAILABLE');
    s.audit.failing = false;
    expect((await s.store.getTask(task.id))!.status).toBe('completed');
    expect(await codeOf(s.service.completeTask(ctx, { taskId: task.id }))).toBe('ERR_TASK_NOT_ACTIVE');
  });
});
