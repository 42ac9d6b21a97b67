/**
 * Subject tokens already verified, by their exact bytes. CI jobs exchange
 * the same platform token for several tasks, and each exchange would
 * otherwise decode it and verify its signature again.
 *
 * What an entry saves is only what depends on nothing but the token's bytes
 * and the key that verified them: the decoding and the signature check. The
 * verifier that owns the cache (oidc.ts) still looks the key up on every call
 * and uses an entry only while that lookup returns the same key, and it
 * checks every claim again at the current time. Failures are never kept.
 *
 * Bounded by entry count and by the total length of the tokens kept: the
 * oldest entries go first. An entry is dropped once its token has expired
 * (with the clock skew it was verified with).
 */

/** Limits of a VerifiedTokens cache. */
export interface VerifiedTokensOptions {
  /** Most entries kept. 0 disables the cache. */
  maxEntries: number;
  /** Most token characters kept in all, summed over entries. */
  maxChars: number;
}

export const DEFAULT_VERIFIED_TOKENS: VerifiedTokensOptions = { maxEntries: 4096, maxChars: 8 * 1024 * 1024 };

interface Slot<T> {
  value: T;
  /** Epoch ms from which the token can no longer verify (exp plus skew). */
  until: number;
}

export class VerifiedTokens<T> {
  private readonly slots = new Map<string, Slot<T>>();
  private chars = 0;

  constructor(private readonly limits: VerifiedTokensOptions = DEFAULT_VERIFIED_TOKENS) {
    if (!(Number.isInteger(limits.maxEntries) && limits.maxEntries >= 0) || !(Number.isInteger(limits.maxChars) && limits.maxChars >= 0)) {
      throw new RangeError('verified token cache limits must be non-negative integers');
    }
  }

  get size(): number {
    return this.slots.size;
  }

  /** The entry for exactly this token, if it was kept and its token has not expired at `now`. */
  get(token: string, now: number): T | undefined {
    const slot = this.slots.get(token);
    if (slot === undefined) return undefined;
    if (now >= slot.until) {
      this.delete(token);
      return undefined;
    }
    return slot.value;
  }

  /** Keeps `value` for `token` until `until` (epoch ms); tokens longer than the whole budget are not kept. */
  set(token: string, value: T, until: number): void {
    if (this.limits.maxEntries === 0 || token.length > this.limits.maxChars) return;
    this.delete(token);
    this.slots.set(token, { value, until });
    this.chars += token.length;
    // Map iteration is insertion order: the first key is the oldest entry.
    while (this.slots.size > this.limits.maxEntries || this.chars > this.limits.maxChars) {
      const oldest = this.slots.keys().next().value as string;
      this.delete(oldest);
    }
  }

  delete(token: string): void {
    if (this.slots.delete(token)) this.chars -= token.length;
  }

  clear(): void {
    this.slots.clear();
    this.chars = 0;
  }
}

/** Freezes a JSON-shaped value and everything in it (a cached result is shared by every request that presents the token). */
export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as Record<string, unknown>)) deepFreeze(v);
  }
  return value;
}
