/**
 * PostgreSQL Store: several brokers (processes or machines) share one
 * database. Driver: node-postgres (`pg`), chosen by measurement
 * (bench/pg-driver.mjs): equal to `postgres` on single statements, and
 * faster with less client CPU on the multi-statement revocation transaction.
 *
 * Concurrency. Unlike SQLite in one process, two brokers can work on the
 * same task at once, so every method is one statement or one transaction
 * whose row locks decide the outcome:
 * - recordToken (batched with concurrent calls, see below) is one statement
 *   that locks the task's row, bumps its counter only while it is active and
 *   inserts the token only if it did. An endTask holding the lock makes
 *   recordToken wait, re-read the row, find it ended and insert nothing
 *   (ERR_TASK_NOT_ACTIVE). A recordToken that got there first commits before
 *   endTask can lock the row, and endTask's later statements see its token
 *   and revoke it.
 * - endTask/endTasksOfOwner lock the seed task(s) and then the active
 *   closure (in id order, so two enders never deadlock) with SELECT … FOR
 *   UPDATE, re-walking the tree until no new active descendant appears.
 *   The second of two concurrent enders waits, re-checks `status = 'active'`
 *   and returns the empty result: exactly one gets the event.
 * - Revocation events take their cursor from a one-row counter as the last
 *   statement before COMMIT (migrations/postgres.ts, docs/revocation-cursors.md):
 *   cursors become visible in order, never skipping a late commit.
 * Deadlocks and serialization failures are retried a few times.
 *
 * Batches. getTask, createTask and recordToken calls made while one of the
 * same kind is in flight (or in the same event-loop turn) go out as one
 * statement over arrays (postgres-batch.ts): one round trip, one parse, one
 * commit for many calls instead of one each, which was most of PostgreSQL's
 * CPU per IssueToken. Each call still gets its own outcome; the batch
 * functions below say how. docs/clustering.md has the measurements.
 *
 * Durability. Ending and revoking run with synchronous_commit = on
 * (SET LOCAL), whatever the server default: the promise resolves after the
 * commit is flushed, so CompleteTask answers only once the revocation is
 * durable. Token records and lease renewals go over connections of their
 * own with synchronous_commit = off (unless flushTokenRecords): committed
 * and visible to every replica before the reply, flushed by PostgreSQL's
 * WAL writer a moment later, which is the promise SQLite gives them. A
 * token whose record a database crash loses is still revoked by its task
 * (docs/durability.md). Every other write, tasks included, uses the
 * server's setting (on by default): a lost task record would leave its
 * tokens revocable by nobody.
 *
 * Failure. When PostgreSQL cannot be reached (refused, reset, timed out,
 * shutting down), calls fail with ERR_UNAVAILABLE; nothing is ever assumed
 * written, so a token whose record failed is never handed out. The password
 * of the URL never appears in errors or logs (redactPgUrl).
 */
import pg from 'pg';
import { isMayflyError, mayflyError, MayflyError } from '../core/errors.js';
import type { RevocationSnapshot, Store } from '../core/ports.js';
import type { AuditHead, EpochMs, TaskOwnerIdentity, RevocationEvent, TaskEndResult, TaskRecord, TaskStatus, TokenRecord } from '../core/types.js';
import { PG_MIGRATIONS, type PgMigration } from './migrations/postgres.js';
import { Batcher, type BatchOutcome } from './postgres-batch.js';
import { assertParentActive, descendantEndReason, EMPTY_END } from './semantics.js';

/** Advisory lock key that serialises migrations (any constant unique to mayfly). */
const MIGRATION_LOCK = '7233051902847213617';

/** Schema version this build writes. */
export const PG_SCHEMA_VERSION = PG_MIGRATIONS.length === 0 ? 0 : PG_MIGRATIONS[PG_MIGRATIONS.length - 1]!.version;

/** Options of PostgresStore.open. */
export interface PostgresStoreOptions {
  /** postgres://user:password@host:port/database?… */
  url: string;
  /** Connections in the pool (default 10). */
  poolMax?: number;
  /** How long to wait for a connection before failing with ERR_UNAVAILABLE (ms, default 5000). */
  connectTimeoutMs?: number;
  /** Server-side statement_timeout and client-side query timeout (ms, default 10000). */
  statementTimeoutMs?: number;
  /** Apply pending migrations (default true); false fails if the schema is not current. */
  migrate?: boolean;
  /** application_name, shown in pg_stat_activity (default "mayfly"). */
  applicationName?: string;
  /** Told about connection errors of idle pooled clients (e.g. the server restarted). */
  onIdleError?: (err: MayflyError) => void;
  /** Ping the server this often (ms) so health() notices an outage and a recovery without traffic (default 0: only calls tell). */
  healthIntervalMs?: number;
  /** Wait for token records and lease renewals to be flushed, as every other write is (default false: see Durability above). */
  flushTokenRecords?: boolean;
}

/** What PostgresStore.health() reports. */
export interface PgStoreHealth {
  ok: boolean;
  detail: string;
}

/** The URL with its password replaced by ***, for logs and errors. */
export function redactPgUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    for (const k of [...u.searchParams.keys()]) if (/^pass(word)?$/i.test(k)) u.searchParams.set(k, '***');
    return u.toString();
  } catch {
    return '(unparseable PostgreSQL URL)';
  }
}

/** `host:port/database` of a URL, for messages. */
function target(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '5432'}${u.pathname}`;
  } catch {
    return '(unparseable PostgreSQL URL)';
  }
}

const CONN_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED']);
/** SQLSTATEs that mean "the server is not there for us right now". */
const UNAVAILABLE_STATES = new Set(['57P01', '57P02', '57P03', '53300', '08000', '08001', '08003', '08004', '08006', '08007']);
const RETRY_STATES = new Set(['40001', '40P01']);

function errCode(err: unknown): string {
  const c = (err as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : '';
}

/** True when the failure means the server could not be reached or dropped us. */
export function isPgUnavailable(err: unknown): boolean {
  const c = errCode(err);
  if (CONN_ERRNO.has(c) || UNAVAILABLE_STATES.has(c)) return true;
  const m = err instanceof Error ? err.message : '';
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|Query read timeout|terminating connection/i.test(m);
}

/** Maps a driver failure to ERR_UNAVAILABLE / ERR_STORE with a message an operator can act on. */
function storeError(url: string, what: string, err: unknown): MayflyError {
  if (isMayflyError(err)) return err;
  const c = errCode(err);
  const where = target(url);
  const details = { target: where, pgCode: c || undefined };
  const reason = err instanceof Error ? err.message.replace(/postgres(ql)?:\/\/[^\s]*/gi, (m) => redactPgUrl(m)) : String(err);
  if (isPgUnavailable(err)) {
    // At startup the operator reads this, so it says where and why. On the request path it goes
    // to callers too (ERR_UNAVAILABLE is not an internal error), so it does not name the database
    // host; the target and the driver's reason stay in the details and in health().
    if (what === 'open' || what === 'migrate' || what === 'schema version') return mayflyError('ERR_UNAVAILABLE', `PostgreSQL store at ${where} is unavailable (${what}): ${reason}`, details, err);
    return mayflyError('ERR_UNAVAILABLE', `store unavailable (${what}); the broker refuses to proceed without recording it`, { ...details, reason }, err);
  }
  if (c === '28P01' || c === '28000') return mayflyError('ERR_STORE', `PostgreSQL store at ${where} refused the credentials (${what}); check the user and password of store.url / MAYFLY_STORE_URL`, details, err);
  if (c === '3D000') return mayflyError('ERR_STORE', `PostgreSQL database ${where} does not exist (${what}); create it (CREATE DATABASE) or fix store.url`, details, err);
  if (c === '42501') return mayflyError('ERR_STORE', `PostgreSQL store at ${where}: permission denied (${what}); the broker's role needs to own its tables`, details, err);
  if (c === '23505') return mayflyError('ERR_STORE', `store constraint violated (${what}): ${reason}`, details, err);
  if (c === '57014') return mayflyError('ERR_UNAVAILABLE', `PostgreSQL store at ${where} timed out (${what})`, details, err);
  return mayflyError('ERR_STORE', `PostgreSQL store at ${where} failed (${what}): ${reason}`, details, err);
}

interface TaskRow {
  id: string;
  owner: string;
  owner_kind: string;
  purpose: string;
  labels: Record<string, string>;
  created_at: number;
  expires_at: number;
  lease_expires_at: number | null;
  status: string;
  ended_at: number | null;
  end_reason: string | null;
  parent_id: string | null;
  root_id: string;
  depth: number;
  scope_ceiling: string[] | null;
  actors: string[];
  tokens_issued: number;
  owner_identity: TaskOwnerIdentity | null;
}

interface TokenRow {
  jti: string;
  task_id: string;
  kid: string;
  sub: string;
  audience: string;
  scopes: string[];
  issued_at: number;
  expires_at: number;
  cert_thumbprint: string | null;
  single_use: boolean;
  tool: string | null;
  args_digest: string | null;
  revoked_at: number | null;
}

interface EventRow {
  cursor: number;
  kind: string;
  at: number;
  task_ids: string[];
  jtis: string[];
  kid: string | null;
  reason: string;
  covers_until: number;
}

function taskFromRow(r: TaskRow): TaskRecord {
  return {
    id: r.id,
    owner: r.owner,
    ownerKind: r.owner_kind as TaskRecord['ownerKind'],
    purpose: r.purpose,
    labels: r.labels,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    leaseExpiresAt: r.lease_expires_at,
    status: r.status as TaskStatus,
    endedAt: r.ended_at,
    endReason: r.end_reason,
    parentId: r.parent_id,
    rootId: r.root_id,
    depth: r.depth,
    scopeCeiling: r.scope_ceiling,
    actors: r.actors,
    tokensIssued: r.tokens_issued,
    ...(r.owner_identity !== null && r.owner_identity !== undefined ? { ownerIdentity: r.owner_identity } : {}),
  };
}

function tokenFromRow(r: TokenRow): TokenRecord {
  return {
    jti: r.jti,
    taskId: r.task_id,
    kid: r.kid,
    sub: r.sub,
    audience: r.audience,
    scopes: r.scopes,
    issuedAt: r.issued_at,
    expiresAt: r.expires_at,
    certThumbprint: r.cert_thumbprint,
    singleUse: r.single_use,
    tool: r.tool,
    argsDigest: r.args_digest,
    revokedAt: r.revoked_at,
  };
}

function eventFromRow(r: EventRow): RevocationEvent {
  return {
    cursor: r.cursor,
    kind: r.kind as RevocationEvent['kind'],
    at: r.at,
    taskIds: r.task_ids,
    jtis: r.jtis,
    kid: r.kid,
    reason: r.reason,
    coversUntil: r.covers_until,
  };
}

/**
 * bigint (int8) columns hold epoch milliseconds and cursors, all far below
 * 2^53: parse them as numbers instead of pg's default strings. JSON is
 * parsed with JSON.parse, so a label named __proto__ stays data.
 */
const TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if (oid === pg.types.builtins.INT8) return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text');
  }) as pg.CustomTypesConfig['getTypeParser'],
};

type Q = pg.PoolClient | pg.Pool;

const TASK_COLS = 'id, owner, owner_kind, purpose, labels, created_at, expires_at, lease_expires_at, status, ended_at, end_reason, parent_id, root_id, depth, scope_ceiling, actors, tokens_issued, owner_identity';

const SQL = {
  insertTask: `INSERT INTO tasks (${TASK_COLS}) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb, $16::jsonb, $17, $18::jsonb)`,
  // An active child: inserted only if its parent is active, in the same statement. FOR SHARE conflicts with the
  // FOR UPDATE endTask takes on the parent: an end that came first is waited for and then seen (no row, no insert);
  // an insert that came first is committed before the end walks the parent's subtree, which then ends it too.
  insertChildTask: `INSERT INTO tasks (${TASK_COLS})
    SELECT $1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb, $16::jsonb, $17, $18::jsonb
    FROM tasks p WHERE p.id = $12 AND p.status = 'active' FOR SHARE OF p`,
  getTask: `SELECT ${TASK_COLS} FROM tasks WHERE id = $1`,
  descendants: `WITH RECURSIVE sub(id) AS (
      SELECT id FROM tasks WHERE parent_id = $1
      UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id)
    SELECT ${TASK_COLS} FROM tasks WHERE id IN (SELECT id FROM sub) ORDER BY depth, created_at, id`,
  renewLease: `UPDATE tasks SET lease_expires_at = $2 WHERE id = $1 AND status = 'active'`,
  // One statement, one row lock: the token is inserted only if the counter of an active task was bumped.
  recordToken: `WITH t AS (UPDATE tasks SET tokens_issued = tokens_issued + 1 WHERE id = $2 AND status = 'active' RETURNING id)
    INSERT INTO tokens (jti, task_id, kid, sub, audience, scopes, issued_at, expires_at, cert_thumbprint, single_use, tool, args_digest, revoked_at)
    SELECT $1, t.id, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13 FROM t`,
  taskStatus: 'SELECT status FROM tasks WHERE id = $1',
  // The batched hot path (postgres-batch.ts): one statement for every call of a batch, over arrays.
  getTasks: `SELECT ${TASK_COLS} FROM tasks WHERE id = ANY($1::text[])`,
  insertTasks: `INSERT INTO tasks (${TASK_COLS})
    SELECT id, owner, owner_kind, purpose, labels::jsonb, created_at, expires_at, lease_expires_at, status, ended_at, end_reason,
      parent_id, root_id, depth, scope_ceiling::jsonb, actors::jsonb, tokens_issued, owner_identity::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::int8[],
      $11::text[], $12::text[], $13::text[], $14::int4[], $15::text[], $16::text[], $17::int4[], $18::text[])
      AS i(id, owner, owner_kind, purpose, labels, created_at, expires_at, lease_expires_at, status, ended_at, end_reason,
        parent_id, root_id, depth, scope_ceiling, actors, tokens_issued, owner_identity)`,
  // recordToken for a batch. The tasks' rows are locked first, one at a time in id order, so two
  // batches (of this broker or another) never deadlock; an ender locks its seed before the rest of
  // its subtree, so a batch holding a lower-id descendant can deadlock with it: PostgreSQL detects
  // that and the loser is retried. A row whose lock had to wait is re-read at its newest version
  // (READ COMMITTED), so `status = 'active'` is judged after the lock is ours. Each active task's
  // counter is bumped by its number of tokens and only those tokens are inserted; the jtis
  // returned are the ones recorded.
  // The shape pins the plan to primary-key lookups (every statement is planned per execution, so
  // against the table's live size; no plan is cached): the LATERAL subquery (OFFSET 0 keeps the
  // status test out of it) and `id = ANY (ARRAY(...))` keep the planner from scanning the partial
  // indexes on status or the whole table, which it did on a table not yet analyzed.
  recordTokens: `WITH i AS (
      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::text[],
        $10::bool[], $11::text[], $12::text[], $13::int8[])
        AS i(jti, task_id, kid, sub, audience, scopes, issued_at, expires_at, cert_thumbprint, single_use, tool, args_digest, revoked_at)),
    n AS (SELECT task_id, count(*)::int AS n FROM i GROUP BY task_id ORDER BY task_id),
    l AS (SELECT t.id, n.n FROM n CROSS JOIN LATERAL (
      SELECT id, status FROM tasks WHERE id = n.task_id OFFSET 0 FOR NO KEY UPDATE) t WHERE t.status = 'active'),
    u AS (UPDATE tasks t SET tokens_issued = t.tokens_issued + l.n FROM l WHERE t.id = l.id AND t.id = ANY (ARRAY(SELECT id FROM l)) RETURNING t.id)
    INSERT INTO tokens (jti, task_id, kid, sub, audience, scopes, issued_at, expires_at, cert_thumbprint, single_use, tool, args_digest, revoked_at)
    SELECT i.jti, i.task_id, i.kid, i.sub, i.audience, i.scopes::jsonb, i.issued_at, i.expires_at, i.cert_thumbprint, i.single_use, i.tool, i.args_digest, i.revoked_at
    FROM i JOIN u ON u.id = i.task_id
    RETURNING jti`,
  taskStatuses: 'SELECT id, status FROM tasks WHERE id = ANY($1::text[])',
  lockTaskStatus: 'SELECT status FROM tasks WHERE id = $1 FOR UPDATE',
  getToken: 'SELECT * FROM tokens WHERE jti = $1',
  /** Active tasks reachable from the seeds through tasks of any status (UNION also makes a cycle harmless). */
  activeClosure: `WITH RECURSIVE sub(id) AS (
      SELECT unnest($1::text[])
      UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id)
    SELECT id FROM tasks WHERE id IN (SELECT id FROM sub) AND status = 'active'`,
  lockActive: `SELECT id, owner, expires_at, depth, created_at FROM tasks WHERE id = ANY($1::text[]) AND status = 'active' ORDER BY id FOR UPDATE`,
  lockOwnerActive: `SELECT id FROM tasks WHERE owner = $1 AND status = 'active' ORDER BY id FOR UPDATE`,
  endTasks: `UPDATE tasks SET status = $1, ended_at = $2, end_reason = $3 WHERE status = 'active' AND id = ANY($4::text[])`,
  revokeTokensOfTasks: 'UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND task_id = ANY($2::text[])',
  revokeToken: 'UPDATE tokens SET revoked_at = $1 WHERE jti = $2 AND revoked_at IS NULL RETURNING expires_at',
  revokeKidTokens: 'UPDATE tokens SET revoked_at = $1 WHERE kid = $2 AND expires_at > $3 AND revoked_at IS NULL RETURNING jti',
  kidCoverage: 'SELECT MAX(expires_at) AS m FROM tokens WHERE kid = $1 AND expires_at > $2',
  // Takes the next cursor (row lock until COMMIT) and inserts the event, in one round trip.
  insertEvent: `WITH c AS (UPDATE event_cursor SET latest = latest + 1 WHERE id = 1 RETURNING latest)
    INSERT INTO events (cursor, kind, at, task_ids, jtis, kid, reason, covers_until)
    SELECT c.latest, $1, $2, $3::jsonb, $4::jsonb, $5, $6, $7 FROM c RETURNING cursor`,
  eventsSince: 'SELECT * FROM events WHERE cursor > $1 ORDER BY cursor LIMIT $2',
  cursorRange: 'SELECT latest, pruned, (SELECT MIN(cursor) FROM events) AS oldest FROM event_cursor WHERE id = 1',
  snapTasks: `SELECT id FROM tasks WHERE expires_at > $1 AND status <> 'active' ORDER BY id`,
  snapJtis: `SELECT k.jti FROM tokens k LEFT JOIN tasks t ON t.id = k.task_id
    WHERE k.revoked_at IS NOT NULL AND k.expires_at > $1 AND (t.id IS NULL OR t.status = 'active' OR t.expires_at < k.expires_at)
    ORDER BY k.jti`,
  snapKids: `SELECT DISTINCT kid FROM events WHERE kind = 'key' AND kid IS NOT NULL AND covers_until > $1 ORDER BY kid`,
  dueTasks: `SELECT ${TASK_COLS} FROM tasks
    WHERE status = 'active' AND (expires_at <= $1 OR lease_expires_at <= $1)
    ORDER BY LEAST(expires_at, COALESCE(lease_expires_at, expires_at)), id LIMIT $2`,
  liveByKid: 'SELECT kid, COUNT(*)::int AS n FROM tokens WHERE expires_at > $1 GROUP BY kid',
  gcTokens: 'DELETE FROM tokens WHERE task_id IN (SELECT id FROM tasks WHERE expires_at < $1)',
  gcTasks: 'DELETE FROM tasks WHERE expires_at < $1',
  gcEvents: 'DELETE FROM events WHERE covers_until < $1',
  markPruned: 'UPDATE event_cursor SET pruned = true WHERE id = 1',
  putAuditHead: `INSERT INTO audit_heads (broker_id, seq, hash, at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (broker_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at`,
  getAuditHead: 'SELECT seq, hash, at FROM audit_heads WHERE broker_id = $1',
} as const;

/**
 * Hot-path statements sent as named prepared statements, so a pooled
 * connection parses each once, not at every call (about a fifth of
 * PostgreSQL's CPU per IssueToken at batches of 16), and plans each once:
 * they run only on the hot connections (HOT_SESSION), which keep the generic
 * plan. Planning them at every execution cost PostgreSQL about 0.3 ms per
 * batch, most of its CPU per IssueToken once batches are small (store alone,
 * 8 in flight: 112 µs per getTask + recordToken planned each time, 64 µs
 * planned once). A generic plan made while the tables were small (a fresh
 * database, not yet analyzed) used to scan whole tables once they had grown;
 * on the hot connections sequential scans are off, and every statement they
 * run finds its rows by primary key, so the plan is the index plan whatever
 * the table's size (test/store/postgres-plans.test.ts). Only statements
 * with explicit column lists: a prepared `SELECT *` would fail once another
 * broker migrates a column in.
 */
const PREPARED = new Map<string, string>([
  [SQL.getTasks, 'mayfly_get_tasks'],
  [SQL.insertTasks, 'mayfly_insert_tasks'],
  [SQL.insertTask, 'mayfly_insert_task'],
  [SQL.insertChildTask, 'mayfly_insert_child_task'],
  [SQL.recordTokens, 'mayfly_record_tokens'],
  [SQL.recordToken, 'mayfly_record_token'],
]);

/** The hot statements' text (for the plan test). */
export const HOT_STATEMENTS: readonly string[] = [...PREPARED.keys()];

function taskValues(task: TaskRecord): unknown[] {
  return [
    task.id,
    task.owner,
    task.ownerKind,
    task.purpose,
    JSON.stringify(task.labels),
    task.createdAt,
    task.expiresAt,
    task.leaseExpiresAt,
    task.status,
    task.endedAt,
    task.endReason,
    task.parentId,
    task.rootId,
    task.depth,
    task.scopeCeiling === null ? null : JSON.stringify(task.scopeCeiling),
    JSON.stringify(task.actors),
    task.tokensIssued,
    task.ownerIdentity === undefined ? null : JSON.stringify(task.ownerIdentity),
  ];
}

/** The parameters of SQL.insertTasks: one array per column (JSON columns as text, cast by the statement). */
function taskColumns(tasks: TaskRecord[]): unknown[][] {
  const cols: unknown[][] = Array.from({ length: 18 }, () => new Array<unknown>(tasks.length));
  tasks.forEach((t, i) => taskValues(t).forEach((v, c) => (cols[c]![i] = v)));
  return cols;
}

/** The parameters of SQL.recordTokens: one array per column. */
function tokenColumns(tokens: TokenRecord[]): unknown[][] {
  const cols: unknown[][] = Array.from({ length: 13 }, () => new Array<unknown>(tokens.length));
  tokens.forEach((t, i) => {
    const row = [t.jti, t.taskId, t.kid, t.sub, t.audience, JSON.stringify(t.scopes), t.issuedAt, t.expiresAt, t.certThumbprint, t.singleUse, t.tool, t.argsDigest, t.revokedAt];
    row.forEach((v, c) => (cols[c]![i] = v));
  });
  return cols;
}

function notActive(taskId: string, status: string): MayflyError {
  return mayflyError('ERR_TASK_NOT_ACTIVE', `task ${taskId} is ${status}; no token may be recorded for it`, { taskId });
}

/** A promise's outcome as a value, for one item of a batch. */
function settle<T>(p: Promise<T>): Promise<BatchOutcome<T>> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** Connections of each hot pool (tasks; token records and lease renewals): the batches keep at most a couple busy. */
const HOT_POOL_MAX = 4;

/**
 * Session settings of the hot connections, which run only the PREPARED
 * statements and other primary-key lookups: plans made once and kept, never
 * a sequential scan (see PREPARED).
 */
export const HOT_SESSION = 'SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off';

/** The token pool's: HOT_SESSION, and commits not waited for (see Durability above). */
const TOKEN_SESSION = `${HOT_SESSION}; SET synchronous_commit = off`;

/**
 * Creates a pool for a URL with the store's settings (also used by `mayfly
 * db migrate`). `session`: settings every new connection runs first (the
 * hot pools'; by default none beyond the server's).
 */
export function createPgPool(options: PostgresStoreOptions, session?: string): pg.Pool {
  const timeout = options.statementTimeoutMs ?? 10_000;
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolMax ?? 10,
    connectionTimeoutMillis: options.connectTimeoutMs ?? 5000,
    idleTimeoutMillis: 30_000,
    statement_timeout: timeout,
    query_timeout: timeout + 2000,
    keepAlive: true,
    application_name: options.applicationName ?? 'mayfly',
    types: TYPES,
  });
  // Queued ahead of the first query of every new connection. A failure here is the connection's
  // failure, which that first query reports.
  if (session !== undefined) pool.on('connect', (client) => void client.query(session).catch(() => undefined));
  return pool;
}

/** Outcome of migrate(): what was found and what this call applied. */
export interface PgMigrateResult {
  from: number;
  to: number;
  applied: PgMigration[];
}

/**
 * Applies pending migrations under a session-level advisory lock, so any
 * number of brokers starting together migrate exactly once: the first one
 * applies, the others wait for the lock and then find nothing to do.
 * ERR_STORE if the database has a newer schema than this build knows.
 */
export async function migratePg(pool: pg.Pool, url: string, migrations: readonly PgMigration[] = PG_MIGRATIONS): Promise<PgMigrateResult> {
  let client: pg.PoolClient | undefined;
  try {
    client = await pool.connect();
  } catch (err) {
    throw storeError(url, 'migrate', err);
  }
  let broken = false;
  try {
    // Another broker may be migrating: wait for it however long its migration takes, not
    // statement_timeout (the session setting is restored before the connection goes back to the pool).
    await client.query('SET statement_timeout = 0');
    await client.query({ text: 'SELECT pg_advisory_lock($1::bigint)', values: [MIGRATION_LOCK], query_timeout: 3_600_000 } as pg.QueryConfig);
    try {
      await client.query(`CREATE TABLE IF NOT EXISTS mayfly_schema_migrations (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())`);
      const { rows } = await client.query<{ v: number | null }>('SELECT MAX(version) AS v FROM mayfly_schema_migrations');
      const from = rows[0]?.v ?? 0;
      const known = migrations.length === 0 ? 0 : migrations[migrations.length - 1]!.version;
      if (from > known) {
        throw mayflyError('ERR_STORE', `PostgreSQL store at ${target(url)} has schema version ${from}, newer than this broker supports (${known}); upgrade mayfly`, { target: target(url) });
      }
      const applied: PgMigration[] = [];
      for (const m of migrations) {
        if (m.version <= from) continue;
        await client.query('BEGIN');
        try {
          await client.query(m.sql);
          await client.query('INSERT INTO mayfly_schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw mayflyError('ERR_STORE', `PostgreSQL migration ${m.version} (${m.name}) failed on ${target(url)}: ${err instanceof Error ? err.message : String(err)}`, { target: target(url) }, err);
        }
        applied.push(m);
      }
      return { from, to: Math.max(from, known), applied };
    } finally {
      await client.query('SELECT pg_advisory_unlock($1::bigint)', [MIGRATION_LOCK]).catch(() => {
        broken = true;
      });
      await client.query('RESET statement_timeout').catch(() => {
        broken = true;
      });
    }
  } catch (err) {
    if (isPgUnavailable(err)) broken = true;
    throw storeError(url, 'migrate', err);
  } finally {
    client.release(broken);
  }
}

/** Schema version recorded in the database (0 when never migrated). */
export async function pgSchemaVersion(pool: pg.Pool, url: string): Promise<number> {
  try {
    const exists = await pool.query<{ t: string | null }>(`SELECT to_regclass('mayfly_schema_migrations')::text AS t`);
    if (!exists.rows[0]?.t) return 0;
    const { rows } = await pool.query<{ v: number | null }>('SELECT MAX(version) AS v FROM mayfly_schema_migrations');
    return rows[0]?.v ?? 0;
  } catch (err) {
    throw storeError(url, 'schema version', err);
  }
}

/** Durable Store in a PostgreSQL database shared by every broker of a cluster. */
export class PostgresStore implements Store {
  private closed = false;
  /**
   * Tail of this instance's queue of event-appending transactions. They run
   * one at a time, so events get cursors in the order this broker was asked
   * (the contract's ordering within one store); across brokers the cursor
   * row lock orders them. Revocations are rare next to issuance, which does
   * not queue.
   */
  private eventQueue: Promise<unknown> = Promise.resolve();
  /** Set by the last call that could not reach the server, cleared by the next one that did. */
  private outage: { since: number; reason: string } | null = null;
  private probe: NodeJS.Timeout | undefined;
  /** The hot path in batches (postgres-batch.ts): one statement per batch instead of one per call. */
  private readonly taskReads = new Batcher<string, TaskRecord | null>((ids) => this.getTaskBatch(ids), (at) => this.refusedSince(at, 'getTask'));
  private readonly taskWrites = new Batcher<TaskRecord, void>((tasks) => this.createTaskBatch(tasks), (at) => this.refusedSince(at, 'createTask'));
  private readonly tokenWrites = new Batcher<TokenRecord, void>((tokens) => this.recordTokenBatch(tokens), (at) => this.refusedSince(at, 'recordToken'));

  private constructor(
    /** The pool; exposed for adapters that share the database (e.g. the coordinator). */
    readonly pool: pg.Pool,
    /** Task reads and writes of the hot path (HOT_SESSION). */
    private readonly hotPool: pg.Pool,
    /** Token records and lease renewals: `hotPool` itself, or hot sessions with synchronous_commit = off. */
    private readonly tokenPool: pg.Pool,
    private readonly url: string,
    healthIntervalMs: number,
  ) {
    if (healthIntervalMs > 0) {
      this.probe = setInterval(() => void this.ping().catch(() => undefined), healthIntervalMs);
      this.probe.unref();
    }
  }

  /** ok until a call fails because the server is unreachable; ok again after the next call that reaches it. */
  health(): PgStoreHealth {
    if (this.closed) return { ok: false, detail: 'store is closed' };
    if (this.outage) return { ok: false, detail: `PostgreSQL at ${target(this.url)} unavailable for ${Math.round((Date.now() - this.outage.since) / 1000)}s: ${this.outage.reason}` };
    return { ok: true, detail: `postgres ${target(this.url)}` };
  }

  /** ERR_UNAVAILABLE for a call queued at `queuedAt` if the server was found unreachable since (see tx). */
  private refusedSince(queuedAt: number, what: string): MayflyError | undefined {
    const o = this.outage;
    if (!o || o.since < queuedAt) return undefined;
    return mayflyError('ERR_UNAVAILABLE', `store unavailable (${what}); the broker refuses to proceed without recording it`, { target: target(this.url), reason: o.reason });
  }

  private noteOutcome(err?: unknown): void {
    if (err === undefined) this.outage = null;
    else if (isMayflyError(err, 'ERR_UNAVAILABLE')) this.outage ??= { since: Date.now(), reason: String(err.details?.['reason'] ?? err.message) };
  }

  /**
   * Connects, migrates (unless `migrate: false`, which instead requires the
   * schema to be current) and returns the store. ERR_UNAVAILABLE when the
   * server cannot be reached, ERR_STORE for credentials, a missing database
   * or a newer schema.
   */
  static async open(options: PostgresStoreOptions): Promise<PostgresStore> {
    const pool = createPgPool(options);
    const hot = (suffix: string, session: string) =>
      createPgPool({ ...options, poolMax: Math.min(HOT_POOL_MAX, options.poolMax ?? HOT_POOL_MAX), applicationName: `${options.applicationName ?? 'mayfly'} ${suffix}`.slice(0, 63) }, session);
    const hotPool = hot('hot', HOT_SESSION);
    const tokenPool = options.flushTokenRecords ? hotPool : hot('tokens', TOKEN_SESSION);
    const pools = [...new Set([pool, hotPool, tokenPool])];
    // An idle pooled connection that the server drops (restart, failover)
    // emits 'error' on the pool; unhandled, it would crash the process.
    for (const p of pools) p.on('error', (err) => options.onIdleError?.(storeError(options.url, 'idle connection', err)));
    try {
      if (options.migrate === false) {
        const v = await pgSchemaVersion(pool, options.url);
        if (v !== PG_SCHEMA_VERSION) {
          throw mayflyError('ERR_STORE', `PostgreSQL store at ${target(options.url)} has schema version ${v}, this broker needs ${PG_SCHEMA_VERSION}; run mayfly db migrate`, { target: target(options.url) });
        }
      } else {
        await migratePg(pool, options.url);
      }
      return new PostgresStore(pool, hotPool, tokenPool, options.url, options.healthIntervalMs ?? 0);
    } catch (err) {
      for (const p of pools) await p.end().catch(() => undefined);
      throw storeError(options.url, 'open', err);
    }
  }

  /** Where this store points, password redacted. */
  describe(): string {
    return redactPgUrl(this.url);
  }

  private check(what: string): void {
    if (this.closed) throw mayflyError('ERR_STORE', `store is closed (${what})`);
  }

  private async q<R extends pg.QueryResultRow>(what: string, text: string, values: unknown[], on: Q = this.pool): Promise<pg.QueryResult<R>> {
    this.check(what);
    try {
      // Named (planned once) only on the hot connections, whose settings make that plan safe.
      const res = await on.query<R>({ text, values, name: on === this.pool ? undefined : PREPARED.get(text) });
      this.noteOutcome();
      return res;
    } catch (err) {
      const e = storeError(this.url, what, err);
      this.noteOutcome(e);
      throw e;
    }
  }

  /**
   * Runs `fn` in one transaction (READ COMMITTED unless told), retrying on
   * deadlock or serialization failure. `durable` (every transaction that may
   * append an event): synchronous_commit = on, so the promise resolves only
   * after the commit is flushed, and queued behind this instance's other
   * event-appending transactions (see eventQueue).
   */
  private async tx<T>(what: string, fn: (c: pg.PoolClient) => Promise<T>, opts: { durable?: boolean; begin?: string; unqueued?: boolean } = {}): Promise<T> {
    if (opts.durable && !opts.unqueued) {
      // A call that waited in the queue while the server became unreachable fails at once
      // instead of waiting out its own connect timeout behind every other queued call.
      const queuedAt = Date.now();
      const run = this.eventQueue.then(() => {
        const o = this.outage;
        if (o && o.since >= queuedAt) throw mayflyError('ERR_UNAVAILABLE', `store unavailable (${what}); the broker refuses to proceed without recording it`, { target: target(this.url), reason: o.reason });
        return this.txNow(what, fn, opts);
      });
      this.eventQueue = run.catch(() => undefined);
      return run;
    }
    return this.txNow(what, fn, opts);
  }

  private async txNow<T>(what: string, fn: (c: pg.PoolClient) => Promise<T>, opts: { durable?: boolean; begin?: string }): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      this.check(what);
      let c: pg.PoolClient;
      try {
        c = await this.pool.connect();
      } catch (err) {
        const e = storeError(this.url, what, err);
        this.noteOutcome(e);
        throw e;
      }
      let broken = false;
      try {
        await c.query(opts.begin ?? 'BEGIN');
        if (opts.durable) await c.query('SET LOCAL synchronous_commit = on');
        const out = await fn(c);
        await c.query('COMMIT');
        this.noteOutcome();
        return out;
      } catch (err) {
        try {
          await c.query('ROLLBACK');
        } catch {
          broken = true;
        }
        if (RETRY_STATES.has(errCode(err)) && attempt < 5) {
          await new Promise((r) => setTimeout(r, Math.random() * 5 * attempt));
          continue;
        }
        const e = storeError(this.url, what, err);
        this.noteOutcome(e);
        throw e;
      } finally {
        c.release(broken);
      }
    }
  }

  /** Creates a task; ERR_STORE if the id already exists. Batched with concurrent calls (one INSERT). */
  async createTask(task: TaskRecord): Promise<void> {
    this.check('createTask');
    // A child is written by a statement of its own that inserts it only under a parent still active.
    if (task.parentId !== null && task.status === 'active') return this.insertChildTask(task);
    return this.taskWrites.submit(task);
  }

  private async createTaskBatch(tasks: TaskRecord[]): Promise<BatchOutcome<void>[]> {
    if (tasks.length === 1) return [await settle(this.insertTask(tasks[0]!))];
    try {
      await this.q('createTask', SQL.insertTasks, taskColumns(tasks), this.hotPool);
      return tasks.map(() => ({ ok: true, value: undefined }));
    } catch (err) {
      // One bad row (a duplicate id) fails the whole statement and nothing was written: insert each
      // alone so only that call fails. When the server is unreachable, every call fails as it is.
      if (!isMayflyError(err, 'ERR_STORE')) throw err;
      return Promise.all(tasks.map((t) => settle(this.insertTask(t))));
    }
  }

  private async insertTask(task: TaskRecord): Promise<void> {
    await this.q('createTask', SQL.insertTask, taskValues(task), this.hotPool);
  }

  private async insertChildTask(task: TaskRecord): Promise<void> {
    const res = await this.q('createTask', SQL.insertChildTask, taskValues(task), this.hotPool);
    if (res.rowCount === 0) {
      const parentId = task.parentId!;
      const { rows } = await this.q<{ status: string }>('createTask', SQL.taskStatus, [parentId]);
      assertParentActive(parentId, rows[0]?.status);
      // Active now but not visible to the insert: the parent committed in between. Refused; a retry will see it.
      throw mayflyError('ERR_TASK_NOT_ACTIVE', `parent task ${parentId} was not active when the child was inserted`, { taskId: parentId });
    }
  }

  /** The task with that id, or null. Batched with concurrent calls (one SELECT). */
  async getTask(id: string): Promise<TaskRecord | null> {
    this.check('getTask');
    return this.taskReads.submit(id);
  }

  private async getTaskBatch(ids: string[]): Promise<BatchOutcome<TaskRecord | null>[]> {
    const { rows } = await this.q<TaskRow>('getTask', SQL.getTasks, [[...new Set(ids)]], this.hotPool);
    const byId = new Map(rows.map((r) => [r.id, r]));
    const given = new Set<string>();
    return ids.map((id) => {
      const row = byId.get(id);
      if (!row) return { ok: true, value: null };
      // Two calls for the same task each get their own copy.
      const task = taskFromRow(given.has(id) ? structuredClone(row) : row);
      given.add(id);
      return { ok: true, value: task };
    });
  }

  /** All descendants, ordered by depth, createdAt, id. */
  async getDescendants(id: string): Promise<TaskRecord[]> {
    const { rows } = await this.q<TaskRow>('getDescendants', SQL.descendants, [id]);
    return rows.map(taskFromRow);
  }

  /** Sets the lease of an active task; false if unknown or not active. */
  async renewLease(id: string, leaseExpiresAt: EpochMs): Promise<boolean> {
    return (await this.q('renewLease', SQL.renewLease, [id, leaseExpiresAt], this.tokenPool)).rowCount === 1;
  }

  /**
   * Records a token and bumps tokensIssued, atomically, batched with
   * concurrent calls into one statement (one commit); see the header for the
   * race with endTask. ERR_TASK_NOT_ACTIVE / ERR_TASK_NOT_FOUND fail only
   * this call. Resolves after the commit.
   */
  async recordToken(t: TokenRecord): Promise<void> {
    this.check('recordToken');
    return this.tokenWrites.submit(t);
  }

  private async recordTokenBatch(tokens: TokenRecord[]): Promise<BatchOutcome<void>[]> {
    if (tokens.length === 1) return [await settle(this.recordOne(tokens[0]!))];
    let recorded: Set<string>;
    for (let attempt = 1; ; attempt++) {
      try {
        const { rows } = await this.q<{ jti: string }>('recordToken', SQL.recordTokens, tokenColumns(tokens), this.tokenPool);
        recorded = new Set(rows.map((r) => r.jti));
        break;
      } catch (err) {
        // The statement failed as a whole, so nothing of it was committed.
        const code = isMayflyError(err) ? String(err.details?.['pgCode'] ?? '') : '';
        if (RETRY_STATES.has(code) && attempt < 5) {
          await new Promise((r) => setTimeout(r, Math.random() * 5 * attempt));
          continue;
        }
        // One bad row (a jti already recorded) fails the whole statement: record each alone so only
        // that call fails. When the server is unreachable, every call fails as it is.
        if (!isMayflyError(err, 'ERR_STORE')) throw err;
        return Promise.all(tokens.map((t) => settle(this.recordOne(t))));
      }
    }
    const refused = tokens.filter((t) => !recorded.has(t.jti));
    if (refused.length === 0) return tokens.map(() => ({ ok: true, value: undefined }));
    const { rows } = await this.q<{ id: string; status: string }>('recordToken', SQL.taskStatuses, [[...new Set(refused.map((t) => t.taskId))]]);
    const status = new Map(rows.map((r) => [r.id, r.status]));
    return Promise.all(
      tokens.map(async (t): Promise<BatchOutcome<void>> => {
        if (recorded.has(t.jti)) return { ok: true, value: undefined };
        const st = status.get(t.taskId);
        if (st === undefined) return { ok: false, error: mayflyError('ERR_TASK_NOT_FOUND', `task ${t.taskId} not found`, { taskId: t.taskId }) };
        if (st !== 'active') return { ok: false, error: notActive(t.taskId, st) };
        // Not recorded yet its task is active now: a task committed by another replica after this
        // statement's snapshot. Record it on its own.
        return settle(this.recordOne(t));
      }),
    );
  }

  /** recordToken as one statement of its own. */
  private async recordOne(t: TokenRecord): Promise<void> {
    const res = await this.q('recordToken', SQL.recordToken, [
      t.jti,
      t.taskId,
      t.kid,
      t.sub,
      t.audience,
      JSON.stringify(t.scopes),
      t.issuedAt,
      t.expiresAt,
      t.certThumbprint,
      t.singleUse,
      t.tool,
      t.argsDigest,
      t.revokedAt,
    ], this.tokenPool);
    if (res.rowCount === 1) return;
    const { rows } = await this.q<{ status: string }>('recordToken', SQL.taskStatus, [t.taskId]);
    if (!rows[0]) throw mayflyError('ERR_TASK_NOT_FOUND', `task ${t.taskId} not found`, { taskId: t.taskId });
    throw notActive(t.taskId, rows[0].status);
  }

  /** The token with that jti, or null. */
  async getToken(jti: string): Promise<TokenRecord | null> {
    const { rows } = await this.q<TokenRow>('getToken', SQL.getToken, [jti]);
    return rows[0] ? tokenFromRow(rows[0]) : null;
  }

  /** Ends an active task and its active descendants, durably; see Store.endTask. */
  async endTask(id: string, status: Exclude<TaskStatus, 'active'>, reason: string, now: EpochMs): Promise<TaskEndResult> {
    return this.tx(
      'endTask',
      async (c) => {
        const { rows } = await c.query<{ status: string }>(SQL.lockTaskStatus, [id]);
        if (!rows[0]) throw mayflyError('ERR_TASK_NOT_FOUND', `task ${id} not found`, { taskId: id });
        if (rows[0].status !== 'active') return { ...EMPTY_END, taskIds: [] };
        const closure = await this.lockClosure(c, [id]);
        return this.endClosure(c, new Set([id]), closure, status, reason, now);
      },
      { durable: true },
    );
  }

  /** Revokes every active task of `owner` and their descendants, durably, one event. */
  async endTasksOfOwner(owner: string, reason: string, now: EpochMs): Promise<TaskEndResult> {
    return this.tx(
      'endTasksOfOwner',
      async (c) => {
        const seeds = (await c.query<{ id: string }>(SQL.lockOwnerActive, [owner])).rows.map((r) => r.id);
        if (seeds.length === 0) return { ...EMPTY_END, taskIds: [] };
        const closure = await this.lockClosure(c, seeds);
        const seedSet = new Set(closure.filter((r) => r.owner === owner).map((r) => r.id));
        return this.endClosure(c, seedSet, closure, 'revoked', reason, now);
      },
      { durable: true },
    );
  }

  /**
   * Locks every active task reachable from `seeds` (FOR UPDATE, id order) and
   * returns them ordered by depth, createdAt, id. Walks again after locking
   * until nothing new appears: a descendant committed while we waited for a
   * lock is ended with the rest.
   */
  private async lockClosure(c: pg.PoolClient, seeds: string[]): Promise<{ id: string; owner: string; expires_at: number; depth: number; created_at: number }[]> {
    const locked = new Map<string, { id: string; owner: string; expires_at: number; depth: number; created_at: number }>();
    for (let round = 0; round < 100; round++) {
      const ids = (await c.query<{ id: string }>(SQL.activeClosure, [seeds])).rows.map((r) => r.id).filter((i) => !locked.has(i));
      if (ids.length === 0) break;
      const rows = (await c.query<{ id: string; owner: string; expires_at: number; depth: number; created_at: number }>(SQL.lockActive, [ids])).rows;
      if (rows.length === 0) break;
      for (const r of rows) locked.set(r.id, r);
    }
    return [...locked.values()].sort((a, b) => a.depth - b.depth || a.created_at - b.created_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Inside a transaction: ends `closure` (seeds first), revokes tokens, appends one event. */
  private async endClosure(c: pg.PoolClient, seeds: Set<string>, closure: { id: string; expires_at: number }[], status: Exclude<TaskStatus, 'active'>, reason: string, now: EpochMs): Promise<TaskEndResult> {
    const seedIds: string[] = [];
    const descIds: string[] = [];
    let coversUntil = 0;
    for (const r of closure) {
      (seeds.has(r.id) ? seedIds : descIds).push(r.id);
      if (r.expires_at > coversUntil) coversUntil = r.expires_at;
    }
    await c.query(SQL.endTasks, [status, now, reason, seedIds]);
    if (descIds.length > 0) await c.query(SQL.endTasks, ['revoked', now, descendantEndReason(status, reason), descIds]);
    const taskIds = [...seedIds, ...descIds];
    const revoked = (await c.query(SQL.revokeTokensOfTasks, [now, taskIds])).rowCount ?? 0;
    const event = await this.insertEvent(c, { kind: 'task', at: now, taskIds, jtis: [], kid: null, reason, coversUntil });
    return { taskIds: [...taskIds], revokedTokens: revoked, event };
  }

  /** Must be the last statement of its transaction: it holds the cursor row lock until COMMIT. */
  private async insertEvent(c: pg.PoolClient, e: Omit<RevocationEvent, 'cursor'>): Promise<RevocationEvent> {
    const { rows } = await c.query<{ cursor: number }>(SQL.insertEvent, [e.kind, e.at, JSON.stringify(e.taskIds), JSON.stringify(e.jtis), e.kid, e.reason, e.coversUntil]);
    return { cursor: rows[0]!.cursor, kind: e.kind, at: e.at, taskIds: [...e.taskIds], jtis: [...e.jtis], kid: e.kid, reason: e.reason, coversUntil: e.coversUntil };
  }

  /** Revokes one token, durably; null if unknown or already revoked. */
  async revokeToken(jti: string, reason: string, now: EpochMs): Promise<RevocationEvent | null> {
    return this.tx(
      'revokeToken',
      async (c) => {
        const { rows } = await c.query<{ expires_at: number }>(SQL.revokeToken, [now, jti]);
        if (!rows[0]) return null;
        return this.insertEvent(c, { kind: 'token', at: now, taskIds: [], jtis: [jti], kid: null, reason, coversUntil: rows[0].expires_at });
      },
      { durable: true },
    );
  }

  /** Revokes every unexpired, unrevoked token signed by `kid`, durably; always appends one kind-key event. */
  async revokeTokensByKid(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent> {
    return this.tx(
      'revokeTokensByKid',
      async (c) => {
        await c.query(KEY_REVOCATION_SQL.lock, [KEY_REVOCATION_LOCK, kid]);
        const m = (await c.query<{ m: number | null }>(SQL.kidCoverage, [kid, now])).rows[0]?.m ?? null;
        const jtis = (await c.query<{ jti: string }>(SQL.revokeKidTokens, [now, kid, now])).rows.map((r) => r.jti).sort();
        return this.insertEvent(c, { kind: 'key', at: now, taskIds: [], jtis, kid, reason, coversUntil: Math.max(now, m ?? now) });
      },
      { durable: true },
    );
  }

  /**
   * See Store.finishKeyRevocation. One statement decides whether anything is
   * left to do (the common case on every lifecycle tick: nothing, no
   * transaction); the decision is taken again under a transaction-level
   * advisory lock on the kid, which revokeTokensByKid takes too, so two
   * brokers never both announce the same revocation.
   */
  async finishKeyRevocation(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent | null> {
    if (!(await this.q<{ unfinished: boolean }>('finishKeyRevocation', KEY_REVOCATION_SQL.unfinished, [kid, now])).rows[0]!.unfinished) return null;
    return this.tx(
      'finishKeyRevocation',
      async (c) => {
        await c.query(KEY_REVOCATION_SQL.lock, [KEY_REVOCATION_LOCK, kid]);
        if (!(await c.query<{ unfinished: boolean }>(KEY_REVOCATION_SQL.unfinished, [kid, now])).rows[0]!.unfinished) return null;
        const m = (await c.query<{ m: number | null }>(SQL.kidCoverage, [kid, now])).rows[0]?.m ?? null;
        const jtis = (await c.query<{ jti: string }>(SQL.revokeKidTokens, [now, kid, now])).rows.map((r) => r.jti).sort();
        return this.insertEvent(c, { kind: 'key', at: now, taskIds: [], jtis, kid, reason, coversUntil: Math.max(now, m ?? now) });
      },
      { durable: true },
    );
  }

  /** Appends a free-standing event, durably, and returns it with its cursor. */
  async appendEvent(event: Omit<RevocationEvent, 'cursor'>): Promise<RevocationEvent> {
    return this.tx('appendEvent', (c) => this.insertEvent(c, event), { durable: true });
  }

  /** Events after `cursor`, oldest first; never skips a late commit (see the header). */
  async eventsSince(cursor: number, limit: number): Promise<RevocationEvent[]> {
    const { rows } = await this.q<EventRow>('eventsSince', SQL.eventsSince, [cursor, limit]);
    return rows.map(eventFromRow);
  }

  /** See Store.cursorRange; `oldest` is latest + 1 when every event was pruned. */
  async cursorRange(): Promise<{ oldest: number; latest: number }> {
    const { rows } = await this.q<{ latest: number; pruned: boolean; oldest: number | null }>('cursorRange', SQL.cursorRange, []);
    return rangeOf(rows[0]);
  }

  /** See Store.revocationSnapshot; one REPEATABLE READ snapshot so the cursor matches the lists. */
  async revocationSnapshot(now: EpochMs): Promise<RevocationSnapshot> {
    return this.tx(
      'revocationSnapshot',
      async (c) => {
        const range = rangeOf((await c.query<{ latest: number; pruned: boolean; oldest: number | null }>(SQL.cursorRange)).rows[0]);
        const taskIds = (await c.query<{ id: string }>(SQL.snapTasks, [now])).rows.map((r) => r.id);
        const jtis = (await c.query<{ jti: string }>(SQL.snapJtis, [now])).rows.map((r) => r.jti);
        const kids = (await c.query<{ kid: string }>(SQL.snapKids, [now])).rows.map((r) => r.kid);
        return { cursor: range.latest, taskIds, jtis, kids };
      },
      { begin: 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY' },
    );
  }

  /** Active tasks past their deadline or lease, soonest first. */
  async dueTasks(now: EpochMs, limit: number): Promise<TaskRecord[]> {
    const { rows } = await this.q<TaskRow>('dueTasks', SQL.dueTasks, [now, limit]);
    return rows.map(taskFromRow);
  }

  /** Count of unexpired tokens (revoked or not) per kid. */
  async liveTokensByKid(now: EpochMs): Promise<Record<string, number>> {
    const { rows } = await this.q<{ kid: string; n: number }>('liveTokensByKid', SQL.liveByKid, [now]);
    const out: Record<string, number> = {};
    for (const r of rows) out[r.kid] = r.n;
    return out;
  }

  /** Deletes tasks (any status) and their tokens, and events, whose coverage ended more than `graceMs` ago. */
  async gc(now: EpochMs, graceMs: number): Promise<number> {
    const cutoff = now - graceMs;
    return this.tx('gc', async (c) => {
      let n = (await c.query(SQL.gcTokens, [cutoff])).rowCount ?? 0;
      n += (await c.query(SQL.gcTasks, [cutoff])).rowCount ?? 0;
      const ev = (await c.query(SQL.gcEvents, [cutoff])).rowCount ?? 0;
      if (ev > 0) await c.query(SQL.markPruned);
      return n + ev;
    });
  }

  /** Records the audit chain head of one broker, durably (flushed before resolving). */
  async putAuditHead(head: AuditHead): Promise<void> {
    await this.tx(
      'putAuditHead',
      async (c) => {
        await c.query(SQL.putAuditHead, [head.brokerId, head.seq, head.hash, head.at]);
      },
      { durable: true, unqueued: true },
    );
  }

  /** The audit chain head last recorded for that broker, or null. */
  async getAuditHead(brokerId: string): Promise<AuditHead | null> {
    const { rows } = await this.q<{ seq: number; hash: string; at: number }>('getAuditHead', SQL.getAuditHead, [brokerId]);
    return rows[0] ? { brokerId, seq: rows[0].seq, hash: rows[0].hash, at: rows[0].at } : null;
  }

  /** One round trip to the server, for health checks; throws ERR_UNAVAILABLE when it is down. */
  async ping(): Promise<void> {
    await this.q('ping', 'SELECT 1', []);
  }

  /** Closes the pool; later calls fail with ERR_STORE. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.probe);
    await this.pool.end().catch(() => undefined);
    for (const p of new Set([this.hotPool, this.tokenPool])) await p.end().catch(() => undefined);
  }
}

function rangeOf(r: { latest: number; pruned: boolean; oldest: number | null } | undefined): { oldest: number; latest: number } {
  const latest = r?.latest ?? 0;
  if (!r?.pruned) return { oldest: 0, latest };
  return { oldest: r.oldest ?? latest + 1, latest };
}

/** First key of the two-int advisory lock space for key revocations (the second is the kid's hash). */
const KEY_REVOCATION_LOCK = 0x6d66796b; // "mfyk"

/** Statements of finishKeyRevocation (and the lock revokeTokensByKid shares with it). */
const KEY_REVOCATION_SQL = {
  lock: 'SELECT pg_advisory_xact_lock($1, hashtext($2))',
  // Unrevoked live tokens of the kid, or live tokens and no kind-key event for it yet.
  unfinished: `SELECT EXISTS (SELECT 1 FROM tokens WHERE kid = $1 AND expires_at > $2 AND revoked_at IS NULL)
      OR (EXISTS (SELECT 1 FROM tokens WHERE kid = $1 AND expires_at > $2)
        AND NOT EXISTS (SELECT 1 FROM events WHERE kind = 'key' AND kid = $1)) AS unfinished`,
} as const;
