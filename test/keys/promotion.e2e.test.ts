/**
 * Key promotion waits for live feed subscribers to acknowledge the next key:
 * a subscriber that never acknowledges holds promotion back until the maximum
 * wait, and the delay is visible in audit, metrics and health.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { BrokerClient } from '../../src/client/broker-client.js';
import { startBroker, type RunningBroker } from '../../src/cli/broker.js';
import { devInit } from '../../src/cli/dev-init.js';
import { loadConfig } from '../../src/config/load.js';

function get(url: string, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    request(url, { ca }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(body));
    })
      .on('error', reject)
      .end();
  });
}

const until = async (cond: () => boolean, ms: number) => {
  const t0 = Date.now();
  while (!cond() && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 50));
  return cond();
};

describe('key promotion gated on subscriber acknowledgements', () => {
  let dir: string;
  let broker: RunningBroker;
  let ca: Buffer;
  const clients: BrokerClient[] = [];
  const calls: Array<{ cancel(): void }> = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mayfly-promo-'));
    const { config } = devInit(dir);
    const doc = parse(readFileSync(config, 'utf8')) as Record<string, any>;
    doc['log'] = { level: 'silent' };
    doc['keys'] = { ...doc['keys'], rotation_period_seconds: 2, pre_publish_seconds: 1, jwks_max_age_seconds: 1, max_promotion_wait_seconds: 3, check_interval_ms: 100 };
    writeFileSync(config, stringify(doc));
    broker = await startBroker(loadConfig(config), { grpcListen: '127.0.0.1:0', httpListen: '127.0.0.1:0' });
    ca = readFileSync(join(dir, 'ca.pem'));
  });

  afterAll(async () => {
    for (const call of calls) call.cancel();
    for (const c of clients) c.close();
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const subscriber = (id: string, ack: boolean) => {
    const c = new BrokerClient({ address: `127.0.0.1:${broker.grpc.address.port}`, ca, cert: readFileSync(join(dir, 'relying-party.pem')), key: readFileSync(join(dir, 'relying-party.key')) });
    clients.push(c);
    const call = c.watchRevocations(
      { cursor: 0, subscriberId: id },
      (e) => {
        // Snapshot and keyset events carry the key-set version in `kid`.
        if (ack && e.kid && (e.kind === 5 || e.kind === 3)) c.ackKeySet(id, e.kid).catch(() => undefined);
      },
      () => undefined,
    );
    calls.push(call);
  };

  it('a laggard delays promotion until the maximum wait; audit, metrics and health name it', async () => {
    subscriber('rp-good', true);
    subscriber('rp-laggard', false);
    await until(() => broker.feed.subscriberCount() === 2, 3000);
    const first = broker.keys.active().info.kid;
    const blocked = await until(() => broker.keys.promotionBlockedSince() !== null, 5000);
    expect(blocked).toBe(true);
    expect(broker.keys.active().info.kid).toBe(first);
    expect(broker.health()).toMatchObject({ status: 'degraded', checks: { key_promotion: { ok: false } } });
    const metrics = await get(`https://127.0.0.1:${broker.http.address.port}/metrics`, ca);
    expect(metrics).toMatch(/^mayfly_key_promotion_blocked 1$/m);
    const audit = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const delayed = audit.filter((r) => r['event'] === 'key.promotion_delayed');
    expect(delayed.length).toBeGreaterThan(0);
    expect(delayed.at(-1)!['laggards']).toEqual(['rp-laggard']);
    // After max_promotion_wait_seconds the key is promoted anyway.
    const promoted = await until(() => broker.keys.active().info.kid !== first, 6000);
    expect(promoted).toBe(true);
    expect(broker.keys.promotionBlockedSince()).toBeNull();
  });

  it('with every subscriber acknowledging, promotion is not held back to the maximum wait', async () => {
    // Closing a client does not end its open streams: cancel them, as a relying party shutting down would.
    for (const call of calls.splice(0)) call.cancel();
    for (const c of clients.splice(0)) c.close();
    expect(await until(() => broker.feed.subscriberCount() === 0, 3000)).toBe(true);
    subscriber('rp-a', true);
    subscriber('rp-b', true);
    await until(() => broker.feed.subscriberCount() === 2, 3000);
    // Once both hold a key set with the next key, nothing may hold promotion back.
    const next = () => broker.keys.list().find((k) => k.state === 'next')!.kid;
    expect(await until(() => broker.feed.gate(next()).ready, 3000)).toBe(true);
    const readyAt = Date.now();
    const auditLines = () => readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n');
    const mark = auditLines().length;
    const current = broker.keys.active().info.kid;
    const rotated = await until(() => broker.keys.active().info.kid !== current, 6000);
    expect(rotated).toBe(true);
    // Rotation period is 2 s and the maximum wait 3 s: promotion came from the acknowledgements, not the timeout.
    expect(Date.now() - readyAt).toBeLessThan(2000 + 3000);
    const delayedAfter = auditLines()
      .slice(mark)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r['event'] === 'key.promotion_delayed' && (r['laggards'] as string[]).some((l) => l === 'rp-a' || l === 'rp-b'));
    expect(delayedAfter).toHaveLength(0);
  });
});
