/**
 * Batcher (src/store/postgres-batch.ts) without a database: how calls are
 * grouped, that each gets its own outcome, and that calls queued while the
 * server was found unreachable fail at once instead of waiting for a batch.
 */
import { describe, expect, it } from 'vitest';
import { Batcher, type BatchOutcome } from '../../src/store/postgres-batch.js';

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

describe('Batcher', () => {
  it('sends the calls of one turn together, and those queued behind a batch in flight as the next one', async () => {
    const batches: number[][] = [];
    const gate = deferred<void>();
    const b = new Batcher<number, number>(async (items) => {
      batches.push(items);
      if (batches.length === 1) await gate.promise;
      return items.map((x) => ({ ok: true, value: x * 10 }));
    });
    const first = [1, 2, 3].map((x) => b.submit(x));
    await new Promise((r) => setImmediate(r));
    const second = [4, 5].map((x) => b.submit(x));
    await new Promise((r) => setTimeout(r, 5));
    expect(batches).toEqual([[1, 2, 3]]);
    gate.resolve();
    expect(await Promise.all([...first, ...second])).toEqual([10, 20, 30, 40, 50]);
    expect(batches).toEqual([[1, 2, 3], [4, 5]]);
  });

  it('gives each call its own outcome, and every call the error of a batch that threw', async () => {
    const b = new Batcher<number, number>(async (items) => {
      if (items.includes(0)) throw new Error('statement failed');
      return items.map((x): BatchOutcome<number> => (x % 2 ? { ok: true, value: x } : { ok: false, error: new Error(`even ${x}`) }));
    });
    const out = await Promise.allSettled([1, 2, 3].map((x) => b.submit(x)));
    expect(out.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message))).toEqual([1, 'even 2', 3]);
    const failed = await Promise.allSettled([0, 1].map((x) => b.submit(x)));
    expect(failed.map((r) => r.status === 'rejected' && (r.reason as Error).message)).toEqual(['statement failed', 'statement failed']);
  });

  it('fails calls that waited while the server was found unreachable, without sending them', async () => {
    let downSince: number | null = null;
    const gate = deferred<void>();
    const sent: number[][] = [];
    const b = new Batcher<number, number>(
      async (items) => {
        sent.push(items);
        await gate.promise;
        downSince = Date.now();
        throw new Error('connect timeout');
      },
      (queuedAt) => (downSince !== null && downSince >= queuedAt ? new Error('unavailable since') : undefined),
    );
    const inFlight = b.submit(1);
    await new Promise((r) => setImmediate(r));
    const queued = [b.submit(2), b.submit(3)];
    await new Promise((r) => setTimeout(r, 5));
    gate.resolve();
    await expect(inFlight).rejects.toThrow('connect timeout');
    for (const q of queued) await expect(q).rejects.toThrow('unavailable since');
    expect(sent).toEqual([[1]]);
  });
});
