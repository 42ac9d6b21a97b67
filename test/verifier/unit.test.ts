/**
 * MayflyVerifier state machine with a scripted feed, an injected JWKS fetch
 * and a manual clock: sync gate, silence, reconnect cursors, key sets and
 * acks, key revocation, pruning, single-flight JWKS refresh.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { MayflyError } from '../../src/core/errors.js';
import { buildClaims } from '../../src/tokens/claims.js';
import { signCompact } from '../../src/tokens/jws.js';
import { RevocationEvent_Kind, RevocationEventSchema, type RevocationEvent } from '../../src/gen/mayfly/v1/broker_pb.js';
import { certificateThumbprint, MayflyVerifier, type MayflyVerifierOptions, type VerifierBrokerClient } from '../../src/verifier/index.js';
import type { FetchLike } from '../../src/net/remote-document.js';
import { codeOf } from './harness.js';

const ISS = 'https://broker.test';

function keypair(kid: string) {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { kid, privateKey, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' } };
}
const jwks = (...ks: Array<{ jwk: object }>) => JSON.stringify({ keys: ks.map((k) => k.jwk) });

function mint(key: { kid: string; privateKey: KeyObject }, now: number, o: { tid?: string; jti?: string; parent?: string; cnf?: string; singleUse?: boolean } = {}) {
  const claims = buildClaims({ issuer: ISS, subject: 'spiffe://t/w', audience: 'api', scopes: ['read'], jti: o.jti ?? `j-${Math.random()}`, taskId: o.tid ?? 't1', issuedAtMs: now, expiresAtMs: now + 300_000, parentTaskId: o.parent ?? null, certThumbprint: o.cnf ?? null, singleUse: o.singleUse ?? false });
  return signCompact({ alg: 'ES256', typ: 'at+jwt', kid: key.kid }, claims, key.privateKey);
}

class FakeFeed implements VerifierBrokerClient {
  subs: Array<{ cursor: number; onEvent: (e: RevocationEvent) => void; onEnd: (err: MayflyError | null) => void; cancelled: boolean }> = [];
  acks: string[] = [];
  misuse: string[] = [];
  watchRevocations(req: { cursor: number }, onEvent: (e: RevocationEvent) => void, onEnd: (err: MayflyError | null) => void) {
    const s = { cursor: req.cursor, onEvent, onEnd, cancelled: false };
    this.subs.push(s);
    return { cancel: () => void (s.cancelled = true) };
  }
  get live() {
    return this.subs[this.subs.length - 1]!;
  }
  send(kind: RevocationEvent_Kind, o: Partial<{ cursor: number; taskIds: string[]; tokenIds: string[]; kid: string; kids: string[]; jwksJson: string; reason: string }> = {}) {
    this.live.onEvent(create(RevocationEventSchema, { kind, cursor: BigInt(o.cursor ?? 0), taskIds: o.taskIds ?? [], tokenIds: o.tokenIds ?? [], kid: o.kid ?? '', kids: o.kids ?? [], jwksJson: o.jwksJson ?? '', reason: o.reason ?? '' }));
  }
  async ackKeySet(_s: string, v: string) {
    this.acks.push(v);
    return {};
  }
  async reportMisuse(kind: string, jti: string) {
    this.misuse.push(`${kind}:${jti}`);
    return {};
  }
  async introspect() {
    return { active: true, reason: '' };
  }
}

function setup(opts: { jwksDoc?: () => string; options?: Partial<MayflyVerifierOptions> } = {}) {
  const clock = new ManualClock(Date.UTC(2026, 5, 1));
  const k1 = keypair('k1');
  const feed = new FakeFeed();
  let fetches = 0;
  const fetchImpl: FetchLike = async () => {
    fetches++;
    await new Promise((r) => setTimeout(r, 5));
    const body = opts.jwksDoc ? opts.jwksDoc() : jwks(k1);
    return { ok: true, status: 200, headers: { get: () => null }, text: async () => body };
  };
  const v = new MayflyVerifier({ issuer: ISS, audience: 'api', clock, jwks: { url: 'https://broker.test/jwks', fetchImpl, minRefreshIntervalMs: 10_000 }, feed: { client: feed, subscriberId: 'rp', maxSilenceMs: 5000, backoff: { initialMs: 1, maxMs: 4 } }, ...opts.options });
  return { clock, k1, feed, v, fetches: () => fetches };
}

describe('MayflyVerifier (scripted feed)', () => {
  it('fails closed until the snapshot, applies it, acks its key set version', async () => {
    const { clock, k1, feed, v } = setup();
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    expect(feed.subs[0]!.cursor).toBe(0);
    const token = mint(k1, clock.now());
    expect(await codeOf(() => v.verifySync(token))).toBe('ERR_UNAVAILABLE');
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 7, taskIds: ['dead'], kid: 'v1', jwksJson: jwks(k1) });
    await started;
    expect(feed.acks).toEqual(['v1']);
    expect(v.verifySync(token).tid).toBe('t1');
    expect(await codeOf(() => v.verifySync(mint(k1, clock.now(), { tid: 'dead' })))).toBe('ERR_TOKEN_REVOKED');
    // The parent's revocation is honoured even if a child id were missing from an event.
    expect(await codeOf(() => v.verifySync(mint(k1, clock.now(), { tid: 'kid-task', parent: 'dead' })))).toBe('ERR_TOKEN_REVOKED');
    expect(v.stats().cursor).toBe(7);
    v.close();
  });

  it('silence beyond maxSilenceMs fails closed; a heartbeat restores service', async () => {
    const { clock, k1, feed, v } = setup();
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 1, kid: 'v1', jwksJson: jwks(k1) });
    await started;
    const token = mint(k1, clock.now());
    clock.advance(5001);
    expect(await codeOf(v.verify(mint(k1, clock.now())))).toBe('ERR_UNAVAILABLE');
    feed.send(RevocationEvent_Kind.HEARTBEAT, { cursor: 99 });
    expect(v.verifySync(token).jti).toBeTruthy();
    expect(v.stats().cursor).toBe(1); // heartbeats never move the cursor
    v.close();
  });

  it('resubscribes from the last cursor after a disconnect; replay end is the "current" key set', async () => {
    const { clock, k1, feed, v } = setup();
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 3, kid: 'v1', jwksJson: jwks(k1) });
    await started;
    feed.send(RevocationEvent_Kind.TOKEN, { cursor: 4, tokenIds: ['j-x'] });
    feed.live.onEnd(null);
    for (let i = 0; i < 100 && feed.subs.length < 2; i++) await new Promise((r) => setTimeout(r, 2));
    expect(feed.subs[1]!.cursor).toBe(4);
    expect(v.stats().catchingUp).toBe(true);
    const token = mint(k1, clock.now(), { tid: 't9' });
    const pending = v.verify(token);
    feed.send(RevocationEvent_Kind.TASK, { cursor: 5, taskIds: ['t9'] });
    feed.send(RevocationEvent_Kind.KEYSET, { cursor: 5, kid: 'v1', reason: 'current', jwksJson: jwks(k1) });
    expect(await codeOf(pending)).toBe('ERR_TOKEN_REVOKED');
    await new Promise((r) => setImmediate(r)); // revoked-use reports go out after the signature check, off the request path
    expect(feed.misuse.length).toBe(1);
    expect(v.stats()).toMatchObject({ catchingUp: false, cursor: 5, reconnects: 1, revokedTasks: 1, revokedTokens: 1 });
    v.close();
  });

  it('refuses a revoked task\'s tokens before the signature check, and reports only genuine ones', async () => {
    const { clock, k1, feed, v } = setup();
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 1, taskIds: ['dead'], kid: 'v1', jwksJson: jwks(k1) });
    await started;
    const forger = keypair('k1'); // same kid, someone else's key
    const forged = mint(forger, clock.now(), { tid: 'dead', jti: 'forged-1' });
    expect(await codeOf(() => v.verifySync(forged))).toBe('ERR_TOKEN_REVOKED');
    const genuine = mint(k1, clock.now(), { tid: 'dead', jti: 'genuine-1' });
    expect(await codeOf(() => v.verifySync(genuine))).toBe('ERR_TOKEN_REVOKED');
    await new Promise((r) => setImmediate(r));
    expect(feed.misuse).toEqual(['revoked_use:genuine-1']);
    // A forged token for a live task still fails on its signature.
    expect(await codeOf(() => v.verifySync(mint(forger, clock.now(), { tid: 'alive' })))).toBe('ERR_JWT_SIGNATURE');
    v.close();
  });

  it('keeps a revoked task at least until the event says its tokens expire (covers_until), beyond the retention floor', async () => {
    const { clock, k1, feed, v } = setup();
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 1, kid: 'v1', jwksJson: jwks(k1) });
    await started;
    feed.live.onEvent(create(RevocationEventSchema, { kind: RevocationEvent_Kind.TASK, cursor: 2n, taskIds: ['long-task'], coversUntil: BigInt(clock.now() + 3 * 3_600_000) }));
    clock.advance(2 * 3_600_000); // past the 1 h floor, still inside covers_until
    feed.send(RevocationEvent_Kind.HEARTBEAT, { cursor: 2 });
    v.prune();
    expect(v.stats().revokedTasks).toBe(1);
    clock.advance(3_600_000 + 120_000); // past covers_until + skew
    feed.send(RevocationEvent_Kind.HEARTBEAT, { cursor: 2 });
    v.prune();
    expect(v.stats().revokedTasks).toBe(0);
    v.close();
  });

  it('a silent open subscription (half-open connection) is dropped and resubscribed from the last cursor', async () => {
    const { clock, k1, feed, v } = setup();
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 8, kid: 'v1', jwksJson: jwks(k1) });
    await started;
    clock.advance(2600); // default watchdog: max(1 s, maxSilenceMs / 2) = 2.5 s
    for (let i = 0; i < 200 && feed.subs.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
    expect(feed.subs.length).toBe(2);
    expect(feed.subs[0]!.cancelled).toBe(true);
    expect(feed.subs[1]!.cursor).toBe(8);
    // No reconnect storm: the new subscription gets its own grace period.
    await new Promise((r) => setTimeout(r, 600));
    expect(feed.subs.length).toBe(2);
    v.close();
  });

  it('key sets replace keys and are acked; a revoked kid is dropped and never comes back', async () => {
    const k2 = keypair('k2');
    let doc = '';
    const s = setup({ jwksDoc: () => doc });
    doc = jwks(s.k1);
    const { clock, k1, feed, v } = s;
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 1, kid: 'v1', jwksJson: jwks(k1) });
    await started;
    const t2 = mint(k2, clock.now());
    expect(await codeOf(() => v.verifySync(t2))).toBe('ERR_KEY_UNKNOWN');
    feed.send(RevocationEvent_Kind.KEYSET, { cursor: 2, kid: 'v2', jwksJson: jwks(k1, k2), reason: 'key set changed' });
    expect(feed.acks).toEqual(['v1', 'v2']);
    expect(v.verifySync(t2).jti).toBeTruthy();
    const t1 = mint(k1, clock.now());
    feed.send(RevocationEvent_Kind.KEY, { cursor: 3, kid: 'k1', jwksJson: jwks(k2) });
    expect(await codeOf(() => v.verifySync(t1))).toBe('ERR_TOKEN_REVOKED');
    // Even a stale JWKS that still lists k1 cannot bring it back.
    doc = jwks(k1, k2);
    clock.advance(20_000);
    feed.send(RevocationEvent_Kind.HEARTBEAT);
    expect(await codeOf(v.verify(mint(keypair('k3'), clock.now())))).toBe('ERR_KEY_UNKNOWN');
    expect(await codeOf(v.verify(t1))).toBe('ERR_TOKEN_REVOKED');
    v.close();
  });

  it('unknown kids: concurrent verifies share one JWKS fetch, and refetches are rate limited', async () => {
    const s = setup();
    const started = s.v.start();
    await new Promise((r) => setTimeout(r, 10));
    s.feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 1, kid: 'v1', jwksJson: jwks(s.k1) });
    await started;
    const base = s.fetches();
    s.clock.advance(10_001);
    s.feed.send(RevocationEvent_Kind.HEARTBEAT);
    const forged = mint(keypair('zz'), s.clock.now());
    const codes = await Promise.all(Array.from({ length: 20 }, () => codeOf(s.v.verify(forged))));
    expect(new Set(codes)).toEqual(new Set(['ERR_KEY_UNKNOWN']));
    expect(s.fetches() - base).toBe(1);
    await codeOf(s.v.verify(forged));
    expect(s.fetches() - base).toBe(1);
    s.v.close();
  });

  it('prunes revocations after the retention and replay entries after expiry', async () => {
    const { clock, k1, feed, v } = setup();
    const started = v.start();
    await new Promise((r) => setTimeout(r, 10));
    feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 1, kid: 'v1', jwksJson: jwks(k1), taskIds: ['a', 'b'], tokenIds: ['x'] });
    await started;
    await v.verify(mint(k1, clock.now()), { singleUse: true });
    expect(v.stats()).toMatchObject({ revokedTasks: 2, revokedTokens: 1, replayEntries: 1 });
    clock.advance(400_000); // past the token's exp + skew
    v.prune();
    expect(v.stats()).toMatchObject({ revokedTasks: 2, replayEntries: 0 });
    clock.advance(3_600_000);
    v.prune();
    expect(v.stats()).toMatchObject({ revokedTasks: 0, revokedTokens: 0 });
    v.close();
  });
});

/** A started verifier with a snapshot applied: ready to verify k1's tokens. */
async function synced(opts: Parameters<typeof setup>[0] = {}) {
  const s = setup(opts);
  const started = s.v.start();
  await new Promise((r) => setTimeout(r, 10));
  s.feed.send(RevocationEvent_Kind.SNAPSHOT, { cursor: 1, kid: 'v1', jwksJson: jwks(s.k1) });
  await started;
  return s;
}

describe('MayflyVerifier secure defaults', () => {
  const base = { issuer: ISS, audience: 'api', jwks: { url: 'https://broker.test/jwks' } };

  it('requires the revocation feed unless acceptRevokedTokensUntilExpiry is set', () => {
    expect(() => new MayflyVerifier(base)).toThrow(expect.objectContaining({ code: 'ERR_CONFIG_INVALID', details: { field: 'feed' } }));
    new MayflyVerifier({ ...base, acceptRevokedTokensUntilExpiry: true }).close();
  });

  it('refuses a JWKS URL that is not https, and out-of-range numbers', () => {
    const feed = { client: new FakeFeed(), subscriberId: 'rp' };
    expect(() => new MayflyVerifier({ ...base, feed, jwks: { url: 'http://broker.test/jwks' } })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG_INVALID', details: { field: 'jwks.url' } }));
    expect(() => new MayflyVerifier({ ...base, feed, clockSkewSeconds: 3600 })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG_INVALID', details: { field: 'clockSkewSeconds' } }));
    expect(() => new MayflyVerifier({ ...base, feed, verifiedTokenCacheSize: -1 })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG_INVALID' }));
  });

  it('refuses a certificate-bound token without a certificate unless allowUnboundUseOfBoundTokens', async () => {
    const cert = Buffer.from('not really DER, only hashed');
    const strict = await synced();
    const bound = mint(strict.k1, strict.clock.now(), { cnf: certificateThumbprint(cert) });
    await expect(strict.v.verify(bound)).rejects.toMatchObject({ code: 'ERR_JWT_INVALID', details: { reason: 'cnf_certificate_missing' } });
    expect(strict.v.verifySync(bound, { clientCertDer: cert }).cnf).toBeTruthy();
    expect(await codeOf(() => strict.v.verifySync(bound, { clientCertDer: Buffer.from('another') }))).toBe('ERR_JWT_INVALID');
    expect(strict.feed.misuse).toEqual([`cnf_mismatch:${JSON.parse(Buffer.from(bound.split('.')[1]!, 'base64url').toString()).jti}`]);
    strict.v.close();
    const lax = await synced({ options: { allowUnboundUseOfBoundTokens: true } });
    const bound2 = mint(lax.k1, lax.clock.now(), { cnf: certificateThumbprint(cert) });
    expect(lax.v.verifySync(bound2).cnf?.['x5t#S256']).toBe(certificateThumbprint(cert));
    expect(await codeOf(() => lax.v.verifySync(bound2, { clientCertDer: Buffer.from('another') }))).toBe('ERR_JWT_INVALID');
    lax.v.close();
  });
});

describe('MayflyVerifier verified-token cache: every per-call check still runs', () => {
  it('a repeated token is answered from the cache', async () => {
    const { clock, k1, v } = await synced();
    const t = mint(k1, clock.now(), { parent: 'p0' });
    const first = v.verifySync(t);
    // One object answers every use, so it is frozen: a caller cannot change what the next caller sees.
    expect(Object.isFrozen(first) && Object.isFrozen(first.mayfly)).toBe(true);
    expect(() => Object.assign(first, { tid: 'other' })).toThrow(TypeError);
    for (let i = 0; i < 5; i++) expect(v.verifySync(t).tid).toBe('t1');
    expect(v.stats()).toMatchObject({ cachedTokens: 1, cacheHits: 5, accepted: 6 });
    v.close();
  });

  it('expiry and not-before against the injected clock', async () => {
    const { clock, k1, feed, v } = await synced();
    const t = mint(k1, clock.now());
    v.verifySync(t);
    clock.advance(300_000 + 60_000); // exp + skew
    feed.send(RevocationEvent_Kind.HEARTBEAT, { cursor: 1 });
    expect(await codeOf(() => v.verifySync(t))).toBe('ERR_JWT_EXPIRED');
    expect(v.stats().cachedTokens).toBe(0);
    const future = mint(k1, clock.now() + 120_000);
    expect(await codeOf(() => v.verifySync(future))).toBe('ERR_JWT_INVALID');
    v.close();
  });

  it('revocation of the token, its task, its parent task and its key', async () => {
    const { clock, k1, feed, v } = await synced();
    const byJti = mint(k1, clock.now(), { jti: 'jx' });
    const byTask = mint(k1, clock.now(), { tid: 'tx' });
    const byParent = mint(k1, clock.now(), { tid: 'child', parent: 'px' });
    for (const t of [byJti, byTask, byParent]) v.verifySync(t);
    feed.send(RevocationEvent_Kind.TOKEN, { cursor: 2, tokenIds: ['jx'] });
    feed.send(RevocationEvent_Kind.TASK, { cursor: 3, taskIds: ['tx', 'px'] });
    for (const t of [byJti, byTask, byParent]) expect(await codeOf(() => v.verifySync(t))).toBe('ERR_TOKEN_REVOKED');
    const other = mint(k1, clock.now());
    v.verifySync(other);
    feed.send(RevocationEvent_Kind.KEY, { cursor: 4, kid: 'k1' });
    expect(await codeOf(() => v.verifySync(other))).toBe('ERR_TOKEN_REVOKED');
    v.close();
  });

  it('a key that leaves the key set (not revoked) is no longer trusted for cached tokens', async () => {
    const { clock, k1, feed, v } = await synced({ jwksDoc: () => jwks(keypair('k9')) });
    const t = mint(k1, clock.now());
    v.verifySync(t);
    feed.send(RevocationEvent_Kind.KEYSET, { cursor: 2, kid: 'v2', jwksJson: jwks(keypair('k2')), reason: 'key set changed' });
    expect(await codeOf(() => v.verifySync(t))).toBe('ERR_KEY_UNKNOWN');
    v.close();
  });

  it('audience, scopes, certificate binding and single use per call', async () => {
    const cert = Buffer.from('bound cert');
    const { clock, k1, v } = await synced();
    const t = mint(k1, clock.now(), { cnf: certificateThumbprint(cert) });
    v.verifySync(t, { clientCertDer: cert });
    expect(v.verifySync(t, { clientCertDer: Buffer.from(cert) }).tid).toBe('t1'); // an equal copy, as a new socket gives
    expect(await codeOf(() => v.verifySync(t, { clientCertDer: Buffer.from('other') }))).toBe('ERR_JWT_INVALID');
    expect(await codeOf(() => v.verifySync(t))).toBe('ERR_JWT_INVALID');
    expect(await codeOf(() => v.verifySync(t, { clientCertDer: cert, requiredScopes: ['write'] }))).toBe('ERR_SCOPE_DENIED');
    const once = mint(k1, clock.now(), { singleUse: true });
    v.verifySync(once);
    expect(await codeOf(() => v.verifySync(once))).toBe('ERR_TOKEN_REPLAYED');
    expect(v.stats().cacheHits).toBeGreaterThanOrEqual(4);
    v.close();
  });

  it('a token differing from a cached one by one character is verified afresh, and the cached one still answers', async () => {
    const { clock, k1, v } = await synced();
    const t = mint(k1, clock.now());
    v.verifySync(t);
    const [h, p, sig] = t.split('.') as [string, string, string];
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
    const variants = [
      `${flip(h, 5)}.${p}.${sig}`, // header
      `${h}.${flip(p, 20)}.${sig}`, // payload, same signature segment (the cache key)
      `${h}.${p}.${flip(sig, 10)}`, // signature
      `${h}.${p}.${sig}.`, // an extra part
    ];
    for (const bad of variants) expect(await codeOf(() => v.verifySync(bad))).toMatch(/^ERR_JWT_(SIGNATURE|INVALID)$/);
    // Another payload under the cached token's signature is another token: refused, whatever its claims say.
    const other = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...other, scope: 'read admin' })).toString('base64url')}.${sig}`;
    expect(await codeOf(() => v.verifySync(forged, { requiredScopes: ['admin'] }))).toBe('ERR_JWT_SIGNATURE');
    const hits = v.stats().cacheHits;
    expect(v.verifySync(t).scope).toBe('read');
    expect(v.stats()).toMatchObject({ cachedTokens: 1, cacheHits: hits + 1 });
    v.close();
  });

  it('a caller cannot change, through the claims it got, what a later verify checks or returns', async () => {
    const cert = Buffer.from('bound cert');
    const other = Buffer.from('another cert');
    const { clock, k1, feed, v } = await synced();
    const t = mint(k1, clock.now(), { cnf: certificateThumbprint(cert), parent: 'p0' });
    const first = v.verifySync(t, { clientCertDer: cert });
    expect(Reflect.set(first, 'scope', 'read admin')).toBe(false);
    expect(Reflect.set(first.cnf!, 'x5t#S256', certificateThumbprint(other))).toBe(false);
    expect(Reflect.set(first.mayfly!, 'parent_tid', 'elsewhere')).toBe(false);
    expect(Reflect.deleteProperty(first, 'cnf')).toBe(false);
    expect(Reflect.set(first, 'exp', first.exp + 3600)).toBe(false);
    expect(await codeOf(() => v.verifySync(t, { clientCertDer: other }))).toBe('ERR_JWT_INVALID');
    expect(await codeOf(() => v.verifySync(t, { clientCertDer: cert, requiredScopes: ['admin'] }))).toBe('ERR_SCOPE_DENIED');
    const again = await v.verify(t, { clientCertDer: cert });
    // Re-parsed once from the verified payload text (the cache keeps the text, not the first caller's object).
    expect(again).toEqual(first);
    expect(Object.isFrozen(again) && Object.isFrozen(again.cnf) && Object.isFrozen(again.mayfly)).toBe(true);
    expect(v.verifySync(t, { clientCertDer: cert })).toBe(again);
    expect({ scope: again.scope, cnf: again.cnf, parent: again.mayfly?.parent_tid }).toEqual({ scope: 'read', cnf: { 'x5t#S256': certificateThumbprint(cert) }, parent: 'p0' });
    clock.advance(300_000 + 60_000); // the exp the claims carry, not one a caller tried to write
    feed.send(RevocationEvent_Kind.HEARTBEAT, { cursor: 1 });
    expect(await codeOf(() => v.verifySync(t, { clientCertDer: cert }))).toBe('ERR_JWT_EXPIRED');
    v.close();
  });

  it('a full cache evicts its oldest entries and keeps answering for the newest', async () => {
    const { clock, k1, v } = await synced({ options: { verifiedTokenCacheSize: 16 } });
    const tokens = Array.from({ length: 40 }, () => mint(k1, clock.now()));
    for (const t of tokens) v.verifySync(t);
    expect(v.stats().cachedTokens).toBeLessThanOrEqual(16);
    expect(v.stats().cachedTokens).toBeGreaterThanOrEqual(14); // evicted an eighth at a time
    const hits = v.stats().cacheHits;
    v.verifySync(tokens[39]!);
    expect(v.stats().cacheHits).toBe(hits + 1);
    v.verifySync(tokens[0]!); // long evicted: verified afresh, and remembered again
    expect(v.stats().cacheHits).toBe(hits + 1);
    expect(v.stats().cachedTokens).toBeLessThanOrEqual(16);
    v.close();
  });

  it('is bounded, and can be turned off', async () => {
    const { clock, k1, v } = await synced({ options: { verifiedTokenCacheSize: 3 } });
    for (let i = 0; i < 10; i++) v.verifySync(mint(k1, clock.now()));
    expect(v.stats().cachedTokens).toBe(3);
    v.close();
    const off = await synced({ options: { verifiedTokenCacheSize: 0 } });
    const t = mint(off.k1, off.clock.now());
    off.v.verifySync(t);
    off.v.verifySync(t);
    expect(off.v.stats()).toMatchObject({ cachedTokens: 0, cacheHits: 0 });
    off.v.close();
  });
});

