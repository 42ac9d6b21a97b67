/**
 * Hot-path timing of SqliteStore (getTask, recordToken on every issuance; endTask fsyncs).
 * Bounds are loose so shared CI machines do not flake; the measured numbers are printed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { task, token } from '../contracts/store.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'mayfly-sqlite-perf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Mean wall time per call in µs, and CPU (user+system) µs, which is less sensitive to a loaded machine. */
async function perOp(n: number, fn: (i: number) => Promise<unknown>): Promise<{ wall: number; cpu: number }> {
  const cpu0 = process.cpuUsage();
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn(i);
  const cpu = process.cpuUsage(cpu0);
  return { wall: Number(process.hrtime.bigint() - start) / 1000 / n, cpu: (cpu.user + cpu.system) / n };
}

const fmt = (m: { wall: number; cpu: number }) => `${m.wall.toFixed(1)} µs (cpu ${m.cpu.toFixed(1)})`;

it('keeps getTask and recordToken in the tens of microseconds', async () => {
  const s = SqliteStore.open(join(dir, 'perf.db'));
  const TASKS = 2_000;
  for (let i = 0; i < TASKS; i++) await s.createTask(task(`task-${i}`, { labels: { team: 'x', env: 'prod' }, scopeCeiling: ['read', 'write'], actors: ['spiffe://a/b'] }));
  // Warm up, then measure on a table that already holds tokens.
  await perOp(2_000, (i) => s.recordToken(token(`warm-${i}`, `task-${i % TASKS}`)));
  const record = await perOp(20_000, (i) => s.recordToken(token(`jti-${i}-${'x'.repeat(16)}`, `task-${i % TASKS}`, { scopes: ['read', 'write'] })));
  const get = await perOp(20_000, (i) => s.getTask(`task-${i % TASKS}`));
  const end = await perOp(200, (i) => s.endTask(`task-${i}`, 'completed', 'done', Date.now()));
  console.log(`SqliteStore per op: recordToken ${fmt(record)}, getTask ${fmt(get)}, endTask with fsync ${fmt(end)}`);
  expect(record.cpu).toBeLessThan(250);
  expect(get.cpu).toBeLessThan(250);
  await s.close();
});
