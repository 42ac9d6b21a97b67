/**
 * Revocation propagation end to end: a real broker, real TLS, ten verifiers
 * each on its own feed subscription.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codeOf, startDevBroker, waitFor, type DevBroker } from './harness.js';
import type { MayflyVerifier } from '../../src/verifier/index.js';

let env: DevBroker;
/** Verify options of a relying party that sees the workload's client certificate (every token here is bound to it). */
let withCert: { clientCertDer: Buffer };
beforeAll(async () => {
  env = await startDevBroker();
  withCert = { clientCertDer: env.leafDer('workload') };
});
afterAll(async () => {
  await env?.stop();
});

async function issue(scopes = ['read']) {
  const wl = env.client('workload');
  const task = await wl.beginTask({ purpose: 'revocation test', ttlSeconds: 600 });
  const tok = await wl.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes, ttlSeconds: 300 });
  return { wl, taskId: task.taskId, token: tok.token, jti: tok.tokenId };
}

describe('revocation feed propagation', () => {
  let verifiers: MayflyVerifier[];

  beforeAll(async () => {
    verifiers = Array.from({ length: 10 }, (_, i) => env.verifier(`rp-${i}`));
    await Promise.all(verifiers.map((v) => v.start()));
  });

  it('fails closed until the feed is synchronized', async () => {
    const v = env.verifier('rp-unsynced');
    const { token } = await issue();
    expect(await codeOf(v.verify(token, withCert))).toBe('ERR_UNAVAILABLE');
    await expect(v.verify(token, withCert)).rejects.toThrow('revocation feed not yet synchronized');
    await v.start();
    expect((await v.verify(token, { ...withCert, requiredScopes: ['read'] })).scope).toBe('read');
    v.close();
  });

  it('all ten verifiers accept, then reject within 1 s of CompleteTask', async () => {
    const { wl, taskId, token } = await issue();
    for (const v of verifiers) expect((await v.verify(token, { ...withCert, requiredScopes: ['read'] })).tid).toBe(taskId);
    const t0 = performance.now();
    await wl.completeTask(taskId);
    const completedAt = performance.now() - t0;
    const elapsed = await Promise.all(
      verifiers.map((v) =>
        waitFor(() => {
          try {
            v.verifySync(token, withCert);
            return false;
          } catch (e) {
            return (e as { code?: string }).code === 'ERR_TOKEN_REVOKED';
          }
        }, 1000, 1),
      ),
    );
    const worst = Math.max(...elapsed) + completedAt;
    console.log(`revocation propagation to 10 verifiers: CompleteTask RPC ${completedAt.toFixed(1)} ms, worst verifier ${worst.toFixed(1)} ms after the call started`);
    expect(worst).toBeLessThan(1000);
    for (const v of verifiers) expect(await codeOf(v.verify(token, withCert))).toBe('ERR_TOKEN_REVOKED');
  });

  it('a verifier that was away catches up on resubscribe and rejects before accepting anything', async () => {
    const v = verifiers[0]!;
    const { wl, taskId, token } = await issue();
    await v.verify(token, withCert);
    const before = v.stats().cursor;
    v.suspendFeed();
    expect(v.stats().connected).toBe(false);
    await wl.completeTask(taskId);
    // Still within the silence limit while away: the old state is what it knows (the documented trade-off).
    expect(await codeOf(v.verify(token, withCert))).toBe('OK');
    // Others heard it.
    await waitFor(async () => (await codeOf(verifiers[1]!.verify(token, withCert))) === 'ERR_TOKEN_REVOKED', 1000);
    v.resumeFeed();
    // The very first verification after reconnecting already sees the replayed revocation.
    expect(await codeOf(v.verify(token, withCert))).toBe('ERR_TOKEN_REVOKED');
    expect(v.stats().cursor).toBeGreaterThan(before);
    expect(v.stats().catchingUp).toBe(false);
  });

  it('revoking a single token (RevokeToken) reaches the verifiers', async () => {
    const { wl, jti, token } = await issue();
    await verifiers[2]!.verify(token, withCert);
    await wl.revokeToken({ tokenId: jti });
    await waitFor(async () => (await codeOf(verifiers[2]!.verify(token, withCert))) === 'ERR_TOKEN_REVOKED', 1000);
  });

  it('a revoked signing key is dropped at once and its tokens rejected', async () => {
    const { token } = await issue();
    const kid = JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()).kid as string;
    const v = verifiers[3]!;
    await v.verify(token, withCert);
    const admin = env.dir; // admin revokes over the HTTP admin API with the admin SVID
    const { request } = await import('node:https');
    const { readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        new URL(`/admin/keys/${encodeURIComponent(kid)}/revoke`, env.jwksUrl),
        { method: 'POST', ca: env.ca, cert: readFileSync(join(admin, 'admin.pem')), key: readFileSync(join(admin, 'admin.key')), headers: { 'content-type': 'application/json' } },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end('{}');
    });
    expect(status).toBe(200);
    await waitFor(async () => (await codeOf(v.verify(token, withCert))) === 'ERR_TOKEN_REVOKED', 1000);
    expect(v.stats().revokedKeys).toBeGreaterThanOrEqual(1);
    // Tokens from the new active key verify.
    const fresh = await issue();
    expect(await codeOf(v.verify(fresh.token, withCert))).toBe('OK');
  });
});
