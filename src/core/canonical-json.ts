// Shared by the audit chain and the policy digests, so both hash the same bytes for the same document.
/**
 * Canonical JSON: object keys sorted by UTF-16 code unit order, no
 * whitespace, JSON.stringify rules for everything else (toJSON honoured,
 * undefined/function members dropped). Stable across a JSON round trip for
 * plain JSON values, which is what `redact` produces.
 */
export function canonicalJson(value: unknown): string {
  const out = canon(value);
  // JSON.stringify(undefined) is undefined; a top-level hole still needs a string to hash.
  return out === undefined ? 'null' : out;
}

/**
 * One member of an object's canonical JSON, `"key":value`, or undefined for
 * a member canonicalJson drops (an undefined or function value). The
 * canonical JSON of an object is its members, sorted by key, joined by
 * commas inside braces; a value's text is the same wherever it appears, so
 * the same members in another order are a JSON text of the same value (the
 * audit log writes its lines that way, see audit/record.ts).
 */
export function canonicalMember(key: string, value: unknown): string | undefined {
  const v = canon(value);
  return v === undefined ? undefined : quoteKey(key) + ':' + v;
}

// Keys repeat across records; bounded so hostile key names cannot grow it forever.
const quotedKeys = new Map<string, string>();

function quoteKey(k: string): string {
  let q = quotedKeys.get(k);
  if (q === undefined) {
    q = JSON.stringify(k);
    if (quotedKeys.size < 4096) quotedKeys.set(k, q);
  }
  return q;
}

// Hand-rolled rather than map/join and JSON.stringify per primitive: this runs once per audit record on the request path.
function canon(value: unknown): string | undefined {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      // Same text as JSON.stringify (which also maps -0 to 0 and non-finite to null).
      return Number.isFinite(value) ? String(value) : 'null';
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      return JSON.stringify(value.toString());
    case 'object':
      break;
    default:
      return undefined;
  }
  if (typeof (value as { toJSON?: unknown }).toJSON === 'function') return canon((value as { toJSON: () => unknown }).toJSON());
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out += ',';
      out += canon(value[i]) ?? 'null';
    }
    return out + ']';
  }
  const keys = Object.keys(value as object).sort();
  let out = '{';
  let first = true;
  for (const k of keys) {
    const v = canon((value as Record<string, unknown>)[k]);
    if (v === undefined) continue;
    out += (first ? '' : ',') + quoteKey(k) + ':' + v;
    first = false;
  }
  return out + '}';
}
