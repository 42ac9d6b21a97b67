/**
 * A small seeded PRNG (mulberry32) and the mutations the fuzz suite applies.
 * Fixed seeds make every failure reproducible: a failing case names its seed
 * and index; MAYFLY_FUZZ_SEED replays the run with another seed.
 */

/** The run's seed: fixed, unless MAYFLY_FUZZ_SEED overrides it. */
export const FUZZ_SEED = Number(process.env['MAYFLY_FUZZ_SEED'] ?? 0x6d617966);

export class Prng {
  private s: number;
  constructor(readonly seed: number) {
    this.s = seed >>> 0;
  }

  /** Uniform in [0, 2^32). */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }

  /** A string of `n` characters drawn from `alphabet`. */
  text(n: number, alphabet: string): string {
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet[this.int(alphabet.length)];
    return s;
  }

  /** A 64-bit unsigned value biased towards the edges (0, 2^31, 2^32, 2^53, 2^64 - 1). */
  u64(): bigint {
    const edges = [0n, 1n, 2n ** 31n - 1n, 2n ** 31n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 32n + 60n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];
    return this.chance(0.5) ? this.pick(edges) : (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
}

/** One random structural mutation of `input` (flip, overwrite, insert, delete, truncate, duplicate a slice). */
export function mutateBytes(rng: Prng, input: Buffer): Buffer {
  const b = Buffer.from(input);
  if (b.length === 0) return rng.bytes(1 + rng.int(8));
  const at = rng.int(b.length);
  switch (rng.int(6)) {
    case 0:
      b[at] = b[at]! ^ (1 << rng.int(8));
      return b;
    case 1:
      b[at] = rng.int(256);
      return b;
    case 2:
      return Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.int(16)), b.subarray(at)]);
    case 3:
      return Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(16)))]);
    case 4:
      return b.subarray(0, at);
    default: {
      const len = 1 + rng.int(Math.min(32, b.length - at));
      return Buffer.concat([b.subarray(0, at + len), b.subarray(at, at + len), b.subarray(at + len)]);
    }
  }
}

const B64U = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * One mutation of a compact JWS, at the token level (a part's characters,
 * its decoded JSON, alg games, segment games). `printable` keeps the result
 * to characters an HTTP header may carry.
 */
export function mutateJwt(rng: Prng, token: string, printable: boolean): string {
  const parts = token.split('.');
  const json = (i: number): Record<string, unknown> | null => {
    try {
      return JSON.parse(Buffer.from(parts[i] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
    } catch {
      return null;
    }
  };
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  switch (rng.int(10)) {
    case 0: {
      // A character of one part replaced.
      const i = rng.int(parts.length);
      const p = parts[i]!;
      if (p.length === 0) return parts.join('.') + 'A';
      const at = rng.int(p.length);
      parts[i] = p.slice(0, at) + rng.pick([...B64U]) + p.slice(at + 1);
      return parts.join('.');
    }
    case 1: {
      // alg games: none, HMAC, another asymmetric alg, missing.
      const h = json(0) ?? {};
      const alg = rng.pick(['none', 'HS256', 'ES256', 'RS256', 'EdDSA', 'PS256', '', null]);
      if (alg === null) delete h['alg'];
      else h['alg'] = alg;
      parts[0] = enc(h);
      if (alg === 'none' && rng.chance(0.5)) parts[2] = '';
      return parts.join('.');
    }
    case 2: {
      // A claim changed or removed, signature kept.
      const p = json(1) ?? {};
      const k = rng.pick(['sub', 'aud', 'iss', 'exp', 'nbf', 'iat', 'scope', 'tid', 'jti', 'cnf', 'repository']);
      if (rng.chance(0.3)) delete p[k];
      else p[k] = rng.pick([0, -1, 2 ** 53, 'x', '', ['a', 'b'], { nested: true }, null, 'spiffe://example.org/demo/admin']);
      parts[1] = enc(p);
      return parts.join('.');
    }
    case 3: {
      // Header fields an attacker likes: kid traversal, jku/x5u, crit, embedded jwk.
      const h = json(0) ?? {};
      const k = rng.pick(['kid', 'jku', 'x5u', 'crit', 'jwk', 'typ', 'cty', 'b64']);
      h[k] = rng.pick(['../../etc/passwd', 'https://evil.example/jwks', ['exp'], { kty: 'oct', k: 'AA' }, 'JWT', false, '']);
      parts[0] = enc(h);
      return parts.join('.');
    }
    case 4:
      // Signature of another token or truncated.
      parts[2] = (parts[2] ?? '').slice(0, rng.int((parts[2] ?? '').length + 1));
      return parts.join('.');
    case 5:
      // Segment games: too few, too many (JWE-shaped), empty.
      return rng.pick([parts.slice(0, 2).join('.'), [...parts, parts[2]!, parts[1]!].join('.'), parts.join('..'), '..', `${parts[0]}.${parts[1]}.`]);
    case 6:
      // Oversized: past the 16 KiB token limit (in a header, past Node's header limit too: 431 in our shape).
      return token + rng.text(20_000, B64U);
    case 7:
      // Whitespace and padding.
      return rng.pick([` ${token}`, `${token}=`, `${token}==`, token.replace('.', '=.'), printable ? `${token}  ` : `${token}\t`]);
    case 8:
      if (printable) return parts.map((p) => (rng.chance(0.3) ? p.split('').reverse().join('') : p)).join('.');
      // Bytes that are not base64url at all (form bodies can carry them).
      return token.slice(0, rng.int(token.length)) + rng.bytes(1 + rng.int(8)).toString('latin1') + token.slice(rng.int(token.length));
    default:
      // Payload swapped for a hand-made one claiming admin.
      parts[1] = enc({ ...(json(1) ?? {}), sub: 'spiffe://example.org/demo/admin', iss: json(1)?.['iss'] });
      return parts.join('.');
  }
}

/**
 * True if `mutated` decodes to exactly the same header, payload and signature
 * bytes as `original` (a no-op mutation). In a header (`trim`), whitespace
 * around the token is part of the `Bearer` syntax, not of the token.
 */
export function sameJws(original: string, mutated: string, trim = false): boolean {
  const a = original.split('.');
  const b = (trim ? mutated.trim() : mutated).split('.');
  if (a.length !== b.length) return false;
  return a.every((p, i) => /^[A-Za-z0-9_-]*$/.test(b[i]!) && Buffer.from(p, 'base64url').equals(Buffer.from(b[i]!, 'base64url')));
}
