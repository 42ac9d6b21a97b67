/**
 * Fuzz: mutated client certificates over mTLS, on both transports. The base
 * is the workload's valid X.509-SVID; each mutation changes bytes of its DER.
 * A connection the TLS layer refuses is fine; a request that gets through must
 * be refused as unauthenticated, in our error shape (HTTPS) or with a code
 * (gRPC), and never accepted or answered with a 5xx. Seeded (see prng.ts).
 */
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from '../e2e/helpers.js';
import { FUZZ_SEED, mutateBytes, Prng } from './prng.js';

const N = 24;

let tb: TestBroker;
let leafDer: Buffer;
let restPem: string;
let keyPem: Buffer;
let validPem: string;

beforeAll(async () => {
  tb = await startTestBroker();
  const pem = readFileSync(join(tb.dir, 'workload.pem'), 'utf8');
  validPem = pem;
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/g)!;
  leafDer = Buffer.from(blocks[0]!.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  restPem = blocks.slice(1).join('');
  keyPem = readFileSync(join(tb.dir, 'workload.key'));
});

afterAll(async () => {
  await tb?.stop();
});

function toPem(der: Buffer): string {
  const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}-----END CERTIFICATE-----\n`;
}

/** Mutated leaf certificates (never byte-identical to the original). */
function mutatedCerts(label: string): Array<{ i: number; pem: string }> {
  const rng = new Prng(FUZZ_SEED ^ [...label].reduce((h, c) => (Math.imul(h, 31) + c.charCodeAt(0)) | 0, 11));
  const out: Array<{ i: number; pem: string }> = [];
  for (let i = 0; i < N; i++) {
    let der = leafDer;
    // Mostly single-byte changes inside the DER, so the certificate still parses and reaches the verifier.
    for (let k = rng.chance(0.8) ? 1 : 1 + rng.int(3); k > 0; k--) der = rng.chance(0.8) ? flip(rng, der) : mutateBytes(rng, der);
    if (!der.equals(leafDer)) out.push({ i, pem: toPem(der) + restPem });
  }
  return out;
}

function flip(rng: Prng, der: Buffer): Buffer {
  const b = Buffer.from(der);
  const at = 4 + rng.int(b.length - 4);
  b[at] = b[at]! ^ (1 << rng.int(8));
  return b;
}

type HttpOutcome = { kind: 'refused-by-tls'; detail: string } | { kind: 'response'; status: number; text: string };

function httpsWithCert(certPem: string): Promise<HttpOutcome> {
  const u = new URL('/v1/tasks/complete', tb.httpUrl);
  const body = JSON.stringify({ task_id: 'fuzz-task' });
  return new Promise((resolve) => {
    let req;
    try {
      req = httpsRequest(
        { hostname: '127.0.0.1', servername: 'localhost', port: u.port, path: u.pathname, method: 'POST', ca: tb.ca, cert: certPem, key: keyPem, agent: false, headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ kind: 'response', status: res.statusCode ?? 0, text }));
        },
      );
    } catch (e) {
      // The client's TLS stack would not even load this certificate: nothing was sent.
      resolve({ kind: 'refused-by-tls', detail: (e as Error).message });
      return;
    }
    req.on('error', (e) => resolve({ kind: 'refused-by-tls', detail: e.message }));
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

describe(`mutated client certificates over mTLS (seed ${FUZZ_SEED})`, () => {
  it('the unmutated certificate is accepted on both transports (so refusals are about the mutation)', async () => {
    const r = await httpsWithCert(validPem);
    expect(r).toMatchObject({ kind: 'response', status: 404 });
    expect((await tb.client({ cert: validPem, key: keyPem }).ping()) !== undefined).toBe(true);
  });

  it('HTTPS: every mutated certificate is refused at the handshake or with 401 in our error shape', async () => {
    let reached = 0;
    for (const m of mutatedCerts('https')) {
      const r = await httpsWithCert(m.pem);
      if (r.kind === 'refused-by-tls') continue;
      reached++;
      const where = `https mutation ${m.i} (seed ${FUZZ_SEED}): ${r.status} ${r.text.slice(0, 200)}`;
      expect(r.status, where).toBe(401);
      const json = JSON.parse(r.text) as Record<string, unknown>;
      expect(json['error'], where).toMatch(/^ERR_/);
    }
    // Most single-byte changes survive TLS and must be refused by our verifier.
    expect(reached).toBeGreaterThan(N / 3);
  });

  it('gRPC: every mutated certificate is refused at the handshake or as unauthenticated with a code', async () => {
    let reached = 0;
    for (const m of mutatedCerts('grpc')) {
      let got: { code?: string; message: string };
      try {
        const c = tb.client({ cert: m.pem, key: keyPem });
        await c.beginTask({ purpose: 'fuzz' });
        got = { code: 'accepted', message: '' };
      } catch (e) {
        got = { code: (e as { code?: string }).code, message: (e as Error).message };
      }
      const where = `grpc mutation ${m.i} (seed ${FUZZ_SEED}): ${got.code} ${got.message.slice(0, 200)}`;
      if (got.code === 'ERR_UNAVAILABLE' && /No connection established|handshake|ECONNRESET|socket|alert|certificate|key values mismatch/i.test(got.message)) continue;
      // The client's own TLS stack refused to load the certificate (OpenSSL error codes): nothing was sent.
      if (got.code?.startsWith('ERR_OSSL_')) continue;
      reached++;
      expect(['ERR_SVID_INVALID', 'ERR_SPIFFE_ID_INVALID', 'ERR_UNAUTHENTICATED', 'ERR_KEY_WEAK'], where).toContain(got.code);
    }
    expect(reached).toBeGreaterThan(N / 3);
    // Still serving.
    expect((await tb.client().ping()) !== undefined).toBe(true);
  });
});
