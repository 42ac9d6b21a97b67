/**
 * The built-in rules engine: an ordered list of rules, default deny. A rule
 * grants when the caller's identity matches, the action is listed and the
 * audience matches; the first such rule decides (scopes = requested ∩
 * allowed, TTL cap from the rule). When nothing grants, the deny names the
 * closest rule and the exact condition that failed, so an operator can fix
 * either the rule or the workload. It emits the same decision document an
 * OPA policy does and goes through the same DecisionPoint.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { builtinRulesSchema, POLICY_ACTIONS, type BuiltinRule } from '../config/sections/policy.js';
import type { DecisionInput, DecisionOutput, PolicyAction } from '../core/decision.js';
import { mayflyError } from '../core/errors.js';
import type { EngineResult, PolicyEngine } from '../core/ports.js';
import { canonicalJson, hashPolicy } from './digest.js';
import { compilePatterns, PatternError, showPatterns, type Pattern } from './patterns.js';

/** A rule with its patterns compiled. */
export interface CompiledRule {
  name: string;
  spiffe?: Pattern[];
  oidc?: { issuer?: Pattern[]; claims: Array<[string, Pattern[]]>; present: string[] };
  actions: ReadonlySet<PolicyAction>;
  audiences: Pattern[];
  scopes: string[];
  maxTtlSeconds?: number;
  maxTaskTtlSeconds?: number;
  maxDelegationDepth?: number;
}

/** Source name reported when no rule grants. */
export const DEFAULT_DENY_SOURCE = 'default-deny';

function configError(message: string, rule?: string): Error {
  return mayflyError('ERR_CONFIG_INVALID', `policy rules: ${message}`, rule === undefined ? undefined : { rule });
}

function formatIssues(doc: unknown, err: z.ZodError): string {
  const rules = (doc as { rules?: Array<{ name?: unknown }> } | null)?.rules;
  return err.issues
    .map((i) => {
      const path = [...i.path];
      let where = '';
      if (path[0] === 'rules' && typeof path[1] === 'number') {
        const name = Array.isArray(rules) ? rules[path[1]]?.name : undefined;
        where = typeof name === 'string' ? `rule "${name}"` : `rules[${path[1]}]`;
        path.splice(0, 2);
      }
      const rest = path.map(String).join('.');
      // A wrong type where the document has nothing at all is a missing field.
      const message = i.code === 'invalid_type' && valueAt(doc, i.path) === undefined ? `is required (${i.expected})` : i.message;
      return `${[where, rest].filter(Boolean).join(' ')}${where || rest ? ': ' : ''}${message}`;
    })
    .join('; ');
}

/** The value at a zod issue path in the raw document (undefined where the path leads nowhere). */
function valueAt(doc: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = doc;
  for (const k of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

/** Compiles a validated rule; invalid patterns throw naming the rule. */
export function compileRule(rule: BuiltinRule): CompiledRule {
  const where = (field: string) => `rule "${rule.name}" ${field}`;
  const out: CompiledRule = {
    name: rule.name,
    actions: new Set(rule.actions ?? POLICY_ACTIONS),
    audiences: compilePatterns(rule.audiences, where('audiences')),
    scopes: [...rule.scopes],
  };
  if (rule.max_ttl_seconds !== undefined) out.maxTtlSeconds = rule.max_ttl_seconds;
  if (rule.match.spiffe !== undefined) out.spiffe = compilePatterns(rule.match.spiffe, where('match.spiffe'));
  const oidc = rule.match.oidc;
  if (oidc !== undefined) {
    out.oidc = {
      claims: Object.entries(oidc.claims ?? {}).map(([c, p]) => [c, compilePatterns(p, where(`match.oidc.claims.${c}`))]),
      present: [...(oidc.present ?? [])],
    };
    if (oidc.issuer !== undefined) out.oidc.issuer = compilePatterns(oidc.issuer, where('match.oidc.issuer'));
  }
  if (rule.max_task_ttl_seconds !== undefined) out.maxTaskTtlSeconds = rule.max_task_ttl_seconds;
  if (rule.max_delegation_depth !== undefined) out.maxDelegationDepth = rule.max_delegation_depth;
  return out;
}

/** Validates and compiles a parsed rules document; throws ERR_CONFIG_INVALID naming the rule and field. */
export function compileRules(doc: unknown): CompiledRule[] {
  const parsed = builtinRulesSchema.safeParse(doc);
  if (!parsed.success) throw configError(formatIssues(doc, parsed.error));
  return parsed.data.rules.map((r) => {
    try {
      return compileRule(r);
    } catch (err) {
      if (err instanceof PatternError) throw configError(err.message, r.name);
      throw err;
    }
  });
}

/** How far one rule got for one input; higher `rank` is closer to granting. */
interface Verdict {
  rule: CompiledRule;
  /** 0 identity, 1 action, 2 audience failed; 3 granted. Fraction = share of identity conditions met. */
  rank: number;
  details: string[];
}

function claimText(v: unknown): string | undefined {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
}

function checkIdentity(rule: CompiledRule, identity: DecisionInput['identity']): { score: number; details: string[] } {
  if (identity.kind === 'spiffe') {
    if (rule.spiffe === undefined) return { score: -1, details: ['rule does not match SPIFFE identities'] };
    return rule.spiffe.some((p) => p.test(identity.id))
      ? { score: 1, details: [] }
      : { score: 0, details: [`SPIFFE ID does not match ${showPatterns(rule.spiffe)}`] };
  }
  const m = rule.oidc;
  if (m === undefined) return { score: -1, details: ['rule does not match OIDC identities'] };
  const details: string[] = [];
  let total = 0;
  if (m.issuer !== undefined) {
    total++;
    if (!m.issuer.some((p) => p.test(identity.issuer ?? ''))) details.push(`issuer ${JSON.stringify(identity.issuer ?? '')} does not match ${showPatterns(m.issuer)}`);
  }
  for (const [claim, pats] of m.claims) {
    total++;
    const raw = claimAt(identity.claims, claim);
    const text = claimText(raw);
    if (raw === undefined || raw === null) details.push(`claim ${claim} is missing (want ${showPatterns(pats)})`);
    else if (text === undefined) details.push(`claim ${claim} is not a string, number or boolean`);
    else if (!pats.some((p) => p.test(text))) details.push(`claim ${claim} ${JSON.stringify(text)} does not match ${showPatterns(pats)}`);
  }
  for (const claim of m.present) {
    total++;
    const at = claimAt(identity.claims, claim);
    if (at === undefined || at === null) details.push(`claim ${claim} is not present`);
  }
  if (details.length === 0) return { score: 1, details };
  return { score: total === 0 ? 0 : (total - details.length) / total, details };
}

function judge(rule: CompiledRule, input: DecisionInput): Verdict {
  const id = checkIdentity(rule, input.identity);
  if (id.details.length > 0) return { rule, rank: Math.min(0.99, Math.max(-1, id.score)), details: id.details };
  const { action, audience } = input.request;
  if (!rule.actions.has(action)) return { rule, rank: 1, details: [`action '${action}' not in [${[...rule.actions].join(', ')}]`] };
  if (action === 'delegate' && rule.maxDelegationDepth !== undefined) {
    const depth = (input.task?.depth ?? 0) + 1;
    if (depth > rule.maxDelegationDepth) {
      return { rule, rank: 1, details: [`delegation depth ${depth} exceeds max_delegation_depth ${rule.maxDelegationDepth}`] };
    }
  }
  if (audience === undefined) {
    // Task-level actions (begin, delegate) carry no audience; token-level ones must.
    if (action === 'begin_task' || action === 'delegate') return { rule, rank: 3, details: [] };
    return { rule, rank: 2, details: ['no audience requested'] };
  }
  if (!rule.audiences.some((p) => p.test(audience))) {
    return { rule, rank: 2, details: [`audience '${audience}' not in [${rule.audiences.map((p) => p.text).join(', ')}]`] };
  }
  return { rule, rank: 3, details: [] };
}

function grant(rule: CompiledRule, input: DecisionInput): DecisionOutput {
  const { action, scopes: requested } = input.request;
  const granted = [...new Set(requested.filter((s) => rule.scopes.includes(s)))];
  const taskLevel = action === 'begin_task' || action === 'delegate';
  if (granted.length === 0 && !(taskLevel && requested.length === 0)) {
    return {
      allow: false,
      reasons: [`rule "${rule.name}": none of the requested scopes [${requested.join(', ')}] are allowed (rule allows [${rule.scopes.join(', ')}])`],
    };
  }
  const reasons = [`rule "${rule.name}" allows ${action}`];
  const dropped = requested.filter((s) => !rule.scopes.includes(s));
  if (dropped.length > 0) reasons.push(`rule "${rule.name}": scopes [${dropped.join(', ')}] not allowed and dropped`);
  const maxTaskTtl = rule.maxTaskTtlSeconds ?? rule.maxTtlSeconds;
  const maxTtl = taskLevel ? maxTaskTtl : rule.maxTtlSeconds;
  // No cap in the rule: the broker's own limits (tokens/tasks.max_ttl_seconds, the task deadline) apply.
  const out: DecisionOutput = { allow: true, reasons, scopes: granted };
  if (maxTtl !== undefined) out.max_ttl_seconds = maxTtl;
  // An exchange without a task begins one: the rule's task cap bounds it, as it would a begin_task.
  if (action === 'exchange' && input.task === undefined && maxTaskTtl !== undefined) out.max_task_ttl_seconds = maxTaskTtl;
  return out;
}

/** Pure evaluation of compiled rules against one input: first granting rule decides, default deny. */
export function evaluateRules(rules: readonly CompiledRule[], input: DecisionInput): { output: DecisionOutput; source: string } {
  let closest: Verdict | undefined;
  for (const rule of rules) {
    const v = judge(rule, input);
    if (v.rank === 3) return { output: grant(rule, input), source: rule.name };
    if (closest === undefined || v.rank > closest.rank) closest = v;
  }
  const { identity, request } = input;
  const summary = `no rule allows ${identity.id} to ${request.action}${request.audience === undefined ? '' : ` for audience '${request.audience}'`}`;
  if (closest === undefined) return { output: { allow: false, reasons: [`${summary} (no rules loaded)`] }, source: DEFAULT_DENY_SOURCE };
  if (closest.rank < 0) {
    return { output: { allow: false, reasons: [`${summary} (no rule matches ${identity.kind === 'spiffe' ? 'SPIFFE' : 'OIDC'} identities)`] }, source: DEFAULT_DENY_SOURCE };
  }
  const name = closest.rule.name;
  const reasons =
    identity.kind === 'spiffe'
      ? [`${summary} (closest rule "${name}": ${closest.details.join('; ')})`]
      : [summary, ...closest.details.map((d) => `rule "${name}": ${d}`)];
  return { output: { allow: false, reasons }, source: DEFAULT_DENY_SOURCE };
}

/** Parses a rules document from YAML or JSON text (YAML is a superset of JSON). */
export function parseRulesText(text: string): unknown {
  try {
    return parseYaml(text);
  } catch (err) {
    throw configError(`cannot parse rules document: ${(err as Error).message}`);
  }
}

/**
 * A claim by name. A top-level claim wins; otherwise the name is a dotted path
 * into nested objects, where a key may itself contain dots (Kubernetes puts
 * `namespace` under `kubernetes.io`), so the longest matching key is taken at
 * each level: `kubernetes.io.serviceaccount.name`.
 */
export function claimAt(claims: Record<string, unknown>, name: string): unknown {
  if (Object.prototype.hasOwnProperty.call(claims, name)) return claims[name];
  const parts = name.split('.');
  let cur: unknown = claims;
  let i = 0;
  while (i < parts.length) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur)) return undefined;
    let found = false;
    for (let j = parts.length; j > i; j--) {
      const key = parts.slice(i, j).join('.');
      if (Object.prototype.hasOwnProperty.call(cur, key)) {
        cur = (cur as Record<string, unknown>)[key];
        i = j;
        found = true;
        break;
      }
    }
    if (!found) return undefined;
  }
  return cur;
}

/** PolicyEngine over built-in rules. */
export class BuiltinEngine implements PolicyEngine {
  readonly name = 'builtin';
  readonly synchronous = true;
  private readonly rev: string;

  private constructor(
    private readonly rules: readonly CompiledRule[],
    doc: unknown,
  ) {
    // Revision of the canonical document: reformatting or reordering keys does not change it.
    this.rev = hashPolicy(canonicalJson(doc));
  }

  /** Builds the engine from a parsed rules document; throws ERR_CONFIG_INVALID on any problem. */
  static fromDocument(doc: unknown): BuiltinEngine {
    return new BuiltinEngine(compileRules(doc), doc);
  }

  /** Builds the engine from YAML or JSON text. */
  static fromText(text: string): BuiltinEngine {
    return BuiltinEngine.fromDocument(parseRulesText(text));
  }

  /** Reads and builds the engine from a rules file. */
  static async fromFile(path: string): Promise<BuiltinEngine> {
    return BuiltinEngine.fromText(await readFile(path, 'utf8'));
  }

  /** SHA-256 of the canonical rules document. */
  revision(): string {
    return this.rev;
  }

  /** Rule names in evaluation order. */
  ruleNames(): string[] {
    return this.rules.map((r) => r.name);
  }

  /** Evaluates the rules; never throws for a well-typed input. */
  async evaluate(input: DecisionInput): Promise<EngineResult> {
    return evaluateRules(this.rules, input);
  }

  /** Nothing to release. */
  async close(): Promise<void> {}
}
