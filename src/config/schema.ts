/**
 * The configuration schema, in one place. Every option has its default here;
 * docs/configuration.md is the annotated version. Dev-only defaults say so.
 */
import { z } from 'zod';
import { policySectionSchema } from './sections/policy.js';
import { storeSectionSchema } from './sections/store.js';

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be HOST:PORT, e.g. 127.0.0.1:8443')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

const seconds = (def: number, max = 31 * 24 * 3600) => z.number().int().positive().max(max).default(def);

const trustDomainSchema = z
  .object({
    /** PEM roots or a SPIFFE bundle (JWKS with use x509-svid / jwt-svid). */
    bundle_file: z.string().min(1).optional(),
    /** Keep the bundle fresh from a SPIFFE bundle endpoint (https_web). */
    bundle_endpoint: z
      .object({
        url: z.url().refine((u) => u.startsWith('https://'), 'bundle endpoint must be https'),
        ca_file: z.string().min(1).optional(),
        refresh_seconds: z.number().int().min(5).max(86_400).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .refine((t) => t.bundle_file || t.bundle_endpoint, 'a trust domain needs bundle_file or bundle_endpoint');

const ASYM = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'EdDSA'] as const;

const oidcIssuerSchema = z
  .object({
    /** Name used in rules (`match.oidc.issuer`) and audit. */
    name: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, - and _'),
    /** github-actions, gitlab-ci or kubernetes: fills in the issuer URL and claim documentation. */
    preset: z.enum(['github-actions', 'gitlab-ci', 'kubernetes']).optional(),
    issuer: z.url().optional(),
    audiences: z.array(z.string().min(1)).min(1),
    algorithms: z.array(z.enum(ASYM)).min(1).default(['RS256', 'ES256']),
    jwks_uri: z.url().optional(),
    jwks_file: z.string().min(1).optional(),
    ca_file: z.string().min(1).optional(),
    clock_skew_seconds: z.number().int().min(0).max(600).default(60),
    max_token_age_seconds: z.number().int().positive().max(86_400).optional(),
    subject_claim: z.string().min(1).optional(),
  })
  .strict()
  .refine((i) => i.issuer || i.preset, 'set issuer (or a preset that defines it)');

export const configSchema = z
  .object({
    /** The `iss` of every token; the HTTP listener should be reachable at this URL. */
    issuer: z.url(),
    /** Identifies this broker in audit records and policy context. */
    broker_id: z.string().min(1).max(64).default('mayfly'),
    /** Where the database, keys and audit log live. Relative paths resolve against the config file. */
    data_dir: z.string().min(1).default('.'),
    listen: z
      .object({ grpc: hostPort.default('127.0.0.1:8443'), http: hostPort.default('127.0.0.1:8444') })
      .strict()
      .prefault({}),
    tls: z.object({ cert_file: z.string().min(1), key_file: z.string().min(1) }).strict(),
    trust_domains: z.record(z.string().regex(/^[a-z0-9._-]+$/, 'trust domain names are lowercase [a-z0-9._-]'), trustDomainSchema).default({}),
    jwt_svid: z
      .object({ audiences: z.array(z.string().min(1)).min(1).default(['mayfly']), clock_skew_seconds: z.number().int().min(0).max(600).default(60) })
      .strict()
      .prefault({}),
    oidc: z
      .object({
        issuers: z.array(oidcIssuerSchema).default([]),
        /** An unknown kid refetches an issuer's JWKS at most this often (rate limit against made-up kids). */
        jwks_refresh_cooldown_seconds: z.number().int().min(1).max(3600).default(5),
        /** Also refresh each JWKS in the background as its Cache-Control allows (60 s to 1 h), so rotations are seen early. */
        jwks_background_refresh: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
    store: storeSectionSchema.prefault({}),
    tokens: z
      .object({ default_ttl_seconds: seconds(300, 86_400), max_ttl_seconds: seconds(3600, 86_400) })
      .strict()
      .prefault({})
      .refine((t) => t.default_ttl_seconds <= t.max_ttl_seconds, { message: 'default_ttl_seconds must not exceed max_ttl_seconds', path: ['default_ttl_seconds'] }),
    tasks: z
      .object({
        default_ttl_seconds: seconds(900),
        max_ttl_seconds: seconds(86_400),
        max_delegation_depth: z.number().int().min(0).max(16).default(3),
        max_lease_seconds: seconds(3600),
        sweep_interval_ms: z.number().int().min(50).max(60_000).default(1000),
      })
      .strict()
      .prefault({}),
    keys: z
      .object({
        alg: z.enum(['ES256', 'EdDSA', 'RS256']).default('ES256'),
        /** Where signing keys live: file (data dir), memory (dev), postgres (shared by every replica). Default: postgres with store.backend postgres, else file. */
        store: z.enum(['file', 'memory', 'postgres']).optional(),
        /** Key-encryption key (base64 of 32 bytes) from this environment variable... */
        kek_env: z.string().min(1).default('MAYFLY_KEK'),
        /** ...or from this file (mode 0600). */
        kek_file: z.string().min(1).optional(),
        rotation_period_seconds: seconds(86_400),
        pre_publish_seconds: seconds(600),
        max_promotion_wait_seconds: seconds(3600),
        jwks_max_age_seconds: seconds(300, 86_400),
        check_interval_ms: z.number().int().min(50).max(600_000).default(5000),
      })
      .strict()
      .prefault({})
      .refine((k) => k.pre_publish_seconds >= k.jwks_max_age_seconds, {
        message: 'pre_publish_seconds must be at least jwks_max_age_seconds, or JWKS pollers could miss the next key',
        path: ['pre_publish_seconds'],
      }),
    audit: z
      .object({
        file: z.string().min(1).default('audit.log'),
        /** Seal the chain head (signed checkpoint record + head in the store) this often, and at every clean shutdown. */
        checkpoint_interval_seconds: seconds(60, 86_400),
      })
      .strict()
      .prefault({}),
    policy: policySectionSchema.prefault({}),
    feed: z
      .object({
        heartbeat_ms: z.number().int().min(100).max(60_000).default(5000),
        /**
         * Most bytes one subscriber's stream may hold unsent (it stopped reading, or reads slower than revocations
         * come). Past it the broker ends that stream with ERR_FEED_SUBSCRIBER_SLOW; the subscriber resumes from its cursor.
         */
        max_buffered_bytes: z.number().int().min(64 * 1024).max(256 * 1024 * 1024).default(1024 * 1024),
        /** Identities allowed to subscribe; empty = any authenticated caller. */
        subscribers: z.array(z.string().min(1)).default([]),
      })
      .strict()
      .prefault({}),
    /** Identities allowed to call admin RPCs (RevokeIdentity). */
    admins: z.array(z.string().min(1)).default([]),
    clock_skew_seconds: z.number().int().min(0).max(600).default(60),
    log: z.object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).strict().prefault({}),
  })
  .strict();

export type MayflyConfig = z.infer<typeof configSchema>;
