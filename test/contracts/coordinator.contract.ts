/**
 * Conformance suite for Coordinator adapters. `member()` makes one more
 * broker of the same cluster. Shared backends (several brokers) also get the
 * cluster tests: a job runs on one member at a time, and moves to another
 * when its holder goes away.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Coordinator } from '../../src/core/ports.js';

export interface CoordinatorHarness {
  member(): Coordinator | Promise<Coordinator>;
  /** Makes a member vanish the way a killed process does (its session ends without close()). */
  kill?(c: Coordinator): Promise<void>;
  /** Several members can share jobs (false: single-process backends). */
  shared: boolean;
}

export function runCoordinatorContract(name: string, h: CoordinatorHarness): void {
  describe(`Coordinator contract: ${name}`, () => {
    const open: Coordinator[] = [];
    const member = async () => {
      const c = await h.member();
      open.push(c);
      return c;
    };
    afterEach(async () => {
      for (const c of open.splice(0)) await c.close();
    });

    it('runs the job and hands back its value, and keeps holding it', async () => {
      const c = await member();
      expect(await c.runExclusive('sweep', async () => 42)).toEqual({ ran: true, value: 42 });
      expect(await c.runExclusive('sweep', async () => 'again')).toEqual({ ran: true, value: 'again' });
      expect(c.held()).toEqual(['sweep']);
    });

    it('propagates a failing job and still runs it next time', async () => {
      const c = await member();
      await expect(c.runExclusive('gc', async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
      expect(await c.runExclusive('gc', async () => 'ok')).toEqual({ ran: true, value: 'ok' });
    });

    it('refuses to run after close', async () => {
      const c = await member();
      await c.close();
      await expect(c.runExclusive('sweep', async () => 1)).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE' });
    });

    if (!h.shared) return;

    it('runs a job on exactly one member per tick, and different jobs independently', async () => {
      const members = await Promise.all([member(), member(), member()]);
      const runs: number[] = [];
      for (let tick = 0; tick < 10; tick++) {
        const res = await Promise.all(members.map((m, i) => m.runExclusive('sweep', async () => runs.push(i))));
        expect(res.filter((r) => r.ran)).toHaveLength(1);
      }
      // The same member every tick: the job sticks to its holder.
      expect(new Set(runs).size).toBe(1);
      const holder = runs[0]!;
      const other = members[(holder + 1) % 3]!;
      expect(await other.runExclusive('gc', async () => 'gc here')).toEqual({ ran: true, value: 'gc here' });
      expect(await members[holder]!.runExclusive('gc', async () => 'no')).toEqual({ ran: false });
    });

    it('moves the job to another member when its holder closes', async () => {
      const [x, y] = await Promise.all([member(), member()]);
      expect((await x.runExclusive('promote', async () => 1)).ran).toBe(true);
      expect((await y.runExclusive('promote', async () => 2)).ran).toBe(false);
      await x.close();
      expect(await y.runExclusive('promote', async () => 2)).toEqual({ ran: true, value: 2 });
    });

    if (h.kill) {
      const kill = h.kill;
      it('moves the job to another member when its holder dies without closing', async () => {
        const [x, y] = await Promise.all([member(), member()]);
        expect((await x.runExclusive('sweep', async () => 1)).ran).toBe(true);
        expect((await y.runExclusive('sweep', async () => 2)).ran).toBe(false);
        await kill(x);
        expect(await y.runExclusive('sweep', async () => 2)).toEqual({ ran: true, value: 2 });
        // The dead member's next tick does not run it: its lock is gone and the job has a new holder.
        const again = await x.runExclusive('sweep', async () => 1).catch(() => ({ ran: false as const }));
        expect(again.ran).toBe(false);
        expect(x.held()).not.toContain('sweep');
      });
    }
  });
}
