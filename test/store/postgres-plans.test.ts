/**
 * The hot statements run on connections that plan each once and keep the
 * generic plan (HOT_SESSION). That is safe only if the plan finds rows by
 * primary key whatever the tables hold: here, on a fresh database whose
 * tables are empty and were never analyzed (the case where PostgreSQL used
 * to pick whole-table scans), and again once they have rows and statistics.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOT_SESSION, HOT_STATEMENTS, PostgresStore } from '../../src/store/postgres.js';
import { freshDatabase } from '../helpers/postgres.js';
import { task, token } from '../contracts/store.contract.js';

let url: string;
let store: PostgresStore;
let client: pg.Client;

beforeAll(async () => {
  url = await freshDatabase('mayfly_plans');
  store = await PostgresStore.open({ url });
  client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query(HOT_SESSION);
});
afterAll(async () => {
  await client?.end();
  await store?.close();
});

/** The generic plan of a statement, as EXPLAIN's JSON tree flattened to node descriptions. */
async function genericPlan(sql: string, i: number): Promise<string[]> {
  const params = new Set([...sql.matchAll(/\$(\d+)/g)].map((m) => Number(m[1])));
  const name = `plan_test_${i}`;
  await client.query(`PREPARE ${name} AS ${sql}`);
  try {
    const nulls = Array.from({ length: Math.max(0, ...params) }, () => 'NULL').join(', ');
    const { rows } = await client.query<{ 'QUERY PLAN': unknown }>(`EXPLAIN (FORMAT JSON) EXECUTE ${name}${nulls ? `(${nulls})` : ''}`);
    const out: string[] = [];
    const walk = (n: Record<string, unknown>) => {
      out.push(`${String(n['Node Type'])}${n['Relation Name'] ? ` on ${String(n['Relation Name'])}` : ''}${n['Index Name'] ? ` using ${String(n['Index Name'])}` : ''}`);
      for (const c of (n['Plans'] as Record<string, unknown>[] | undefined) ?? []) walk(c);
    };
    walk((rows[0]!['QUERY PLAN'] as Array<{ Plan: Record<string, unknown> }>)[0]!.Plan);
    return out;
  } finally {
    await client.query(`DEALLOCATE ${name}`);
  }
}

async function expectIndexPlans(): Promise<void> {
  expect(HOT_STATEMENTS.length).toBeGreaterThanOrEqual(6);
  for (const [i, sql] of HOT_STATEMENTS.entries()) {
    const plan = await genericPlan(sql, i);
    // No whole-table read of the broker's tables: each read of them is an index scan, or a heap scan fed by one.
    const why = `${sql}\n${plan.join('\n')}`;
    expect(plan.filter((n) => /^Seq Scan on (tasks|tokens)$/.test(n)), why).toEqual([]);
    const reads = plan.filter((n) => / on (tasks|tokens)\b/.test(n) && /Scan/.test(n));
    for (const r of reads) expect(/^(Index Scan|Index Only Scan|Bitmap Heap Scan) on /.test(r), why).toBe(true);
    if (reads.some((r) => r.startsWith('Bitmap Heap Scan'))) expect(plan.some((n) => /^Bitmap Index Scan using /.test(n)), why).toBe(true);
  }
}

describe('PostgreSQL hot statements', () => {
  it('plan primary-key lookups on empty, never-analyzed tables', async () => {
    const { rows } = await client.query<{ n: string }>(`SELECT count(*) AS n FROM pg_stats WHERE tablename IN ('tasks', 'tokens')`);
    expect(Number(rows[0]!.n)).toBe(0);
    await expectIndexPlans();
  });

  it('still do once the tables hold rows and have statistics', async () => {
    for (let i = 0; i < 300; i++) {
      await store.createTask(task(`plan-${i}`));
      await store.recordToken(token(`plan-j${i}`, `plan-${i}`));
    }
    await client.query('ANALYZE tasks, tokens');
    await expectIndexPlans();
  });
});
