/**
 * Canonical JSON and SHA-256 digests for policy revisions and audit records.
 * Canonical form: object keys sorted by UTF-16 code unit order, no whitespace,
 * `undefined` members dropped (as JSON.stringify does); the same document
 * always hashes the same whatever order its keys were written in.
 */
import { createHash } from 'node:crypto';
import { canonicalJson } from '../core/canonical-json.js';

export { canonicalJson };

/** SHA-256 (hex) of raw policy bytes: a wasm module, a bundle or a rules file. */
export function hashPolicy(buf: Uint8Array | string): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** SHA-256 (hex) of the canonical JSON of a decision input, recorded in audit instead of the input itself. */
export function inputDigest(input: unknown): string {
  return hashPolicy(canonicalJson(input));
}
