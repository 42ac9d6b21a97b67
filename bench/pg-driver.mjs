// Driver comparison for the PostgreSQL store: node-postgres (`pg`) vs
// `postgres` (porsager), same server, same SQL, same run. Not part of
// `npm run bench`; run it alone: `node bench/pg-driver.mjs`.
//
// Scenarios, each closed-loop with IN_FLIGHT calls outstanding over a pool of
// POOL connections, for SECONDS:
//   record  the store's recordToken: one statement (UPDATE the task's
//           counter if active, INSERT the token) in autocommit
//   end     the store's endTask shape: BEGIN; SELECT ... FOR UPDATE; UPDATE
//           task; UPDATE tokens; UPDATE counter row; INSERT event; COMMIT
//   point   SELECT of one task by id (the read path)
// Prints calls/s and the client process's CPU µs per call (user+sys).
// The server runs with fsync on (commit latency as in production).
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import postgres from 'postgres';
import { startPgCluster } from '../test/helpers/pg-cluster.mjs';

const SECONDS = Number(process.env.BENCH_PG_SECONDS ?? 4);
const IN_FLIGHT = Number(process.env.BENCH_PG_IN_FLIGHT ?? 32);
const POOL = Number(process.env.BENCH_PG_POOL ?? 10);

const SCHEMA = `
CREATE TABLE tasks (id text PRIMARY KEY, status text NOT NULL, expires_at bigint NOT NULL, tokens_issued integer NOT NULL DEFAULT 0);
CREATE TABLE tokens (jti text PRIMARY KEY, task_id text NOT NULL, kid text NOT NULL, scopes jsonb NOT NULL, issued_at bigint NOT NULL, expires_at bigint NOT NULL, revoked_at bigint);
CREATE INDEX tokens_task ON tokens(task_id);
CREATE TABLE counter (id int PRIMARY KEY, value bigint NOT NULL);
INSERT INTO counter VALUES (1, 0);
CREATE TABLE events (cursor bigint PRIMARY KEY, task_ids jsonb NOT NULL);
`;
const RECORD = `WITH t AS (UPDATE tasks SET tokens_issued = tokens_issued + 1 WHERE id = $1 AND status = 'active' RETURNING id)
  INSERT INTO tokens (jti, task_id, kid, scopes, issued_at, expires_at) SELECT $2, t.id, $3, $4::jsonb, $5, $6 FROM t RETURNING jti`;

async function loop(name, fn) {
  const until = Date.now() + SECONDS * 1000;
  let n = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async (_, w) => {
      while (Date.now() < until) {
        await fn(w, n++);
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  return { name, perSec: Math.round(n / secs), cpuUsPerCall: Math.round((cpu.user + cpu.system) / n) };
}

async function withPg(url, tasks) {
  const pool = new pg.Pool({ connectionString: url, max: POOL });
  const out = [];
  out.push(await loop('record', (w) => pool.query(RECORD, [tasks[w % tasks.length], randomUUID(), 'kid-a', JSON.stringify(['read']), 1, 2])));
  out.push(await loop('point', (w) => pool.query('SELECT * FROM tasks WHERE id = $1', [tasks[w % tasks.length]])));
  out.push(
    await loop('end', async (w) => {
      const id = `e-${randomUUID()}`;
      await pool.query(`INSERT INTO tasks (id, status, expires_at) VALUES ($1, 'active', 9)`, [id]);
      const c = await pool.connect();
      try {
        await c.query('BEGIN');
        await c.query('SELECT status FROM tasks WHERE id = $1 FOR UPDATE', [id]);
        await c.query(`UPDATE tasks SET status = 'completed' WHERE id = $1`, [id]);
        await c.query('UPDATE tokens SET revoked_at = 1 WHERE task_id = $1 AND revoked_at IS NULL', [id]);
        const { rows } = await c.query('UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value');
        await c.query('INSERT INTO events (cursor, task_ids) VALUES ($1, $2::jsonb)', [rows[0].value, JSON.stringify([id])]);
        await c.query('COMMIT');
      } catch (err) {
        await c.query('ROLLBACK');
        throw err;
      } finally {
        c.release();
      }
    }),
  );
  await pool.end();
  return out;
}

async function withPostgres(url, tasks) {
  const sql = postgres(url, { max: POOL, onnotice: () => {} });
  const out = [];
  out.push(await loop('record', (w) => sql.unsafe(RECORD, [tasks[w % tasks.length], randomUUID(), 'kid-a', JSON.stringify(['read']), 1, 2], { prepare: true })));
  out.push(await loop('point', (w) => sql`SELECT * FROM tasks WHERE id = ${tasks[w % tasks.length]}`));
  out.push(
    await loop('end', async () => {
      const id = `e-${randomUUID()}`;
      await sql`INSERT INTO tasks (id, status, expires_at) VALUES (${id}, 'active', 9)`;
      await sql.begin(async (tx) => {
        await tx`SELECT status FROM tasks WHERE id = ${id} FOR UPDATE`;
        await tx`UPDATE tasks SET status = 'completed' WHERE id = ${id}`;
        await tx`UPDATE tokens SET revoked_at = 1 WHERE task_id = ${id} AND revoked_at IS NULL`;
        const [row] = await tx`UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value`;
        await tx`INSERT INTO events (cursor, task_ids) VALUES (${row.value}, ${JSON.stringify([id])}::jsonb)`;
      });
    }),
  );
  await sql.end();
  return out;
}

const cluster = await startPgCluster({ fsync: true });
try {
  const admin = new pg.Client({ connectionString: cluster.url });
  await admin.connect();
  const results = {};
  for (const [driver, fn] of [['pg', withPg], ['postgres', withPostgres], ['pg (again)', withPg], ['postgres (again)', withPostgres]]) {
    const db = `bench_${driver.replace(/\W/g, '_')}`;
    await admin.query(`CREATE DATABASE ${db}`);
    const url = cluster.url.replace(/\/postgres$/, `/${db}`);
    const setup = new pg.Client({ connectionString: url });
    await setup.connect();
    await setup.query(SCHEMA);
    const tasks = Array.from({ length: 50 }, (_, i) => `task-${i}`);
    for (const t of tasks) await setup.query(`INSERT INTO tasks (id, status, expires_at) VALUES ($1, 'active', 9)`, [t]);
    await setup.end();
    results[driver] = await fn(url, tasks);
  }
  await admin.end();
  console.log(`| driver | scenario | calls/s | client CPU µs/call |\n|---|---|---:|---:|`);
  for (const [driver, rows] of Object.entries(results)) for (const r of rows) console.log(`| ${driver} | ${r.name} | ${r.perSec} | ${r.cpuUsPerCall} |`);
  console.log(`\n${SECONDS} s per scenario, ${IN_FLIGHT} in flight, pool ${POOL}, PostgreSQL with fsync on, node ${process.version}`);
} finally {
  await cluster.destroy();
}
