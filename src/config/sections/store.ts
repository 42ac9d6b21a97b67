/**
 * The `store` config section. backend sqlite (default, one process), memory
 * (dev/tests) or postgres (several brokers on one database). The PostgreSQL
 * URL comes from `store.url` or, taking precedence, the MAYFLY_STORE_URL
 * environment variable (keeps the password out of the file); it is
 * validated here, and again when taken from the environment, so errors name
 * the field. Messages never echo the URL: it may hold a password.
 */
import { z } from 'zod';

/** Environment variable that supplies (and overrides) store.url. */
export const STORE_URL_ENV = 'MAYFLY_STORE_URL';

/** A postgres:// URL with a host; the value itself never appears in an error. */
export const pgUrlSchema = z.string().superRefine((s, ctx) => {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'must be a URL like postgres://user:password@host:5432/database (value not shown: it may hold a password)' });
    return;
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    ctx.addIssue({ code: 'custom', message: `must start with postgres:// or postgresql:// (got ${u.protocol}//)` });
    return;
  }
  if (!u.hostname) ctx.addIssue({ code: 'custom', message: 'must name a host, e.g. postgres://mayfly@db.internal:5432/mayfly' });
  if (u.pathname.length <= 1) ctx.addIssue({ code: 'custom', message: 'must name a database, e.g. postgres://mayfly@db.internal:5432/mayfly' });
});

export const storeSectionSchema = z
  .object({
    backend: z.enum(['sqlite', 'memory', 'postgres']).default('sqlite'),
    /** sqlite: the database file, relative to data_dir. */
    path: z.string().min(1).default('mayfly.db'),
    /** postgres: postgres://user:password@host:port/database (or MAYFLY_STORE_URL). */
    url: pgUrlSchema.optional(),
    /** postgres: connections per broker process. */
    pool_max: z.number().int().min(2).max(200).default(10),
    /** postgres: how long a call waits for a connection before failing with ERR_UNAVAILABLE. */
    connect_timeout_ms: z.number().int().min(100).max(60_000).default(5000),
    /** postgres: statement_timeout, and the client-side limit on one query. */
    statement_timeout_ms: z.number().int().min(100).max(600_000).default(10_000),
    /**
     * postgres: wait for PostgreSQL to flush token records and lease renewals before answering, as it does for
     * tasks and every revocation. Default false: they are committed (every replica sees them) but flushed by the
     * WAL writer a moment later, as SQLite does; a database crash can lose the last of them, and ending a token's
     * task still revokes it (docs/durability.md).
     */
    flush_token_records: z.boolean().default(false),
    /** postgres: apply pending schema migrations at startup (false: refuse to start unless `mayfly db migrate` ran). */
    migrate: z.boolean().default(true),
    gc_interval_seconds: z.number().int().positive().max(86_400).default(60),
    gc_grace_seconds: z.number().int().positive().max(31 * 24 * 3600).default(3600),
  })
  .strict();

export type StoreSection = z.infer<typeof storeSectionSchema>;
