/**
 * Fuzz: mutated JWTs at every endpoint that takes one: the gRPC bearer,
 * /oauth2/token's subject_token, /oauth2/introspect, /oauth2/revoke,
 * /v1/tasks/complete and the SSE feed. The bases are a valid OIDC token and a
 * valid (unbound) task token; every mutation must be refused (never accepted),
 * never answered with a 5xx or an internal status, and always answered in our
 * error shape. Seeded (see prng.ts).
 */
import { request as httpsRequest } from 'node:https';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeSelfSignedCert } from '../helpers/https-jwks.js';
import { TestIssuer, type TestKey } from '../helpers/test-issuer.js';
import { startTestBroker, type TestBroker } from '../e2e/helpers.js';
import { FUZZ_SEED, mutateJwt, Prng, sameJws } from './prng.js';

const N = 30;
const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const AUD = 'https://deploy.acme.internal';

let issuer: TestIssuer;
let key: TestKey;
let tb: TestBroker;
let oidcToken: string;
let taskToken: string;

beforeAll(async () => {
  const cert = makeSelfSignedCert();
  issuer = await new TestIssuer(cert).start();
  key = issuer.addKey('RS256');
  tb = await startTestBroker({
    configPatch: (cfg, dir) => {
      writeFileSync(join(dir, 'issuer-ca.pem'), cert.cert);
      cfg['oidc'] = { issuers: [{ name: 'gha', issuer: issuer.issuer, audiences: ['mayfly'], jwks_uri: issuer.server.jwksUri, ca_file: 'issuer-ca.pem' }] };
    },
    extraRules: [
      {
        name: 'gha-deploy',
        match: { oidc: { issuer: issuer.issuer, claims: { repository: 'acme/api' } } },
        actions: ['begin_task', 'issue_token', 'exchange'],
        audiences: [AUD],
        scopes: ['deploy', 'read'],
        max_ttl_seconds: 600,
      },
    ],
  });
  oidcToken = issuer.mint({ kid: key.kid, nowMs: Date.now() });
  const r = await tb.http('/oauth2/token', { form: { grant_type: GRANT, subject_token: oidcToken, subject_token_type: JWT_TYPE, audience: AUD, scope: 'deploy' } });
  expect(r.status, r.text).toBe(200);
  taskToken = r.json!['access_token'] as string;
});

afterAll(async () => {
  await tb?.stop();
  await issuer?.close();
});

/** N mutations of each base; header-carried ones stay printable. */
function mutations(label: string, printable: boolean): Array<{ base: string; token: string; i: number }> {
  const rng = new Prng(FUZZ_SEED ^ [...label].reduce((h, c) => (Math.imul(h, 31) + c.charCodeAt(0)) | 0, 7));
  const out: Array<{ base: string; token: string; i: number }> = [];
  for (const base of [oidcToken, taskToken]) {
    for (let i = 0; i < N; i++) {
      let t = base;
      for (let k = 1 + rng.int(2); k > 0; k--) t = mutateJwt(rng, t, printable);
      if (!sameJws(base, t, printable)) out.push({ base, token: t, i });
    }
  }
  return out;
}

function where(label: string, m: { token: string; i: number }, got: string): string {
  return `${label} mutation ${m.i} (seed ${FUZZ_SEED}) token ${JSON.stringify(m.token.length > 2000 ? m.token.slice(0, 2000) : m.token)}: ${got}`;
}

/** Our HTTP error shape: OAuth routes answer {error, error_description}; the others {error, message}. */
function ourErrorShape(json: Record<string, unknown> | undefined): boolean {
  return json !== undefined && typeof json['error'] === 'string' && (typeof json['error_description'] === 'string' || typeof json['message'] === 'string');
}

describe(`JWT fuzz at every endpoint that takes one (seed ${FUZZ_SEED})`, () => {
  it('the bases themselves are accepted (so refusals below are about the mutation)', async () => {
    const c = tb.client({ bearer: oidcToken });
    expect((await c.beginTask({ purpose: 'fuzz base' })).taskId).toBeTruthy();
    const intro = await tb.http('/oauth2/introspect', { form: { token: taskToken }, cert: 'relying-party' });
    expect(intro.json!['active']).toBe(true);
  });

  it('gRPC bearer metadata: UNAUTHENTICATED (or INVALID_ARGUMENT) with a code, never accepted', async () => {
    // One at a time: sixty new connections at once make a loaded machine refuse some at the TCP level.
    const results: Array<{ m: { token: string; i: number }; got: string }> = [];
    for (const m of mutations('grpc', true)) {
      results.push(
        await (async () => {
        const c = tb.client({ bearer: m.token });
        try {
          await c.beginTask({ purpose: 'fuzz' });
          return { m, got: 'accepted' };
        } catch (e) {
          return { m, got: String((e as { code?: string }).code) + ' ' + String((e as Error).message) };
        }
        })(),
      );
    }
    for (const { m, got } of results) {
      // Known gap: a bearer over HTTP/2's header limit is refused by the transport before the broker sees it, without our code.
      if (m.token.length > 16 * 1024 && got.startsWith('ERR_UNAVAILABLE')) continue;
      expect(['ERR_UNAUTHENTICATED', 'ERR_JWT_INVALID', 'ERR_JWT_SIGNATURE', 'ERR_JWT_EXPIRED', 'ERR_ISSUER_UNKNOWN', 'ERR_KEY_UNKNOWN', 'ERR_KEY_WEAK', 'ERR_TOO_LARGE', 'ERR_SPIFFE_ID_INVALID', 'ERR_SVID_INVALID'], where('grpc', m, got)).toContain(got.split(' ')[0]);
    }
  });

  it('/oauth2/token subject_token: 400/401 in the OAuth error shape, never a token', async () => {
    for (const m of mutations('token', false)) {
      const r = await tb.http('/oauth2/token', { form: { grant_type: GRANT, subject_token: m.token, subject_token_type: JWT_TYPE, audience: AUD, scope: 'deploy' } });
      const got = `${r.status} ${r.text.slice(0, 200)}`;
      expect([400, 401], where('token', m, got)).toContain(r.status);
      expect(ourErrorShape(r.json), where('token', m, got)).toBe(true);
    }
  });

  it('/oauth2/introspect: 200 with active false, never active', async () => {
    for (const m of mutations('introspect', false)) {
      const r = await tb.http('/oauth2/introspect', { form: { token: m.token }, cert: 'relying-party' });
      const got = `${r.status} ${r.text.slice(0, 200)}`;
      expect(r.status, where('introspect', m, got)).toBe(200);
      expect(r.json!['active'], where('introspect', m, got)).toBe(false);
    }
  });

  it('/oauth2/revoke: never a 5xx, and the base task token is still active afterwards', async () => {
    for (const m of mutations('revoke', false)) {
      const r = await tb.http('/oauth2/revoke', { form: { token: m.token }, cert: 'relying-party' });
      const got = `${r.status} ${r.text.slice(0, 200)}`;
      expect(r.status < 500, where('revoke', m, got)).toBe(true);
      if (r.status !== 200) expect(ourErrorShape(r.json), where('revoke', m, got)).toBe(true);
    }
    const intro = await tb.http('/oauth2/introspect', { form: { token: taskToken }, cert: 'relying-party' });
    expect(intro.json!['active']).toBe(true);
  });

  it('/v1/tasks/complete bearer: 401 (or 400) in our error shape, never completed', async () => {
    for (const m of mutations('complete', true)) {
      const r = await tb.http('/v1/tasks/complete', { json: {}, bearer: m.token });
      const got = `${r.status} ${r.text.slice(0, 200)}`;
      expect([400, 401, 431], where('complete', m, got)).toContain(r.status);
      expect(ourErrorShape(r.json), where('complete', m, got)).toBe(true);
    }
    const intro = await tb.http('/oauth2/introspect', { form: { token: taskToken }, cert: 'relying-party' });
    expect(intro.json!['active']).toBe(true);
  });

  it('SSE feed bearer: 401 (or 400) in our error shape, never a stream', async () => {
    for (const m of mutations('sse', true)) {
      const r = await sse(m.token);
      const got = `${r.status} ${r.text.slice(0, 200)}`;
      expect([400, 401, 431], where('sse', m, got)).toContain(r.status);
      expect(ourErrorShape(safeJson(r.text)), where('sse', m, got)).toBe(true);
    }
  });
});

function safeJson(t: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(t) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** Opens the SSE feed with a bearer and returns the status and the first body bytes (then closes). */
function sse(bearer: string): Promise<{ status: number; text: string }> {
  const u = new URL('/v1/revocations', tb.httpUrl);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { hostname: '127.0.0.1', servername: 'localhost', port: u.port, path: u.pathname, method: 'GET', ca: tb.ca, agent: false, headers: { accept: 'text/event-stream', authorization: `Bearer ${bearer}` } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          text += c;
          if (res.statusCode === 200) res.destroy();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        res.on('close', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('SSE request timed out')));
    req.end();
  });
}

