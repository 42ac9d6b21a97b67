/**
 * The policy decision point: the one place the service asks "may this
 * happen?". It runs an engine under a deadline, measures it, and checks the
 * raw document against the decision contract (src/core/decision.ts,
 * docs/policy/contract.md). Anything other than a well-formed decision is a
 * deny that says why: an engine error, a trap, a timeout or a malformed
 * document never escapes as an exception: it fails closed.
 */
import type { Decision, DecisionInput, DecisionOutput } from '../core/decision.js';
import type { EngineResult, PolicyEngine } from '../core/ports.js';

export { canonicalJson, hashPolicy, inputDigest } from './digest.js';

/** Default evaluation deadline, milliseconds. */
export const DEFAULT_POLICY_TIMEOUT_MS = 250;

/**
 * JWT/JOSE claim names a policy may never set through `claims` (RFC 7519 §4.1,
 * RFC 8693 §4.1-4.4 act/scope/client_id, RFC 7800 cnf, RFC 9068 typ) plus
 * Mayfly's task id claim `tid`.
 */
export const REGISTERED_CLAIMS: ReadonlySet<string> = new Set([
  'iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'scope', 'cnf', 'act', 'tid', 'client_id', 'typ',
]);

const DECISION_FIELDS = new Set(['allow', 'reasons', 'max_ttl_seconds', 'max_task_ttl_seconds', 'scopes', 'claims']);

/** Outcome of checking a raw engine document: `ok` is false when the document broke the contract. */
export interface DecisionCheck {
  ok: boolean;
  /** The normalised decision; always a deny when `ok` is false. */
  output: DecisionOutput;
  /** What was wrong with the document (only when `ok` is false). */
  error?: string;
}

/** An engine result that may say which policy revision produced it (OPA does, so hot reloads are attributed exactly). */
export interface AttributedEngineResult extends EngineResult {
  revision?: string;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

function isPositiveInteger(v: unknown): boolean {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}

function malformed(error: string): DecisionCheck {
  return { ok: false, error, output: { allow: false, reasons: [`policy error: ${error}`] } };
}

/**
 * Checks a raw engine document against the decision contract v1. Pure.
 * `true` allows with nothing narrowed, `false` denies; an object must follow
 * DecisionOutput exactly. Granted scopes must be a subset of the requested
 * ones and claims must not touch registered claim names; otherwise deny.
 */
export function checkDecision(input: DecisionInput, raw: unknown): DecisionCheck {
  const requested = input.request.scopes;
  if (raw === undefined) return malformed('policy produced no decision');
  if (raw === true) return { ok: true, output: { allow: true, reasons: [], scopes: [...requested] } };
  if (raw === false) return { ok: true, output: { allow: false, reasons: ['policy returned false'] } };
  if (!isPlainObject(raw)) return malformed(`decision must be an object or a boolean, got ${typeName(raw)}`);

  for (const key of Object.keys(raw)) {
    if (!DECISION_FIELDS.has(key)) return malformed(`unknown field "${key}" in decision (allowed: ${[...DECISION_FIELDS].join(', ')})`);
  }
  const { allow, reasons, max_ttl_seconds: maxTtl, max_task_ttl_seconds: maxTaskTtl, scopes, claims } = raw;
  if (typeof allow !== 'boolean') return malformed(`"allow" must be a boolean, got ${typeName(allow)}`);
  if (reasons !== undefined && !(Array.isArray(reasons) && reasons.every((r) => typeof r === 'string'))) {
    return malformed('"reasons" must be an array of strings');
  }
  if (maxTtl !== undefined && !isPositiveInteger(maxTtl)) {
    return malformed(`"max_ttl_seconds" must be a positive integer, got ${JSON.stringify(maxTtl) ?? typeName(maxTtl)}`);
  }
  if (maxTaskTtl !== undefined && !isPositiveInteger(maxTaskTtl)) {
    return malformed(`"max_task_ttl_seconds" must be a positive integer, got ${JSON.stringify(maxTaskTtl) ?? typeName(maxTaskTtl)}`);
  }
  if (scopes !== undefined) {
    if (!(Array.isArray(scopes) && scopes.every((s) => typeof s === 'string'))) return malformed('"scopes" must be an array of strings');
    const extra = scopes.find((s) => !requested.includes(s));
    if (extra !== undefined) return malformed(`decision grants scope "${extra}" that was not requested (requested: [${requested.join(', ')}])`);
  }
  if (claims !== undefined) {
    if (!isPlainObject(claims)) return malformed(`"claims" must be an object, got ${typeName(claims)}`);
    const clash = Object.keys(claims).find((k) => REGISTERED_CLAIMS.has(k));
    if (clash !== undefined) return malformed(`decision claim "${clash}" collides with a registered claim`);
  }

  const why = (reasons as string[] | undefined) ?? [];
  if (!allow) return { ok: true, output: { allow: false, reasons: why.length > 0 ? [...why] : ['denied by policy (no reason given)'] } };
  const output: DecisionOutput = { allow: true, reasons: [...why], scopes: [...new Set((scopes as string[] | undefined) ?? requested)] };
  if (maxTtl !== undefined) output.max_ttl_seconds = maxTtl as number;
  if (maxTaskTtl !== undefined) output.max_task_ttl_seconds = maxTaskTtl as number;
  if (claims !== undefined) output.claims = { ...(claims as Record<string, unknown>) };
  return { ok: true, output };
}

/** Monotonic microsecond timer, injectable so tests control measured latency. */
export type MicrosecondTimer = () => number;

/** Monotonic microseconds from process.hrtime. */
export const hrtimeMicros: MicrosecondTimer = () => Number(process.hrtime.bigint() / 1000n);

export interface DecisionPointOptions {
  /** Deadline for one evaluation, milliseconds (default 250). */
  timeoutMs?: number;
  /** Monotonic µs clock (default process.hrtime). */
  timer?: MicrosecondTimer;
}

function describeThrown(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'string') return err;
  if (err !== null && typeof err === 'object' && typeof (err as { message?: unknown }).message === 'string') {
    return (err as { message: string }).message;
  }
  return String(err);
}

class PolicyTimeout extends Error {}

/** Wraps a PolicyEngine: deadline, latency, contract check; always resolves to a Decision. */
export class DecisionPoint {
  readonly timeoutMs: number;
  private readonly timer: MicrosecondTimer;

  constructor(
    readonly engine: PolicyEngine,
    options: DecisionPointOptions = {},
  ) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_POLICY_TIMEOUT_MS;
    this.timer = options.timer ?? hrtimeMicros;
  }

  /** Evaluates `input` and returns a checked decision; errors, traps and timeouts become denies. */
  async decide(input: DecisionInput): Promise<Decision> {
    // Read before evaluating: engines without per-result attribution are attributed to the revision current at call time.
    let revision = safeRevision(this.engine);
    const start = this.timer();
    let result: AttributedEngineResult | undefined;
    let failure: string | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      if (this.engine.synchronous === true) {
        // Nothing could fire before it returns; the latency check below still denies a late answer.
        // No timer per decision: each one was about a tenth of what an IssueToken left for the old generation.
        result = await this.engine.evaluate(input);
      } else {
        const deadline = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new PolicyTimeout()), this.timeoutMs);
          timer.unref?.();
        });
        result = await Promise.race([this.engine.evaluate(input), deadline]);
      }
    } catch (err) {
      failure = err instanceof PolicyTimeout ? `policy evaluation timed out after ${this.timeoutMs} ms` : `policy engine error: ${describeThrown(err)}`;
    } finally {
      clearTimeout(timer);
    }
    const latencyUs = Math.max(0, Math.round(this.timer() - start));
    // A synchronous engine (wasm) cannot be pre-empted by the timer; a late answer is still a deny.
    if (failure === undefined && latencyUs > this.timeoutMs * 1000) {
      failure = `policy evaluation timed out after ${this.timeoutMs} ms (took ${Math.round(latencyUs / 1000)} ms)`;
    }
    if (result?.revision !== undefined) revision = result.revision;
    const meta = { engine: this.engine.name, revision, latencyUs };
    if (failure !== undefined || result === undefined) {
      return { allow: false, reasons: [failure ?? 'policy engine returned nothing'], ...meta, source: result?.source ?? '(error)' };
    }
    // checkDecision's output is always a fresh object: completed in place rather than copied (a spread then more members costs about 1 µs).
    const decision = checkDecision(input, result.output).output as Decision;
    decision.engine = meta.engine;
    decision.revision = meta.revision;
    decision.latencyUs = meta.latencyUs;
    decision.source = result.source;
    return decision;
  }
}

function safeRevision(engine: PolicyEngine): string {
  try {
    return engine.revision();
  } catch {
    return 'unknown';
  }
}
