/**
 * OPA engine: Rego compiled to WebAssembly (`opa build -t wasm`), run with
 * the @open-policy-agent/opa-wasm SDK. Loads a policy.wasm or a bundle
 * .tar.gz, plus an optional external data file, and refuses at load time a
 * module whose entrypoint is missing, whose ABI is unsupported or which needs
 * host builtins nobody provides (listed by name). A new policy (SIGHUP or a
 * file change) only replaces the serving one after it loads and answers a
 * canary input with a well-formed decision; otherwise the old one keeps
 * serving and the failure is reported.
 *
 * Pool: SDK evaluation is synchronous on the JS thread, so one instance per
 * loaded module serves every request; the pool's extra instances are warm
 * spares that take over at once when an evaluation traps (a trapped instance
 * is discarded, never reused: its heap and globals may be half-updated).
 * Measured with the test modules: one decision is ~20-25 µs at p50; a
 * replacement created on the request path would add an async wasm
 * instantiation to that request, which is why spares are kept warm.
 *
 * ABI reference: https://www.openpolicyagent.org/docs/wasm
 */
import { watch as fsWatch, type FSWatcher } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { loadPolicy, type LoadedPolicy } from '@open-policy-agent/opa-wasm';
import { parse as parseYaml } from 'yaml';
import { DECISION_CONTRACT_VERSION, type DecisionInput } from '../core/decision.js';
import { mayflyError } from '../core/errors.js';
import type { Clock, PolicyEngine } from '../core/ports.js';
import { systemClock } from '../core/clock.js';
import { mergeData, parseOpaBundle } from './opa-bundle.js';
import { checkDecision, type AttributedEngineResult } from './decision-point.js';
import { canonicalJson, hashPolicy } from './digest.js';

/*
 * The project's lib (ES2023) and @types/node 20 do not declare the
 * WebAssembly namespace; these are the few members used here.
 */
/** An opaque compiled module. */
type WasmModule = object;
interface WasmMemoryDescriptor {
  initial: number;
  maximum?: number;
}
interface WasmInstance {
  exports: Record<string, unknown>;
}
const Wasm = (globalThis as unknown as {
  WebAssembly: {
    compile(bytes: Uint8Array): Promise<WasmModule>;
    Module: { exports(m: WasmModule): Array<{ name: string; kind: string }> };
  };
}).WebAssembly;

/** Default entrypoint, as passed to `opa build -e`. */
export const DEFAULT_OPA_ENTRYPOINT = 'mayfly/authz/decision';

/** Host builtin implementation, called with JSON-decoded arguments. */
export type CustomBuiltin = (...args: unknown[]) => unknown;

/** Reported after every explicit reload, and after watcher-triggered reloads that changed or failed something. */
export interface ReloadEvent {
  ok: boolean;
  /** Revision serving after the attempt (the old one when it failed). */
  revision: string;
  previousRevision: string;
  changed: boolean;
  error?: string;
  /** Epoch ms. */
  at: number;
}

export interface OpaHealth {
  /** False when the last reload failed (the previous policy is still serving). */
  ok: boolean;
  revision: string;
  lastError: string | null;
  /** Epoch ms of the last successful load. */
  lastReloadAt: number | null;
  entrypoint: string;
  abiVersion: string;
}

export interface OpaEngineOptions {
  /** policy.wasm or bundle .tar.gz (detected by magic bytes). */
  policyFile: string;
  entrypoint?: string;
  /** External data document, JSON or YAML; merged over the bundle's data. */
  dataFile?: string;
  /** Instances kept per loaded module, 1 serving + spares (default 2). */
  poolSize?: number;
  memory?: { initialPages?: number; maximumPages?: number };
  customBuiltins?: Record<string, CustomBuiltin>;
  /** Must yield a well-formed decision before a policy is accepted (default: a demo SPIFFE issue_token input). */
  canaryInput?: DecisionInput;
  onReload?: (event: ReloadEvent) => void;
  clock?: Clock;
  pollIntervalMs?: number;
  debounceMs?: number;
}

/** A canary every sane policy answers: the dev demo workload asking for a token. */
export const DEFAULT_CANARY_INPUT: DecisionInput = {
  version: DECISION_CONTRACT_VERSION,
  identity: { kind: 'spiffe', id: 'spiffe://example.org/demo/workload', trust_domain: 'example.org', method: 'x509-svid', claims: {} },
  request: { action: 'issue_token', audience: 'demo-api', scopes: ['read'], ttl_seconds: 60, labels: {} },
  context: { time: 1767225600, broker_id: 'canary', recent_issuance: { last_minute: 0, last_hour: 0 } },
};

/** Exports every ABI 1.x module has (ABI doc, "Exports"); opa_eval is checked separately for 1.2+. */
const REQUIRED_EXPORTS = [
  'opa_malloc', 'opa_json_parse', 'opa_json_dump', 'opa_heap_ptr_get', 'opa_heap_ptr_set', 'eval',
  'opa_eval_ctx_new', 'opa_eval_ctx_set_input', 'opa_eval_ctx_set_data', 'opa_eval_ctx_set_entrypoint',
  'opa_eval_ctx_get_result', 'entrypoints', 'builtins', 'opa_wasm_abi_version',
];

/** Builtins the SDK implements in JS, read from its own builtins table. */
export const SDK_BUILTINS: ReadonlySet<string> = (() => {
  const fallback = ['json.is_valid', 'regex.split', 'sprintf', 'yaml.is_valid', 'yaml.marshal', 'yaml.unmarshal'];
  try {
    const require = createRequire(import.meta.url);
    const entry = require.resolve('@open-policy-agent/opa-wasm'); // .../src/index.cjs
    return new Set(Object.keys(require(join(dirname(entry), 'builtins', 'index.js')) as object));
  } catch {
    return new Set(fallback);
  }
})();

interface WasmExports {
  [name: string]: unknown;
  opa_heap_ptr_get(): number;
  opa_heap_ptr_set(p: number): void;
  opa_json_dump(v: number): number;
  builtins(): number;
  opa_wasm_abi_version?: { value: unknown } | number;
}

function exportsOf(p: LoadedPolicy): WasmExports {
  const w = p.wasmInstance as unknown as WasmInstance | { instance: WasmInstance };
  return ('instance' in w ? w.instance.exports : w.exports) as unknown as WasmExports;
}

/** Reads the module's `builtins` map (name -> id) without disturbing the SDK's heap layout. */
function requiredBuiltins(p: LoadedPolicy): string[] {
  const x = exportsOf(p);
  const saved = x.opa_heap_ptr_get();
  try {
    const addr = x.opa_json_dump(x.builtins());
    const mem = new Uint8Array(p.mem.buffer);
    let end = addr;
    while (end < mem.length && mem[end] !== 0) end++;
    return Object.keys(JSON.parse(Buffer.from(mem.subarray(addr, end)).toString('utf8')) as object);
  } finally {
    x.opa_heap_ptr_set(saved);
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'string') return err;
  if (err !== null && typeof err === 'object' && typeof (err as { message?: unknown }).message === 'string') return (err as { message: string }).message;
  return String(err);
}

/** The policy bytes and data an engine generation is built from. */
export interface OpaSource {
  /** Raw wasm module, or a gzip'd bundle. */
  policy: Uint8Array;
  /** External data (already parsed), merged over bundle data. */
  data?: Record<string, unknown>;
}

interface GenerationOptions {
  entrypoint: string;
  poolSize: number;
  memory: { initialPages?: number; maximumPages?: number };
  customBuiltins: Record<string, CustomBuiltin>;
  canaryInput: DecisionInput;
}

/** One loaded policy: compiled module, data, and its pool of instances. Never mutated after load. */
class Generation {
  private readonly free: LoadedPolicy[] = [];
  private refilling = false;

  private constructor(
    readonly revision: string,
    readonly abiVersion: string,
    private readonly module: WasmModule,
    private readonly data: Record<string, unknown>,
    private readonly entrypointId: number,
    readonly entrypoint: string,
    private readonly opts: GenerationOptions,
  ) {}

  /** Compiles, validates and warms a policy; throws a message an operator can act on. */
  static async load(src: OpaSource, opts: GenerationOptions): Promise<Generation> {
    const bytes = src.policy;
    let wasm: Uint8Array;
    let data: Record<string, unknown> = {};
    if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
      const b = parseOpaBundle(Buffer.from(bytes));
      wasm = b.wasm;
      data = b.data;
    } else if (bytes[0] === 0x00 && bytes[1] === 0x61 && bytes[2] === 0x73 && bytes[3] === 0x6d) {
      wasm = bytes;
    } else {
      throw new Error('policy file is neither a wasm module nor a gzip bundle');
    }
    if (src.data) data = mergeData(data, src.data);

    let module: WasmModule;
    try {
      module = await Wasm.compile(wasm);
    } catch (err) {
      throw new Error(`policy wasm does not compile: ${describe(err)}`);
    }
    const exported = new Set(Wasm.Module.exports(module).map((e) => e.name));
    const missing = REQUIRED_EXPORTS.filter((e) => !exported.has(e));
    if (missing.length > 0) throw new Error(`policy wasm lacks OPA ABI exports: ${missing.join(', ')} (build it with \`opa build -t wasm\`, OPA >= 0.27)`);

    const dataHash = Object.keys(data).length === 0 ? null : hashPolicy(canonicalJson(data));
    // With no data, the revision is `sha256sum policy.wasm`; with data, it covers both.
    const revision = dataHash === null ? hashPolicy(wasm) : hashPolicy(`wasm:${hashPolicy(wasm)}\ndata:${dataHash}`);
    const probe = await Generation.instantiate(module, opts, {});

    const x = exportsOf(probe);
    const g = x.opa_wasm_abi_version;
    const major = typeof g === 'number' ? g : (g?.value as number | undefined);
    const minor = typeof probe.minorVersion === 'number' ? (probe.minorVersion as number) : 0;
    if (major !== 1) throw new Error(`unsupported OPA wasm ABI version ${major}.${minor} (supported: 1.x)`);
    if (minor >= 2 && !exported.has('opa_eval')) throw new Error(`policy wasm declares ABI 1.${minor} but lacks the opa_eval export`);

    const entrypoints = probe.entrypoints as Record<string, number>;
    const id = entrypoints[opts.entrypoint];
    if (!Object.prototype.hasOwnProperty.call(entrypoints, opts.entrypoint) || typeof id !== 'number') {
      throw new Error(`entrypoint "${opts.entrypoint}" not found in policy (available: ${Object.keys(entrypoints).join(', ') || 'none'})`);
    }
    const unknown = requiredBuiltins(probe).filter((b) => !SDK_BUILTINS.has(b) && !(b in opts.customBuiltins));
    if (unknown.length > 0) {
      throw new Error(`policy needs builtins the wasm SDK does not provide: ${unknown.join(', ')} (supply them as custom builtins or avoid them in Rego)`);
    }
    if (Object.keys(data).length > 0) probe.setData(data);

    const gen = new Generation(revision, `1.${minor}`, module, data, id, opts.entrypoint, opts);
    gen.free.push(probe);
    while (gen.free.length < opts.poolSize) gen.free.push(await gen.spawn());

    const canary = checkDecision(opts.canaryInput, await gen.evaluate(opts.canaryInput));
    if (!canary.ok) throw new Error(`canary input did not produce a well-formed decision: ${canary.error}`);
    return gen;
  }

  private static instantiate(module: WasmModule, opts: GenerationOptions, data: Record<string, unknown>): Promise<LoadedPolicy> {
    // The SDK mutates the descriptor it is given; hand it a fresh one each time.
    const descriptor: WasmMemoryDescriptor = { initial: opts.memory.initialPages ?? 5 };
    if (opts.memory.maximumPages !== undefined) descriptor.maximum = opts.memory.maximumPages;
    return loadPolicy(module, descriptor, opts.customBuiltins).then((p) => {
      if (Object.keys(data).length > 0) p.setData(data);
      return p;
    });
  }

  private spawn(): Promise<LoadedPolicy> {
    return Generation.instantiate(this.module, this.opts, this.data);
  }

  private refill(): void {
    if (this.refilling) return;
    this.refilling = true;
    void (async () => {
      try {
        while (this.free.length < this.opts.poolSize) this.free.push(await this.spawn());
      } catch {
        // Instantiation of an already validated module failing means memory pressure; the next request retries.
      } finally {
        this.refilling = false;
      }
    })();
  }

  /** Evaluates the entrypoint; returns the decision value or undefined. Throws on trap or a malformed result set. */
  async evaluate(input: DecisionInput): Promise<unknown> {
    const inst = this.free.pop() ?? (await this.spawn());
    let rs: unknown;
    try {
      rs = inst.evaluate(input, this.entrypointId);
    } catch (err) {
      // opa_abort / unreachable: drop the instance, it may be mid-update (fail closed, stay available).
      this.refill();
      throw new Error(`policy evaluation trapped: ${describe(err)}`);
    }
    this.free.push(inst);
    if (!Array.isArray(rs)) throw new Error('policy returned a malformed result set (not an array)');
    if (rs.length === 0) return undefined;
    if (rs.length > 1) throw new Error(`policy returned ${rs.length} results for one entrypoint`);
    const first = rs[0] as unknown;
    if (first === null || typeof first !== 'object' || !('result' in first)) throw new Error('policy result set entry has no "result"');
    return (first as { result: unknown }).result;
  }

  /** Instances currently idle (for tests and health). */
  get idle(): number {
    return this.free.length;
  }
}

async function readSource(policyFile: string, dataFile: string | undefined): Promise<OpaSource> {
  const policy = await readFile(policyFile).catch((err: NodeJS.ErrnoException) => {
    throw new Error(`cannot read policy file ${policyFile}: ${err.code ?? err.message}`);
  });
  if (dataFile === undefined) return { policy };
  const text = await readFile(dataFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new Error(`cannot read data file ${dataFile}: ${err.code ?? err.message}`);
  });
  let data: unknown;
  try {
    data = /\.json$/i.test(dataFile) ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new Error(`data file ${dataFile} is not valid: ${describe(err)}`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw new Error(`data file ${dataFile} must hold an object`);
  return { policy, data: data as Record<string, unknown> };
}

/** PolicyEngine over an OPA wasm policy, with atomic hot reload. */
export class OpaEngine implements PolicyEngine {
  readonly name = 'opa';
  /** The wasm runs to completion inside evaluate(). */
  readonly synchronous = true;
  private current: Generation;
  private lastError: string | null = null;
  private lastReloadAt: number | null;
  private reloading: Promise<ReloadEvent> | null = null;
  private watchers: FSWatcher[] = [];
  private timers: NodeJS.Timeout[] = [];
  private debounce: NodeJS.Timeout | undefined;
  private readonly clock: Clock;

  private constructor(
    private readonly opts: OpaEngineOptions,
    private readonly genOpts: GenerationOptions,
    gen: Generation,
  ) {
    this.current = gen;
    this.clock = opts.clock ?? systemClock;
    this.lastReloadAt = this.clock.now();
  }

  /** Loads and validates the policy; throws ERR_CONFIG_INVALID so startup fails loudly. */
  static async load(opts: OpaEngineOptions): Promise<OpaEngine> {
    const genOpts: GenerationOptions = {
      entrypoint: opts.entrypoint ?? DEFAULT_OPA_ENTRYPOINT,
      poolSize: Math.max(1, opts.poolSize ?? 2),
      memory: opts.memory ?? {},
      customBuiltins: opts.customBuiltins ?? {},
      canaryInput: opts.canaryInput ?? DEFAULT_CANARY_INPUT,
    };
    try {
      const gen = await Generation.load(await readSource(opts.policyFile, opts.dataFile), genOpts);
      return new OpaEngine(opts, genOpts, gen);
    } catch (err) {
      throw mayflyError('ERR_CONFIG_INVALID', `OPA policy ${opts.policyFile}: ${describe(err)}`, { file: opts.policyFile }, err);
    }
  }

  /** Revision serving now (SHA-256 of the wasm module, or of module + data). */
  revision(): string {
    return this.current.revision;
  }

  /** Evaluates against the generation current at call time; a reload mid-flight does not affect it. */
  async evaluate(input: DecisionInput): Promise<AttributedEngineResult> {
    const gen = this.current;
    const output = await gen.evaluate(input);
    return { output, source: gen.entrypoint, revision: gen.revision };
  }

  /** Reloads from disk; swaps only if the new policy loads and passes the canary. Never throws. */
  reload(): Promise<ReloadEvent> {
    return this.runReload(true);
  }

  private runReload(report: boolean): Promise<ReloadEvent> {
    if (this.reloading) {
      // Queue behind the running reload so what changed meanwhile is picked up.
      return this.reloading.then(() => this.runReload(report));
    }
    const run = this.doReload(report).finally(() => {
      this.reloading = null;
    });
    this.reloading = run;
    return run;
  }

  private async doReload(report: boolean): Promise<ReloadEvent> {
    const prev = this.current;
    let event: ReloadEvent;
    try {
      const gen = await Generation.load(await readSource(this.opts.policyFile, this.opts.dataFile), this.genOpts);
      const changed = gen.revision !== prev.revision;
      if (changed) this.current = gen; // atomic: the next evaluate() sees the new generation
      this.lastError = null;
      this.lastReloadAt = this.clock.now();
      event = { ok: true, revision: gen.revision, previousRevision: prev.revision, changed, at: this.lastReloadAt };
    } catch (err) {
      this.lastError = describe(err);
      event = { ok: false, revision: prev.revision, previousRevision: prev.revision, changed: false, error: this.lastError, at: this.clock.now() };
    }
    if (report || !event.ok || event.changed) {
      try {
        this.opts.onReload?.(event);
      } catch {
        // A failing observer must not break reloads.
      }
    }
    return event;
  }

  /** Current state for health endpoints and `mayfly policy status`. */
  health(): OpaHealth {
    return {
      ok: this.lastError === null,
      revision: this.current.revision,
      lastError: this.lastError,
      lastReloadAt: this.lastReloadAt,
      entrypoint: this.current.entrypoint,
      abiVersion: this.current.abiVersion,
    };
  }

  /**
   * Watches the policy and data files (fs.watch on their directories, so
   * atomic rename-over works, plus a stat poll for file systems where
   * fs.watch is unreliable) and reloads, debounced. Returns a stop function.
   */
  watch(): () => void {
    const files = [this.opts.policyFile, this.opts.dataFile].filter((f): f is string => f !== undefined);
    const debounceMs = this.opts.debounceMs ?? 100;
    const schedule = () => {
      clearTimeout(this.debounce);
      this.debounce = setTimeout(() => void this.runReload(false), debounceMs);
      this.debounce.unref?.();
    };
    for (const dir of new Set(files.map((f) => dirname(f)))) {
      const names = new Set(files.filter((f) => dirname(f) === dir).map((f) => basename(f)));
      try {
        const w = fsWatch(dir, { persistent: false }, (_ev, name) => {
          if (name === null || names.has(name.toString())) schedule();
        });
        w.on('error', () => w.close()); // the poll keeps working
        this.watchers.push(w);
      } catch {
        // fs.watch unsupported here: rely on the poll.
      }
    }
    const signature = async (f: string) => {
      try {
        const s = await stat(f);
        return `${s.ino}:${s.size}:${s.mtimeMs}`;
      } catch {
        return 'missing';
      }
    };
    const last = new Map<string, string>();
    void Promise.all(files.map(async (f) => last.set(f, await signature(f))));
    const poll = setInterval(() => {
      void (async () => {
        for (const f of files) {
          const sig = await signature(f);
          if (last.get(f) !== sig) {
            last.set(f, sig);
            schedule();
          }
        }
      })();
    }, this.opts.pollIntervalMs ?? 1000);
    poll.unref?.();
    this.timers.push(poll);
    return () => this.unwatch();
  }

  private unwatch(): void {
    for (const w of this.watchers) w.close();
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.debounce);
    this.watchers = [];
    this.timers = [];
  }

  /** Waits for a running reload, then stops watching. */
  async close(): Promise<void> {
    this.unwatch();
    await this.reloading?.catch(() => undefined);
  }
}
