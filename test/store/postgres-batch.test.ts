/**
 * The PostgreSQL store sends concurrent getTask, createTask and recordToken
 * calls as one statement per batch (postgres-batch.ts). These tests pin what
 * the batching must not change: each call keeps its own outcome, a bad item
 * fails alone, a batch is committed before any of its calls resolves, and
 * batches of two brokers never leave a token unrevoked on an ended task.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/store/postgres.js';
import { child, task, token } from '../contracts/store.contract.js';
import { freshDatabase } from '../helpers/postgres.js';

const T0 = Date.UTC(2026, 0, 1);
const MIN = 60_000;

let url: string;
let a: PostgresStore;
let b: PostgresStore;
let raw: pg.Pool;

beforeAll(async () => {
  url = await freshDatabase('mayfly_batch');
  [a, b] = await Promise.all([PostgresStore.open({ url }), PostgresStore.open({ url })]);
  raw = new pg.Pool({ connectionString: url, max: 2 });
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  await raw?.end();
});

function codeOf(r: PromiseSettledResult<unknown>): string | undefined {
  return r.status === 'rejected' ? (r.reason as { code?: string }).code : undefined;
}

/** Transactions that wrote these tokens (xmin of their rows). */
async function writers(jtis: string[]): Promise<number> {
  const { rows } = await raw.query<{ n: string }>('SELECT count(DISTINCT xmin::text) AS n FROM tokens WHERE jti = ANY($1::text[])', [jtis]);
  return Number(rows[0]!.n);
}

describe('PostgreSQL store batches', () => {
  it('commits concurrent recordToken calls in one transaction, each counted on its task', async () => {
    const ids = ['one-a', 'one-b', 'one-c'];
    await Promise.all(ids.map((id) => a.createTask(task(id))));
    const jtis = Array.from({ length: 30 }, (_, i) => `one-j${i}`);
    await Promise.all(jtis.map((j, i) => a.recordToken(token(j, ids[i % 3]!))));
    expect(await writers(jtis)).toBe(1);
    for (const id of ids) expect((await a.getTask(id))!.tokensIssued).toBe(10);
    for (const j of jtis) expect((await a.getToken(j))?.revokedAt).toBeNull();
  });

  it('fails only the calls whose task ended or does not exist', async () => {
    await a.createTask(task('mix-live'));
    await a.createTask(task('mix-ended'));
    await b.endTask('mix-ended', 'completed', 'done', T0 + MIN);
    const calls = [token('mix-1', 'mix-live'), token('mix-2', 'mix-ended'), token('mix-3', 'mix-unknown'), token('mix-4', 'mix-live')];
    const out = await Promise.allSettled(calls.map((t) => a.recordToken(t)));
    expect(out.map(codeOf)).toEqual([undefined, 'ERR_TASK_NOT_ACTIVE', 'ERR_TASK_NOT_FOUND', undefined]);
    expect(await a.getToken('mix-2')).toBeNull();
    expect(await a.getToken('mix-3')).toBeNull();
    expect((await a.getTask('mix-live'))!.tokensIssued).toBe(2);
    expect((await a.getTask('mix-ended'))!.tokensIssued).toBe(0);
    expect(await writers(['mix-1', 'mix-4'])).toBe(1);
  });

  it('fails only the call whose jti is already recorded, and counts the others once', async () => {
    await a.createTask(task('dup'));
    await a.recordToken(token('dup-0', 'dup'));
    const out = await Promise.allSettled([a.recordToken(token('dup-1', 'dup')), a.recordToken(token('dup-0', 'dup')), a.recordToken(token('dup-2', 'dup'))]);
    expect(out.map(codeOf)).toEqual([undefined, 'ERR_STORE', undefined]);
    expect((await a.getTask('dup'))!.tokensIssued).toBe(3);
    expect((await a.getToken('dup-1'))?.taskId).toBe('dup');
    expect((await a.getToken('dup-2'))?.taskId).toBe('dup');
  });

  it('fails only the createTask whose id exists, and writes the rest', async () => {
    const existing = task('ct-0');
    await a.createTask(existing);
    const fresh = task('ct-1', { labels: { team: 'x' }, scopeCeiling: ['read'], leaseExpiresAt: T0 + MIN, ownerIdentity: { kind: 'oidc', id: 'https://idp.example#repo:x', method: 'oidc', issuer: 'https://idp.example', claims: { ref: 'main' } } });
    const out = await Promise.allSettled([a.createTask(fresh), a.createTask(task('ct-0')), a.createTask(child('ct-2', existing))]);
    expect(out.map(codeOf)).toEqual([undefined, 'ERR_STORE', undefined]);
    expect(await a.getTask('ct-1')).toEqual(fresh);
    expect((await a.getTask('ct-2'))?.parentId).toBe('ct-0');
  });

  it('answers concurrent getTask calls from one read, each with its own copy', async () => {
    await a.createTask(task('gt', { labels: { k: 'v' }, actors: ['spiffe://example.org/x'] }));
    const [x, y, none] = await Promise.all([a.getTask('gt'), a.getTask('gt'), a.getTask('gt-unknown')]);
    expect(none).toBeNull();
    expect(x).toEqual(y);
    x!.labels['k'] = 'changed';
    x!.actors.push('more');
    expect(y!.labels['k']).toBe('v');
    expect(y!.actors).toEqual(['spiffe://example.org/x']);
  });

  it('prepares its hot statements only on hot connections, which keep one plan and never scan a whole table', async () => {
    await a.createTask(task('hot-1'));
    await a.getTask('hot-1');
    await a.recordToken(token('hot-j1', 'hot-1'));
    const pools = a as unknown as Record<'pool' | 'hotPool' | 'tokenPool', pg.Pool>;
    const settings = async (p: pg.Pool) => {
      const c = await p.connect();
      try {
        const { rows } = await c.query<{ mode: string; seqscan: string; prepared: string }>(
          `SELECT current_setting('plan_cache_mode') AS mode, current_setting('enable_seqscan') AS seqscan, (SELECT count(*) FROM pg_prepared_statements) AS prepared`,
        );
        return rows[0]!;
      } finally {
        c.release();
      }
    };
    // The plans' shape on empty and on analyzed tables: test/store/postgres-plans.test.ts.
    for (const p of [pools.hotPool, pools.tokenPool]) expect(await settings(p)).toMatchObject({ mode: 'force_generic_plan', seqscan: 'off' });
    expect(Number((await settings(pools.hotPool)).prepared)).toBeGreaterThan(0);
    expect(Number((await settings(pools.tokenPool)).prepared)).toBeGreaterThan(0);
    expect(await settings(pools.pool)).toMatchObject({ mode: 'auto', seqscan: 'on' });
    expect(Number((await settings(pools.pool)).prepared)).toBe(0);
  });

  it('two brokers batching tokens on a parent and its lower-id child while the parent ends: every token refused or revoked', async () => {
    let recorded = 0;
    let refused = 0;
    for (let i = 0; i < 6; i++) {
      // The child's id sorts before its parent's: the ender locks the parent first, the batches lock in id order.
      const parent = task(`z-parent-${i}`);
      const kid = child(`a-child-${i}`, parent);
      const other = task(`m-other-${i}`);
      await a.createTask(parent);
      await Promise.all([a.createTask(kid), a.createTask(other)]);
      const plan = Array.from({ length: 12 }, (_, k) => ({ store: k % 2 ? a : b, tok: token(`pc-${i}-${k}`, [parent.id, kid.id, other.id][k % 3]!) }));
      const writes = plan.map((p) => p.store.recordToken(p.tok));
      const ender = b.endTask(parent.id, 'completed', 'done', T0 + MIN);
      const [w, e] = await Promise.all([Promise.allSettled(writes), ender]);
      expect(e.taskIds.sort()).toEqual([kid.id, parent.id].sort());
      for (const [k, r] of w.entries()) {
        const t = plan[k]!.tok;
        const stored = await a.getToken(t.jti);
        if (t.taskId === other.id) {
          expect(r.status).toBe('fulfilled');
          expect(stored?.revokedAt).toBeNull();
        } else if (r.status === 'fulfilled') {
          recorded++;
          expect(stored?.revokedAt).toBe(T0 + MIN);
        } else {
          refused++;
          expect(codeOf(r)).toBe('ERR_TASK_NOT_ACTIVE');
          expect(stored).toBeNull();
        }
      }
      const ok = (id: string) => w.filter((r, k) => r.status === 'fulfilled' && plan[k]!.tok.taskId === id).length;
      expect((await a.getTask(parent.id))!.tokensIssued).toBe(ok(parent.id));
      expect((await a.getTask(kid.id))!.tokensIssued).toBe(ok(kid.id));
      expect((await a.getTask(other.id))!.tokensIssued).toBe(4);
      expect(e.revokedTokens).toBe(ok(parent.id) + ok(kid.id));
    }
    expect(recorded + refused).toBe(6 * 8);
  });
});

describe('PostgreSQL store commit durability per write', () => {
  /** What each session of the store's token connections and of its main pool reports. */
  async function settingOf(store: PostgresStore, which: 'pool' | 'tokenPool'): Promise<string> {
    const p = (store as unknown as Record<typeof which, pg.Pool>)[which];
    return (await p.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0]!.synchronous_commit;
  }

  it('records tokens on sessions with synchronous_commit off, and flushes everything else', async () => {
    const s = await PostgresStore.open({ url, applicationName: 'mayfly durability-a' });
    try {
      await s.createTask(task('dur-a'));
      await s.recordToken(token('dur-a-1', 'dur-a'));
      // The token's INSERT ran on a token connection (its last statement, per pg_stat_activity), the task's did not.
      const { rows } = await raw.query<{ query: string }>(`SELECT query FROM pg_stat_activity WHERE application_name = 'mayfly durability-a tokens'`);
      expect(rows.some((r) => r.query.includes('INSERT INTO tokens'))).toBe(true);
      expect(rows.some((r) => r.query.includes('INSERT INTO tasks'))).toBe(false);
      expect(await settingOf(s, 'tokenPool')).toBe('off');
      expect(await settingOf(s, 'pool')).toBe('on');
      // Recorded and visible to another broker at once.
      expect((await b.getToken('dur-a-1'))?.taskId).toBe('dur-a');
    } finally {
      await s.close();
    }
  });

  it('flushes token records too with flushTokenRecords', async () => {
    const s = await PostgresStore.open({ url, applicationName: 'mayfly durability-b', flushTokenRecords: true });
    try {
      await s.createTask(task('dur-b'));
      await s.recordToken(token('dur-b-1', 'dur-b'));
      expect(await settingOf(s, 'tokenPool')).toBe('on');
      const { rows } = await raw.query<{ n: string }>(`SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'mayfly durability-b tokens'`);
      expect(Number(rows[0]!.n)).toBe(0);
    } finally {
      await s.close();
    }
  });
});
