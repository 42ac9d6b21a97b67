import { randomBytes } from 'node:crypto';
import type { Clock, Random } from './ports.js';

/** The real clock. */
export const systemClock: Clock = { now: () => Date.now() };

/**
 * Cryptographically secure randomness from node:crypto, drawn from a pool
 * refilled 4 KiB at a time: one CSPRNG call per ~200 ids instead of one per
 * id on the issuance path. Each returned buffer is a fresh copy.
 */
export const systemRandom: Random = (() => {
  const POOL = 4096;
  let pool = randomBytes(POOL);
  let off = 0;
  return {
    bytes(n: number): Buffer {
      if (n > POOL / 4) return randomBytes(n);
      if (off + n > POOL) {
        pool = randomBytes(POOL);
        off = 0;
      }
      const out = Buffer.from(pool.subarray(off, off + n));
      pool.fill(0, off, off + n); // never hand out the same bytes twice
      off += n;
      return out;
    },
  };
})();

/** A clock tests move by hand. */
export class ManualClock implements Clock {
  constructor(private t: number = Date.UTC(2026, 0, 1)) {}
  now(): number {
    return this.t;
  }
  set(t: number): void {
    this.t = t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}
