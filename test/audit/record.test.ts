import { describe, expect, it } from 'vitest';
import type { AuditEntry } from '../../src/core/ports.js';
import {
  canonicalJson,
  chainRecord,
  chainRecordLine,
  GENESIS_HASH,
  GENESIS_HEAD,
  hashRecord,
  parseRecord,
  redact,
  scrubTokens,
  serializeRecord,
  sha256Hex,
} from '../../src/audit/record.js';

const JWS = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCIsImV4cCI6MX0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU';

describe('canonicalJson', () => {
  it('sorts keys at every depth and has no whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: 'x' } })).toBe('{"a":{"c":"x","d":[1,{"y":2,"z":1}]},"b":1}');
  });
  it('drops undefined members like JSON.stringify and is stable across a round trip', () => {
    const v = { x: undefined, s: 'é\u2028"', n: -0, e: 1e21, arr: [undefined] };
    const once = canonicalJson(v);
    expect(once).toBe('{"arr":[null],"e":1e+21,"n":0,"s":"é\u2028\\""}');
    expect(canonicalJson(JSON.parse(once))).toBe(once);
  });
});

describe('chainRecord', () => {
  it('builds the genesis record and hashes everything but hash', () => {
    const r = chainRecord({ event: 'broker.start', outcome: 'success' }, GENESIS_HEAD, { now: Date.UTC(2026, 0, 2, 3, 4, 5, 6), brokerId: 'b' });
    expect(r).toMatchObject({ v: 1, seq: 1, ts: '2026-01-02T03:04:05.006Z', broker_id: 'b', prev: GENESIS_HASH });
    const { hash, ...rest } = r;
    expect(hash).toBe(sha256Hex(canonicalJson(rest)));
    expect(hashRecord(r)).toBe(hash);
    expect(Object.keys(JSON.parse(serializeRecord(r)))).toEqual(['v', 'seq', 'ts', 'broker_id', 'event', 'outcome', 'prev', 'hash']);
    expect(parseRecord(serializeRecord(r))).toEqual({ ok: true, record: r });
  });
  it('round-trips a __proto__ field through serialise, parse and verify', () => {
    const entry = redact(JSON.parse('{"event":"auth.failure","outcome":"denied","__proto__":{"x":1}}') as AuditEntry);
    const r = chainRecord(entry, GENESIS_HEAD, { now: 0, brokerId: 'b' });
    const parsed = parseRecord(serializeRecord(r));
    expect(parsed.ok).toBe(true);
  });

  it('chainRecordLine: the same record as chainRecord, and a line that parses back to it and verifies', () => {
    const entries: Record<string, unknown>[] = [
      { event: 'broker.start', outcome: 'success' },
      redact({
        event: 'token.exchange',
        outcome: 'success',
        request_id: 'r1',
        identity: { kind: 'oidc', id: 'https://ci.example#repo:acme/api', method: 'oidc', source: 'gha' },
        decision: { engine: 'builtin', revision: 'f'.repeat(64), source: 'rule', input_sha256: 'e'.repeat(64), allow: true, reasons: ['rule "x" allows exchange'], latency_us: 19 },
        scopes: ['read', 'write'],
        requested_scopes: [],
        task_begun: true,
        tool: undefined,
        revoked_tokens: 0,
        text: 'é\u2028"quoted" \\ ✓',
        seq: 'an entry field named like a chain field',
        nested: { z: [1, { b: null, a: -0 }], a: 1e21 },
      } as AuditEntry),
      redact(JSON.parse('{"event":"auth.failure","outcome":"denied","__proto__":{"x":1},"10":"numeric key","hash":"forged"}') as AuditEntry),
    ];
    let head = GENESIS_HEAD;
    for (const entry of entries) {
      const at = { now: Date.UTC(2026, 11, 3, 18, 0, 0, 1), brokerId: 'b' };
      const { record, line } = chainRecordLine(entry, head, at);
      expect(record).toEqual(chainRecord(entry, head, at));
      expect(JSON.parse(line)).toEqual(JSON.parse(serializeRecord(record)));
      // The record's own member order, hash last; nested members sorted (canonical).
      expect(Object.keys(JSON.parse(line))).toEqual(Object.keys(JSON.parse(serializeRecord(record))));
      expect(parseRecord(line)).toEqual({ ok: true, record: JSON.parse(serializeRecord(record)) });
      expect(hashRecord(JSON.parse(line))).toBe(record.hash);
      head = { seq: record.seq, hash: record.hash };
    }
  });

  it('links to the head it is given', () => {
    const r = chainRecord({ event: 'task.begin', outcome: 'success' }, { seq: 41, hash: 'a'.repeat(64) }, { now: 0, brokerId: 'b' });
    expect(r.seq).toBe(42);
    expect(r.prev).toBe('a'.repeat(64));
  });
});

describe('redact', () => {
  const base = { event: 'token.exchange', outcome: 'success' } as const;
  const cases: Array<{ name: string; in: Record<string, unknown>; out: Record<string, unknown> }> = [
    { name: 'top-level token', in: { token: 'abc' }, out: { token_sha256: sha256Hex('abc') } },
    { name: 'case-insensitive', in: { Access_Token: 'abc' }, out: { Access_Token_sha256: sha256Hex('abc') } },
    { name: 'camelCase', in: { subjectToken: 'abc' }, out: { subjectToken_sha256: sha256Hex('abc') } },
    { name: 'nested in arrays', in: { list: [{ id_token: 'x' }] }, out: { list: [{ id_token_sha256: sha256Hex('x') }] } },
    {
      name: 'object secret hashed as canonical JSON',
      in: { private_key: { kty: 'OKP', d: 'k' } },
      out: { private_key_sha256: sha256Hex('{"d":"k","kty":"OKP"}') },
    },
    { name: 'every listed name', in: { key: 'a', secret: 'b', password: 'c', authorization: 'd' }, out: {
      key_sha256: sha256Hex('a'), secret_sha256: sha256Hex('b'), password_sha256: sha256Hex('c'), authorization_sha256: sha256Hex('d'),
    } },
    { name: 'null secret dropped', in: { token: null }, out: {} },
    { name: 'token_sha256 kept as is', in: { token_sha256: 'f'.repeat(64) }, out: { token_sha256: 'f'.repeat(64) } },
    { name: 'bare JWS value', in: { note: JWS }, out: { note: `sha256:${sha256Hex(JWS)}` } },
    { name: 'JWS inside text', in: { note: `Bearer ${JWS}, retry` }, out: { note: `Bearer sha256:${sha256Hex(JWS)}, retry` } },
    { name: 'JWS as an object key', in: { m: { [JWS]: 1 } }, out: { m: { [`sha256:${sha256Hex(JWS)}`]: 1 } } },
    { name: 'short dotted names untouched', in: { peer: 'api.example.com', id: 'spiffe://prod.example.org/ns/a/sa/b' }, out: {
      peer: 'api.example.com', id: 'spiffe://prod.example.org/ns/a/sa/b',
    } },
    { name: 'long four-label name untouched', in: { h: 'payments-service-internal.prod-namespace.svc.cluster' }, out: {
      h: 'payments-service-internal.prod-namespace.svc.cluster',
    } },
  ];
  it.each(cases)('$name', (c) => {
    expect(redact({ ...base, ...c.in } as AuditEntry)).toEqual({ ...base, ...c.out });
  });

  it('does not mutate its input', () => {
    const input = { ...base, nested: { token: 't' } } as AuditEntry;
    redact(input);
    expect(input.nested).toEqual({ token: 't' });
  });

  it('treats __proto__ as a plain field', () => {
    const input = JSON.parse('{"event":"auth.failure","outcome":"denied","__proto__":{"polluted":true}}') as AuditEntry;
    const out = redact(input) as Record<string, unknown>;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(out.polluted).toBeUndefined();
    expect(JSON.stringify(out)).toContain('"__proto__":{"polluted":true}');
  });

  it('scrubs JWE (5 parts) as well', () => {
    const jwe = 'eyJhbGciOiJSU0EtT0FFUCJ9.a2V5a2V5a2V5.aXZpdml2.Y2lwaGVydGV4dGNpcGhlcnRleHQ.dGFndGFn';
    expect(scrubTokens(jwe)).toBe(`sha256:${sha256Hex(jwe)}`);
  });
});
