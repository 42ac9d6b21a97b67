/**
 * The `policy` config section and the built-in rules document. Everything
 * here is a zod schema so startup errors name the offending field. The
 * annotated default rules live in policies/default-rules.yaml.
 */
import { z } from 'zod';

/** Actions a rule can allow; mirrors PolicyAction in src/core/decision.ts. */
export const POLICY_ACTIONS = ['begin_task', 'issue_token', 'exchange', 'delegate'] as const;

/** An exact string, `glob:<glob>` (`*` one path segment, `**` any) or `re:<regex>` (anchored). */
const pattern = z.string().min(1);
const patternOrList = z.union([pattern, z.array(pattern).min(1)]);

/** One built-in rule: who (match), what (actions), where (audiences), how much (scopes, TTLs). */
export const builtinRuleSchema = z
  .object({
    name: z.string().min(1).max(128),
    description: z.string().optional(),
    match: z
      .object({
        /** SPIFFE ID pattern(s); any may match. */
        spiffe: patternOrList.optional(),
        oidc: z
          .object({
            /** Issuer URL pattern. */
            issuer: pattern.optional(),
            /** Every listed claim must match one of its patterns (values compared as String(value)). */
            claims: z.record(z.string().min(1), patternOrList).optional(),
            /** Claims that must exist, whatever their value. */
            present: z.array(z.string().min(1)).optional(),
          })
          .strict()
          .optional(),
      })
      .strict()
      .refine((m) => m.spiffe !== undefined || m.oidc !== undefined, { message: 'match needs "spiffe" or "oidc"' }),
    /** Actions this rule allows; all of them when absent. */
    actions: z.array(z.enum(POLICY_ACTIONS)).min(1).optional(),
    /** Audience patterns tokens may be issued for. */
    audiences: z.array(pattern).default([]),
    /** Scopes that may be granted (exact names). */
    scopes: z.array(z.string().min(1)).default([]),
    /** Upper bound on token TTL; without it the broker's tokens.max_ttl_seconds and the task's deadline bound it. */
    max_ttl_seconds: z.number().int().positive().optional(),
    /** Upper bound on task TTL for begin_task (falls back to max_ttl_seconds, then to tasks.max_ttl_seconds). */
    max_task_ttl_seconds: z.number().int().positive().optional(),
    /** Deepest delegation allowed (root task = depth 0); no rule-level limit when absent. */
    max_delegation_depth: z.number().int().nonnegative().optional(),
  })
  .strict();

/** The rules document (YAML or JSON): rules are tried in order, first full match wins, default deny. */
export const builtinRulesSchema = z
  .object({
    rules: z.array(builtinRuleSchema),
  })
  .strict()
  .superRefine((doc, ctx) => {
    const seen = new Set<string>();
    doc.rules.forEach((r, i) => {
      if (seen.has(r.name)) ctx.addIssue({ code: 'custom', path: ['rules', i, 'name'], message: `duplicate rule name "${r.name}"` });
      seen.add(r.name);
    });
  });

export type BuiltinRule = z.infer<typeof builtinRuleSchema>;
export type BuiltinRules = z.infer<typeof builtinRulesSchema>;

const opaSectionSchema = z
  .object({
    /** A `policy.wasm` or an OPA bundle `*.tar.gz` from `opa build -t wasm`. */
    policy_file: z.string().min(1),
    /** Rule path the broker evaluates, as passed to `opa build -e`. */
    entrypoint: z
      .string()
      .regex(/^[A-Za-z_][\w-]*(\/[A-Za-z_][\w-]*)*$/, 'entrypoint must be a slash-separated rule path like mayfly/authz/decision')
      .default('mayfly/authz/decision'),
    /** External data document (JSON or YAML), merged over the bundle's data. */
    data_file: z.string().min(1).optional(),
    /** Instantiated modules kept ready; evaluation is synchronous, so 1 suffices (see src/policy/opa.ts). */
    pool_size: z.number().int().min(1).max(16).default(2),
    /** Reload when the policy or data file changes (SIGHUP always reloads). */
    watch: z.boolean().default(true),
    /** Poll fallback for file systems where fs.watch misses changes. */
    poll_interval_ms: z.number().int().min(100).max(60_000).default(1000),
    debounce_ms: z.number().int().min(0).max(5000).default(100),
    memory: z
      .object({
        /** 64 KiB wasm pages allocated up front (SDK default 5). */
        initial_pages: z.number().int().min(1).max(65536).default(5),
        maximum_pages: z.number().int().min(1).max(65536).optional(),
      })
      .strict()
      .prefault({}),
    /** Decision input a new policy must answer well-formed before it replaces the old one. */
    canary_input: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();

/** The whole `policy` section. */
export const policySectionSchema = z
  .object({
    engine: z.enum(['builtin', 'opa']).default('builtin'),
    /** Deadline for one evaluation; late means deny. */
    timeout_ms: z.number().int().positive().max(10_000).default(250),
    builtin: z
      .object({
        /** DEV DEFAULT: the shipped rules allow only the demo workload; replace them in production. */
        rules_file: z.string().min(1).default('policies/default-rules.yaml'),
      })
      .strict()
      .prefault({}),
    opa: opaSectionSchema.optional(),
  })
  .strict()
  .superRefine((s, ctx) => {
    if (s.engine === 'opa' && s.opa === undefined) {
      ctx.addIssue({ code: 'custom', path: ['opa'], message: 'engine "opa" needs an "opa" block with policy_file' });
    }
  });

export type PolicySection = z.infer<typeof policySectionSchema>;
export type OpaSection = z.infer<typeof opaSectionSchema>;
