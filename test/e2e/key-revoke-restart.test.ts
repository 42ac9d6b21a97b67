/**
 * One broker (SQLite store, file key store): `keys revoke` got as far as the
 * key's state and the broker stopped before the key's tokens were revoked.
 * The restarted broker finishes the revocation by itself, once: tokens
 * revoked, one kind-key event on the feed, a verifier rejecting the tokens as
 * signed by a revoked key.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { BrokerClient } from '../../src/client/broker-client.js';
import { MayflyVerifier } from '../../src/verifier/index.js';
import { startTestBroker, type TestBroker } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let second: TestBroker | undefined;
let verifier: MayflyVerifier | undefined;
let feedClient: BrokerClient | undefined;

afterAll(async () => {
  verifier?.close();
  feedClient?.close();
  await second?.stop();
});

it('a keys revoke interrupted between the key and its tokens is finished by the restarted broker', async () => {
  // The first run never runs its lifecycle on its own (10 min), so only the restart can finish the revocation.
  const first = await startTestBroker({ configPatch: { keys: { check_interval_ms: 600_000 } } });
  const dir = first.dir;
  const c = first.client();
  const t = await c.beginTask({ purpose: 'tokens of the key that leaks', ttlSeconds: 1800 });
  const tokens = [await c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] }), await c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['write'] })];
  const kid = first.broker.keys.active().info.kid;

  // What `keys revoke` commits first (the key set), then the broker goes away before the tokens.
  await first.broker.keys.revoke(kid);
  expect(first.broker.keys.stateOf(kid)).toBe('revoked');
  expect((await first.broker.store.getToken(tokens[0]!.tokenId))!.revokedAt).toBeNull();
  await first.stop({ keepDir: true });

  const configPath = join(dir, 'mayfly.yaml');
  const doc = parseYaml(readFileSync(configPath, 'utf8')) as { keys: Record<string, unknown> };
  doc.keys['check_interval_ms'] = 100;
  writeFileSync(configPath, stringifyYaml(doc));
  second = await startTestBroker({ dir });
  const store = second.broker.store;
  const keyEvents = async () => (await store.eventsSince(0, 1000)).filter((e) => e.kind === 'key' && e.kid === kid);

  const t0 = Date.now();
  while ((await keyEvents()).length === 0 && Date.now() - t0 < 10_000) await sleep(50);
  const [ev] = await keyEvents();
  expect(ev).toBeDefined();
  expect([...ev!.jtis].sort()).toEqual(tokens.map((k) => k.tokenId).sort());
  for (const k of tokens) expect((await store.getToken(k.tokenId))!.revokedAt).toBe(ev!.at);
  const audited = () => second!.audit().filter((r) => r['event'] === 'key.revoke');
  while (audited().length === 0 && Date.now() - t0 < 10_000) await sleep(50);
  expect(audited()).toEqual([expect.objectContaining({ outcome: 'success', kid, revoked_tokens: 2, action: 'revocation finished by the key lifecycle' })]);

  // A relying party subscribed to the restarted broker learns it from the feed.
  feedClient = new BrokerClient({ address: second.grpcAddr, ca: second.ca, cert: readFileSync(join(dir, 'relying-party.pem')), key: readFileSync(join(dir, 'relying-party.key')) });
  verifier = new MayflyVerifier({
    issuer: second.issuer,
    audience: 'demo-api',
    jwks: { url: `${second.httpUrl}/.well-known/jwks.json`, ca: second.ca, minRefreshIntervalMs: 500 },
    feed: { client: feedClient, subscriberId: 'rp-restart', maxSilenceMs: 3000 },
  });
  await verifier.start();
  const bound = { clientCertDer: new X509Certificate(readFileSync(join(dir, 'workload.pem'))).raw };
  for (const k of tokens) await expect(verifier.verify(k.token, bound)).rejects.toMatchObject({ code: 'ERR_TOKEN_REVOKED' });
  expect(verifier.stats().revokedKeys).toBe(1);

  // Many more lifecycle runs: nothing announced again.
  await sleep(1000);
  expect(await keyEvents()).toHaveLength(1);
}, 60_000);
