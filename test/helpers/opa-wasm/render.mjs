// OPA-ABI policy modules without an `opa` binary: fills runtime.wat (which
// speaks the OPA WebAssembly ABI 1.x: imports env.memory/opa_abort/
// opa_builtinN; exports opa_malloc, opa_json_parse/dump, opa_heap_ptr_get/set,
// eval, opa_eval_ctx_*, entrypoints, builtins, opa_eval for ABI 1.2+, ABI
// version globals) and compiles it with wabt. The real
// @open-policy-agent/opa-wasm SDK loads and evaluates the result; only the
// "Rego" is replaced by marker matching: a rule fires when its marker bytes
// occur in the serialized input (or data). Plain JavaScript so the tests
// (through builder.ts, typed by render.d.mts) and `npm run bench` share it.
import { readFileSync } from 'node:fs';
import wabtInit from 'wabt';

const RUNTIME = readFileSync(new URL('./runtime.wat', import.meta.url), 'utf8');
let wabtPromise;

class Layout {
  off = 16; // keep 0 as the null value
  segments = [];

  bytes(data) {
    const at = this.off;
    const esc = [...data].map((b) => `\\${b.toString(16).padStart(2, '0')}`).join('');
    this.segments.push(`  (data (i32.const ${at}) "${esc}")`);
    this.off = (at + data.length + 7) & ~7;
    return at;
  }

  cstring(s) {
    return this.bytes(Buffer.from(`${s}\0`));
  }

  /** A static value: bytes + {ptr, len} header; returns the header address. */
  value(json) {
    const body = Buffer.from(json);
    const ptr = this.bytes(body);
    const hdr = Buffer.alloc(8);
    hdr.writeUInt32LE(ptr, 0);
    hdr.writeUInt32LE(body.length, 4);
    return this.bytes(hdr);
  }

  get end() {
    return this.off;
  }
}

/** Actions: {result}, {resultSet} (raw bytes), {trap: true}, {abort: msg}, {builtin: id, arg}. */
function actionCode(a, L) {
  if ('trap' in a) return '(unreachable)';
  if ('abort' in a) return `(call $opa_abort (i32.const ${L.cstring(a.abort)})) (unreachable)`;
  if ('builtin' in a) {
    return `(return (call $wrap (call $opa_builtin1 (i32.const ${a.builtin}) (i32.const 0) (i32.const ${L.value(JSON.stringify(a.arg))}))))`;
  }
  const bytes = 'resultSet' in a ? a.resultSet : JSON.stringify([{ result: a.result }]);
  return `(return (i32.const ${L.value(bytes)}))`;
}

/**
 * WAT text for a spec: {abiMajor=1, abiMinor=2, entrypoints={"mayfly/authz/decision":0},
 * builtins={}, rules=[{when, in?: 'input'|'data', entrypoint?, then}], otherwise?}.
 */
export function renderOpaWat(spec) {
  const L = new Layout();
  const minor = spec.abiMinor ?? 2;
  const emptySet = L.value('[]');
  const vars = {
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
  const lines = [];
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
  return RUNTIME.replace(/\{\{([A-Z_]+)\}\}/g, (_, k) => {
    if (!(k in vars)) throw new Error(`opa-wasm builder: no value for {{${k}}}`);
    return String(vars[k]);
  });
}

/** Compiles a spec to a wasm binary with wabt. */
export async function buildOpaWasm(spec) {
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

