import { randomBytes } from 'node:crypto';
import type { Clock, Random } from './ports.js';

/** The real clock. */
export const systemClock: Clock = { now: () => Date.now() };

/** Cryptographically secure randomness from node:crypto. */
export const systemRandom: Random = { bytes: (n) => randomBytes(n) };

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
