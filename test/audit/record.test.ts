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
  redactEntry,
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

  it('chainRecordLine on a sorted redactEntry: the same line and hash from JSON.stringify as member by member', () => {
    // Seeded generator of audit-entry-shaped values: unsorted keys, digit-led keys that are and are not
    // array indices, chain field names, credentials, compact JWS, dates, bigints, non-finite numbers, holes.
    let seed = 0x9e3779b9;
    const rnd = (n: number) => {
      seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
      return seed % n;
    };
    const KEYS = ['z', 'a', 'event_x', 'é', 'ß', 'Z', '_', 'aa', 'a_b', '01', '1a', '-1', '4294967295', 'seq', 'hash', 'token', 'subjectToken', 'labels', ' ', ''];
    const INDEX_KEYS = ['0', '7', '10', '4294967294'];
    const leaf = (): unknown => {
      switch (rnd(11)) {
        case 0: return 'plain ' + rnd(1000);
        case 1: return JWS;
        case 2: return 'é\u2028"q" \\ \ud800 ✓';
        case 3: return rnd(2) === 0 ? -0 : rnd(1e6) / 7;
        case 4: return [Number.NaN, Number.POSITIVE_INFINITY, 1e21][rnd(3)];
        case 5: return rnd(2) === 0;
        case 6: return null;
        case 7: return undefined;
        case 8: return new Date(Date.UTC(2026, rnd(12), 1 + rnd(28)));
        case 9: return BigInt(rnd(1e9)) * 1000003n;
        default: return new Uint8Array([rnd(256), rnd(256)]);
      }
    };
    const value = (depth: number, withIndexKeys: boolean): unknown => {
      if (depth > 3 || rnd(3) === 0) return leaf();
      if (rnd(3) === 0) {
        const arr: unknown[] = [];
        const n = rnd(4);
        for (let i = 0; i < n; i++) arr.push(value(depth + 1, withIndexKeys));
        if (rnd(4) === 0) arr[n + 1] = leaf(); // a hole before it
        return arr;
      }
      const o: Record<string, unknown> = {};
      const n = 1 + rnd(5);
      for (let i = 0; i < n; i++) o[KEYS[rnd(KEYS.length)]!] = value(depth + 1, withIndexKeys);
      if (withIndexKeys && rnd(3) === 0) o[INDEX_KEYS[rnd(INDEX_KEYS.length)]!] = leaf();
      return o;
    };
    const at = { now: Date.UTC(2026, 11, 3, 20, 0, 0, 7), brokerId: 'b' };
    let fast = 0;
    let slow = 0;
    for (let i = 0; i < 400; i++) {
      const withIndexKeys = i % 2 === 1;
      const raw = { event: 'token.issue', outcome: 'success', ...(value(0, withIndexKeys) as object) } as AuditEntry;
      const { entry, sorted } = redactEntry(raw);
      expect(entry).toEqual(redact(raw));
      const head = { seq: i, hash: sha256Hex(String(i)) };
      const reference = chainRecordLine(entry, head, at);
      if (!sorted) {
        slow++;
        continue;
      }
      fast++;
      const viaStringify = chainRecordLine(entry, head, at, true);
      expect(viaStringify.line).toBe(reference.line);
      expect(viaStringify.record).toEqual(reference.record);
      expect(hashRecord(JSON.parse(viaStringify.line))).toBe(viaStringify.record.hash);
    }
    expect(fast).toBeGreaterThan(150);
    expect(slow).toBeGreaterThan(30);
  });

  it('redactEntry: a key the engine orders itself (array index, __proto__) at any depth is not sorted', () => {
    const at = { now: 0, brokerId: 'b' };
    for (const raw of [
      { event: 'x', outcome: 'success', labels: { b: 1, '10': 2, '9': 3 } },
      { event: 'x', outcome: 'success', '10': 'top-level index keys', '9': 'in the wrong order for JSON.stringify' },
      JSON.parse('{"event":"x","outcome":"success","__proto__":{"a":1}}'),
    ] as AuditEntry[]) {
      const { entry, sorted } = redactEntry(raw);
      expect(sorted).toBe(false);
      // What the flag protects against: taken through JSON.stringify, these would hash differently.
      expect(chainRecordLine(entry, GENESIS_HEAD, at, true).record.hash).not.toBe(chainRecordLine(entry, GENESIS_HEAD, at).record.hash);
    }
    // Nested __proto__ is written faithfully either way; it is still sent the member-wise way, like any key the engine treats specially.
    expect(redactEntry(JSON.parse('{"event":"x","outcome":"success","nested":{"__proto__":{"a":1}}}') as AuditEntry).sorted).toBe(false);
    const { entry, sorted } = redactEntry({ event: 'x', outcome: 'success', labels: { b: 1, a: { d: 1, c: 2 }, '4294967295': 'not an index' } } as unknown as AuditEntry);
    expect(sorted).toBe(true);
    expect(Object.keys(entry)).toEqual(['event', 'outcome', 'labels']);
    expect(Object.keys(entry.labels as object)).toEqual(['4294967295', 'a', 'b']);
    expect(Object.keys((entry.labels as { a: object }).a)).toEqual(['c', 'd']);
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
