/**
 * X.509-SVID rules enforced on real mTLS connections: each malformed client
 * certificate is refused with its exact code (UNAUTHENTICATED on the wire)
 * and an auth.failure audit record; valid SVIDs from either trust domain,
 * including an EC P-256 one made by the openssl CLI, are accepted.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDevCa } from '../../src/cli/dev-init.js';
import type { ErrorCode } from '../../src/core/errors.js';
import { createDevCa, issueX509Svid, type DevCa, type SvidOptions } from '../../src/pki/dev-pki.js';
import { OpensslPki, opensslDate } from '../helpers/openssl.js';
import { codeOf, grpcCreds, rawUnary, startTestBroker, type TestBroker } from './helpers.js';

let tb: TestBroker;
let exampleCa: DevCa;
let otherCa: DevCa;
let leafKey: string;
let ossl: OpensslPki;

beforeAll(async () => {
  otherCa = createDevCa({ trustDomain: 'other.org' });
  tb = await startTestBroker({
    configPatch: (cfg, dir) => {
      writeFileSync(join(dir, 'other-ca.pem'), otherCa.certPem);
      (cfg['trust_domains'] as Record<string, unknown>)['other.org'] = { bundle_file: 'other-ca.pem' };
    },
    extraRules: [
      {
        name: 'e2e-extra-workloads',
        match: { spiffe: ['spiffe://other.org/x', 'spiffe://example.org/ec-workload', 'spiffe://example.org/good'] },
        audiences: ['demo-api'],
        scopes: ['read'],
        max_ttl_seconds: 300,
      },
    ],
  });
  exampleCa = loadDevCa(tb.dir);
  // Leaves never sign anything here; reusing one key saves an RSA keygen per certificate.
  leafKey = readFileSync(join(tb.dir, 'workload.key'), 'utf8');
  ossl = new OpensslPki();
});

afterAll(async () => {
  ossl?.cleanup();
  await tb?.stop();
});

function svid(ca: DevCa, opts: Omit<SvidOptions, 'keyPem'>): { cert: string; key: string } {
  const s = issueX509Svid(ca, { keyPem: leafKey, ...opts });
  return { cert: [s.certPem, ...s.chainPem.slice(1)].join(''), key: s.keyPem };
}

/** Begins a task with `cred`; returns the code of the refusal and the auth.failure record it left. */
async function refusal(cred: { cert: string; key: string } | null): Promise<{ code: ErrorCode; audit: Record<string, unknown>[] }> {
  const mark = tb.auditMark();
  const client = tb.client(cred ?? { none: true });
  const code = await codeOf(client.beginTask({ purpose: 'should not start' }));
  const audit = tb.auditSince(mark).filter((r) => r['event'] === 'auth.failure');
  return { code, audit };
}

describe('invalid X.509-SVIDs are refused on gRPC', () => {
  const HOUR = 3600_000;
  const cases: Array<{ name: string; code: ErrorCode; make: () => { cert: string; key: string } }> = [
    { name: 'a CA certificate as leaf', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/ca-leaf', isCA: true }) },
    { name: 'keyUsage without digitalSignature', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/no-ds', keyUsage: { keyEncipherment: true } }) },
    { name: 'keyUsage with keyCertSign', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/kcs', keyUsage: { digitalSignature: true, keyCertSign: true } }) },
    { name: 'no keyUsage at all', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/no-ku', keyUsage: null }) },
    { name: 'EKU without clientAuth', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/server-only', extKeyUsage: { serverAuth: true } }) },
    { name: 'two URI SANs', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/a', extraUris: ['spiffe://example.org/b'] }) },
    { name: 'no URI SAN', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/none', uris: [], dnsNames: ['workload.example.org'] }) },
    { name: 'trust-domain ID on a leaf', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org' }) },
    { name: 'uppercase trust domain', code: 'ERR_SPIFFE_ID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://Example.org/x' }) },
    { name: '".." path segment', code: 'ERR_SPIFFE_ID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/a/../b' }) },
    { name: 'query in the ID', code: 'ERR_SPIFFE_ID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/x?admin=true' }) },
    { name: 'not a spiffe URI', code: 'ERR_SPIFFE_ID_INVALID', make: () => svid(exampleCa, { spiffeId: 'https://example.org/x' }) },
    { name: 'expired', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/expired', notBefore: new Date(Date.now() - 2 * HOUR), notAfter: new Date(Date.now() - HOUR) }) },
    { name: 'not yet valid', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://example.org/future', notBefore: new Date(Date.now() + HOUR), notAfter: new Date(Date.now() + 2 * HOUR) }) },
    { name: 'other.org ID signed by the example.org CA', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://other.org/x' }) },
    { name: 'example.org ID signed by the other.org CA', code: 'ERR_SVID_INVALID', make: () => svid(otherCa, { spiffeId: 'spiffe://example.org/x' }) },
    { name: 'ID of an unconfigured trust domain', code: 'ERR_SVID_INVALID', make: () => svid(exampleCa, { spiffeId: 'spiffe://unknown.org/x' }) },
  ];

  for (const c of cases) {
    it(`${c.name} → ${c.code}`, async () => {
      const { code, audit } = await refusal(c.make());
      expect(code).toBe(c.code);
      expect(audit).toHaveLength(1);
      expect(audit[0]!['code']).toBe(c.code);
      expect(audit[0]!['outcome']).toBe('denied');
      expect(audit[0]!['method']).toBe('BeginTask');
    });
  }

  it('a self-signed certificate (no chain to any bundle) → ERR_SVID_INVALID', async () => {
    const rogue = createDevCa({ trustDomain: 'example.org', keyPem: leafKey });
    expect((await refusal(svid(rogue, { spiffeId: 'spiffe://example.org/demo/workload' }))).code).toBe('ERR_SVID_INVALID');
  });

  it('no client certificate and no bearer → ERR_UNAUTHENTICATED, audited', async () => {
    const { code, audit } = await refusal(null);
    expect(code).toBe('ERR_UNAUTHENTICATED');
    expect(audit.map((r) => r['code'])).toEqual(['ERR_UNAUTHENTICATED']);
  });

  it('the wire status of a refused SVID is UNAUTHENTICATED with the stable code in metadata', async () => {
    const bad = svid(exampleCa, { spiffeId: 'spiffe://example.org/a', extraUris: ['spiffe://example.org/b'] });
    const raw = new grpc.Client(tb.grpcAddr, grpc.credentials.createSsl(tb.ca, Buffer.from(bad.key), Buffer.from(bad.cert)), { 'grpc.ssl_target_name_override': 'localhost' });
    try {
      const r = await rawUnary(raw, '/mayfly.v1.Broker/Ping', Buffer.alloc(0));
      expect(r.error?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(r.error?.metadata.get('mayfly-error-code')[0]).toBe('ERR_SVID_INVALID');
    } finally {
      raw.close();
    }
  });
});

describe('valid SVIDs are accepted', () => {
  it('a forge-made RSA SVID of example.org', async () => {
    const c = tb.client(svid(exampleCa, { spiffeId: 'spiffe://example.org/good' }));
    const t = await c.beginTask({ purpose: 'valid rsa svid' });
    const tok = await c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    expect(tok.scopes).toEqual(['read']);
  });

  it('an other.org SVID signed by the other.org CA (second trust domain)', async () => {
    const c = tb.client(svid(otherCa, { spiffeId: 'spiffe://other.org/x' }));
    const t = await c.beginTask({ purpose: 'second trust domain' });
    const tok = await c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    const claims = JSON.parse((await c.introspect(tok.token)).claimsJson) as Record<string, unknown>;
    expect(claims['sub']).toBe('spiffe://other.org/x');
  });

  it('an EC P-256 SVID made by the openssl CLI and signed with the dev CA key', async () => {
    const devCa = {
      name: 'mayfly-dev-ca',
      certPath: join(tb.dir, 'ca.pem'),
      keyPath: join(tb.dir, 'ca.key'),
      certPem: readFileSync(join(tb.dir, 'ca.pem'), 'utf8'),
      certDer: Buffer.alloc(0),
    };
    const der = ossl.leaf(devCa, 'ec-workload', { san: 'URI:spiffe://example.org/ec-workload' });
    const certPem = `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`;
    const keyPem = readFileSync(join(ossl.dir, 'ec-workload.key'), 'utf8');
    expect(keyPem).toContain('BEGIN PRIVATE KEY');
    const c = tb.client({ cert: certPem, key: keyPem });
    const t = await c.beginTask({ purpose: 'openssl ec svid' });
    const tok = await c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] });
    const claims = JSON.parse((await c.introspect(tok.token)).claimsJson) as Record<string, unknown>;
    expect(claims['sub']).toBe('spiffe://example.org/ec-workload');

    // The same openssl path with an expired validity window is refused.
    const expired = ossl.leaf(devCa, 'ec-expired', {
      san: 'URI:spiffe://example.org/ec-workload',
      startDate: opensslDate(Date.now() - 7200_000),
      endDate: opensslDate(Date.now() - 3600_000),
    });
    const expiredPem = `-----BEGIN CERTIFICATE-----\n${expired.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`;
    expect((await refusal({ cert: expiredPem, key: readFileSync(join(ossl.dir, 'ec-expired.key'), 'utf8') })).code).toBe('ERR_SVID_INVALID');
  });
});

describe('an SVID that expires while its connection stays open', () => {
  it('is refused on the next call, on gRPC and on a kept-alive HTTPS connection', async () => {
    const s = issueX509Svid(exampleCa, { keyPem: leafKey, spiffeId: 'spiffe://example.org/good', validSeconds: 2 });
    const notAfter = new X509Certificate(s.certPem).validTo;
    const c = tb.client({ cert: s.certPem, key: s.keyPem });
    await c.ping();
    const t = await c.beginTask({ purpose: 'short-lived svid' });

    const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1, ca: tb.ca, cert: s.certPem, key: s.keyPem, servername: 'localhost' });
    const post = () =>
      new Promise<{ status: number; body: Record<string, unknown>; socket: unknown }>((resolve, reject) => {
        const req = httpsRequest(
          { host: '127.0.0.1', port: tb.broker.http.address.port, path: '/oauth2/introspect', method: 'POST', agent, headers: { 'content-type': 'application/x-www-form-urlencoded' } },
          (res) => {
            let text = '';
            res.on('data', (d: Buffer) => (text += d.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown>, socket: req.socket }));
          },
        );
        req.on('error', reject);
        req.end('token=a.b.c');
      });
    try {
      const first = await post();
      expect(first.status).toBe(200);
      expect(first.body['active']).toBe(false);
      // X.509 times have one-second resolution: wait until the verifier's clock is past notAfter.
      await new Promise((r) => setTimeout(r, Math.max(0, Date.parse(notAfter) - Date.now()) + 1100));
      expect(await codeOf(c.ping())).toBe('ERR_SVID_INVALID');
      expect(await codeOf(c.issueToken({ taskId: t.taskId, audience: 'demo-api', scopes: ['read'] }))).toBe('ERR_SVID_INVALID');
      const second = await post();
      expect(second.socket).toBe(first.socket);
      expect(second.body['mayfly_code']).toBe('ERR_SVID_INVALID');
    } finally {
      agent.destroy();
    }
  });
});

describe('the HTTP listener applies the same SVID rules', () => {
  const badHttpCert = () => {
    const bad = svid(exampleCa, { spiffeId: 'spiffe://example.org/ca-leaf', isCA: true });
    writeFileSync(join(tb.dir, 'bad-http.pem'), bad.cert);
    writeFileSync(join(tb.dir, 'bad-http.key'), bad.key);
    return 'bad-http';
  };

  it('introspection with an invalid client certificate is refused naming ERR_SVID_INVALID, audited', async () => {
    const cert = badHttpCert();
    const mark = tb.auditMark();
    const r = await tb.http('/oauth2/introspect', { form: { token: 'x.y.z' }, cert });
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.json!['mayfly_code']).toBe('ERR_SVID_INVALID');
    expect(r.json!['active']).toBeUndefined();
    const recs = tb.auditSince(mark).filter((x) => x['event'] === 'auth.failure');
    expect(recs.map((x) => [x['method'], x['code']])).toEqual([['introspect', 'ERR_SVID_INVALID']]);
  });

  // KNOWN BUG (src/transport/errors.ts OAUTH_BY_KIND.unauthenticated = 'invalid_grant'): a caller that fails
  // client authentication at /oauth2/introspect or /oauth2/revoke (tls_client_auth or bearer, as advertised in
  // discovery) gets 400 invalid_grant; RFC 7662 §2.3 / RFC 7009 §2.1 with RFC 6749 §5.2 require 401
  // invalid_client (with WWW-Authenticate). The 401 branch in toOAuthError is unreachable. Flip to it() once fixed.
  it('introspection and revocation with failed client authentication → 401 invalid_client', async () => {
    const cert = badHttpCert();
    for (const path of ['/oauth2/introspect', '/oauth2/revoke']) {
      const r = await tb.http(path, { form: { token: 'x.y.z' }, cert });
      expect(r.status, path).toBe(401);
      expect(r.json!['error'], path).toBe('invalid_client');
      expect(r.headers['www-authenticate'], path).toBeDefined();
    }
    const anon = await tb.http('/oauth2/introspect', { form: { token: 'x.y.z' } });
    expect(anon.status).toBe(401);
    expect(anon.json!['error']).toBe('invalid_client');
  });

  it('no certificate and no bearer on /v1/tasks/complete → 401 ERR_UNAUTHENTICATED', async () => {
    const r = await tb.http('/v1/tasks/complete', { json: { task_id: 'AAAAAAAAAAAAAAAAAAAAAAAA' } });
    expect(r.status).toBe(401);
    expect(r.json).toMatchObject({ error: 'ERR_UNAUTHENTICATED' });
  });

  it('the raw credential helper still connects with the demo workload', async () => {
    const raw = new grpc.Client(tb.grpcAddr, grpcCreds(tb), { 'grpc.ssl_target_name_override': 'localhost' });
    try {
      expect((await rawUnary(raw, '/mayfly.v1.Broker/Ping', Buffer.alloc(0))).error).toBeNull();
    } finally {
      raw.close();
    }
  });
});
