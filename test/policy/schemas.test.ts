/**
 * docs/policy/*.schema.json must agree with src/core/decision.ts and with
 * checkDecision. Checked with a tiny validator for the keywords those two
 * schemas use (no JSON Schema dependency).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { DecisionInput } from '../../src/core/decision.js';
import { checkDecision, REGISTERED_CLAIMS } from '../../src/policy/decision-point.js';
import { mkInput } from './fixtures.js';

type Schema = Record<string, unknown>;
const load = (f: string) => JSON.parse(readFileSync(new URL(`../../docs/policy/${f}`, import.meta.url), 'utf8')) as Schema;
const inputSchema = load('input.schema.json');
const outputSchema = load('output.schema.json');

function typeOk(t: string, v: unknown): boolean {
  switch (t) {
    case 'object': return v !== null && typeof v === 'object' && !Array.isArray(v);
    case 'array': return Array.isArray(v);
    case 'integer': return Number.isInteger(v);
    default: return typeof v === t;
  }
}

/** Returns the JSON-pointer-ish paths that fail; [] means valid. */
function validate(s: Schema, v: unknown, path = '$'): string[] {
  const errs: string[] = [];
  const known = new Set(['$schema', '$id', 'title', 'description', 'type', 'const', 'enum', 'required', 'properties', 'additionalProperties', 'items', 'minimum', 'oneOf', 'not', 'propertyNames']);
  for (const k of Object.keys(s)) if (!known.has(k)) throw new Error(`validator does not support keyword ${k}`);
  if (s.type !== undefined && !typeOk(s.type as string, v)) return [`${path}: type`];
  if ('const' in s && v !== s.const) errs.push(`${path}: const`);
  if (s.enum && !(s.enum as unknown[]).includes(v)) errs.push(`${path}: enum`);
  if (s.minimum !== undefined && (v as number) < (s.minimum as number)) errs.push(`${path}: minimum`);
  if (s.oneOf && (s.oneOf as Schema[]).filter((o) => validate(o, v, path).length === 0).length !== 1) errs.push(`${path}: oneOf`);
  if (s.not && validate(s.not as Schema, v, path).length === 0) errs.push(`${path}: not`);
  if (s.items && Array.isArray(v)) v.forEach((x, i) => errs.push(...validate(s.items as Schema, x, `${path}[${i}]`)));
  if (typeOk('object', v)) {
    const o = v as Record<string, unknown>;
    for (const r of (s.required as string[] | undefined) ?? []) if (!(r in o)) errs.push(`${path}.${r}: required`);
    const props = (s.properties as Record<string, Schema> | undefined) ?? {};
    for (const [k, x] of Object.entries(o)) {
      if (s.propertyNames) errs.push(...validate(s.propertyNames as Schema, k, `${path}.${k}(name)`));
      if (k in props) errs.push(...validate(props[k]!, x, `${path}.${k}`));
      else if (s.additionalProperties === false) errs.push(`${path}.${k}: additional`);
      else if (typeof s.additionalProperties === 'object') errs.push(...validate(s.additionalProperties as Schema, x, `${path}.${k}`));
    }
  }
  return errs;
}

/** An input with every optional field set, so a field missing from the schema shows up. */
function fullInput(): DecisionInput {
  const i = mkInput({ depth: 1 });
  i.identity.issuer = 'https://issuer';
  i.identity.cert_sha256 = 'abc';
  Object.assign(i.request, { purpose: 'p', tool: 't', args_digest: 'd', labels: { a: 'b' }, task_ttl_seconds: 900 });
  i.context.peer = '10.0.0.1:1234';
  return i;
}

function keysDeep(v: unknown, path = ''): string[] {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return [];
  return Object.entries(v).flatMap(([k, x]) => [`${path}${k}`, ...(k === 'claims' || k === 'labels' ? [] : keysDeep(x, `${path}${k}.`))]);
}
function schemaKeys(s: Schema, path = ''): string[] {
  const props = (s.properties as Record<string, Schema> | undefined) ?? {};
  return Object.entries(props).flatMap(([k, x]) => [`${path}${k}`, ...(k === 'claims' || k === 'labels' ? [] : schemaKeys(x, `${path}${k}.`))]);
}

describe('input.schema.json', () => {
  it('accepts minimal and full inputs', () => {
    expect(validate(inputSchema, mkInput())).toEqual([]);
    expect(validate(inputSchema, mkInput({ kind: 'oidc', claims: { sub: 'x', n: 1 } }))).toEqual([]);
    expect(validate(inputSchema, fullInput())).toEqual([]);
  });
  it('names exactly the fields of DecisionInput', () => {
    expect(schemaKeys(inputSchema).sort()).toEqual(keysDeep(fullInput()).sort());
  });
  it.each([
    ['wrong version', (i: Record<string, any>) => { i.version = 'v2'; }],
    ['unknown action', (i: Record<string, any>) => { i.request.action = 'nuke'; }],
    ['missing context', (i: Record<string, any>) => { delete i.context; }],
    ['extra field', (i: Record<string, any>) => { i.identity.extra = 1; }],
    ['non-string label', (i: Record<string, any>) => { i.request.labels = { a: 1 }; }],
  ])('rejects %s', (_n, mutate) => {
    const i = fullInput() as unknown as Record<string, any>;
    mutate(i);
    expect(validate(inputSchema, i)).not.toEqual([]);
  });
});

describe('output.schema.json agrees with checkDecision', () => {
  const input = mkInput({ scopes: ['read', 'write'] });
  const samples: unknown[] = [
    true, false, { allow: true }, { allow: false, reasons: ['x'] },
    { allow: true, scopes: ['read'], max_ttl_seconds: 60, reasons: [], claims: { team: 'a' } },
    { allow: true, max_ttl_seconds: 60, max_task_ttl_seconds: 900 }, { allow: true, max_task_ttl_seconds: 0 }, { allow: true, max_task_ttl_seconds: '900' },
    { allow: 'yes' }, { reasons: [] }, { allow: true, max_ttl_seconds: 0 }, { allow: true, max_ttl_seconds: 1.5 },
    { allow: true, scopes: 'read' }, { allow: true, reasons: [1] }, { allow: true, claims: [] }, { allow: true, extra: 1 },
    ...[...REGISTERED_CLAIMS].map((c) => ({ allow: true, claims: { [c]: 'x' } })),
    null, 'allow', 1, [],
  ];
  it.each(samples.map((s) => [JSON.stringify(s), s]))('%s', (_n, s) => {
    // Scope subset is the one rule JSON Schema cannot express; samples only use requested scopes.
    expect(checkDecision(input, s).ok).toBe(validate(outputSchema, s).length === 0);
  });
});
