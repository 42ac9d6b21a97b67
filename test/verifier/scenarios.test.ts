/**
 * Relying-party scenarios against a real broker: delegation cascade, lease
 * expiry after a crash, single use, certificate binding, claim checks, feed
 * silence and the Introspect fallback.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { generateKeyPairSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codeOf, startDevBroker, waitFor, type DevBroker } from './harness.js';
import { actorsOf, type MayflyVerifier } from '../../src/verifier/index.js';
import { beginTask } from '../../src/client/index.js';
import { signCompact } from '../../src/tokens/jws.js';

let env: DevBroker;
let v: MayflyVerifier;
/** Verify options of a relying party that sees the workload's client certificate (every token here is bound to it). */
let withCert: { clientCertDer: Buffer };
beforeAll(async () => {
  env = await startDevBroker();
  withCert = { clientCertDer: env.leafDer('workload') };
  v = env.verifier('rp-scenarios');
  await v.start();
});
afterAll(async () => {
  await env?.stop();
});

async function issue(extra: { singleUse?: boolean; scopes?: string[] } = {}) {
  const wl = env.client('workload');
  const task = await wl.beginTask({ purpose: 'scenario', ttlSeconds: 600 });
  const tok = await wl.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: extra.scopes ?? ['read'], ttlSeconds: 300, singleUse: extra.singleUse ?? false });
  return { wl, taskId: task.taskId, token: tok.token, jti: tok.tokenId };
}

const misuse = (kind: string, jti: string) => env.auditLines().some((r) => r['event'] === 'token.misuse' && r['misuse'] === kind && r['jti'] === jti);

describe('delegation', () => {
  it('three levels: scopes narrow, act and parent_tid are set, completing the root revokes the grandchild', async () => {
    const wl = env.client('workload');
    const root = await beginTask({ client: wl, purpose: 'root', scopes: ['read', 'write'], ttlSeconds: 600 });
    const child = await root.child({ purpose: 'child', scopes: ['read'], actor: 'agent-a' });
    // A grandchild cannot widen past its parent.
    expect(await codeOf(child.child({ purpose: 'too wide', scopes: ['read', 'write'], actor: 'tool-b' }))).toBe('ERR_DELEGATION_DENIED');
    const grandchild = await child.child({ purpose: 'grandchild', scopes: ['read'], actor: 'tool-b' });
    expect(grandchild.depth).toBe(2);
    expect(grandchild.parentTaskId).toBe(child.id);
    expect(await codeOf(grandchild.token('demo-api', { scopes: ['write'] }))).toBe('ERR_SCOPE_DENIED');

    const token = await grandchild.token('demo-api', { scopes: ['read'] });
    const claims = await v.verify(token, { ...withCert, requiredScopes: ['read'] });
    expect(claims.tid).toBe(grandchild.id);
    expect(claims.mayfly?.parent_tid).toBe(child.id);
    expect(actorsOf(claims.act)).toEqual(['tool-b', 'agent-a', 'spiffe://example.org/demo/workload']);
    const rootToken = await root.token('demo-api', { scopes: ['read', 'write'] });
    expect((await v.verify(rootToken, withCert)).scope).toBe('read write');

    // Complete only the root (through the raw client, so the SDK does not complete children first).
    await wl.completeTask(root.id);
    await waitFor(async () => (await codeOf(v.verify(token, withCert))) === 'ERR_TOKEN_REVOKED', 1000);
    expect(await codeOf(v.verify(rootToken, withCert))).toBe('ERR_TOKEN_REVOKED');
    await root.complete(); // idempotent: already ended
    expect(grandchild.ended).toBe(true);
  });
});

describe('lease expiry after a crash', () => {
  it('a SIGKILLed workload\'s token is rejected within lease + sweep, and Introspect says revoked', async () => {
    const worker = fileURLToPath(new URL('./fixtures/crash-worker.mjs', import.meta.url));
    expect(existsSync(fileURLToPath(new URL('../../dist/client/index.js', import.meta.url))), 'run npm run build first').toBe(true);
    const child = spawn(process.execPath, [worker, env.dir, env.grpcAddress, '2'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let buf = '';
        child.stdout.on('data', (d: Buffer) => {
          buf += d.toString();
          const i = buf.indexOf('\n');
          if (i >= 0) resolve(buf.slice(0, i));
        });
        child.on('exit', (code) => reject(new Error(`worker exited with ${code}`)));
        setTimeout(() => reject(new Error('worker did not print a token')), 15_000).unref();
      });
      const { taskId, token } = JSON.parse(line) as { taskId: string; token: string };
      expect((await v.verify(token, withCert)).tid).toBe(taskId);
      // The heartbeat keeps the 2 s lease alive past its first expiry.
      await new Promise((r) => setTimeout(r, 2600));
      expect(await codeOf(v.verify(token, withCert))).toBe('OK');
      child.kill('SIGKILL');
      const killedAt = performance.now();
      await waitFor(async () => (await codeOf(v.verify(token, withCert))) === 'ERR_TOKEN_REVOKED', 2000 + 100 + 1500, 10);
      console.log(`lease lapse seen by the verifier ${(performance.now() - killedAt).toFixed(0)} ms after SIGKILL (lease 2000 ms, sweep 100 ms)`);
      const intro = await env.client('relying-party').introspect(token);
      expect(intro.active).toBe(false);
      expect(intro.reason).toBe('revoked');
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('single use', () => {
  it('a second presentation is ERR_TOKEN_REPLAYED and reported as misuse', async () => {
    const { token, jti } = await issue({ singleUse: true });
    const claims = await v.verify(token, withCert);
    expect(claims.mayfly?.single_use).toBe(true);
    expect(await codeOf(v.verify(token, withCert))).toBe('ERR_TOKEN_REPLAYED');
    await waitFor(() => misuse('replay', jti), 3000, 20);
  });

  it('verify({ singleUse: true }) enforces single use on any token', async () => {
    const { token } = await issue();
    await v.verify(token, { ...withCert, singleUse: true });
    expect(await codeOf(() => v.verifySync(token, { ...withCert, singleUse: true }))).toBe('ERR_TOKEN_REPLAYED');
    // Without the option the same token is still a normal bearer token.
    expect(await codeOf(v.verify(token, withCert))).toBe('OK');
  });
});

describe('certificate binding (cnf x5t#S256)', () => {
  it('accepts the bound certificate, rejects another one and reports it', async () => {
    const { token, jti } = await issue();
    const claims = await v.verify(token, { clientCertDer: env.leafDer('workload') });
    expect(claims.cnf?.['x5t#S256']).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await expect(v.verify(token, { clientCertDer: env.leafDer('relying-party') })).rejects.toMatchObject({
      code: 'ERR_JWT_INVALID',
      message: 'certificate-bound token presented with a different certificate',
    });
    await waitFor(() => misuse('cnf_mismatch', jti), 3000, 20);
  });

  it('by default a bound token presented without any certificate is refused, and saying why', async () => {
    const { token } = await issue();
    await expect(v.verify(token)).rejects.toMatchObject({ code: 'ERR_JWT_INVALID', details: { reason: 'cnf_certificate_missing' } });
    expect(await codeOf(() => v.verifySync(token))).toBe('ERR_JWT_INVALID');
    expect(await codeOf(v.verify(token, withCert))).toBe('OK');
    // Verified (and cached) with its certificate, still refused without one.
    expect(await codeOf(v.verify(token))).toBe('ERR_JWT_INVALID');
  });

  it('allowUnboundUseOfBoundTokens is an explicit, warned opt-out; a wrong certificate is refused even then', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    try {
      const lax = env.verifier('rp-lax', { allowUnboundUseOfBoundTokens: true });
      await lax.start();
      await new Promise((r) => setImmediate(r));
      expect(warnings.some((m) => /allowUnboundUseOfBoundTokens is on/.test(m))).toBe(true);
      const { token } = await issue();
      expect(await codeOf(lax.verify(token))).toBe('OK');
      expect(await codeOf(lax.verify(token, { clientCertDer: env.leafDer('relying-party') }))).toBe('ERR_JWT_INVALID');
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('claims and keys', () => {
  it('scope, audience, expiry, issuer, malformed tokens and unknown kids', async () => {
    const { token } = await issue();
    expect(await codeOf(v.verify(token, { ...withCert, requiredScopes: ['write'] }))).toBe('ERR_SCOPE_DENIED');
    const otherAud = env.verifier('rp-aud', { audience: 'other-api', feed: undefined, acceptRevokedTokensUntilExpiry: true });
    await otherAud.start();
    expect(await codeOf(otherAud.verify(token, withCert))).toBe('ERR_JWT_INVALID');
    const otherIss = env.verifier('rp-iss', { issuer: 'https://evil.example', feed: undefined, acceptRevokedTokensUntilExpiry: true });
    await otherIss.start();
    expect(await codeOf(otherIss.verify(token, withCert))).toBe('ERR_JWT_INVALID');
    let offset = 0;
    const late = env.verifier('rp-late', { feed: undefined, acceptRevokedTokensUntilExpiry: true, clock: { now: () => Date.now() + offset } });
    await late.start();
    expect(await codeOf(late.verify(token, withCert))).toBe('OK');
    offset = 3_600_000;
    expect(await codeOf(late.verify(token, withCert))).toBe('ERR_JWT_EXPIRED');
    expect(await codeOf(v.verify('not.a.token'))).toBe('ERR_JWT_INVALID');

    // A well-formed token from a key the broker never published: one rate-limited refetch, then ERR_KEY_UNKNOWN.
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const payload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
    const forged = signCompact({ alg: 'ES256', typ: 'at+jwt', kid: 'forged-kid' }, payload, privateKey);
    const fetches = v.stats().jwksFetches;
    expect(await codeOf(v.verify(forged))).toBe('ERR_KEY_UNKNOWN');
    expect(await codeOf(v.verify(forged))).toBe('ERR_KEY_UNKNOWN');
    expect(await codeOf(() => v.verifySync(forged))).toBe('ERR_KEY_UNKNOWN');
    expect(v.stats().jwksFetches - fetches).toBeLessThanOrEqual(1);
    expect(v.stats().rejected['ERR_KEY_UNKNOWN']).toBeGreaterThanOrEqual(3);
  });
});

describe('feed silence', () => {
  it('onSilence introspect: falls back to Introspect while the feed is away', async () => {
    const iv = env.verifier('rp-introspect', { feedOptions: { maxSilenceMs: 400, onSilence: 'introspect' } });
    await iv.start();
    const { wl, taskId, token } = await issue();
    iv.suspendFeed();
    await new Promise((r) => setTimeout(r, 600));
    expect(await codeOf(() => iv.verifySync(token, withCert))).toBe('ERR_UNAVAILABLE');
    expect(await codeOf(iv.verify(token, withCert))).toBe('OK');
    expect(iv.stats().introspections).toBe(1);
    await wl.completeTask(taskId);
    expect(await codeOf(iv.verify(token, withCert))).toBe('ERR_TOKEN_REVOKED');
    iv.resumeFeed();
    await waitFor(() => iv.stats().silenceMs !== null && iv.stats().silenceMs! < 400, 2000);
    expect(await codeOf(() => iv.verifySync(token, withCert))).toBe('ERR_TOKEN_REVOKED');
  });

  it('fails closed after maxSilenceMs once the broker is gone', async () => {
    const own = await startDevBroker();
    try {
      const sv = own.verifier('rp-silence', { feedOptions: { maxSilenceMs: 800 } });
      await sv.start();
      const wl = own.client('workload');
      const task = await wl.beginTask({ purpose: 'silence', ttlSeconds: 600 });
      const { token } = await wl.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
      const ownWl = { clientCertDer: own.leafDer('workload') };
      expect(await codeOf(sv.verify(token, ownWl))).toBe('OK');
      await own.broker.stop();
      const stoppedAt = performance.now();
      // Still accepted shortly after (bounded staleness), then fails closed.
      await waitFor(async () => (await codeOf(sv.verify(token, ownWl))) === 'ERR_UNAVAILABLE', 3000, 20);
      const after = performance.now() - stoppedAt;
      expect(after).toBeGreaterThan(500);
      await expect(sv.verify(token, ownWl)).rejects.toThrow(/revocation feed silent/);
      expect(sv.stats().reconnects).toBeGreaterThan(0);
    } finally {
      await own.stop();
    }
  });
});
