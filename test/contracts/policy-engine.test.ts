import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BuiltinEngine } from '../../src/policy/builtin.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { OpaEngine } from '../../src/policy/opa.js';
import { buildOpaWasm } from '../helpers/opa-wasm/builder.js';
import { CONTRACT_CASES, decisionKeys, DEMO, policyEngineContract } from './policy-engine.contract.js';

const RULES = {
  rules: [{ name: 'demo', match: { spiffe: DEMO }, audiences: ['demo-api'], scopes: ['read', 'write'], max_ttl_seconds: 600, max_task_ttl_seconds: 3600 }],
};

const dir = mkdtempSync(join(tmpdir(), 'mayfly-contract-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * The demo policy as an OPA-ABI module. A Rego build is not possible here
 * (no opa binary), so the module returns, per case, the document
 * policies/example/mayfly.rego computes for it; the point is that those
 * documents travel through the real SDK and ABI and the same DecisionPoint.
 */
async function demoWasm(): Promise<string> {
  const file = join(dir, 'demo.wasm');
  const deny = (r: string) => ({ result: { allow: false, reasons: [r] } });
  writeFileSync(
    file,
    await buildOpaWasm({
      rules: [
        { when: 'spiffe://example.org/stranger', then: deny('no rule allows spiffe://example.org/stranger') },
        { when: '"audience":"other-api"', then: deny("audience 'other-api' not allowed") },
        { when: '"scopes":["admin"]', then: deny('none of the requested scopes [admin] are allowed') },
        { when: '"scopes":["read","admin"]', then: { result: { allow: true, reasons: ['rule "demo"'], scopes: ['read'], max_ttl_seconds: 600 } } },
        { when: '"action":"begin_task"', then: { result: { allow: true, reasons: ['rule "demo"'], scopes: [], max_ttl_seconds: 3600 } } },
        { when: '"scopes":["read","write"]', then: { result: { allow: true, reasons: ['rule "demo"'], scopes: ['read', 'write'], max_ttl_seconds: 600 } } },
        // The engine's load-time canary (demo workload asking for read).
        { when: `"${DEMO}"`, then: { result: { allow: true, reasons: ['rule "demo"'], scopes: ['read'], max_ttl_seconds: 600 } } },
      ],
      otherwise: deny('default deny'),
    }),
  );
  return file;
}

const wasmFile = demoWasm();
const builtin = async () => BuiltinEngine.fromDocument(RULES);
const opa = async () => OpaEngine.load({ policyFile: await wasmFile, poolSize: 1 });

policyEngineContract('builtin', builtin);
policyEngineContract('opa', opa);

describe('builtin and OPA agree', () => {
  it.each(CONTRACT_CASES)('$name: same decision document', async ({ input }) => {
    const [a, b] = await Promise.all([builtin(), opa()]);
    const [da, db] = await Promise.all([new DecisionPoint(a).decide(input), new DecisionPoint(b).decide(input)]);
    expect(decisionKeys(da)).toEqual(decisionKeys(db));
    expect({ allow: da.allow, scopes: da.scopes, ttl: da.max_ttl_seconds }).toEqual({ allow: db.allow, scopes: db.scopes, ttl: db.max_ttl_seconds });
  });
});
