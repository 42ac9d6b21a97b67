/** Pure request validators. Each throws a MayflyError naming the field. */
import { mayflyError } from '../core/errors.js';

export const LIMITS = {
  purposeMax: 256,
  audienceMax: 256,
  scopeMax: 128,
  scopesMax: 32,
  labelsMax: 32,
  labelKeyMax: 63,
  labelValueMax: 256,
  idMax: 64,
  toolMax: 128,
  argsDigestMax: 128,
  actorMax: 256,
} as const;

const CONTROL = /[\u0000-\u001f\u007f]/;
// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]+$/;
const LABEL_KEY = /^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?$/;
const OPAQUE_ID = /^[A-Za-z0-9_-]+$/;
const DIGEST = /^[A-Za-z0-9+/=_:.-]+$/;

/** A free-text field: trimmed, non-empty, bounded, no control characters. */
export function text(field: string, v: unknown, max: number, required = true): string {
  if (v === undefined || v === null || v === '') {
    if (required) throw mayflyError('ERR_INVALID_ARGUMENT', `${field} is required`, { field });
    return '';
  }
  if (typeof v !== 'string') throw mayflyError('ERR_INVALID_ARGUMENT', `${field} must be a string`, { field });
  const s = v.trim();
  if (s.length === 0 && required) throw mayflyError('ERR_INVALID_ARGUMENT', `${field} is required`, { field });
  if (s.length > max) throw mayflyError('ERR_TOO_LARGE', `${field} is longer than ${max} characters`, { field });
  if (CONTROL.test(s)) throw mayflyError('ERR_INVALID_ARGUMENT', `${field} contains control characters`, { field });
  return s;
}

/** An audience: a non-empty string without whitespace (a URI or a logical name). */
export function audience(v: unknown): string {
  const s = text('audience', v, LIMITS.audienceMax);
  if (/\s/.test(s)) throw mayflyError('ERR_AUDIENCE_INVALID', 'audience must not contain whitespace', { field: 'audience' });
  return s;
}

/** Scope tokens per RFC 6749 §3.3, de-duplicated, order kept. */
export function scopes(v: unknown, field = 'scopes'): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw mayflyError('ERR_SCOPE_INVALID', `${field} must be a list of strings`, { field });
  if (v.length > LIMITS.scopesMax) throw mayflyError('ERR_TOO_LARGE', `at most ${LIMITS.scopesMax} ${field} may be requested`, { field });
  const out: string[] = [];
  for (const s of v) {
    if (typeof s !== 'string' || s.length === 0 || s.length > LIMITS.scopeMax || !SCOPE_TOKEN.test(s)) {
      throw mayflyError('ERR_SCOPE_INVALID', `${field} contains an invalid scope token ${JSON.stringify(String(s).slice(0, 40))} (RFC 6749 §3.3)`, { field });
    }
    if (!out.includes(s)) out.push(s);
  }
  return out;
}

/** Space-separated scope string (OAuth form) to a list. */
export function scopeString(v: unknown): string[] {
  if (v === undefined || v === null || v === '') return [];
  if (typeof v !== 'string') throw mayflyError('ERR_SCOPE_INVALID', 'scope must be a space-separated string', { field: 'scope' });
  return scopes(v.split(' ').filter(Boolean), 'scope');
}

/** Labels: bounded map of lowercase keys to short strings. */
export function labels(v: unknown): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw mayflyError('ERR_INVALID_ARGUMENT', 'labels must be a map of strings', { field: 'labels' });
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > LIMITS.labelsMax) throw mayflyError('ERR_TOO_LARGE', `at most ${LIMITS.labelsMax} labels are allowed`, { field: 'labels' });
  const out: Record<string, string> = {};
  for (const [k, val] of entries) {
    if (k.length > LIMITS.labelKeyMax || !LABEL_KEY.test(k)) {
      throw mayflyError('ERR_INVALID_ARGUMENT', `label key ${JSON.stringify(k.slice(0, 70))} must be lowercase [a-z0-9._/-], at most ${LIMITS.labelKeyMax} characters`, { field: 'labels' });
    }
    out[k] = text(`labels.${k}`, val, LIMITS.labelValueMax, false);
  }
  return out;
}

/** An opaque broker-issued id (task id, token id). */
export function opaqueId(field: string, v: unknown): string {
  const s = text(field, v, LIMITS.idMax);
  if (!OPAQUE_ID.test(s)) throw mayflyError('ERR_INVALID_ARGUMENT', `${field} is not a valid id`, { field });
  return s;
}

/** Optional digest string (tool argument digests). */
export function digest(field: string, v: unknown): string | null {
  const s = text(field, v, LIMITS.argsDigestMax, false);
  if (!s) return null;
  if (!DIGEST.test(s)) throw mayflyError('ERR_INVALID_ARGUMENT', `${field} must be a hash such as sha256:<hex>`, { field });
  return s;
}

/**
 * A requested lifetime in seconds: 0/absent means `def`; above `hardMax` is
 * rejected (an absurd request is a client bug worth surfacing, not clamping).
 */
export function ttlSeconds(field: string, v: unknown, def: number, hardMax: number): number {
  if (typeof v === 'bigint') {
    // 64-bit wire fields arrive whole: a value past the maximum is refused, never cut or wrapped.
    if (v < 0n || v > BigInt(hardMax)) throw mayflyError('ERR_TTL_INVALID', `${field} ${v} exceeds the maximum of ${hardMax} seconds`, { field });
    v = Number(v);
  }
  if (v === undefined || v === null || v === 0) return def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw mayflyError('ERR_TTL_INVALID', `${field} must be a positive whole number of seconds`, { field });
  if (v > hardMax) throw mayflyError('ERR_TTL_INVALID', `${field} ${v} exceeds the maximum of ${hardMax} seconds`, { field });
  return v;
}

/** A lifetime sent as text (an OAuth form field): whole seconds, or absent. */
export function wholeSeconds(field: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  if (!/^\d{1,9}$/.test(raw)) throw mayflyError('ERR_TTL_INVALID', `${field} must be whole seconds`, { field });
  return Number(raw);
}

/**
 * A feed cursor: a whole number from 0 to 2^53 - 1, as a number, a uint64
 * (bigint) or decimal text (Last-Event-ID). Anything else, or past the
 * range, is refused rather than read as 0 or rounded.
 */
export function cursor(field: string, v: unknown): number {
  if (v === undefined || v === null || v === '') return 0;
  let n: bigint;
  if (typeof v === 'bigint') n = v;
  else if (typeof v === 'number' && Number.isInteger(v)) n = BigInt(v);
  else if (typeof v === 'string' && /^\d{1,20}$/.test(v)) n = BigInt(v);
  else throw mayflyError('ERR_INVALID_ARGUMENT', `${field} must be a whole number`, { field });
  if (n < 0n || n > BigInt(Number.MAX_SAFE_INTEGER)) throw mayflyError('ERR_INVALID_ARGUMENT', `${field} ${n} is out of range (0 to ${Number.MAX_SAFE_INTEGER})`, { field });
  return Number(n);
}
