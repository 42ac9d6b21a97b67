#!/usr/bin/env node
// ES256 compact JWS sign and verify: Mayfly's own path (dist/tokens/jws.js on
// node:crypto KeyObjects) against jose (WebCrypto CryptoKeys, its fastest
// input), in one process, in interleaved rounds so machine-load drift hits
// both alike. `run.mjs` calls `compareJws` for its (c) rows; run alone
// (`node bench/jws-compare.mjs`, after `npm run build`) it prints the table.
import { generateKeyPairSync } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CompactSign, compactVerify, importJWK } from 'jose';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Ops per wall second and per CPU second of an async or sync fn, over `ms`. */
async function round(fn, ms, acc) {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let n = 0;
  do {
    for (let i = 0; i < 20; i++) await fn();
    n += 20;
  } while (performance.now() - t0 < ms);
  const c = process.cpuUsage(c0);
  acc.count += n;
  acc.wall += (performance.now() - t0) / 1000;
  acc.cpu += (c.user + c.system) / 1e6;
}

/**
 * Measures the four rates. Both paths sign the same header and claims and
 * verify the same token (each one's own output is checked once first, so a
 * broken path cannot look fast).
 */
export async function compareJws({ rounds = 5, roundMs = 300 } = {}) {
  const { signCompact, decodeJws, verifyJwsSignature } = await import(pathToFileURL(join(ROOT, 'dist', 'tokens', 'jws.js')).href);
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const josePriv = await importJWK({ ...privateKey.export({ format: 'jwk' }), alg: 'ES256' }, 'ES256', { extractable: false });
  const josePub = await importJWK({ ...publicKey.export({ format: 'jwk' }), alg: 'ES256' }, 'ES256');
  const header = { alg: 'ES256', kid: 'k1', typ: 'at+jwt' };
  const claims = { iss: 'https://localhost:8444', sub: 'spiffe://example.org/demo/workload', aud: 'demo-api', scope: 'read', tid: 'tsk_' + 'x'.repeat(22), jti: 'y'.repeat(22), iat: 1, nbf: 1, exp: 2 };
  const payload = new TextEncoder().encode(JSON.stringify(claims));
  const token = signCompact(header, claims, privateKey);

  const paths = {
    'node:crypto sign': () => signCompact(header, claims, privateKey),
    'jose sign': () => new CompactSign(payload).setProtectedHeader(header).sign(josePriv),
    'node:crypto verify': () => verifyJwsSignature(decodeJws(token), publicKey),
    'jose verify': () => compactVerify(token, josePub),
  };
  // Each path's output is valid for the other: a broken path cannot look fast.
  verifyJwsSignature(decodeJws(await paths['jose sign']()), publicKey);
  await compactVerify(signCompact(header, claims, privateKey), josePub);

  const acc = Object.fromEntries(Object.keys(paths).map((k) => [k, { count: 0, wall: 0, cpu: 0 }]));
  for (const fn of Object.values(paths)) await round(fn, 200, { count: 0, wall: 0, cpu: 0 }); // warm-up (JIT)
  for (let r = 0; r < rounds; r++) for (const [k, fn] of Object.entries(paths)) await round(fn, roundMs, acc[k]);
  const rate = (a) => ({ count: a.count, wall: a.count / a.wall, cpu: a.count / a.cpu });
  return Object.fromEntries(Object.entries(acc).map(([k, a]) => [k, rate(a)]));
}

const fmtInt = (n) => Math.round(n).toLocaleString('en-US');
const fmtUs = (s) => `${(s * 1e6).toFixed(1)} µs`;

/** The markdown table of a compareJws result: rates, CPU per op, and the node:crypto / jose ratio. */
export function jwsCompareTable(r) {
  const lines = ['| ES256 compact JWS, 1 thread | ops/s | CPU per op | node:crypto ÷ jose (wall) | node:crypto ÷ jose (CPU) |', '|---|---|---|---|---|'];
  for (const op of ['sign', 'verify']) {
    const n = r[`node:crypto ${op}`];
    const j = r[`jose ${op}`];
    lines.push(`| ${op}: tokens/jws.ts on node:crypto KeyObjects | ${fmtInt(n.wall)} | ${fmtUs(1 / n.cpu)} | ${(n.wall / j.wall).toFixed(2)}× | ${(n.cpu / j.cpu).toFixed(2)}× |`);
    lines.push(`| ${op}: jose ${op === 'sign' ? 'CompactSign' : 'compactVerify'} on WebCrypto CryptoKeys | ${fmtInt(j.wall)} | ${fmtUs(1 / j.cpu)} | | |`);
  }
  return lines;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  console.log(jwsCompareTable(await compareJws()).join('\n'));
}
