/**
 * Rotation under load: continuous issuance and verification through the
 * verifier SDK, by feed-subscribed verifiers and by verifiers that only poll
 * the JWKS over HTTP, while the signing key rotates every few seconds for a
 * minute. Not one verification may fail. Then an emergency key revocation
 * under load: every feed subscriber rejects the revoked key's tokens within
 * the propagation bound.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MayflyError } from '../../src/core/errors.js';
import type { MayflyVerifier } from '../../src/verifier/index.js';
import { startDevBroker, type DevBroker } from '../verifier/harness.js';

/** Seconds of rotation under load; the issue asks for a minute. */
const SECONDS = Number(process.env['MAYFLY_ROTATION_TEST_SECONDS'] ?? 60);

function post(url: string, ca: Buffer, cert: Buffer, key: Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', ca, cert, key }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('signing-key rotation under load', () => {
  let b: DevBroker;
  let feedVerifiers: MayflyVerifier[];
  let pollers: MayflyVerifier[];
  /** Every token here is bound to the workload's certificate, which these relying parties see. */
  const withCert = () => ({ clientCertDer: b.leafDer('workload') });

  beforeAll(async () => {
    b = await startDevBroker((doc) => {
      doc['keys'] = { ...doc['keys'], rotation_period_seconds: 3, pre_publish_seconds: 1, jwks_max_age_seconds: 1, max_promotion_wait_seconds: 2, check_interval_ms: 100 };
      doc['tokens'] = { default_ttl_seconds: 8, max_ttl_seconds: 60 };
      doc['clock_skew_seconds'] = 1;
    });
    feedVerifiers = [0, 1, 2].map((i) => b.verifier(`rp-feed-${i}`));
    // Pollers: no feed; they learn keys only from the JWKS over HTTP (refetch on an unknown kid, rate-limited).
    pollers = [0, 1].map((i) => b.verifier(`rp-poll-${i}`, { feed: undefined, acceptRevokedTokensUntilExpiry: true, jwks: { url: b.jwksUrl, ca: b.ca, minRefreshIntervalMs: 500 } }));
    await Promise.all([...feedVerifiers, ...pollers].map((v) => v.start()));
  });

  afterAll(async () => {
    await b?.stop();
  });

  it(`verifies every token while rotating every 3 s for ${SECONDS} s`, async () => {
    const client = b.client('workload');
    const task = await client.beginTask({ purpose: 'rotation under load', ttlSeconds: SECONDS + 120 });
    const kids = new Set<string>();
    const failures: string[] = [];
    const recent: string[] = [];
    let issued = 0;
    let verifications = 0;
    const firstKid = b.broker.keys.active().info.kid;
    const end = Date.now() + SECONDS * 1000;
    while (Date.now() < end) {
      const t = await client.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
      issued++;
      kids.add(JSON.parse(Buffer.from(t.token.split('.')[0]!, 'base64url').toString()).kid as string);
      recent.push(t.token);
      if (recent.length > 50) recent.shift();
      // The new token, and an older one (possibly signed by a now-retiring key), at every verifier.
      const older = recent[Math.floor(Math.random() * recent.length)]!;
      for (const v of [...feedVerifiers, ...pollers]) {
        for (const tok of [t.token, older]) {
          verifications++;
          try {
            await v.verify(tok, { ...withCert(), requiredScopes: ['read'] });
          } catch (e) {
            const err = e as MayflyError;
            // An older token may legitimately have expired; anything else is a failure.
            if (err.code !== 'ERR_JWT_EXPIRED') failures.push(`${err.code}: ${err.message}`);
          }
        }
      }
      await new Promise((r) => setTimeout(r, 15));
    }
    const rotations = b.broker.keys.list().filter((k) => k.state !== 'next').length - 1;
    console.log(`rotation under load: ${issued} tokens, ${verifications} verifications, ${kids.size} signing keys used, ${rotations} rotations, ${failures.length} verification failures`);
    expect(failures.slice(0, 5)).toEqual([]);
    expect(kids.size).toBeGreaterThanOrEqual(Math.floor(SECONDS / 6));
    expect(b.broker.keys.active().info.kid).not.toBe(firstKid);
  }, (SECONDS + 60) * 1000);

  it('emergency revoke under load: feed subscribers reject the key’s tokens within the propagation bound', async () => {
    const client = b.client('workload');
    const task = await client.beginTask({ purpose: 'emergency', ttlSeconds: 300 });
    const kidOf = (t: string) => JSON.parse(Buffer.from(t.split('.')[0]!, 'base64url').toString()).kid as string;
    const issued: string[] = [];
    for (let i = 0; i < 20; i++) issued.push((await client.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] })).token);
    // Keys rotate every 3 s here: revoke the key that signed the latest tokens, and watch the tokens it signed.
    const kid = kidOf(issued[issued.length - 1]!);
    const tokens = issued.filter((t) => kidOf(t) === kid);
    for (const v of feedVerifiers) for (const t of tokens) await v.verify(t, withCert());
    const admin = (name: string) => readFileSync(join(b.dir, name));
    const started = performance.now();
    const res = await post(`https://127.0.0.1:${b.broker.http.address.port}/admin/keys/${kid}/revoke`, b.ca, admin('admin.pem'), admin('admin.key'));
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as { revoked_tokens: number; active_kid: string };
    expect(body.active_kid).not.toBe(kid);
    expect(body.revoked_tokens).toBeGreaterThanOrEqual(tokens.length);
    // Every feed subscriber rejects every token of the revoked key.
    const pending = new Set(feedVerifiers);
    while (pending.size > 0 && performance.now() - started < 2000) {
      for (const v of [...pending]) {
        const rejected = await Promise.all(tokens.map((t) => v.verify(t, withCert()).then(() => false, () => true)));
        if (rejected.every(Boolean)) pending.delete(v);
      }
      if (pending.size > 0) await new Promise((r) => setTimeout(r, 2));
    }
    const elapsed = performance.now() - started;
    console.log(`emergency key revoke: all ${feedVerifiers.length} feed subscribers rejected ${tokens.length} tokens ${elapsed.toFixed(1)} ms after the admin call was sent`);
    expect(pending.size).toBe(0);
    // Issuance continues with the replacement key, and its tokens verify everywhere.
    const fresh = await client.issueToken({ taskId: task.taskId, audience: 'demo-api', scopes: ['read'] });
    for (const v of feedVerifiers) await expect(v.verify(fresh.token, withCert())).resolves.toBeTruthy();
    const audit = b.auditLines();
    expect(audit.some((r) => r['event'] === 'key.revoke' && r['kid'] === kid)).toBe(true);
  });
});
