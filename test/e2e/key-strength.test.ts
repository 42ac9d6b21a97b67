/**
 * One key-strength policy at the door: an X.509-SVID with an RSA-1024 key,
 * made by the openssl CLI and signed by the broker's own trust-domain CA (so
 * everything else about it is valid), is refused with ERR_KEY_WEAK over gRPC
 * and over HTTPS; the same certificate with an RSA-2048 key is accepted.
 */
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpensslPki } from '../helpers/openssl.js';
import { codeOf, startTestBroker, type TestBroker } from './helpers.js';
import { DEV_WORKLOAD_ID } from '../../src/cli/dev-init.js';

let tb: TestBroker;
let ossl: OpensslPki;

beforeAll(async () => {
  tb = await startTestBroker();
  ossl = new OpensslPki();
  const ca = ossl.caFromFiles('dev-ca', join(tb.dir, 'ca.pem'), join(tb.dir, 'ca.key'));
  for (const [name, key] of [['weak', 'rsa-1024'], ['strong', 'rsa-2048']] as const) {
    const f = ossl.leafFiles(ca, name, { san: `URI:${DEV_WORKLOAD_ID}`, key });
    copyFileSync(f.certPath, join(tb.dir, `${name}.pem`));
    copyFileSync(f.keyPath, join(tb.dir, `${name}.key`));
  }
});

afterAll(async () => {
  await tb?.stop();
  ossl?.cleanup();
});

const creds = (name: string) => ({ cert: readFileSync(join(tb.dir, `${name}.pem`)), key: readFileSync(join(tb.dir, `${name}.key`)) });

describe('RSA-1024 X.509-SVID', () => {
  it('gRPC: refused with ERR_KEY_WEAK and audited', async () => {
    const mark = tb.auditMark();
    expect(await codeOf(tb.client(creds('weak')).beginTask({ purpose: 'weak key' }))).toBe('ERR_KEY_WEAK');
    expect(tb.auditSince(mark).some((r) => r['event'] === 'auth.failure' && r['code'] === 'ERR_KEY_WEAK')).toBe(true);
  });

  it('HTTPS: refused with 401 and error ERR_KEY_WEAK', async () => {
    const r = await tb.http('/v1/tasks/complete', { json: { task_id: 'x' }, cert: 'weak' });
    expect(r.status).toBe(401);
    expect(r.json).toMatchObject({ error: 'ERR_KEY_WEAK', message: /RSA key of 1024 bits/ });
  });

  it('the same certificate with an RSA-2048 key is accepted on both', async () => {
    const task = await tb.client(creds('strong')).beginTask({ purpose: 'strong key' });
    expect(task.taskId).toBeTruthy();
    const r = await tb.http('/v1/tasks/complete', { json: { task_id: task.taskId }, cert: 'strong' });
    expect(r.status).toBe(200);
  });
});
