/**
 * Reads OPA bundles as written by `opa build -t wasm -e <entrypoint>`: a
 * gzip'd tar with /policy.wasm, /data.json (and nested <path>/data.json),
 * /.manifest and the Rego sources (ignored here). The tar reader handles
 * ustar, PAX `path` records and GNU long names, which is all Go's
 * archive/tar emits; no dependency needed.
 * Bundle format reference: https://www.openpolicyagent.org/docs/management-bundles
 */
import { gunzipSync } from 'node:zlib';
import { parse as parseYaml } from 'yaml';

/** Largest decompressed bundle accepted (a gzip bomb must not take the broker down). */
export const MAX_BUNDLE_BYTES = 64 * 1024 * 1024;

export interface OpaBundle {
  wasm: Uint8Array;
  /** Merged data documents, each placed at its directory path. */
  data: Record<string, unknown>;
  manifest: { revision?: string; roots?: string[]; wasm?: Array<{ entrypoint?: string; module?: string }> } | null;
}

function cstr(b: Buffer, start: number, len: number): string {
  const slice = b.subarray(start, start + len);
  const nul = slice.indexOf(0);
  return slice.subarray(0, nul === -1 ? slice.length : nul).toString('utf8');
}

function octal(b: Buffer, start: number, len: number, what: string): number {
  if ((b[start]! & 0x80) !== 0) throw new Error(`tar: base-256 ${what} not supported`);
  const s = cstr(b, start, len).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new Error(`tar: malformed ${what} field`);
  return parseInt(s, 8);
}

function normalise(name: string): string {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new Error(`tar: entry ${JSON.stringify(name)} escapes the bundle root`);
  return `/${parts.join('/')}`;
}

/** Regular files of a tar archive, keyed by normalised absolute path ("/policy.wasm"). */
export function readTar(tar: Buffer): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  let off = 0;
  let nextName: string | undefined;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((x) => x === 0)) break;
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
    if (sum !== octal(h, 148, 8, 'checksum')) throw new Error(`tar: bad header checksum at offset ${off}`);
    const size = octal(h, 124, 12, 'size');
    const type = String.fromCharCode(h[156]!);
    const bodyStart = off + 512;
    if (bodyStart + size > tar.length) throw new Error('tar: truncated archive');
    const body = tar.subarray(bodyStart, bodyStart + size);
    off = bodyStart + Math.ceil(size / 512) * 512;
    if (type === 'x') {
      // PAX records: "<len> <key>=<value>\n"; only `path` matters here.
      const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(body.toString('utf8'));
      if (m) nextName = m[1];
      continue;
    }
    if (type === 'L') {
      nextName = cstr(body, 0, body.length);
      continue;
    }
    if (type === 'g') continue;
    const prefix = cstr(h, 257, 6) === 'ustar' ? cstr(h, 345, 155) : '';
    const name = nextName ?? (prefix ? `${prefix}/${cstr(h, 0, 100)}` : cstr(h, 0, 100));
    nextName = undefined;
    if (type === '0' || type === '\0') files.set(normalise(name), Buffer.from(body));
  }
  return files;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Deep-merges `src` into `dst` (objects merge, anything else from `src` wins). Returns `dst`. */
export function mergeData(dst: Record<string, unknown>, src: Record<string, unknown>): Record<string, unknown> {
  for (const [k, v] of Object.entries(src)) {
    const cur = dst[k];
    dst[k] = isObject(cur) && isObject(v) ? mergeData({ ...cur }, v) : v;
  }
  return dst;
}

/** Parses a gzip'd OPA bundle; throws naming what is missing or malformed. */
export function parseOpaBundle(gz: Buffer): OpaBundle {
  let tar: Buffer;
  try {
    tar = gunzipSync(gz, { maxOutputLength: MAX_BUNDLE_BYTES });
  } catch (err) {
    throw new Error(`bundle is not valid gzip or exceeds ${MAX_BUNDLE_BYTES} bytes: ${(err as Error).message}`);
  }
  const files = readTar(tar);
  let manifest: OpaBundle['manifest'] = null;
  const rawManifest = files.get('/.manifest');
  if (rawManifest) {
    try {
      manifest = JSON.parse(rawManifest.toString('utf8')) as OpaBundle['manifest'];
    } catch {
      throw new Error('bundle .manifest is not valid JSON');
    }
  }
  const declared = (manifest?.wasm ?? []).map((w) => w.module).filter((m): m is string => typeof m === 'string');
  const wasmPaths = declared.length > 0 ? [...new Set(declared.map(normalise))] : [...files.keys()].filter((p) => p.endsWith('.wasm'));
  if (wasmPaths.length === 0) throw new Error('bundle contains no wasm module (build it with `opa build -t wasm`)');
  if (wasmPaths.length > 1) throw new Error(`bundle contains ${wasmPaths.length} wasm modules (${wasmPaths.join(', ')}); Mayfly loads exactly one`);
  const wasm = files.get(wasmPaths[0]!);
  if (!wasm) throw new Error(`bundle manifest names ${wasmPaths[0]} but the archive does not contain it`);

  const data: Record<string, unknown> = {};
  for (const [path, body] of [...files].sort(([a], [b]) => a.length - b.length)) {
    const m = /^(.*)\/data\.(json|ya?ml)$/.exec(path);
    if (!m) continue;
    let doc: unknown;
    try {
      doc = m[2] === 'json' ? JSON.parse(body.toString('utf8')) : parseYaml(body.toString('utf8'));
    } catch (err) {
      throw new Error(`bundle ${path} is not valid: ${(err as Error).message}`);
    }
    const segs = m[1]!.split('/').filter(Boolean);
    if (segs.length === 0) {
      if (!isObject(doc)) throw new Error(`bundle ${path} must hold an object`);
      mergeData(data, doc);
    } else {
      let wrapped: unknown = doc;
      for (const s of [...segs].reverse()) wrapped = { [s]: wrapped };
      mergeData(data, wrapped as Record<string, unknown>);
    }
  }
  return { wasm: new Uint8Array(wasm), data, manifest };
}
