/**
 * BeginTask of a child on one broker while its parent is completed on
 * another, both on one PostgreSQL. The service checks that the parent is
 * active before it writes the child; without the store refusing the insert
 * itself, the end could commit in between and leave a live child (which could
 * then get tokens) under an ended parent. Either the child is refused, or it
 * is created and revoked with its parent: never a live child of an ended task.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, systemRandom } from '../../src/core/clock.js';
import type { DecisionInput } from '../../src/core/decision.js';
import type { Identity } from '../../src/core/types.js';
import { MemoryAuditSink } from '../../src/audit/memory-sink.js';
import { BuiltinEngine } from '../../src/policy/builtin.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { BrokerService } from '../../src/service/broker.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { KeyManager } from '../../src/tokens/keys.js';
import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';
import { freshDatabase } from '../helpers/postgres.js';

const RULES = `
rules:
  - name: agents
    match: { spiffe: "spiffe://example.org/agent" }
    audiences: [demo-api]
    scopes: [read]
    max_ttl_seconds: 600
    max_task_ttl_seconds: 3600
`;
const agent: Identity = { kind: 'spiffe', id: 'spiffe://example.org/agent', trustDomain: 'example.org', method: 'x509-svid', claims: {} };
const ctx = { identity: agent, requestId: 'r', peer: '127.0.0.1:1' };

interface Broker {
  store: PostgresStore;
  service: BrokerService;
  /** Runs before each policy evaluation of this broker (the window between reading the parent and writing the child). */
  beforeDecision: (input: DecisionInput) => Promise<void>;
}

let url: string;
const brokers: Broker[] = [];

async function broker(id: string): Promise<Broker> {
  const store = await PostgresStore.open({ url, poolMax: 4 });
  const keys = new KeyManager(new MemoryKeyStore(), systemClock, { alg: 'ES256', rotationPeriodMs: 86_400_000, prePublishMs: 600_000, skewMs: 60_000, maxPromotionWaitMs: 3_600_000 });
  await keys.init();
  const inner = BuiltinEngine.fromText(RULES);
  const b: Broker = { store, service: null as unknown as BrokerService, beforeDecision: async () => undefined };
  const engine = {
    name: inner.name,
    revision: () => inner.revision(),
    evaluate: async (input: DecisionInput) => {
      await b.beforeDecision(input);
      return inner.evaluate(input);
    },
    close: () => inner.close(),
  };
  b.service = new BrokerService({
    store,
    keys,
    policy: new DecisionPoint(engine),
    audit: new MemoryAuditSink({ brokerId: id, clock: systemClock }),
    clock: systemClock,
    random: systemRandom,
    events: { publish: () => undefined },
    config: {
      issuer: 'https://mayfly.test',
      brokerId: id,
      clockSkewSeconds: 0,
      tokens: { defaultTtlSeconds: 300, maxTtlSeconds: 3600 },
      tasks: { defaultTtlSeconds: 900, maxTtlSeconds: 86_400, maxDelegationDepth: 3, maxLeaseSeconds: 3600 },
      admins: [],
    },
  });
  brokers.push(b);
  return b;
}

/** Active tasks anywhere below `rootId`. */
async function liveBelow(store: PostgresStore, rootId: string): Promise<string[]> {
  return (await store.getDescendants(rootId)).filter((t) => t.status === 'active').map((t) => t.id);
}

beforeAll(async () => {
  url = await freshDatabase('mayfly_child_race');
});
afterAll(async () => {
  for (const b of brokers.splice(0)) await b.store.close();
});

describe('BeginTask of a child racing CompleteTask of its parent on another broker (PostgreSQL)', () => {
  it('a parent completed after the child\'s parent check but before its insert: the child is refused', async () => {
    const a = await broker('broker-a');
    const b = await broker('broker-b');
    const root = await a.service.beginTask(ctx, { purpose: 'agent run', scopes: ['read'] });
    let ended: Promise<unknown> | null = null;
    // B has read the parent (active) and is deciding; A completes the parent now, and B writes only after that committed.
    b.beforeDecision = async (input) => {
      if (input.request.action !== 'delegate') return;
      ended = a.service.completeTask(ctx, { taskId: root.id });
      await ended;
    };
    const begin = b.service.beginTask(ctx, { purpose: 'sub-agent', parentTaskId: root.id, scopes: ['read'] });
    await expect(begin).rejects.toMatchObject({ code: 'ERR_TASK_NOT_ACTIVE' });
    expect(ended).not.toBeNull();
    expect((await a.store.getTask(root.id))!.status).toBe('completed');
    expect(await a.store.getDescendants(root.id)).toEqual([]);
    b.beforeDecision = async () => undefined;
  });

  it('at once, 30 times: every child is refused or ended with its parent, never left live', async () => {
    const a = await broker('broker-a2');
    const b = await broker('broker-b2');
    let refused = 0;
    let revokedWithParent = 0;
    for (let i = 0; i < 30; i++) {
      const root = await a.service.beginTask(ctx, { purpose: `run ${i}`, scopes: ['read'] });
      const mid = await b.service.beginTask(ctx, { purpose: 'planner', parentTaskId: root.id, scopes: ['read'] });
      // Alternate who starts first, and race a grandchild (under mid) against the end of the root too.
      const begins = () => [b.service.beginTask(ctx, { purpose: 'tool', parentTaskId: root.id, scopes: ['read'] }), a.service.beginTask(ctx, { purpose: 'tool', parentTaskId: mid.id, scopes: ['read'] })];
      const complete = () => (i % 2 ? b : a).service.completeTask(ctx, { taskId: root.id });
      const started = i % 2 ? [complete(), ...begins()] : (() => {
        const k = begins();
        return [complete(), ...k];
      })();
      const [c, ...kids] = await Promise.allSettled(started);
      expect(c!.status).toBe('fulfilled');
      const endedIds = (c as PromiseFulfilledResult<{ taskIds: string[] }>).value.taskIds;
      for (const k of kids) {
        if (k.status === 'rejected') {
          expect((k.reason as { code: string }).code).toBe('ERR_TASK_NOT_ACTIVE');
          refused++;
        } else {
          const id = (k as PromiseFulfilledResult<{ id: string }>).value.id;
          expect((await a.store.getTask(id))!.status).toBe('revoked');
          expect(endedIds).toContain(id);
          revokedWithParent++;
        }
      }
      expect(await liveBelow(a.store, root.id)).toEqual([]);
    }
    console.log(`child begin vs parent complete: ${refused} refused, ${revokedWithParent} created and revoked with the parent`);
    expect(refused + revokedWithParent).toBe(60);
  });
});
