/**
 * Builds OPA-ABI policy modules from runtime.wat at test time with wabt, and
 * OPA bundles (tar + gzip) the way `opa build -t wasm` lays them out. The
 * modules are real WebAssembly driven through the real SDK; only the "Rego"
 * is replaced by marker matching (see runtime.wat).
 */
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import wabtInit from 'wabt';

/** What a matching rule does. */
export type WasmAction =
  /** Returns [{"result": value}]. */
  | { result: unknown }
  /** Returns these exact bytes as the serialized result set (may be malformed on purpose). */
  | { resultSet: string }
  /** Executes `unreachable`: a wasm trap mid-evaluation. */
  | { trap: true }
  /** Calls env.opa_abort(msg), as OPA modules do on runtime errors. */
  | { abort: string }
  /** Calls env.opa_builtin1(id, 0, arg) and returns [{"result": <builtin result>}]. */
  | { builtin: number; arg: unknown };

export interface WasmRule {
  /** Marker bytes looked for in the serialized input (or data). */
  when: string;
  in?: 'input' | 'data';
  /** Only for this entrypoint id (any when absent). */
  entrypoint?: number;
  then: WasmAction;
}

export interface OpaWasmSpec {
  abiMajor?: number;
  /** 1 = ABI 1.1 (no opa_eval export); 2+ exports the opa_eval fast path. Default 2. */
  abiMinor?: number;
  /** Default {"mayfly/authz/decision": 0}. */
  entrypoints?: Record<string, number>;
  /** Builtins the module needs from the host, name -> id. Default {}. */
  builtins?: Record<string, number>;
  rules?: WasmRule[];
  /** When no rule matches. Default: empty result set (undefined decision). */
  otherwise?: WasmAction;
}

const RUNTIME = readFileSync(new URL('./runtime.wat', import.meta.url), 'utf8');
let wabtPromise: ReturnType<typeof wabtInit> | undefined;

class Layout {
  private off = 16; // keep 0 as the null value
  readonly segments: string[] = [];

  bytes(data: Uint8Array): number {
    const at = this.off;
    const esc = [...data].map((b) => `\\${b.toString(16).padStart(2, '0')}`).join('');
    this.segments.push(`  (data (i32.const ${at}) "${esc}")`);
    this.off = (at + data.length + 7) & ~7;
    return at;
  }

  cstring(s: string): number {
    return this.bytes(Buffer.from(`${s}\0`));
  }

  /** A static value: bytes + {ptr, len} header; returns the header address. */
  value(json: string): number {
    const body = Buffer.from(json);
    const ptr = this.bytes(body);
    const hdr = Buffer.alloc(8);
    hdr.writeUInt32LE(ptr, 0);
    hdr.writeUInt32LE(body.length, 4);
    return this.bytes(hdr);
  }

  get end(): number {
    return this.off;
  }
}

function actionCode(a: WasmAction, L: Layout): string {
  if ('trap' in a) return '(unreachable)';
  if ('abort' in a) return `(call $opa_abort (i32.const ${L.cstring(a.abort)})) (unreachable)`;
  if ('builtin' in a) {
    return `(return (call $wrap (call $opa_builtin1 (i32.const ${a.builtin}) (i32.const 0) (i32.const ${L.value(JSON.stringify(a.arg))}))))`;
  }
  const bytes = 'resultSet' in a ? a.resultSet : JSON.stringify([{ result: a.result }]);
  return `(return (i32.const ${L.value(bytes)}))`;
}

/** Renders the WAT text for a spec (exported so failures can be inspected). */
export function renderOpaWat(spec: OpaWasmSpec): string {
  const L = new Layout();
  const minor = spec.abiMinor ?? 2;
  const emptySet = L.value('[]');
  const vars: Record<string, string | number> = {
    ABI_MAJOR: spec.abiMajor ?? 1,
    ABI_MINOR: minor,
    OOM_MSG: L.cstring('out of memory'),
    EMPTY_SET: emptySet,
    WRAP_PREFIX: L.bytes(Buffer.from('[{"result":')),
    WRAP_SUFFIX: L.bytes(Buffer.from('}]')),
    ENTRYPOINTS: L.value(JSON.stringify(spec.entrypoints ?? { 'mayfly/authz/decision': 0 })),
    BUILTINS: L.value(JSON.stringify(spec.builtins ?? {})),
    OPA_EVAL_EXPORT: minor >= 2 ? '  (export "opa_eval" (func $opa_eval))' : '  ;; ABI 1.1: no opa_eval export',
  };
  const lines: string[] = [];
  for (const r of spec.rules ?? []) {
    const marker = L.value(r.when);
    let cond = `(call $has (local.get ${r.in === 'data' ? '$data' : '$in'}) (i32.const ${marker}))`;
    if (r.entrypoint !== undefined) cond = `(i32.and (i32.eq (local.get $ep) (i32.const ${r.entrypoint})) ${cond})`;
    lines.push(`    (if ${cond} (then ${actionCode(r.then, L)}))`);
  }
  lines.push(`    ${spec.otherwise ? actionCode(spec.otherwise, L) : `(return (i32.const ${emptySet}))`}`);
  lines.push('    (i32.const 0)');
  vars.DECIDE = lines.join('\n');
  vars.DATA = L.segments.join('\n');
  vars.HEAP_START = (L.end + 1024 + 7) & ~7;
  if (L.end >= 2 * 65536) throw new Error('opa-wasm builder: static data exceeds the 2 initial pages');
  return RUNTIME.replace(/\{\{([A-Z_]+)\}\}/g, (_, k: string) => {
    if (!(k in vars)) throw new Error(`opa-wasm builder: no value for {{${k}}}`);
    return String(vars[k]);
  });
}

/** Compiles a spec to a wasm binary with wabt. */
export async function buildOpaWasm(spec: OpaWasmSpec): Promise<Uint8Array> {
  wabtPromise ??= wabtInit();
  const wabt = await wabtPromise;
  const mod = wabt.parseWat('policy.wat', renderOpaWat(spec));
  try {
    mod.validate();
    return new Uint8Array(mod.toBinary({}).buffer);
  } finally {
    mod.destroy();
  }
}

function tarHeader(name: string, size: number, type = '0'): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  h.write(`${Math.floor(Date.UTC(2026, 0, 1) / 1000).toString(8).padStart(11, '0')}\0`, 136);
  h.write('        ', 148); // checksum field counts as spaces while summing
  h.write(type, 156);
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return h;
}

function paxRecord(kv: string): string {
  let len = kv.length + 3;
  while (`${len} ${kv}\n`.length !== len) len++;
  return `${len} ${kv}\n`;
}

/**
 * A gzip'd ustar archive of `files` (paths like "/policy.wasm", as opa build
 * writes them). Names over 99 bytes get a PAX `path` record, as Go's
 * archive/tar does.
 */
export function buildBundle(files: Record<string, Uint8Array | string>): Buffer {
  const parts: Buffer[] = [];
  const entry = (name: string, body: Buffer, type = '0') =>
    parts.push(tarHeader(name, body.length, type), body, Buffer.alloc((512 - (body.length % 512)) % 512));
  for (const [name, content] of Object.entries(files)) {
    if (Buffer.byteLength(name) > 99) entry('PaxHeaders/entry', Buffer.from(paxRecord(`path=${name}`)), 'x');
    entry(Buffer.byteLength(name) > 99 ? name.slice(0, 99) : name, Buffer.from(content));
  }
  parts.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(parts));
}
