import { describe, expect, it, vi } from 'vitest';
import type { DecisionInput } from '../../src/core/decision.js';
import type { EngineResult, PolicyEngine } from '../../src/core/ports.js';
import { canonicalJson, checkDecision, DecisionPoint, hashPolicy, inputDigest } from '../../src/policy/decision-point.js';
import { decisionInputDigest } from '../../src/policy/digest.js';
import { explain, formatExplanation } from '../../src/policy/explain.js';
import { mkInput } from './fixtures.js';

const input = mkInput({ scopes: ['read', 'write'] });

describe('checkDecision', () => {
  const cases: Array<[string, unknown, boolean, Record<string, unknown> | RegExp]> = [
    ['true allows with requested scopes, no ttl', true, true, { allow: true, reasons: [], scopes: ['read', 'write'] }],
    ['false denies', false, true, { allow: false, reasons: ['policy returned false'] }],
    ['undefined = no decision', undefined, false, /policy produced no decision/],
    ['narrowed allow', { allow: true, scopes: ['read'], max_ttl_seconds: 60, reasons: ['ok'] }, true, { allow: true, reasons: ['ok'], scopes: ['read'], max_ttl_seconds: 60 }],
    ['allow without scopes = requested', { allow: true }, true, { allow: true, reasons: [], scopes: ['read', 'write'] }],
    ['deny keeps reasons, drops grants', { allow: false, reasons: ['nope'], scopes: ['read'] }, true, { allow: false, reasons: ['nope'] }],
    ['deny without reasons gets one', { allow: false }, true, { allow: false, reasons: ['denied by policy (no reason given)'] }],
    ['claims pass through', { allow: true, scopes: [], claims: { team: 'a' } }, true, { allow: true, reasons: [], scopes: [], claims: { team: 'a' } }],
    ['string', 'allow', false, /must be an object or a boolean, got string/],
    ['null', null, false, /got null/],
    ['array', [true], false, /got array/],
    ['allow not boolean', { allow: 'yes' }, false, /"allow" must be a boolean, got string/],
    ['allow missing', { reasons: [] }, false, /"allow" must be a boolean, got undefined/],
    ['reasons not strings', { allow: false, reasons: [1] }, false, /"reasons" must be an array of strings/],
    ['ttl zero', { allow: true, max_ttl_seconds: 0 }, false, /"max_ttl_seconds" must be a positive integer, got 0/],
    ['ttl fractional', { allow: true, max_ttl_seconds: 1.5 }, false, /positive integer/],
    ['ttl string', { allow: true, max_ttl_seconds: '60' }, false, /positive integer/],
    ['scope not requested', { allow: true, scopes: ['read', 'admin'] }, false, /grants scope "admin" that was not requested/],
    ['scopes not array', { allow: true, scopes: 'read' }, false, /"scopes" must be an array/],
    ['claims array', { allow: true, claims: ['x'] }, false, /"claims" must be an object/],
    ['claims collide', { allow: true, claims: { sub: 'root' } }, false, /claim "sub" collides with a registered claim/],
    ['claims collide cnf', { allow: true, claims: { cnf: {} } }, false, /claim "cnf" collides/],
    ['unknown field', { allow: true, max_ttl: 60 }, false, /unknown field "max_ttl"/],
  ];
  it.each(cases)('%s', (_n, raw, ok, want) => {
    const c = checkDecision(input, raw);
    expect(c.ok).toBe(ok);
    if (want instanceof RegExp) {
      expect(c.output).toEqual({ allow: false, reasons: [expect.stringMatching(want)] });
      expect(c.error).toMatch(want);
    } else expect(c.output).toEqual(want);
  });

  it('does not share arrays with the engine output', () => {
    const raw = { allow: true, scopes: ['read'], reasons: ['r'] };
    const c = checkDecision(input, raw);
    c.output.scopes!.push('x');
    c.output.reasons.push('y');
    expect(raw).toEqual({ allow: true, scopes: ['read'], reasons: ['r'] });
  });
});

function engine(evaluate: (i: DecisionInput) => Promise<EngineResult>, name = 'fake'): PolicyEngine {
  return { name, revision: () => 'rev1', evaluate, close: async () => {} };
}

describe('DecisionPoint', () => {
  it('records engine, revision, source and latency from the injected timer', async () => {
    let t = 1000;
    const dp = new DecisionPoint(engine(async () => ({ output: { allow: true, scopes: ['read'] }, source: 'r1' })), { timer: () => (t += 42) });
    const d = await dp.decide(input);
    expect(d).toEqual({ allow: true, reasons: [], scopes: ['read'], engine: 'fake', revision: 'rev1', source: 'r1', latencyUs: 42 });
  });

  it('turns a throw into a deny', async () => {
    const d = await new DecisionPoint(engine(async () => { throw new Error('kaput'); })).decide(input);
    expect(d).toMatchObject({ allow: false, reasons: ['policy engine error: kaput'], engine: 'fake', source: '(error)' });
  });

  it('turns a thrown string (opa_abort) into a deny', async () => {
    const d = await new DecisionPoint(engine(() => Promise.reject('abort msg'))).decide(input);
    expect(d.reasons).toEqual(['policy engine error: abort msg']);
  });

  it('denies when the engine does not answer in time', async () => {
    const dp = new DecisionPoint(engine(() => new Promise(() => {})), { timeoutMs: 20 });
    const d = await dp.decide(input);
    expect(d).toMatchObject({ allow: false, reasons: ['policy evaluation timed out after 20 ms'] });
  });

  it('arms a deadline timer for an engine that may wait, and none for a synchronous one', async () => {
    vi.useFakeTimers();
    try {
      const waits = new DecisionPoint(engine(async () => ({ output: true, source: 's' })));
      const pending = waits.decide(input);
      expect(vi.getTimerCount()).toBe(1);
      expect((await pending).allow).toBe(true);
      expect(vi.getTimerCount()).toBe(0);
      const sync = new DecisionPoint({ ...engine(async () => ({ output: true, source: 's' })), synchronous: true });
      const answered = sync.decide(input);
      expect(vi.getTimerCount()).toBe(0);
      expect((await answered).allow).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });

  it('still denies a late answer of a synchronous engine, by its measured latency', async () => {
    let t = 0;
    const dp = new DecisionPoint({ ...engine(async () => ({ output: true, source: 's' })), synchronous: true }, { timeoutMs: 5, timer: () => (t += 6000) });
    const d = await dp.decide(input);
    expect(d.allow).toBe(false);
    expect(d.reasons[0]).toMatch(/timed out after 5 ms \(took 6 ms\)/);
  });

  it('denies a late synchronous answer after the fact', async () => {
    let t = 0;
    const dp = new DecisionPoint(engine(async () => ({ output: true, source: 's' })), { timeoutMs: 5, timer: () => (t += 6000) });
    const d = await dp.decide(input);
    expect(d.allow).toBe(false);
    expect(d.reasons[0]).toMatch(/timed out after 5 ms \(took 6 ms\)/);
  });

  it('denies malformed output and keeps the source', async () => {
    const d = await new DecisionPoint(engine(async () => ({ output: { allow: true, scopes: ['admin'] }, source: 'ep' }))).decide(input);
    expect(d).toMatchObject({ allow: false, source: 'ep' });
    expect(d.reasons[0]).toMatch(/scope "admin"/);
  });

  it('prefers the revision the engine attributes the result to', async () => {
    const e = engine(async () => ({ output: true, source: 's', revision: 'rev2' }) as EngineResult);
    expect((await new DecisionPoint(e).decide(input)).revision).toBe('rev2');
  });

  it('explain reports the same decision with the input digest', async () => {
    const e = await explain(engine(async () => ({ output: { allow: false, reasons: ['no'] }, source: 'r' })), input);
    expect(e).toMatchObject({ decision: 'deny', reasons: ['no'], source: 'r', engine: 'fake', revision: 'rev1', input_sha256: inputDigest(input) });
    expect(formatExplanation(e)).toContain('decision: DENY');
  });
});

describe('digests', () => {
  it('canonical JSON sorts keys recursively and drops undefined', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, { z: 1, y: undefined }], c: 'x' } })).toBe('{"a":{"c":"x","d":[2,{"z":1}]},"b":1}');
  });
  it('inputDigest ignores key order', () => {
    const reordered = JSON.parse(JSON.stringify({ context: input.context, request: input.request, identity: input.identity, version: input.version })) as DecisionInput;
    expect(inputDigest(reordered)).toBe(inputDigest(input));
    expect(inputDigest(input)).toMatch(/^[0-9a-f]{64}$/);
  });
  it('decisionInputDigest hashes the same bytes as inputDigest, remembering the identity only while it is the same', () => {
    const claims = { sub: 'spiffe://example.org/w', x: { b: 2, a: [1, 'é'] } };
    const base: DecisionInput = { ...input, identity: { ...input.identity, claims } };
    const variants: DecisionInput[] = [
      base,
      { ...base, task: { id: 't1', purpose: 'p', owner: 'o', age_seconds: 1, deadline: 2, tokens_issued: 3, parent_chain: [], depth: 0 } },
      // Same claims object, other scalar fields: must not reuse the remembered identity.
      { ...base, identity: { ...base.identity, id: 'spiffe://example.org/other' } },
      { ...base, identity: { ...base.identity, cert_sha256: 'abc' } },
      { ...base, identity: { ...base.identity, trust_domain: 'other.example' } },
      { ...base, identity: { ...base.identity, method: 'jwt-svid' } },
      { ...base, request: { ...base.request, scopes: ['b', 'a'] } },
      // Outside the contract: takes the general path, still the same digest.
      { ...base, extra: { z: 1 } } as unknown as DecisionInput,
    ];
    for (let round = 0; round < 2; round++) {
      for (const v of variants) expect(decisionInputDigest(v)).toBe(inputDigest(v));
    }
    expect(new Set(variants.map(decisionInputDigest)).size).toBe(variants.length);
  });
  it('hashPolicy is sha256 hex', () => {
    expect(hashPolicy('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
});
