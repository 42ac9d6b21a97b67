/**
 * Canonical JSON and SHA-256 digests for policy revisions and audit records.
 * Canonical form: object keys sorted by UTF-16 code unit order, no whitespace,
 * `undefined` members dropped (as JSON.stringify does); the same document
 * always hashes the same whatever order its keys were written in.
 */
import { createHash } from 'node:crypto';

/** Serialises `value` as JSON with object keys sorted recursively. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value)) ?? 'null';
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : sortKeys(v)));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = sortKeys(v);
    }
    return out;
  }
  return value;
}

/** SHA-256 (hex) of raw policy bytes: a wasm module, a bundle or a rules file. */
export function hashPolicy(buf: Uint8Array | string): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** SHA-256 (hex) of the canonical JSON of a decision input, recorded in audit instead of the input itself. */
export function inputDigest(input: unknown): string {
  return hashPolicy(canonicalJson(input));
}
