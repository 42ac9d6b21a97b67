/**
 * SPIFFE ID parsing per the SPIFFE ID standard (SPIFFE-ID.md §2). Strict on
 * purpose: the ID becomes the token's `sub` and the input to policy, so two
 * spellings of one workload must never both be accepted.
 */
import { mayflyError } from '../core/errors.js';

/** A parsed, canonical SPIFFE ID. */
export interface SpiffeId {
  readonly trustDomain: string;
  /** '' for a trust-domain ID, otherwise '/seg/seg'. */
  readonly path: string;
  toString(): string;
}

const SCHEME = 'spiffe://';
// SPIFFE-ID §2.3: implementations must support IDs up to 2048 bytes; we accept no more.
export const MAX_SPIFFE_ID_BYTES = 2048;
// SPIFFE-ID §2.3: the trust domain is a URI host, at most 255 bytes (RFC 3986).
const MAX_TRUST_DOMAIN_BYTES = 255;
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const PATH_SEGMENT_CHARS = /^[A-Za-z0-9._-]+$/;

function invalid(input: string, problem: string): never {
  throw mayflyError('ERR_SPIFFE_ID_INVALID', `invalid SPIFFE ID: ${problem}`, { value: input.length > 256 ? `${input.slice(0, 256)}...` : input });
}

class ParsedSpiffeId implements SpiffeId {
  constructor(
    readonly trustDomain: string,
    readonly path: string,
  ) {}
  toString(): string {
    return `${SCHEME}${this.trustDomain}${this.path}`;
  }
  toJSON(): string {
    return this.toString();
  }
}

/** Checks a bare trust domain name (SPIFFE-ID §2.1) and returns it unchanged. */
export function parseTrustDomain(td: string): string {
  if (typeof td !== 'string' || td.length === 0) invalid(String(td), 'trust domain is empty');
  if (td.length > MAX_TRUST_DOMAIN_BYTES) invalid(td, `trust domain exceeds ${MAX_TRUST_DOMAIN_BYTES} bytes`);
  if (!TRUST_DOMAIN_CHARS.test(td)) {
    const hint = /[A-Z]/.test(td) ? ' (uppercase is not allowed; use lowercase)' : '';
    invalid(td, `trust domain ${JSON.stringify(td)} may only contain lowercase letters, digits, '.', '-' and '_'${hint}`);
  }
  return td;
}

/** Parses and validates a SPIFFE ID string (SPIFFE-ID §2); throws ERR_SPIFFE_ID_INVALID naming the problem. */
export function parseSpiffeId(s: string): SpiffeId {
  if (typeof s !== 'string' || s.length === 0) invalid(String(s ?? ''), 'empty');
  if (Buffer.byteLength(s, 'utf8') > MAX_SPIFFE_ID_BYTES) invalid(s, `longer than ${MAX_SPIFFE_ID_BYTES} bytes (SPIFFE-ID §2.3)`);
  // SPIFFE-ID §2: the scheme is exactly `spiffe`; we do not case-fold, so one workload has one spelling.
  if (!s.startsWith(SCHEME)) {
    if (s.toLowerCase().startsWith(SCHEME)) invalid(s, "scheme must be lowercase 'spiffe'");
    invalid(s, "scheme must be 'spiffe://'");
  }
  const rest = s.slice(SCHEME.length);
  // SPIFFE-ID §2: no query and no fragment component.
  if (rest.includes('?')) invalid(s, 'query is not allowed');
  if (rest.includes('#')) invalid(s, 'fragment is not allowed');
  const slash = rest.indexOf('/');
  const authority = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? '' : rest.slice(slash);
  if (authority.length === 0) invalid(s, 'trust domain is missing');
  // SPIFFE-ID §2.1: userinfo and port must not be set and the ':' delimiter must not be present.
  if (authority.includes('@')) invalid(s, 'userinfo is not allowed in the trust domain');
  if (authority.includes(':')) invalid(s, 'port is not allowed in the trust domain');
  parseTrustDomain(authority);
  if (path.length > 0) {
    const segments = path.slice(1).split('/');
    for (const seg of segments) {
      // SPIFFE-ID §2.2 (and go-spiffe): no empty segments, so no '//' and no trailing '/'.
      if (seg.length === 0) invalid(s, path.endsWith('/') ? 'path must not end with a trailing /' : 'path contains an empty segment (//)');
      // Dot segments would make two IDs denote one path after normalisation.
      if (seg === '.' || seg === '..') invalid(s, `path contains a dot segment ${JSON.stringify(seg)}`);
      if (!PATH_SEGMENT_CHARS.test(seg)) {
        invalid(s, `path segment ${JSON.stringify(seg)} may only contain letters, digits, '.', '-' and '_'${seg.includes('%') ? ' (percent-encoding is not allowed)' : ''}`);
      }
    }
  }
  return new ParsedSpiffeId(authority, path);
}

/** The trust-domain SPIFFE ID (`spiffe://td`) for a trust domain name. */
export function trustDomainId(td: string): SpiffeId {
  return new ParsedSpiffeId(parseTrustDomain(td), '');
}
