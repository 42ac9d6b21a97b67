/**
 * Builds OPA-ABI policy modules from runtime.wat at test time with wabt, and
 * OPA bundles (tar + gzip) the way `opa build -t wasm` lays them out. The
 * modules are real WebAssembly driven through the real SDK; only the "Rego"
 * is replaced by marker matching (see runtime.wat).
 */
import { gzipSync } from 'node:zlib';

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

export { renderOpaWat, buildOpaWasm } from './render.mjs';

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
