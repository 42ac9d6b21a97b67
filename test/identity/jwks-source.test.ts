import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type { MayflyError } from '../../src/core/errors.js';
import { RemoteJwks } from '../../src/identity/jwks-source.js';
import type { FetchLike } from '../../src/net/remote-document.js';
import { parseJwks } from '../../src/tokens/jwks.js';
import { makeKey } from '../helpers/test-issuer.js';
import { codeOf } from '../helpers/codes.js';

const es = makeKey('ES256', 'es');
const rs = makeKey('RS256', 'rs');
const esNoAlg = makeKey('ES256', 'noalg');
delete esNoAlg.jwk['alg'];
delete esNoAlg.jwk['use'];


/** A fetch that serves `docs()` for the JWKS URL and counts calls. */
function fakeFetch(docs: () => unknown, opts: { delayMs?: number } = {}): FetchLike & { calls: number } {
  const f = (async (_url: string, init: { signal: AbortSignal }) => {
    f.calls++;
    if (opts.delayMs) await new Promise((r, j) => {
      const t = setTimeout(r, opts.delayMs);
      init.signal.addEventListener('abort', () => { clearTimeout(t); j(init.signal.reason); });
    });
    const body = JSON.stringify(docs());
    return { ok: true, status: 200, headers: { get: () => null }, text: async () => body };
  }) as unknown as FetchLike & { calls: number };
  f.calls = 0;
  return f;
}

const URI = 'https://issuer.test/jwks';
const closers: RemoteJwks[] = [];
const make = (...a: ConstructorParameters<typeof RemoteJwks>) => {
  const r = new RemoteJwks(...a);
  closers.push(r);
  return r;
};
afterAll(() => closers.forEach((c) => c.close()));

describe('parseJwks / getKey key filtering', () => {
  const reported: MayflyError[] = [];
  const jwks = make(
    {
      jwks: {
        keys: [
          es.jwk,
          rs.jwk,
          esNoAlg.jwk,
          { kty: 'oct', kid: 'hmac', k: 'c2VjcmV0', alg: 'HS256' },
          { ...makeKey('ES256', 'enc').jwk, use: 'enc' },
          { ...makeKey('ES256', 'ops').jwk, key_ops: ['encrypt'] },
          { ...makeKey('ES256').jwk, kid: undefined },
          { kty: 'EC', kid: 'broken', crv: 'P-256', x: 'AAAA', y: 'AAAA' },
          { ...es.jwk, kid: 'private', d: 'AAAA' },
        ],
      },
    },
    { onError: (e) => reported.push(e) },
  );
  const cases: Array<[string, string, string]> = [
    ['es', 'ES256', 'OK'],
    ['rs', 'RS256', 'OK'],
    ['noalg', 'ES256', 'OK'],
    ['es', 'ES384', 'ERR_KEY_UNKNOWN'], // JWK alg ES256 ≠ token alg
    ['rs', 'PS256', 'ERR_KEY_UNKNOWN'], // JWK alg RS256 ≠ token alg, even though the key type fits
    ['noalg', 'RS256', 'ERR_KEY_UNKNOWN'], // key type does not fit
    ['hmac', 'HS256', 'ERR_KEY_UNKNOWN'], // symmetric keys dropped
    ['enc', 'ES256', 'ERR_KEY_UNKNOWN'], // use must be sig
    ['ops', 'ES256', 'ERR_KEY_UNKNOWN'], // key_ops must include verify
    ['broken', 'ES256', 'ERR_KEY_UNKNOWN'],
    ['missing', 'ES256', 'ERR_KEY_UNKNOWN'],
  ];
  it.each(cases)('kid %s alg %s → %s', async (kid, alg, code) => {
    expect(await codeOf(jwks.getKey(kid, alg))).toBe(code);
  });
  it('private parts of a JWK are stripped, never used', async () => {
    expect((await jwks.getKey('private', 'ES256')).type).toBe('public');
  });
  it('reports every dropped key', () => {
    expect(reported.map((e) => e.message).join('\n')).toMatch(/"hmac".*symmetric/);
    expect(reported.length).toBe(5);
  });
  it('static JWKS without keys array is a config error', () => {
    expect(() => new RemoteJwks({ jwks: {} as never })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG_INVALID' }));
    expect(() => parseJwks({ keys: 'x' })).toThrow(expect.objectContaining({ code: 'ERR_UNAVAILABLE' }));
  });
});

describe('RemoteJwks refresh behaviour', () => {
  it('first lookup loads; unknown kid refreshes once per call, rate-limited, then ERR_KEY_UNKNOWN', async () => {
    const clock = new ManualClock();
    let keys = [es.jwk];
    const f = fakeFetch(() => ({ keys }));
    const j = make({ jwksUri: URI }, { fetchImpl: f, clock, minRefreshIntervalMs: 30_000 });
    await j.getKey('es', 'ES256');
    expect(f.calls).toBe(1);
    expect(await codeOf(j.getKey('rs', 'RS256'))).toBe('ERR_KEY_UNKNOWN');
    expect(f.calls).toBe(1);
    clock.advance(30_000);
    keys = [es.jwk, rs.jwk];
    expect(await codeOf(j.getKey('rs', 'RS256'))).toBe('OK');
    expect(f.calls).toBe(2);
    clock.advance(30_000);
    expect(await codeOf(j.getKey('nope', 'ES256'))).toBe('ERR_KEY_UNKNOWN');
    expect(f.calls).toBe(3);
    expect(j.fetchCount).toBe(3);
    expect(j.stats()).toEqual({ refreshes: 3, failures: 0, httpRequests: 3 });
  });

  it('concurrent callers share one in-flight fetch', async () => {
    const f = fakeFetch(() => ({ keys: [es.jwk] }), { delayMs: 30 });
    const j = make({ jwksUri: URI }, { fetchImpl: f, minRefreshIntervalMs: 0 });
    const all = await Promise.all(Array.from({ length: 25 }, (_, i) => codeOf(j.getKey(i % 2 ? 'es' : 'missing', 'ES256'))));
    expect(f.calls).toBe(1);
    expect(all.filter((c) => c === 'OK')).toHaveLength(12);
    expect(all.filter((c) => c === 'ERR_KEY_UNKNOWN')).toHaveLength(13);
  });

  it('a fetch that ignores the abort signal still cannot stall callers past the timeout', async () => {
    const never: FetchLike = () => new Promise(() => {});
    const j = make({ jwksUri: URI }, { fetchImpl: never, timeoutMs: 100 });
    const t0 = Date.now();
    expect(await codeOf(j.getKey('es', 'ES256'))).toBe('ERR_UNAVAILABLE');
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it('keeps the last good set when refreshes fail, and reports', async () => {
    const clock = new ManualClock();
    let fail = false;
    const errors: MayflyError[] = [];
    const f: FetchLike = async () => {
      if (fail) throw new Error('ECONNREFUSED');
      return { ok: true, status: 200, headers: { get: () => null }, text: async () => JSON.stringify({ keys: [es.jwk] }) };
    };
    const j = make({ jwksUri: URI }, { fetchImpl: f, clock, onError: (e) => errors.push(e) });
    await j.getKey('es', 'ES256');
    fail = true;
    clock.advance(60_000);
    await j.refresh();
    expect(errors).toHaveLength(1);
    expect(errors[0]!.code).toBe('ERR_UNAVAILABLE');
    expect(await codeOf(j.getKey('es', 'ES256'))).toBe('OK');
    expect(j.stats().failures).toBe(1);
  });

  it('first load failing is ERR_UNAVAILABLE, and retried only after the interval', async () => {
    const clock = new ManualClock();
    const f: FetchLike & { calls?: number } = async () => ({ ok: false, status: 500, headers: { get: () => null }, text: async () => '' });
    let calls = 0;
    const counted: FetchLike = (u, i) => (calls++, f(u, i));
    const j = make({ jwksUri: URI }, { fetchImpl: counted, clock });
    expect(await codeOf(j.getKey('es', 'ES256'))).toBe('ERR_UNAVAILABLE');
    expect(await codeOf(j.getKey('es', 'ES256'))).toBe('ERR_UNAVAILABLE');
    expect(calls).toBe(1);
  });

  it('refuses oversize and non-JSON documents', async () => {
    const big: FetchLike = async () => ({ ok: true, status: 200, headers: { get: () => null }, text: async () => 'x'.repeat(2048) });
    expect(await codeOf(make({ jwksUri: URI }, { fetchImpl: big, maxDocumentBytes: 1024 }).getKey('es', 'ES256'))).toBe('ERR_UNAVAILABLE');
    const junk: FetchLike = async () => ({ ok: true, status: 200, headers: { get: () => null }, text: async () => '<html>' });
    expect(await codeOf(make({ jwksUri: URI }, { fetchImpl: junk }).getKey('es', 'ES256'))).toBe('ERR_UNAVAILABLE');
  });

  it('http URLs are refused unless allowed', () => {
    expect(() => new RemoteJwks({ jwksUri: 'http://issuer.test/jwks' })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG_INVALID' }));
    make({ jwksUri: 'http://issuer.test/jwks' }, { allowInsecureHttp: true });
  });

  it('static JWKS file is re-read on an unknown kid (air-gapped rotation)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mayfly-jwks-'));
    try {
      const file = join(dir, 'jwks.json');
      writeFileSync(file, JSON.stringify({ keys: [es.jwk] }));
      const clock = new ManualClock();
      const j = make({ jwksFile: file }, { clock });
      expect(await codeOf(j.getKey('es', 'ES256'))).toBe('OK');
      writeFileSync(file, JSON.stringify({ keys: [es.jwk, rs.jwk] }));
      clock.advance(30_000);
      expect(await codeOf(j.getKey('rs', 'RS256'))).toBe('OK');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('close() makes further lookups fail', async () => {
    const j = new RemoteJwks({ jwks: { keys: [es.jwk] } });
    j.close();
    expect(await codeOf(j.getKey('es', 'ES256'))).toBe('ERR_UNAVAILABLE');
  });

  it('background refresh follows Cache-Control max-age', async () => {
    let served = [es.jwk];
    const f: FetchLike = async () => ({ ok: true, status: 200, headers: { get: (n) => (n === 'cache-control' ? 'public, max-age=120' : null) }, text: async () => JSON.stringify({ keys: served }) });
    const { vi } = await import('vitest');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const j = make({ jwksUri: URI }, { fetchImpl: f, backgroundRefresh: true });
      await j.refresh();
      served = [es.jwk, rs.jwk];
      await vi.advanceTimersByTimeAsync(121_000);
      expect(j.kids().sort()).toEqual(['es', 'rs']);
      expect(j.fetchCount).toBe(2);
      j.close();
    } finally {
      vi.useRealTimers();
    }
  });
});
