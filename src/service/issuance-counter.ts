/** Per-identity issuance counts over the last minute and hour, for policy context (rate limiting in policy). */
export class IssuanceCounter {
  // identity → per-minute buckets (minute index → count), at most 60 kept.
  private readonly buckets = new Map<string, Map<number, number>>();

  /** Counts one issuance for `id` at `now`. */
  add(id: string, now: number): void {
    const minute = Math.floor(now / 60_000);
    let b = this.buckets.get(id);
    if (!b) {
      b = new Map();
      this.buckets.set(id, b);
    }
    b.set(minute, (b.get(minute) ?? 0) + 1);
    if (b.size > 60) for (const m of b.keys()) if (m <= minute - 60) b.delete(m);
    if (this.buckets.size > 100_000) this.prune(now);
  }

  /** Issuances in the current minute and the last 60 minutes. */
  counts(id: string, now: number): { last_minute: number; last_hour: number } {
    const b = this.buckets.get(id);
    if (!b) return { last_hour: 0, last_minute: 0 };
    const minute = Math.floor(now / 60_000);
    let hour = 0;
    for (const [m, n] of b) if (m > minute - 60) hour += n;
    return { last_hour: hour, last_minute: b.get(minute) ?? 0 };
  }

  private prune(now: number): void {
    const minute = Math.floor(now / 60_000);
    for (const [id, b] of this.buckets) {
      for (const m of b.keys()) if (m <= minute - 60) b.delete(m);
      if (b.size === 0) this.buckets.delete(id);
    }
  }
}
