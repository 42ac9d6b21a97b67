/**
 * Contract every PolicyEngine passes. The factory returns
 * an engine loaded with the reference "demo" policy, in whatever language
 * the engine speaks:
 *
 *   spiffe://example.org/demo/workload may begin tasks (max 3600 s) and get
 *   tokens for audience demo-api with scopes read/write (max 600 s); anything
 *   else is denied with at least one reason.
 *
 * Decisions go through the DecisionPoint, as in the broker, so the suite
 * pins the decision document shape all engines share.
 */
import { describe, expect, it } from 'vitest';
import type { Decision } from '../../src/core/decision.js';
import type { PolicyEngine } from '../../src/core/ports.js';
import { DecisionPoint } from '../../src/policy/decision-point.js';
import { mkInput } from '../policy/fixtures.js';

export const DEMO = 'spiffe://example.org/demo/workload';

/** The cases and the decision every engine must reach. */
export const CONTRACT_CASES = [
  { name: 'full grant', input: mkInput({ scopes: ['read', 'write'] }), want: { allow: true, scopes: ['read', 'write'], max_ttl_seconds: 600 } },
  { name: 'narrowed grant', input: mkInput({ scopes: ['read', 'admin'] }), want: { allow: true, scopes: ['read'], max_ttl_seconds: 600 } },
  { name: 'begin task without audience', input: mkInput({ action: 'begin_task', audience: undefined, scopes: [] }), want: { allow: true, scopes: [], max_ttl_seconds: 3600 } },
  { name: 'wrong audience', input: mkInput({ audience: 'other-api' }), want: { allow: false } },
  { name: 'unknown workload', input: mkInput({ id: 'spiffe://example.org/stranger' }), want: { allow: false } },
  { name: 'no allowed scope', input: mkInput({ scopes: ['admin'] }), want: { allow: false } },
] as const;

const META_KEYS = ['engine', 'latencyUs', 'reasons', 'revision', 'source'];

/** Keys a decision of this kind carries; identical across engines. */
export function decisionKeys(d: Decision): string[] {
  return Object.keys(d).sort();
}

/** Registers the contract suite for one engine. */
export function policyEngineContract(label: string, factory: () => Promise<PolicyEngine>): void {
  describe(`PolicyEngine contract: ${label}`, () => {
    it('identifies itself and its revision', async () => {
      const e = await factory();
      expect(e.name).toMatch(/^[a-z][a-z0-9-]*$/);
      expect(e.revision()).toMatch(/^[0-9a-f]{64}$/);
      await e.close();
    });

    it.each(CONTRACT_CASES)('$name', async ({ input, want }) => {
      const e = await factory();
      const d = await new DecisionPoint(e).decide(input);
      expect(d).toMatchObject(want);
      expect(d.engine).toBe(e.name);
      expect(d.revision).toBe(e.revision());
      expect(typeof d.source).toBe('string');
      expect(d.source.length).toBeGreaterThan(0);
      expect(Number.isInteger(d.latencyUs) && d.latencyUs >= 0).toBe(true);
      expect(d.reasons.every((r) => typeof r === 'string')).toBe(true);
      if (d.allow) {
        expect(decisionKeys(d)).toEqual([...META_KEYS, 'allow', 'max_ttl_seconds', 'scopes'].sort());
        for (const s of d.scopes!) expect(input.request.scopes).toContain(s);
      } else {
        expect(decisionKeys(d)).toEqual([...META_KEYS, 'allow'].sort());
        expect(d.reasons.length).toBeGreaterThan(0);
      }
      await e.close();
    });

    it('is deterministic and does not mutate the input', async () => {
      const e = await factory();
      const input = CONTRACT_CASES[1].input;
      const before = JSON.stringify(input);
      const dp = new DecisionPoint(e);
      const a = await dp.decide(input);
      const b = await dp.decide(input);
      expect({ ...a, latencyUs: 0 }).toEqual({ ...b, latencyUs: 0 });
      expect(JSON.stringify(input)).toBe(before);
      await e.close();
    });
  });
}
