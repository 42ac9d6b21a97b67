/**
 * Canonical JSON and SHA-256 digests for policy revisions and audit records.
 * Canonical form: object keys sorted by UTF-16 code unit order, no whitespace,
 * `undefined` members dropped (as JSON.stringify does); the same document
 * always hashes the same whatever order its keys were written in.
 */
import { sha256Hex } from '../tokens/hashes.js';
import { canonicalJson } from '../core/canonical-json.js';
import type { DecisionInput } from '../core/decision.js';

export { canonicalJson };

/** SHA-256 (hex) of raw policy bytes: a wasm module, a bundle or a rules file. */
export function hashPolicy(buf: Uint8Array | string): string {
  return sha256Hex(buf);
}

/** SHA-256 (hex) of the canonical JSON of a decision input, recorded in audit instead of the input itself. */
export function inputDigest(input: unknown): string {
  return hashPolicy(canonicalJson(input));
}

/**
 * inputDigest of a decision input, the same bytes hashed, without
 * re-serialising the caller's identity on every request: its canonical JSON
 * is remembered per claims object (a verified identity's claims are built
 * once per credential and never changed) together with the scalar fields it
 * was made from, so a different kind, id, method, trust domain, issuer or
 * certificate with the same claims object is serialised afresh.
 */
export function decisionInputDigest(input: DecisionInput): string {
  const { context, identity, request, task, version, ...rest } = input;
  // Members beyond the contract's five (none today) take the general path, so the digest never silently ignores one.
  if (Object.keys(rest).length > 0 || context === undefined || request === undefined || version === undefined || identity === null || typeof identity !== 'object') return inputDigest(input);
  let out = '{"context":' + canonicalJson(context) + ',"identity":' + identityJson(identity) + ',"request":' + canonicalJson(request);
  if (task !== undefined) out += ',"task":' + canonicalJson(task);
  return hashPolicy(out + ',"version":' + canonicalJson(version) + '}');
}

const identityMemo = new WeakMap<object, { key: string; json: string }>();

function identityJson(identity: DecisionInput['identity']): string {
  const { claims } = identity;
  if (claims === null || typeof claims !== 'object') return canonicalJson(identity);
  const key = JSON.stringify([identity.kind, identity.id, identity.method, identity.trust_domain, identity.issuer, identity.cert_sha256, Object.keys(identity).length]);
  const hit = identityMemo.get(claims);
  if (hit !== undefined && hit.key === key) return hit.json;
  const json = canonicalJson(identity);
  identityMemo.set(claims, { key, json });
  return json;
}
