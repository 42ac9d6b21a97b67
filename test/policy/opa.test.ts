import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { isMayflyError } from '../../src/core/errors.js';
import { DecisionPoint, hashPolicy } from '../../src/policy/decision-point.js';
import { OpaEngine, SDK_BUILTINS, type OpaEngineOptions, type ReloadEvent } from '../../src/policy/opa.js';
import { parseOpaBundle, readTar } from '../../src/policy/opa-bundle.js';
import { buildBundle, buildOpaWasm, type OpaWasmSpec } from '../helpers/opa-wasm/builder.js';
import { mkInput } from './fixtures.js';
import { gunzipSync } from 'node:zlib';

const dir = mkdtempSync(join(tmpdir(), 'mayfly-opa-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/** The demo decision: allow read for the demo workload, deny with reasons for others. */
const DEMO: OpaWasmSpec = {
  rules: [
    { when: '"spiffe://example.org/demo/workload"', then: { result: { allow: true, scopes: ['read'], max_ttl_seconds: 600, reasons: ['demo'] } } },
    { when: 'spiffe://example.org/bool-allow', then: { result: true } },
    { when: 'spiffe://example.org/bool-deny', then: { result: false } },
    { when: 'spiffe://example.org/malformed', then: { result: { allow: 'yes' } } },
    { when: 'spiffe://example.org/escalate', then: { result: { allow: true, scopes: ['admin'] } } },
    { when: 'spiffe://example.org/not-json', then: { resultSet: '[{"result": nope' } },
    { when: 'spiffe://example.org/two', then: { resultSet: '[{"result":true},{"result":false}]' } },
    { when: 'spiffe://example.org/undefined', then: { resultSet: '[]' } },
    { when: 'spiffe://example.org/trap', then: { trap: true } },
    { when: 'spiffe://example.org/abort', then: { abort: 'object insert conflict' } },
  ],
  otherwise: { result: { allow: false, reasons: ['no rule for this workload'] } },
};

async function write(bytes: Uint8Array | string, ext = 'wasm'): Promise<string> {
  const p = join(dir, `p${n++}.${ext}`);
  writeFileSync(p, bytes);
  return p;
}

async function load(spec: OpaWasmSpec, opts: Partial<OpaEngineOptions> = {}): Promise<OpaEngine> {
  return OpaEngine.load({ policyFile: await write(await buildOpaWasm(spec)), ...opts });
}

const who = (id: string) => mkInput({ id, scopes: ['read', 'write'] });

describe.each([1, 2, 3])('OPA engine, ABI 1.%i', (abiMinor) => {
  let engine: OpaEngine;
  let dp: DecisionPoint;
  it('loads', async () => {
    engine = await load({ ...DEMO, abiMinor });
    dp = new DecisionPoint(engine);
    expect(engine.health()).toMatchObject({ ok: true, abiVersion: `1.${abiMinor}`, entrypoint: 'mayfly/authz/decision', lastError: null });
  });

  it('object decision narrows scopes', async () => {
    const d = await dp.decide(who('spiffe://example.org/demo/workload'));
    expect(d).toEqual({ allow: true, reasons: ['demo'], scopes: ['read'], max_ttl_seconds: 600, engine: 'opa', revision: engine.revision(), source: 'mayfly/authz/decision', latencyUs: expect.any(Number) });
  });

  it.each([
    ['spiffe://example.org/bool-allow', { allow: true, scopes: ['read', 'write'], reasons: [] }],
    ['spiffe://example.org/bool-deny', { allow: false, reasons: ['policy returned false'] }],
    ['spiffe://example.org/someone', { allow: false, reasons: ['no rule for this workload'] }],
    ['spiffe://example.org/malformed', { allow: false, reasons: ['policy error: "allow" must be a boolean, got string'] }],
    ['spiffe://example.org/escalate', { allow: false, reasons: [expect.stringContaining('grants scope "admin" that was not requested')] }],
    ['spiffe://example.org/undefined', { allow: false, reasons: ['policy error: policy produced no decision'] }],
    ['spiffe://example.org/two', { allow: false, reasons: ['policy engine error: policy returned 2 results for one entrypoint'] }],
    ['spiffe://example.org/not-json', { allow: false, reasons: [expect.stringMatching(/^policy engine error: .*JSON/)] }],
  ])('%s', async (id, want) => {
    const d = await dp.decide(who(id));
    expect(d).toMatchObject(want);
    if (!want.allow) expect(d.scopes).toBeUndefined();
  });

  it('a trap fails closed and the engine keeps serving', async () => {
    for (const id of ['spiffe://example.org/trap', 'spiffe://example.org/abort', 'spiffe://example.org/trap']) {
      const d = await dp.decide(who(id));
      expect(d.allow).toBe(false);
      expect(d.reasons[0]).toMatch(/^policy engine error: policy evaluation trapped: /);
      expect((await dp.decide(who('spiffe://example.org/demo/workload'))).allow).toBe(true);
    }
    const d = await dp.decide(who('spiffe://example.org/abort'));
    expect(d.reasons[0]).toContain('object insert conflict');
  });
});

describe('OPA loading checks', () => {
  it('names the missing entrypoint and lists available ones', async () => {
    await expect(load({ ...DEMO, entrypoints: { 'a/b': 0, 'c/d': 1 } })).rejects.toThrow(/entrypoint "mayfly\/authz\/decision" not found in policy \(available: a\/b, c\/d\)/);
  });

  it('uses a configured entrypoint by id', async () => {
    const e = await load(
      { entrypoints: { 'mayfly/authz/decision': 0, 'x/decision': 1 }, rules: [{ when: '"', entrypoint: 1, then: { result: true } }], otherwise: { result: false } },
      { entrypoint: 'x/decision' },
    );
    expect((await new DecisionPoint(e).decide(mkInput())).allow).toBe(true);
    expect((await new DecisionPoint(e).decide(mkInput())).source).toBe('x/decision');
  });

  it('reports unknown builtins by name at load', async () => {
    const err = await load({ ...DEMO, builtins: { 'http.send': 0, 'json.is_valid': 1, 'crypto.x509.parse_and_verify_certificates': 2 } }).catch((e: unknown) => e);
    expect(isMayflyError(err, 'ERR_CONFIG_INVALID')).toBe(true);
    expect((err as Error).message).toMatch(/builtins the wasm SDK does not provide: http\.send, crypto\.x509\.parse_and_verify_certificates/);
    expect((err as Error).message).not.toMatch(/json\.is_valid/);
  });

  it('accepts custom builtins and calls them through opa_builtin1', async () => {
    const e = await load(
      { builtins: { 'mayfly.lookup': 7 }, rules: [{ when: 'demo', then: { builtin: 7, arg: { team: 'a' } } }], otherwise: { result: false } },
      { customBuiltins: { 'mayfly.lookup': (arg: unknown) => ({ allow: true, scopes: ['read'], claims: arg }) } },
    );
    const d = await new DecisionPoint(e).decide(mkInput());
    expect(d).toMatchObject({ allow: true, scopes: ['read'], claims: { team: 'a' } });
  });

  it('the SDK builtin list is read from the SDK', () => {
    expect([...SDK_BUILTINS].sort()).toEqual(['json.is_valid', 'regex.split', 'sprintf', 'yaml.is_valid', 'yaml.marshal', 'yaml.unmarshal']);
  });

  it('rejects ABI major 2, garbage and modules that are not OPA policies', async () => {
    await expect(load({ ...DEMO, abiMajor: 2 })).rejects.toThrow(/ABI version 2/);
    await expect(OpaEngine.load({ policyFile: await write('not wasm') })).rejects.toThrow(/neither a wasm module nor a gzip bundle/);
    const empty = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
    await expect(OpaEngine.load({ policyFile: await write(empty) })).rejects.toThrow(/lacks OPA ABI exports: opa_malloc/);
    await expect(OpaEngine.load({ policyFile: join(dir, 'missing.wasm') })).rejects.toThrow(/cannot read policy file .*ENOENT/);
  });

  it('refuses a policy whose canary decision is malformed', async () => {
    await expect(load({ otherwise: { result: { allow: 1 } } })).rejects.toThrow(/canary input did not produce a well-formed decision: "allow" must be a boolean/);
    await expect(load({ otherwise: { trap: true } })).rejects.toThrow(/trapped/);
  });

  it('revision is sha256 of the module when there is no data', async () => {
    const wasm = await buildOpaWasm(DEMO);
    const e = await OpaEngine.load({ policyFile: await write(wasm) });
    expect(e.revision()).toBe(hashPolicy(wasm));
  });
});

describe('bundles and data', () => {
  const spec: OpaWasmSpec = {
    rules: [
      { when: '"allowed":["spiffe://example.org/demo/workload"]', in: 'data', then: { result: { allow: true, scopes: ['read'] } } },
      { when: '"mode":"open"', in: 'data', then: { result: true } },
    ],
    otherwise: { result: { allow: false, reasons: ['not in data'] } },
  };

  it('reads a tar.gz bundle with policy.wasm, data.json and .manifest', async () => {
    const wasm = await buildOpaWasm(spec);
    const bundle = buildBundle({
      '/.manifest': JSON.stringify({ revision: 'r1', roots: [''], wasm: [{ entrypoint: 'mayfly/authz/decision', module: '/policy.wasm' }] }),
      '/policy.wasm': wasm,
      '/data.json': JSON.stringify({ mayfly: { allowed: ['spiffe://example.org/demo/workload'] } }),
      '/mayfly/example/policy.rego': 'package mayfly.authz',
    });
    const b = parseOpaBundle(bundle);
    expect(b.manifest?.revision).toBe('r1');
    expect(b.data).toEqual({ mayfly: { allowed: ['spiffe://example.org/demo/workload'] } });
    const e = await OpaEngine.load({ policyFile: await write(bundle, 'tar.gz') });
    expect(await new DecisionPoint(e).decide(mkInput())).toMatchObject({ allow: true, scopes: ['read'] });
    expect(e.revision()).not.toBe(hashPolicy(wasm)); // data is part of the revision
  });

  it('places nested data.json at its path and merges an external data file over it', async () => {
    const wasm = await buildOpaWasm(spec);
    const bundle = buildBundle({ '/policy.wasm': wasm, '/mayfly/data.json': '{"allowed":[]}' });
    expect(parseOpaBundle(bundle).data).toEqual({ mayfly: { allowed: [] } });
    const closed = await OpaEngine.load({ policyFile: await write(bundle, 'tar.gz') });
    expect((await new DecisionPoint(closed).decide(mkInput())).reasons).toEqual(['not in data']);
    const dataFile = await write('mayfly:\n  mode: open\n', 'yaml');
    const open = await OpaEngine.load({ policyFile: await write(bundle, 'tar.gz'), dataFile });
    expect((await new DecisionPoint(open).decide(mkInput())).allow).toBe(true);
  });

  it('rejects broken bundles with a clear message', async () => {
    await expect(OpaEngine.load({ policyFile: await write(buildBundle({ '/data.json': '{}' }), 'tar.gz') })).rejects.toThrow(/no wasm module/);
    const two = buildBundle({ '/a.wasm': 'x', '/b.wasm': 'y' });
    expect(() => parseOpaBundle(two)).toThrow(/2 wasm modules/);
    const tar = gunzipSync(buildBundle({ '/policy.wasm': 'x' }));
    tar[0] = 0x41; // corrupt the header: checksum no longer matches
    expect(() => readTar(tar)).toThrow(/bad header checksum/);
    expect(() => parseOpaBundle(Buffer.from([0x1f, 0x8b, 0, 0]))).toThrow(/not valid gzip/);
  });

  it('reads PAX long names', () => {
    const long = `/${'d'.repeat(120)}/data.json`;
    const files = readTar(gunzipSync(buildBundle({ [long]: '{"x":1}', '/policy.wasm': 'w' })));
    expect([...files.keys()]).toEqual([long, '/policy.wasm']);
    expect(parseOpaBundle(buildBundle({ [long]: '{"x":1}', '/policy.wasm': 'w' })).data).toEqual({ ['d'.repeat(120)]: { x: 1 } });
  });
});

describe('hot reload', () => {
  const v1: OpaWasmSpec = { otherwise: { result: { allow: true, scopes: ['read'], reasons: ['v1'] } } };
  const v2: OpaWasmSpec = { otherwise: { result: { allow: false, reasons: ['v2'] } } };

  it('swaps on change, keeps serving on a broken policy, reports each attempt', async () => {
    const file = join(dir, 'hot.wasm');
    writeFileSync(file, await buildOpaWasm(v1));
    const events: ReloadEvent[] = [];
    const clock = new ManualClock(Date.UTC(2026, 0, 1));
    const e = await OpaEngine.load({ policyFile: file, onReload: (ev) => events.push(ev), clock, pollIntervalMs: 200, debounceMs: 50 });
    const dp = new DecisionPoint(e);
    const stop = e.watch();
    try {
      expect((await dp.decide(mkInput())).reasons).toEqual(['v1']);
      const rev1 = e.revision();

      // Atomic replace (write + rename), as deploy tools do.
      writeFileSync(`${file}.tmp`, await buildOpaWasm(v2));
      renameSync(`${file}.tmp`, file);
      const t0 = Date.now();
      await expect.poll(async () => (await dp.decide(mkInput())).reasons, { timeout: 1000, interval: 20 }).toEqual(['v2']);
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(events.at(-1)).toMatchObject({ ok: true, changed: true, previousRevision: rev1, revision: e.revision() });
      const rev2 = e.revision();

      // Broken module: old one keeps serving, the failure is reported and visible in health.
      writeFileSync(file, 'garbage');
      await expect.poll(() => events.some((ev) => !ev.ok), { timeout: 1500, interval: 20 }).toBe(true);
      expect(events.find((ev) => !ev.ok)).toMatchObject({ ok: false, revision: rev2, error: expect.stringMatching(/neither a wasm module/) });
      expect((await dp.decide(mkInput())).reasons).toEqual(['v2']);
      expect(e.health()).toMatchObject({ ok: false, revision: rev2, lastError: expect.stringMatching(/neither/) });

      // A policy that loads but fails the canary is refused too.
      writeFileSync(file, await buildOpaWasm({ otherwise: { result: 'allow' } }));
      await expect.poll(() => events.filter((ev) => !ev.ok).length, { timeout: 1500, interval: 20 }).toBeGreaterThanOrEqual(2);
      expect(events.at(-1)!.error).toMatch(/canary/);
      expect((await dp.decide(mkInput())).reasons).toEqual(['v2']);

      // Fixing the file recovers; explicit reload (SIGHUP) always reports, even without a change.
      clock.advance(5000);
      writeFileSync(file, await buildOpaWasm(v1));
      await expect.poll(async () => (await dp.decide(mkInput())).reasons, { timeout: 1500, interval: 20 }).toEqual(['v1']);
      expect(e.revision()).toBe(rev1);
      const ev = await e.reload();
      expect(ev).toMatchObject({ ok: true, changed: false, revision: rev1, at: clock.now() });
      expect(e.health()).toMatchObject({ ok: true, lastError: null, lastReloadAt: clock.now() });
    } finally {
      stop();
      await e.close();
    }
  });

  it('concurrent reloads are serialised and evaluation during reload uses a whole generation', async () => {
    const file = join(dir, 'hot2.wasm');
    writeFileSync(file, await buildOpaWasm(v1));
    const e = await OpaEngine.load({ policyFile: file });
    writeFileSync(file, await buildOpaWasm(v2));
    const pending = [e.reload(), e.reload(), e.reload()];
    const during = await e.evaluate(mkInput());
    expect(during.revision).toBeDefined();
    const evs = await Promise.all(pending);
    expect(evs.every((x) => x.ok)).toBe(true);
    expect(evs.filter((x) => x.changed)).toHaveLength(1);
    expect((await e.evaluate(mkInput())).output).toEqual({ allow: false, reasons: ['v2'] });
    await e.close();
  });
});

describe('latency', () => {
  it('measures evaluation in µs (informational)', async () => {
    const e = await load(DEMO);
    const dp = new DecisionPoint(e);
    const input = who('spiffe://example.org/demo/workload');
    for (let i = 0; i < 200; i++) await dp.decide(input);
    const lat: number[] = [];
    for (let i = 0; i < 1000; i++) lat.push((await dp.decide(input)).latencyUs);
    lat.sort((a, b) => a - b);
    const p50 = lat[500]!;
    const p99 = lat[990]!;
    console.log(`opa-wasm decide latency: p50 ${p50} µs, p99 ${p99} µs`);
    expect(p50).toBeLessThan(5000);
  });
});
