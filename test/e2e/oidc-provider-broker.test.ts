/**
 * A real OpenID Provider (oidc-provider v9, in-process on loopback HTTPS)
 * issues JWT access tokens that the running broker accepts at
 * POST /oauth2/token via OIDC discovery; the provider's signing key is
 * rotated mid-test and the broker keeps accepting new tokens without a
 * restart, while tokens of the retired key are refused.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeJws } from '../../src/tokens/jws.js';
import { makeSelfSignedCert, startHttps, type TestCert } from '../helpers/https-jwks.js';
import { makeKey, type TestKey } from '../helpers/test-issuer.js';
import { createProvider, providerAccessToken } from '../helpers/oidc-provider.js';
import { startTestBroker, type TestBroker } from './helpers.js';

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const RESOURCE = 'https://mayfly.test';

let cert: TestCert;
let issuer: string;
let closeIdp: () => Promise<void>;
let handler: (req: IncomingMessage, res: ServerResponse) => void = () => {};
let tb: TestBroker;

const providerWith = async (key: TestKey) => (await createProvider(issuer, key, RESOURCE)).callback();
const providerToken = () => providerAccessToken(issuer, cert.cert, RESOURCE);

const exchange = (subjectToken: string) =>
  tb.http('/oauth2/token', { form: { grant_type: GRANT, subject_token: subjectToken, subject_token_type: JWT_TYPE, audience: 'deploy-api', scope: 'deploy' } });

beforeAll(async () => {
  cert = makeSelfSignedCert();
  const s = await startHttps(cert, (req, res) => handler(req, res));
  issuer = s.origin;
  closeIdp = s.close;
  handler = await providerWith(makeKey('ES256'));
  tb = await startTestBroker({
    configPatch: (config, dir) => {
      writeFileSync(join(dir, 'idp-ca.pem'), cert.cert);
      config['oidc'] = { jwks_refresh_cooldown_seconds: 1, issuers: [{ name: 'idp', issuer, audiences: ['mayfly'], algorithms: ['ES256', 'RS256'], ca_file: 'idp-ca.pem', subject_claim: 'client_id' }] };
    },
    extraRules: [{ name: 'idp-ci', match: { oidc: { issuer, claims: { client_id: 'ci-runner', scope: 'deploy' } } }, audiences: ['deploy-api'], scopes: ['deploy'], max_ttl_seconds: 300 }],
  });
});

afterAll(async () => {
  await tb?.stop();
  await closeIdp?.();
});

describe('broker with a real OpenID Provider', () => {
  it('accepts its tokens via discovery and keeps accepting after the provider rotates its key', async () => {
    const t1 = await providerToken();
    const r1 = await exchange(t1);
    expect(r1.status).toBe(200);
    expect(r1.json).toMatchObject({ token_type: 'Bearer', scope: 'deploy' });
    expect(decodeJws(r1.json!['access_token'] as string).payload['sub']).toBe(`${issuer}#ci-runner`);

    // Rotate: a new provider instance with a new RS256 key behind the same issuer and port. No broker restart.
    await new Promise((r) => setTimeout(r, 1100)); // past the unknown-kid refresh cooldown
    const k2 = makeKey('RS256');
    handler = await providerWith(k2);
    const t2 = await providerToken();
    expect(decodeJws(t2).header.kid).toBe(k2.kid);
    const r2 = await exchange(t2);
    expect(r2.status).toBe(200);

    // Tokens of the retired key are refused once the broker has the new key set.
    const r3 = await exchange(t1);
    expect(r3.status).toBe(400);
    expect(r3.json).toMatchObject({ error: 'invalid_grant', mayfly_code: 'ERR_KEY_UNKNOWN' });
  });
});
