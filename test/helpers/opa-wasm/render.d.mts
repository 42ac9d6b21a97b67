import type { OpaWasmSpec } from './builder.js';

/** Renders the WAT text for a spec (exported so failures can be inspected). */
export declare function renderOpaWat(spec: OpaWasmSpec): string;
/** Compiles a spec to a wasm binary with wabt. */
export declare function buildOpaWasm(spec: OpaWasmSpec): Promise<Uint8Array>;
