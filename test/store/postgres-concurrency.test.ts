/**
 * What single-process stores never needed: two brokers (two PostgresStore
 * instances, each with its own pool) working on the same tasks at once.
 * Every race must end in exactly one outcome with no token left unrevoked,
 * and the revocation cursor must never let a resuming reader skip an event
 * that commits late.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskEndResult } from '../../src/core/types.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { child, task, token } from '../contracts/store.contract.js';
import { freshDatabase } from '../helpers/postgres.js';

const T0 = Date.UTC(2026, 0, 1);
const MIN = 60_000;

let url: string;
let a: PostgresStore;
let b: PostgresStore;

beforeAll(async () => {
  url = await freshDatabase('mayfly_race');
  [a, b] = await Promise.all([PostgresStore.open({ url }), PostgresStore.open({ url })]);
});
afterAll(async () => {
  await a?.close();
  await b?.close();
});

function codeOf(r: PromiseSettledResult<unknown>): string | undefined {
  return r.status === 'rejected' ? (r.reason as { code?: string }).code : undefined;
}

describe('two brokers on one PostgreSQL', () => {
  it('recordToken racing endTask on another broker: each token is refused or revoked, and one ender wins', async () => {
    let recorded = 0;
    let refused = 0;
    for (let i = 0; i < 25; i++) {
      const root = task(`r${i}`);
      const c1 = child(`r${i}-c`, root);
      await a.createTask(root);
      await b.createTask(c1);
      const jtis = Array.from({ length: 6 }, (_, k) => `r${i}-j${k}`);
      const writes = jtis.map((j, k) => (k % 2 ? a : b).recordToken(token(j, k % 3 ? root.id : c1.id)));
      const enders = [a.endTask(root.id, 'completed', 'done', T0 + MIN), b.endTask(root.id, 'revoked', 'operator', T0 + MIN)];
      const [w, e] = await Promise.all([Promise.allSettled(writes), Promise.all(enders)]);
      const withEvent = (e as TaskEndResult[]).filter((r) => r.event !== null);
      expect(withEvent).toHaveLength(1);
      expect(withEvent[0]!.taskIds).toEqual([root.id, c1.id]);
      for (const [k, r] of w.entries()) {
        const tok = await a.getToken(jtis[k]!);
        if (r.status === 'fulfilled') {
          recorded++;
          // Recorded before the end: the end revoked it.
          expect(tok?.revokedAt).toBe(T0 + MIN);
        } else {
          refused++;
          expect(codeOf(r)).toBe('ERR_TASK_NOT_ACTIVE');
          expect(tok).toBeNull();
        }
      }
      const okCount = w.filter((r) => r.status === 'fulfilled').length;
      const issued = ((await b.getTask(root.id))!.tokensIssued) + ((await b.getTask(c1.id))!.tokensIssued);
      expect(issued).toBe(okCount);
      expect(withEvent[0]!.revokedTokens).toBe(okCount);
    }
    // Both outcomes really happened (the race is exercised, not serialised away).
    expect(recorded).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(0);
  });

  it('renewLease racing endTask: a renewal that reports success is the stored lease, a failed one finds the task ended', async () => {
    for (let i = 0; i < 20; i++) {
      await a.createTask(task(`l${i}`, { leaseExpiresAt: T0 + MIN }));
      const [renewed, ended] = await Promise.all([b.renewLease(`l${i}`, T0 + 5 * MIN), a.endTask(`l${i}`, 'completed', 'done', T0 + 2 * MIN)]);
      expect(ended.event).not.toBeNull();
      const t = (await a.getTask(`l${i}`))!;
      expect(t.status).toBe('completed');
      expect(t.leaseExpiresAt).toBe(renewed ? T0 + 5 * MIN : T0 + MIN);
    }
  });

  it('owner revocation, task end and key revocation at once: one event per ended set, every token revoked, no deadlock left unretried', async () => {
    for (let i = 0; i < 10; i++) {
      const owner = `spiffe://example.org/o${i}`;
      const roots = [task(`o${i}-1`, { owner }), task(`o${i}-2`, { owner })];
      const kids = [child(`o${i}-1a`, roots[0]!), child(`o${i}-2a`, roots[1]!)];
      for (const t of [...roots, ...kids]) await a.createTask(t);
      for (const [n, t] of [...roots, ...kids].entries()) await b.recordToken(token(`o${i}-t${n}`, t.id, { kid: `k${i}`, expiresAt: T0 + 30 * MIN }));
      const [owned, one, two, key] = await Promise.all([
        a.endTasksOfOwner(owner, 'identity revoked', T0 + MIN),
        b.endTask(roots[0]!.id, 'completed', 'done', T0 + MIN),
        a.endTask(kids[1]!.id, 'revoked', 'operator', T0 + MIN),
        b.revokeTokensByKid(`k${i}`, 'key compromised', T0 + MIN),
      ]);
      // Every task ended exactly once across the three enders.
      const endedIds = [...owned.taskIds, ...one.taskIds, ...two.taskIds].sort();
      expect(endedIds).toEqual([...roots, ...kids].map((t) => t.id).sort());
      // Every token was revoked exactly once across the four revokers.
      expect(owned.revokedTokens + one.revokedTokens + two.revokedTokens + key.jtis.length).toBe(4);
      for (let n = 0; n < 4; n++) expect((await a.getToken(`o${i}-t${n}`))!.revokedAt).toBe(T0 + MIN);
    }
  });

  it('endTask on both brokers for the same task: exactly one returns the revocation', async () => {
    for (let i = 0; i < 20; i++) {
      await a.createTask(task(`d${i}`));
      await a.recordToken(token(`d${i}-j`, `d${i}`));
      const res = await Promise.all([a.endTask(`d${i}`, 'completed', 'a', T0), b.endTask(`d${i}`, 'completed', 'b', T0), b.endTask(`d${i}`, 'revoked', 'b2', T0)]);
      expect(res.filter((r) => r.event !== null)).toHaveLength(1);
      expect(res.reduce((n, r) => n + r.revokedTokens, 0)).toBe(1);
    }
  });
});

describe('revocation cursors across brokers', () => {
  it('a revocation that commits late is still delivered to a reader resuming from its cursor, in order, with no gap', async () => {
    const start = (await a.cursorRange()).latest;
    // Broker A's revocation transaction is in flight: it has taken its cursor and not committed.
    const slow = new pg.Client({ connectionString: url });
    await slow.connect();
    await slow.query('BEGIN');
    const held = await slow.query<{ cursor: string }>(`WITH c AS (UPDATE event_cursor SET latest = latest + 1 WHERE id = 1 RETURNING latest)
      INSERT INTO events (cursor, kind, at, task_ids, jtis, kid, reason, covers_until)
      SELECT c.latest, 'keyset', ${T0}, '[]', '[]', 'slow', 'late commit', ${T0 + MIN} FROM c RETURNING cursor`);
    const slowCursor = Number(held.rows[0]!.cursor);
    expect(slowCursor).toBe(start + 1);
    // Broker B revokes meanwhile. With a sequence it would commit cursor start+2 now and a reader
    // would move past start+1 for good; here it waits for A's commit instead.
    let bDone = false;
    const bEvent = b.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'fast', reason: 'quick commit', coversUntil: T0 + MIN }).then((e) => {
      bDone = true;
      return e;
    });
    // A reader polling all along must only ever see a gap-free prefix.
    const seen: number[] = [];
    let cursor = start;
    const poll = async () => {
      for (const e of await a.eventsSince(cursor, 100)) {
        expect(e.cursor).toBe(cursor + 1);
        cursor = e.cursor;
        seen.push(e.cursor);
      }
    };
    for (let i = 0; i < 10; i++) {
      await poll();
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(bDone).toBe(false);
    expect(seen).toEqual([]);
    expect((await b.cursorRange()).latest).toBe(start);
    await slow.query('COMMIT');
    await slow.end();
    const ev = await bEvent;
    expect(ev.cursor).toBe(start + 2);
    await poll();
    expect(seen).toEqual([start + 1, start + 2]);
    expect((await a.eventsSince(start, 10)).map((e) => e.kid)).toEqual(['slow', 'fast']);
  });

  it('a revocation that rolls back leaves no gap', async () => {
    const start = (await a.cursorRange()).latest;
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('BEGIN');
    await c.query('UPDATE event_cursor SET latest = latest + 1 WHERE id = 1');
    const pending = b.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'after-rollback', reason: 'r', coversUntil: T0 + MIN });
    await new Promise((r) => setTimeout(r, 50));
    await c.query('ROLLBACK');
    await c.end();
    expect((await pending).cursor).toBe(start + 1);
  });

  it('concurrent revocations on both brokers produce a gap-free, strictly increasing cursor sequence', async () => {
    const start = (await a.cursorRange()).latest;
    const evs = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: `c${i}`, reason: 'r', coversUntil: T0 + MIN })));
    const cursors = evs.map((e) => e.cursor).sort((x, y) => x - y);
    expect(cursors).toEqual(Array.from({ length: 40 }, (_, i) => start + 1 + i));
    expect((await b.eventsSince(start, 100)).map((e) => e.cursor)).toEqual(cursors);
  });
});
