/**
 * Compact JWS (RFC 7515) on node:crypto KeyObjects, synchronous. Part of the
 * token format the broker and the verifier SDK share (with jwks.ts,
 * claims.ts, verify.ts and hashes.ts).
 *
 * Why not jose: `npm run bench` measures this path against jose's WebCrypto
 * path in the same run (bench/jws-compare.mjs, the "ES256 compact JWS" table):
 * per ES256 sign it costs well under half of jose's CPU, per verify about
 * half. jose's wall-clock rate can still look close, or higher, on an idle
 * machine, because WebCrypto work runs on the libuv thread pool; under load
 * every core is busy and CPU per token is what bounds throughput. So jose is
 * a devDependency: tests and the bench use it as an independent
 * implementation, and JWK import/export is node:crypto's own.
 *
 * Verification is two steps, as in jose: `decodeJws` parses and checks the
 * header shape, `verifyJwsSignature` checks the signature. Claims are
 * validated elsewhere as pure functions of (claims, now).
 */
import { createPublicKey, KeyObject, sign as cryptoSign, verify as cryptoVerify, type JsonWebKey } from 'node:crypto';
import { mayflyError } from '../core/errors.js';
import { assertKeyStrength } from '../core/key-policy.js';
import type { SigningAlg } from '../core/types.js';

/** Algorithms Mayfly accepts anywhere. Asymmetric only: no `none`, no HMAC (RFC 8725 §3.1–3.2). */
export const ASYMMETRIC_ALGS = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'EdDSA'] as const;
export type JwsAlg = (typeof ASYMMETRIC_ALGS)[number];

/** Largest compact JWS accepted anywhere (issue: tokens over 16 KiB are rejected). */
export const MAX_JWS_BYTES = 16 * 1024;

export function b64u(buf: Buffer | string): string {
  return (typeof buf === 'string' ? Buffer.from(buf) : buf).toString('base64url');
}

const B64U_RE = /^[A-Za-z0-9_-]*$/;
/** Three base64url parts: one scan of the whole token (the hot path), instead of one per part. */
const COMPACT_RE = /^[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$/;

/**
 * Decoding space for the JSON parts: a part is decoded into it and read out
 * as a string straight away (synchronously), so no per-token buffer is
 * allocated for bytes that only live until JSON.parse. Big enough for the
 * largest accepted token.
 */
const PART_SCRATCH = Buffer.allocUnsafe(MAX_JWS_BYTES);

/** The text of `token[start, end)`, a base64url part already known to be base64url. */
function partText(token: string, start: number, end: number): string {
  const n = PART_SCRATCH.write(token.slice(start, end), 0, 'base64url');
  return PART_SCRATCH.toString('utf8', 0, n);
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw mayflyError('ERR_JWT_INVALID', `malformed token: ${what} is not JSON`);
  }
}

export interface JwsHeader {
  alg: string;
  kid?: string;
  typ?: string;
  cty?: string;
  crit?: string[];
  [k: string]: unknown;
}

export interface DecodedJws {
  header: JwsHeader;
  payload: Record<string, unknown>;
  /** The bytes the signature covers (`header.payload`, ASCII). */
  readonly signingInput: Buffer;
  /** The signature part, base64url-decoded. */
  readonly signature: Buffer;
}

/**
 * What `decodeJws` returns: the token string and where its signature part
 * starts, so `verifyJwsSignature` can hand node:crypto the signing input and
 * signature from reused scratch memory instead of two new Buffers per token.
 * `signingInput` and `signature` are still there for any other reader, made
 * when first asked for. The token string is immutable, so a decoded token
 * stays valid across awaits (an OIDC subject token waits for its JWKS).
 */
class CompactJws implements DecodedJws {
  private input: Buffer | null = null;
  private sig: Buffer | null = null;
  constructor(
    readonly header: JwsHeader,
    readonly payload: Record<string, unknown>,
    /** The whole compact JWS. */
    readonly token: string,
    /** Index of the second dot: the signing input is `token[0, dot)`, the signature `token[dot + 1, end)`. */
    readonly dot: number,
  ) {}
  get signingInput(): Buffer {
    // The signing input is ASCII (base64url and a dot), so latin1 encodes it byte for byte, faster than utf8.
    return (this.input ??= Buffer.from(this.token.slice(0, this.dot), 'latin1'));
  }
  get signature(): Buffer {
    return (this.sig ??= Buffer.from(this.token.slice(this.dot + 1), 'base64url'));
  }
}

interface AlgParams {
  hash: string | null;
  dsaEncoding?: 'ieee-p1363';
  padding?: number;
  saltLength?: number;
  /** ECDSA: bytes of r (and of s) in the JWS signature, r || s (RFC 7518 §3.4). */
  ecdsaHalf?: number;
}

const RSA_PKCS1_PSS_PADDING = 6;

function algParams(alg: string): AlgParams {
  switch (alg) {
    case 'ES256':
      return { hash: 'sha256', dsaEncoding: 'ieee-p1363', ecdsaHalf: 32 };
    case 'ES384':
      return { hash: 'sha384', dsaEncoding: 'ieee-p1363', ecdsaHalf: 48 };
    case 'ES512':
      return { hash: 'sha512', dsaEncoding: 'ieee-p1363', ecdsaHalf: 66 };
    case 'RS256':
      return { hash: 'sha256' };
    case 'RS384':
      return { hash: 'sha384' };
    case 'RS512':
      return { hash: 'sha512' };
    case 'PS256':
      return { hash: 'sha256', padding: RSA_PKCS1_PSS_PADDING, saltLength: 32 };
    case 'PS384':
      return { hash: 'sha384', padding: RSA_PKCS1_PSS_PADDING, saltLength: 48 };
    case 'PS512':
      return { hash: 'sha512', padding: RSA_PKCS1_PSS_PADDING, saltLength: 64 };
    case 'EdDSA':
      return { hash: null };
    default:
      throw mayflyError('ERR_JWT_INVALID', `algorithm ${JSON.stringify(alg)} is not allowed`);
  }
}

/** Signs `header.payload` and returns the compact JWS. */
export function signCompact(header: JwsHeader, payload: object, key: KeyObject): string {
  const signingInput = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(payload))}`;
  const p = algParams(header.alg);
  const sig = cryptoSign(p.hash, Buffer.from(signingInput), { key, dsaEncoding: p.dsaEncoding, padding: p.padding, saltLength: p.saltLength });
  return `${signingInput}.${sig.toString('base64url')}`;
}

/** Builds a signing input for an external signer (KeyStore.signer). */
export function signingInputOf(header: JwsHeader, payload: object): string {
  return `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(payload))}`;
}

/** Raw signature over a signing input with a local key. */
export function rawSign(alg: SigningAlg | JwsAlg, signingInput: Buffer, key: KeyObject): Buffer {
  const p = algParams(alg);
  return cryptoSign(p.hash, signingInput, { key, dsaEncoding: p.dsaEncoding, padding: p.padding, saltLength: p.saltLength });
}

/** A token issuer uses a handful of distinct headers (one per key); their checked parse is reused. */
const HEADER_CACHE = new Map<string, JwsHeader>();
const HEADER_CACHE_MAX = 64;
/**
 * The header text last checked (without `understoodCrit`) and its parse: a
 * run of tokens from one issuer repeats it, and comparing it in place costs
 * less than slicing it out and hashing it for HEADER_CACHE. Only text that
 * passed the base64url check and `checkedHeader` gets here.
 */
let lastHeader: { text: string; header: JwsHeader } | null = null;
/** Payload and signature (from `lastIndex`) are base64url: the rest of COMPACT_RE once the header is known. */
const TAIL_RE = /[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$/y;

/** Parses and checks a JWS header: a JSON object, an asymmetric `alg`, no unknown `crit`, no nested JWT. */
function checkedHeader(h: string, understoodCrit: readonly string[] | undefined): JwsHeader {
  const cached = understoodCrit === undefined ? HEADER_CACHE.get(h) : undefined;
  if (cached !== undefined) return cached;
  const header = parseJson(partText(h, 0, h.length), 'header');
  if (!isPlainObject(header)) throw mayflyError('ERR_JWT_INVALID', 'malformed token: header is not a JSON object');
  const alg = header['alg'];
  if (typeof alg !== 'string') throw mayflyError('ERR_JWT_INVALID', 'malformed token: header has no alg');
  if (alg === 'none' || alg.startsWith('HS') || !(ASYMMETRIC_ALGS as readonly string[]).includes(alg)) {
    throw mayflyError('ERR_JWT_INVALID', `algorithm ${JSON.stringify(alg)} is not allowed (asymmetric algorithms only)`);
  }
  if (header['crit'] !== undefined) {
    const crit = header['crit'];
    if (!Array.isArray(crit) || crit.length === 0 || crit.some((c) => typeof c !== 'string')) {
      throw mayflyError('ERR_JWT_INVALID', 'malformed token: crit must be a non-empty array of strings');
    }
    const understood = understoodCrit ?? [];
    const unknown = (crit as string[]).filter((c) => !understood.includes(c));
    if (unknown.length > 0) throw mayflyError('ERR_JWT_INVALID', `token has critical header parameters this broker does not understand: ${unknown.join(', ')}`);
  }
  if (typeof header['cty'] === 'string' && header['cty'].toUpperCase() === 'JWT') {
    throw mayflyError('ERR_JWT_INVALID', 'nested JWTs are not accepted');
  }
  const checked = Object.freeze(header) as JwsHeader;
  if (understoodCrit === undefined) {
    if (HEADER_CACHE.size >= HEADER_CACHE_MAX) HEADER_CACHE.clear();
    HEADER_CACHE.set(h, checked);
  }
  return checked;
}

/** `checkedHeader` for the common case (no understoodCrit), remembered as the last header. */
function checkedHeaderText(h: string): JwsHeader {
  const header = checkedHeader(h, undefined);
  lastHeader = { text: h, header };
  return header;
}

/**
 * The payload of a compact JWS already decoded (and verified) once, parsed
 * again: for a verifier that keeps the token string rather than the parse.
 */
export function payloadOf(token: string): Record<string, unknown> {
  const a = token.indexOf('.');
  return parseJson(partText(token, a + 1, token.indexOf('.', a + 1)), 'payload') as Record<string, unknown>;
}

/**
 * Parses a compact JWS and checks the header's shape: size bound, three
 * parts, JSON objects, an asymmetric `alg`, no unknown `crit` (RFC 7515
 * §4.1.11), and no nested JWT (`cty: JWT`, RFC 7519 §5.2).
 */
export function decodeJws(token: string, options: { understoodCrit?: readonly string[] } = {}): DecodedJws {
  if (typeof token !== 'string' || token.length === 0) throw mayflyError('ERR_JWT_INVALID', 'malformed token: empty');
  if (token.length > MAX_JWS_BYTES) throw mayflyError('ERR_TOO_LARGE', `token exceeds ${MAX_JWS_BYTES} bytes`);
  const a = token.indexOf('.');
  const b = a < 0 ? -1 : token.indexOf('.', a + 1);
  if (b < 0 || token.indexOf('.', b + 1) !== -1) {
    throw mayflyError('ERR_JWT_INVALID', token.split('.').length === 5 ? 'encrypted tokens (JWE) are not accepted' : 'malformed token: expected three dot-separated parts');
  }
  // The same header as the last token's (compared in place) is known to be base64url and checked.
  const last = options.understoodCrit === undefined ? lastHeader : null;
  const known = last !== null && a === last.text.length && token.startsWith(last.text);
  if (known) TAIL_RE.lastIndex = a + 1;
  if (!(known ? TAIL_RE.test(token) : COMPACT_RE.test(token))) {
    const bad = !B64U_RE.test(token.slice(0, a)) ? 'header' : !B64U_RE.test(token.slice(a + 1, b)) ? 'payload' : 'signature';
    throw mayflyError('ERR_JWT_INVALID', `malformed token: ${bad} is not base64url`);
  }
  // The signature is the one part its own signature does not cover: with unused low bits in its last character it
  // could be respelled (16 ways for ES256) and still verify, one token with several strings. Only the canonical
  // spelling (RFC 4648 section 3.5, unused bits zero) is accepted.
  if (!canonicalTail(token, b + 1)) throw mayflyError('ERR_JWT_INVALID', 'malformed token: signature is not canonical base64url');
  const header = known ? last.header : options.understoodCrit === undefined ? checkedHeaderText(token.slice(0, a)) : checkedHeader(token.slice(0, a), options.understoodCrit);
  const payload = parseJson(partText(token, a + 1, b), 'payload');
  if (!isPlainObject(payload)) throw mayflyError('ERR_JWT_INVALID', 'malformed token: payload is not a JSON object');
  return new CompactJws(header, payload as Record<string, unknown>, token, b);
}

const B64U_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Whether the base64url text from `start` to the end of `s` (already checked to be base64url) has its unused bits zero. */
function canonicalTail(s: string, start: number): boolean {
  const n = s.length - start;
  if (n === 0) return true;
  const rem = n % 4;
  if (rem === 0) return true;
  if (rem === 1) return false; // 6 bits cannot end a byte
  const v = B64U_ALPHABET.indexOf(s[s.length - 1]!);
  return v % (rem === 2 ? 16 : 4) === 0;
}

/**
 * Checks the signature of a decoded JWS with a public key. The key's type
 * must fit the algorithm (so an RSA or EC public key can never be used as an
 * HMAC secret). Always the same message on failure: it leaks nothing.
 */
export function verifyJwsSignature(jws: DecodedJws, key: KeyObject): void {
  const alg = jws.header.alg;
  let fit = KEY_FITS.get(key);
  if (fit === undefined || fit.alg !== alg) {
    if (key.type !== 'public') throw mayflyError('ERR_JWT_SIGNATURE', 'signature verification failed');
    // One policy for every key, whoever published it (OIDC JWKS, SPIFFE bundle, our own keys): a weak key is named as such.
    assertKeyStrength(key, 'token signing key');
    if (!keyFitsAlg(key, alg)) throw mayflyError('ERR_JWT_SIGNATURE', 'signature verification failed');
    const p = algParams(alg);
    fit = {
      alg,
      hash: p.hash,
      ecdsaHalf: p.ecdsaHalf ?? 0,
      // ECDSA signatures go to node:crypto in DER (see ecdsaDer), with the bare KeyObject; so do RSA PKCS#1 v1.5 and EdDSA.
      options: p.padding === undefined ? key : { key, padding: p.padding, saltLength: p.saltLength },
      p1363: { key, dsaEncoding: p.dsaEncoding, padding: p.padding, saltLength: p.saltLength },
    };
    KEY_FITS.set(key, fit);
  }
  let ok = false;
  try {
    ok = jws instanceof CompactJws ? verifyCompact(jws.token, jws.dot, fit) : cryptoVerify(fit.hash, jws.signingInput, fit.p1363, jws.signature);
  } catch {
    ok = false;
  }
  if (!ok) throw mayflyError('ERR_JWT_SIGNATURE', 'signature verification failed');
}

/**
 * Per public key: the algorithm it last passed the type, strength and fit
 * checks for, and its node:crypto verify arguments. A KeyObject is immutable,
 * so the verdict holds for as long as the key lives, and a key that signs
 * every token is not re-inspected for each one.
 */
interface KeyFit {
  alg: string;
  hash: string | null;
  /** ECDSA: bytes of r and of s in the JWS signature; 0 for other algorithms. */
  ecdsaHalf: number;
  /** For a signature as verifyCompact passes it (DER for ECDSA). */
  options: KeyObject | { key: KeyObject; padding?: number; saltLength?: number };
  /** For a signature as the JWS carries it (r || s for ECDSA). */
  p1363: { key: KeyObject; dsaEncoding?: 'ieee-p1363'; padding?: number; saltLength?: number };
}
const KEY_FITS = new WeakMap<KeyObject, KeyFit>();

/**
 * Reused memory for the verify call: the signing input (latin1, at most a
 * whole token), the decoded signature (at most 3/4 of a token) and its DER
 * form. node:crypto reads them synchronously and keeps no reference; each is
 * overwritten by the next call.
 */
const INPUT_SCRATCH = Buffer.allocUnsafeSlow(MAX_JWS_BYTES);
const SIG_SCRATCH = Buffer.allocUnsafeSlow((MAX_JWS_BYTES * 3) / 4 + 3);
/** SEQUENCE { INTEGER r, INTEGER s } for the largest curve (P-521: 66-byte halves): 3 + 2 × (2 + 67) bytes. */
const DER_SCRATCH = Buffer.allocUnsafeSlow(3 + 2 * (2 + 67));
/**
 * Views of the scratch buffers by length, made once: tokens of one issuer
 * come in a handful of lengths, and a view costs an object per call
 * otherwise. Bounded: cleared when it grows past VIEWS_MAX lengths.
 */
const INPUT_VIEWS = new Map<number, Buffer>();
const SIG_VIEWS = new Map<number, Buffer>();
const DER_VIEWS = new Map<number, Buffer>();
const VIEWS_MAX = 256;

function viewOf(scratch: Buffer, views: Map<number, Buffer>, n: number): Buffer {
  let v = views.get(n);
  if (v === undefined) {
    if (views.size >= VIEWS_MAX) views.clear();
    v = scratch.subarray(0, n);
    views.set(n, v);
  }
  return v;
}

/**
 * Verifies `token[0, dot)` against the signature `token[dot + 1, end)`, both
 * already checked by decodeJws (base64url, canonical). Nothing is allocated
 * per token: node:crypto gets views of the scratch buffers. An ECDSA
 * signature is handed over in DER, converted here (a few byte copies): given
 * r || s with `dsaEncoding: 'ieee-p1363'`, node:crypto converts it through
 * OpenSSL's ASN.1 encoder on every call, about a microsecond of the ~70 of a
 * P-256 verify (perf, bench (h)).
 */
function verifyCompact(token: string, dot: number, fit: KeyFit): boolean {
  const sigLength = SIG_SCRATCH.write(token.slice(dot + 1), 0, 'base64url');
  let signature: Buffer;
  if (fit.ecdsaHalf > 0) {
    const der = ecdsaDer(SIG_SCRATCH, sigLength, fit.ecdsaHalf);
    if (der === 0) return false;
    signature = viewOf(DER_SCRATCH, DER_VIEWS, der);
  } else {
    signature = viewOf(SIG_SCRATCH, SIG_VIEWS, sigLength);
  }
  INPUT_SCRATCH.write(token, 0, dot, 'latin1'); // the first `dot` characters: ASCII, one byte each
  return cryptoVerify(fit.hash, viewOf(INPUT_SCRATCH, INPUT_VIEWS, dot), fit.options, signature);
}

/**
 * Writes the DER form (RFC 3279 §2.2.3 Ecdsa-Sig-Value, X.690 DER) of the
 * JWS ECDSA signature `sig[0, length)` = r || s, each `half` bytes (RFC 7518
 * §3.4), into DER_SCRATCH and returns its length; 0 when `length` is not
 * exactly 2 × half, which fails the verification (fail closed, as
 * node:crypto's own conversion does). Each INTEGER is minimal: leading zero
 * bytes dropped (one kept for zero), one zero byte put back when the high bit
 * is set, since DER integers are signed. Exported for tests only.
 */
export function ecdsaDer(sig: Uint8Array, length: number, half: number, out: Uint8Array = DER_SCRATCH): number {
  if (length !== 2 * half) return 0;
  let r = 0;
  while (r < half - 1 && sig[r] === 0) r++;
  let s = half;
  while (s < 2 * half - 1 && sig[s] === 0) s++;
  const rPad = sig[r]! & 0x80 ? 1 : 0;
  const sPad = sig[s]! & 0x80 ? 1 : 0;
  const rLen = half - r + rPad;
  const sLen = 2 * half - s + sPad;
  const body = 4 + rLen + sLen;
  let o = 0;
  out[o++] = 0x30;
  if (body > 0x7f) out[o++] = 0x81; // long form: one length byte (body ≤ 138 for P-521)
  out[o++] = body;
  out[o++] = 0x02;
  out[o++] = rLen;
  if (rPad) out[o++] = 0;
  for (let i = r; i < half; i++) out[o++] = sig[i]!;
  out[o++] = 0x02;
  out[o++] = sLen;
  if (sPad) out[o++] = 0;
  for (let i = s; i < 2 * half; i++) out[o++] = sig[i]!;
  return o;
}

/** True if the key type and curve match the JWS algorithm (RFC 7518 §3); strength is core/key-policy.ts's job. */
export function keyFitsAlg(key: KeyObject, alg: string): boolean {
  const t = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  switch (alg) {
    case 'ES256':
      return t === 'ec' && curve === 'prime256v1';
    case 'ES384':
      return t === 'ec' && curve === 'secp384r1';
    case 'ES512':
      return t === 'ec' && curve === 'secp521r1';
    case 'RS256':
    case 'RS384':
    case 'RS512':
    case 'PS256':
    case 'PS384':
    case 'PS512':
      return t === 'rsa' || t === 'rsa-pss';
    case 'EdDSA':
      return t === 'ed25519' || t === 'ed448';
    default:
      return false;
  }
}

/** Imports a public JWK; throws ERR_KEY_UNKNOWN for private, symmetric or malformed keys. */
export function publicKeyFromJwk(jwk: Record<string, unknown>): KeyObject {
  if (jwk['kty'] === 'oct') throw mayflyError('ERR_KEY_UNKNOWN', 'symmetric keys are not accepted in a JWKS');
  const pub: Record<string, unknown> = { ...jwk };
  for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']) delete pub[priv];
  try {
    return createPublicKey({ key: pub as JsonWebKey, format: 'jwk' });
  } catch (cause) {
    throw mayflyError('ERR_KEY_UNKNOWN', 'a key in the JWKS could not be imported', undefined, cause);
  }
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
