/**
 * The one remote-document fetcher behind OIDC JWKS, SPIFFE bundle endpoints
 * and the verifier SDK's JWKS: refresh scheduling, single flight, rate limit,
 * stale on error, timeouts, and HTTPS with a private CA on 127.0.0.1.
 */
import { once } from 'node:events';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { mayflyError, type MayflyError } from '../../src/core/errors.js';
import { httpsFetch, refreshDelayMs, RemoteDocument, type FetchLike, type FetchResponseLike } from '../../src/net/remote-document.js';
import { issueServerCert } from '../../src/pki/dev-pki.js';
import { codeOf } from '../helpers/codes.js';
import { devPki } from '../helpers/pki.js';

const URL_ = 'https://origin.test/doc';
const ok = (body: string, cacheControl: string | null = null): FetchResponseLike => ({ ok: true, status: 200, headers: { get: (n) => (n === 'cache-control' ? cacheControl : null) }, text: async () => body });

/** A fetch that answers from `next()` and counts calls; `gate` holds every answer until released. */
function scripted(next: () => FetchResponseLike | Error) {
  let release: () => void = () => undefined;
  let gate: Promise<void> | null = null;
  const f = Object.assign(
    (async () => {
      f.calls++;
      if (gate) await gate;
      const r = next();
      if (r instanceof Error) throw r;
      return r;
    }) as FetchLike,
    {
      calls: 0,
      hold() {
        gate = new Promise<void>((r) => (release = r));
      },
      release() {
        gate = null;
        release();
      },
    },
  );
  return f;
}

const docs: RemoteDocument<unknown>[] = [];
function make<T>(o: ConstructorParameters<typeof RemoteDocument<T>>[0]): RemoteDocument<T> {
  const d = new RemoteDocument<T>(o);
  docs.push(d as RemoteDocument<unknown>);
  return d;
}
afterAll(() => docs.forEach((d) => d.close()));

describe('refreshDelayMs', () => {
  it.each([
    [null, 300_000],
    ['max-age=10', 60_000],
    ['public, max-age=600', 600_000],
    ['max-age=86400', 3_600_000],
    ['no-cache', 300_000],
  ])('Cache-Control %s → %d ms (default bounds 60 s … 1 h)', (h, ms) => {
    expect(refreshDelayMs({ cacheControl: h })).toBe(ms);
  });

  it('a fixed interval wins and is not bounded; a hint beats Cache-Control and is bounded', () => {
    const bounds = { minMs: 1_000, maxMs: 86_400_000, defaultMs: 300_000 };
    expect(refreshDelayMs({ intervalMs: 50, hintMs: 120_000, cacheControl: 'max-age=600', bounds })).toBe(50);
    expect(refreshDelayMs({ hintMs: 120_000, cacheControl: 'max-age=600', bounds })).toBe(120_000);
    expect(refreshDelayMs({ hintMs: 0, bounds })).toBe(1_000);
    expect(refreshDelayMs({ cacheControl: 'max-age=600', bounds })).toBe(600_000);
  });
});

describe('RemoteDocument', () => {
  it('concurrent refreshes share one load (single flight)', async () => {
    const f = scripted(() => ok('{"n":1}'));
    const d = make({ name: 'doc', fetchImpl: f, load: async (get) => JSON.parse(await get(URL_)) as { n: number } });
    f.hold();
    const all = Promise.all(Array.from({ length: 10 }, () => d.refresh()));
    f.release();
    expect((await all).every((v) => v.n === 1)).toBe(true);
    expect(f.calls).toBe(1);
    expect(d.stats()).toEqual({ refreshes: 1, failures: 0, httpRequests: 1 });
  });

  it('on-demand refreshes are rate-limited; refresh() is not', async () => {
    const clock = new ManualClock(1_000_000);
    const f = scripted(() => ok('1'));
    const d = make({ name: 'doc', fetchImpl: f, clock, minRefreshIntervalMs: 30_000, load: async (get) => get(URL_) });
    expect(await d.refreshIfAllowed()).toBe('ok');
    expect(d.mayRefresh()).toBe(false);
    expect(await d.refreshIfAllowed()).toBe('skipped');
    await d.refresh();
    expect(f.calls).toBe(2);
    clock.advance(30_000);
    expect(await d.refreshIfAllowed()).toBe('ok');
    expect(f.calls).toBe(3);
  });

  it('keeps the last good value when a load fails (stale on error), reports, and recovers', async () => {
    let next: FetchResponseLike | Error = ok('"v1"');
    const errors: MayflyError[] = [];
    const d = make({ name: 'origin', fetchImpl: scripted(() => next), onError: (e) => errors.push(e), load: async (get) => JSON.parse(await get(URL_)) as string });
    expect(await d.refresh()).toBe('v1');
    next = new Error('ECONNREFUSED');
    await expect(d.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: 'origin failed: ECONNREFUSED' });
    next = { ok: false, status: 503, text: async () => '' };
    await expect(d.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: 'origin answered HTTP 503' });
    next = ok('not json');
    await expect(d.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: expect.stringMatching(/^origin could not be loaded: /) });
    expect(d.value).toBe('v1');
    expect(errors.map((e) => e.code)).toEqual(['ERR_UNAVAILABLE', 'ERR_UNAVAILABLE', 'ERR_UNAVAILABLE']);
    expect(d.lastError?.code).toBe('ERR_UNAVAILABLE');
    next = ok('"v2"');
    expect(await d.refresh()).toBe('v2');
    expect(d.lastError).toBeUndefined();
    expect(d.stats()).toMatchObject({ refreshes: 5, failures: 3 });
  });

  it('a MayflyError thrown by the loader is kept as it is (the loader refuses what came back)', async () => {
    const d = make({
      name: 'origin',
      fetchImpl: scripted(() => ok('x')),
      load: async (get) => {
        await get(URL_);
        throw mayflyError('ERR_CONFIG_INVALID', 'bad document');
      },
    });
    expect(await codeOf(d.refresh())).toBe('ERR_CONFIG_INVALID');
  });

  it('schedules the background refresh from Cache-Control, and retries sooner after a failure', async () => {
    const clock = new ManualClock(1_000_000);
    let next: FetchResponseLike | Error = ok('1', 'public, max-age=120');
    const d = make({ name: 'doc', fetchImpl: scripted(() => next), clock, background: true, load: async (get) => get(URL_) });
    expect(d.nextRefreshAt).toBeUndefined();
    await d.refresh();
    expect(d.nextRefreshAt).toBe(1_000_000 + 120_000);
    next = new Error('down');
    await d.refresh().catch(() => undefined);
    expect(d.nextRefreshAt).toBe(1_000_000 + 30_000); // min(120 s, 30 s)
    d.close();
    expect(d.nextRefreshAt).toBeUndefined();
    expect(await codeOf(d.refresh())).toBe('ERR_UNAVAILABLE');
  });

  it('a fetch that ignores the abort signal still cannot stall callers past the timeout', async () => {
    const never: FetchLike = () => new Promise(() => {});
    const d = make({ name: 'slow origin', fetchImpl: never, timeoutMs: 100, load: async (get) => get(URL_) });
    const t0 = Date.now();
    await expect(d.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: 'slow origin timed out after 100 ms' });
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it('refuses a body over maxBytes', async () => {
    const d = make({ name: 'doc', fetchImpl: scripted(() => ok('x'.repeat(2048))), maxBytes: 1024, load: async (get) => get(URL_) });
    await expect(d.refresh()).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE', message: 'doc exceeds 1024 bytes' });
  });

  it('close() aborts the request in flight', async () => {
    let aborted = false;
    const hanging: FetchLike = (_u, init) =>
      new Promise((_r, reject) =>
        init.signal.addEventListener('abort', () => {
          aborted = true;
          reject(new Error('aborted'));
        }),
      );
    const d = make({ name: 'doc', fetchImpl: hanging, timeoutMs: 5_000, load: async (get) => get(URL_) });
    const p = d.refresh();
    d.close();
    expect(await codeOf(p)).toBe('ERR_UNAVAILABLE');
    expect(aborted).toBe(true);
  });
});

describe('httpsFetch over HTTPS on 127.0.0.1 with a private CA', () => {
  let server: https.Server;
  let base: string;
  let body = '{"ok":true}';
  beforeAll(async () => {
    const pki = devPki();
    const cert = issueServerCert(pki.example, { ipAddresses: ['127.0.0.1'], keyPem: pki.leafKeyPem });
    server = https.createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
      if (req.url === '/redirect') res.writeHead(302, { location: '/doc' }).end();
      else res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=90' }).end(body);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => {
    server.closeAllConnections();
    server.close();
  });
  const get = (f: FetchLike, path = '/doc') => f(`${base}${path}`, { signal: AbortSignal.timeout(2_000), headers: {}, redirect: 'error' });

  it('trusts the configured CA and exposes headers', async () => {
    const res = await get(httpsFetch({ ca: devPki().example.certPem }));
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(body);
    expect(res.headers?.get('cache-control')).toBe('max-age=90');
  });

  it('refuses a server whose certificate is not from the configured CA, and the system roots do not know it either', async () => {
    await expect(get(httpsFetch({ ca: devPki().other.certPem }))).rejects.toThrow();
    await expect(get(httpsFetch())).rejects.toThrow();
  });

  it('does not follow redirects, refuses http and cuts oversize bodies', async () => {
    const f = httpsFetch({ ca: devPki().example.certPem, maxBytes: 64 });
    expect((await get(f, '/redirect')).ok).toBe(false);
    await expect(f('http://127.0.0.1:1/doc', { signal: AbortSignal.timeout(1_000), headers: {}, redirect: 'error' })).rejects.toThrow(/only https/);
    body = JSON.stringify({ pad: 'x'.repeat(200) });
    await expect(get(f)).rejects.toThrow(/exceeds 64 bytes/);
  });
});
