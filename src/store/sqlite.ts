/**
 * SQLite Store (better-sqlite3, WAL mode), the default durable backend.
 *
 * Durability. The connection runs with `synchronous=NORMAL`: in WAL mode
 * every commit is written to the WAL before the call returns, so it survives
 * a crash of the broker process; only an OS crash or power loss can drop the
 * last commits. That is the right price for the issuance hot path
 * (createTask, recordToken, renewLease). Ending and revoking is different: a
 * lost revocation means a token the operator believes dead verifies again
 * after a power cut. So endTask, endTasksOfOwner, revokeToken,
 * revokeTokensByKid, appendEvent and putAuditHead resolve only after an
 * fsync of the WAL that started after their commit: the revocation is on
 * disk before the promise resolves, as with `synchronous=FULL`, but the
 * fsync runs on the libuv thread pool instead of blocking the event loop,
 * and concurrent revocations share one fsync (see `walSync`). Their effect
 * is visible to every later read and write at once (a token recorded after
 * the commit is refused), only the promise waits for the disk.
 *
 * Checkpoints. With `checkpointInWorker` (the broker sets it), SQLite's
 * automatic checkpoint, which copies the WAL into the database file and
 * fsyncs it inside whichever commit crosses 1000 WAL pages, is turned off on
 * this connection, and a worker thread with its own connection runs passive
 * checkpoints instead (`sqlite-checkpointer.ts`). If the worker fails, the
 * automatic checkpoint is switched back on. docs/durability.md says what a
 * crash can lose.
 *
 * better-sqlite3 is synchronous and Node is single-threaded, so every method
 * is atomic with respect to the others without further locking. All SQL
 * stays in this file, behind the Store port.
 */
import { chmodSync, close as closeFd, closeSync, fdatasync, fsync, mkdirSync, open as openFd, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { isMayflyError, mayflyError, MayflyError } from '../core/errors.js';
import type { RevocationSnapshot, Store } from '../core/ports.js';
import type { AuditHead, EpochMs, TaskOwnerIdentity, RevocationEvent, TaskEndResult, TaskRecord, TaskStatus, TokenRecord } from '../core/types.js';
import { assertParentActive, descendantEndReason, EMPTY_END } from './semantics.js';
import { startCheckpointer, type Checkpointer, type CheckpointStats } from './sqlite-checkpointer.js';

type Db = Database.Database;
type Stmt = Database.Statement;

/** Schema migrations; index i brings user_version from i to i + 1. Never edit a released entry, append. */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    owner_kind       TEXT NOT NULL,
    purpose          TEXT NOT NULL,
    labels           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    lease_expires_at INTEGER,
    status           TEXT NOT NULL,
    ended_at         INTEGER,
    end_reason       TEXT,
    parent_id        TEXT,
    root_id          TEXT NOT NULL,
    depth            INTEGER NOT NULL,
    scope_ceiling    TEXT,
    actors           TEXT NOT NULL,
    tokens_issued    INTEGER NOT NULL DEFAULT 0
  ) WITHOUT ROWID;
  CREATE INDEX tasks_parent ON tasks(parent_id) WHERE parent_id IS NOT NULL;
  CREATE INDEX tasks_owner_active ON tasks(owner) WHERE status = 'active';
  CREATE INDEX tasks_due_deadline ON tasks(expires_at) WHERE status = 'active';
  CREATE INDEX tasks_due_lease ON tasks(lease_expires_at) WHERE status = 'active' AND lease_expires_at IS NOT NULL;
  CREATE INDEX tasks_expires ON tasks(expires_at);

  CREATE TABLE tokens (
    jti             TEXT PRIMARY KEY,
    task_id         TEXT NOT NULL,
    kid             TEXT NOT NULL,
    sub             TEXT NOT NULL,
    audience        TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    issued_at       INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    cert_thumbprint TEXT,
    single_use      INTEGER NOT NULL,
    tool            TEXT,
    args_digest     TEXT,
    revoked_at      INTEGER
  ) WITHOUT ROWID;
  CREATE INDEX tokens_task ON tokens(task_id);
  CREATE INDEX tokens_kid_expires ON tokens(kid, expires_at);
  CREATE INDEX tokens_revoked ON tokens(expires_at) WHERE revoked_at IS NOT NULL;

  -- The revocation feed. AUTOINCREMENT (not plain rowid) so a cursor is never
  -- handed out twice, even after gc deleted the newest events.
  CREATE TABLE events (
    cursor       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    at           INTEGER NOT NULL,
    task_ids     TEXT NOT NULL,
    jtis         TEXT NOT NULL,
    kid          TEXT,
    reason       TEXT NOT NULL,
    covers_until INTEGER NOT NULL
  );
  CREATE INDEX events_covers ON events(covers_until);

  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;
  `,
  // The identity that began each task (JSON), so task-token narrowing is judged as that identity.
  `ALTER TABLE tasks ADD COLUMN owner_identity TEXT;`,
];

/** WAL pages after which a commit checkpoints itself when the worker checkpoints (SQLite's default is 1000). */
const WAL_BACKSTOP_PAGES = 10_000;

/** Schema version this build writes. */
export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length;

interface TaskRow {
  id: string;
  owner: string;
  owner_kind: string;
  purpose: string;
  labels: string;
  created_at: number;
  expires_at: number;
  lease_expires_at: number | null;
  status: string;
  ended_at: number | null;
  end_reason: string | null;
  parent_id: string | null;
  root_id: string;
  depth: number;
  scope_ceiling: string | null;
  actors: string;
  tokens_issued: number;
  owner_identity: string | null;
}

interface TokenRow {
  jti: string;
  task_id: string;
  kid: string;
  sub: string;
  audience: string;
  scopes: string;
  issued_at: number;
  expires_at: number;
  cert_thumbprint: string | null;
  single_use: number;
  tool: string | null;
  args_digest: string | null;
  revoked_at: number | null;
}

interface EventRow {
  cursor: number;
  kind: string;
  at: number;
  task_ids: string;
  jtis: string;
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
    labels: JSON.parse(r.labels) as Record<string, string>,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    leaseExpiresAt: r.lease_expires_at,
    status: r.status as TaskStatus,
    endedAt: r.ended_at,
    endReason: r.end_reason,
    parentId: r.parent_id,
    rootId: r.root_id,
    depth: r.depth,
    scopeCeiling: r.scope_ceiling === null ? null : (JSON.parse(r.scope_ceiling) as string[]),
    actors: JSON.parse(r.actors) as string[],
    tokensIssued: r.tokens_issued,
    ...(r.owner_identity !== null && r.owner_identity !== undefined ? { ownerIdentity: JSON.parse(r.owner_identity) as TaskOwnerIdentity } : {}),
  };
}

function tokenFromRow(r: TokenRow): TokenRecord {
  return {
    jti: r.jti,
    taskId: r.task_id,
    kid: r.kid,
    sub: r.sub,
    audience: r.audience,
    scopes: JSON.parse(r.scopes) as string[],
    issuedAt: r.issued_at,
    expiresAt: r.expires_at,
    certThumbprint: r.cert_thumbprint,
    singleUse: r.single_use === 1,
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
    taskIds: JSON.parse(r.task_ids) as string[],
    jtis: JSON.parse(r.jtis) as string[],
    kid: r.kid,
    reason: r.reason,
    coversUntil: r.covers_until,
  };
}

/** Options of SqliteStore.open. */
export interface SqliteStoreOptions {
  /** How long a write waits for another connection's lock before failing with ERR_STORE (ms, default 2000). */
  busyTimeoutMs?: number;
  /**
   * Checkpoint the WAL from a worker thread instead of inside commits on the
   * event loop (default false: short-lived CLI commands keep SQLite's own).
   */
  checkpointInWorker?: boolean;
  /** How often the worker runs a passive checkpoint (ms, default 200). */
  checkpointIntervalMs?: number;
}

/** Maps a better-sqlite3 failure to ERR_STORE with a message the operator can act on; `db` tells a closed connection. */
function storeError(path: string, what: string, err: unknown, db?: Db): MayflyError {
  if (isMayflyError(err)) return err;
  const code = (err as { code?: unknown }).code;
  const c = typeof code === 'string' ? code : '';
  const details = { path, sqliteCode: c || undefined };
  if (c.startsWith('SQLITE_BUSY') || c.startsWith('SQLITE_LOCKED')) {
    return mayflyError('ERR_STORE', `store database ${path} is locked by another process (${what}); stop the other broker or CLI using this data dir`, details, err);
  }
  if (c.startsWith('SQLITE_CORRUPT') || c === 'SQLITE_NOTADB') {
    return mayflyError('ERR_STORE', `store database ${path} is corrupt or not a SQLite database (${what}); move it aside and restore from backup`, details, err);
  }
  if (c === 'SQLITE_FULL') return mayflyError('ERR_STORE', `disk full writing store database ${path} (${what}); free space on the data dir volume`, details, err);
  if (c.startsWith('SQLITE_READONLY') || c.startsWith('SQLITE_CANTOPEN') || c.startsWith('SQLITE_PERM')) {
    return mayflyError('ERR_STORE', `cannot open store database ${path} for writing (${what}); check the data dir exists and is writable by the broker user`, details, err);
  }
  if (c.startsWith('SQLITE_IOERR')) return mayflyError('ERR_STORE', `I/O error on store database ${path} (${what}); check the disk`, details, err);
  if (c.startsWith('SQLITE_CONSTRAINT')) return mayflyError('ERR_STORE', `store constraint violated (${what})`, details, err);
  if (err instanceof TypeError && db !== undefined && !db.open) return mayflyError('ERR_STORE', 'store is closed', details, err);
  return mayflyError('ERR_STORE', `store database ${path} failed (${what})`, details, err);
}

/** Durable Store in one SQLite file under the data dir. */
export class SqliteStore implements Store {
  private readonly s: {
    insertTask: Stmt;
    getTask: Stmt;
    descendants: Stmt;
    renewLease: Stmt;
    bumpTask: Stmt;
    taskStatus: Stmt;
    insertToken: Stmt;
    getToken: Stmt;
    activeClosureOfTask: Stmt;
    activeClosureOfOwner: Stmt;
    endTasks: Stmt;
    revokeTokensOfTasks: Stmt;
    revokeToken: Stmt;
    revokeKidTokens: Stmt;
    kidCoverage: Stmt;
    kidTokenState: Stmt;
    keyEventOf: Stmt;
    insertEvent: Stmt;
    eventsSince: Stmt;
    latestCursor: Stmt;
    oldestCursor: Stmt;
    getMeta: Stmt;
    setMeta: Stmt;
    snapTasks: Stmt;
    snapJtis: Stmt;
    snapKids: Stmt;
    dueTasks: Stmt;
    liveByKid: Stmt;
    gcTokens: Stmt;
    gcTasks: Stmt;
    gcEvents: Stmt;
  };
  private readonly recordTokenTx: (t: TokenRecord) => void;
  private closed = false;
  /** Group commit: issuance writes queued in one event-loop turn share one transaction (see `batched`). */
  private batch: Array<{ what: string; fn: () => void; resolve: () => void; reject: (e: unknown) => void }> = [];
  /** Runs a write in a savepoint when called inside the batch transaction (better-sqlite3 nests transactions as savepoints). */
  private readonly savepoint: (fn: () => void) => void;
  private readonly batchTx: (run: () => void) => void;
  /** The fsync of the WAL in flight, and the one queued behind it (see walSync). */
  private syncing: Promise<void> | null = null;
  private queuedSync: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | null = null;
  private checkpointer: Checkpointer | null = null;
  /** Task records as committed, so issuing a token does not read and parse its task's row again (see TaskCache). */
  private readonly tasks = new TaskCache(TASK_CACHE_SIZE);
  /** Read-only descriptor of the WAL file, for walSync. */
  private walFd: number | null = null;

  private constructor(
    private readonly db: Db,
    /** Path of the database file, for messages. */
    readonly path: string,
  ) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      insertTask: p(`INSERT INTO tasks (id, owner, owner_kind, purpose, labels, created_at, expires_at, lease_expires_at, status, ended_at, end_reason, parent_id, root_id, depth, scope_ceiling, actors, tokens_issued, owner_identity)
        VALUES (@id, @owner, @owner_kind, @purpose, @labels, @created_at, @expires_at, @lease_expires_at, @status, @ended_at, @end_reason, @parent_id, @root_id, @depth, @scope_ceiling, @actors, @tokens_issued, @owner_identity)`),
      getTask: p('SELECT * FROM tasks WHERE id = ?'),
      descendants: p(`WITH RECURSIVE sub(id) AS (
          SELECT id FROM tasks WHERE parent_id = ?
          UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id)
        SELECT * FROM tasks WHERE id IN sub ORDER BY depth, created_at, id`),
      renewLease: p(`UPDATE tasks SET lease_expires_at = ? WHERE id = ? AND status = 'active'`),
      bumpTask: p(`UPDATE tasks SET tokens_issued = tokens_issued + 1 WHERE id = ? AND status = 'active'`),
      taskStatus: p('SELECT status FROM tasks WHERE id = ?'),
      insertToken: p(`INSERT INTO tokens (jti, task_id, kid, sub, audience, scopes, issued_at, expires_at, cert_thumbprint, single_use, tool, args_digest, revoked_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      getToken: p('SELECT * FROM tokens WHERE jti = ?'),
      // Walks every descendant (any status: UNION also makes a cycle harmless) and keeps the active ones.
      activeClosureOfTask: p(`WITH RECURSIVE sub(id) AS (
          SELECT ?
          UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id)
        SELECT id, owner, expires_at, depth, created_at FROM tasks WHERE id IN sub AND status = 'active' ORDER BY depth, created_at, id`),
      activeClosureOfOwner: p(`WITH RECURSIVE sub(id) AS (
          SELECT id FROM tasks WHERE owner = ? AND status = 'active'
          UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_id = sub.id)
        SELECT id, owner, expires_at, depth, created_at FROM tasks WHERE id IN sub AND status = 'active' ORDER BY depth, created_at, id`),
      endTasks: p(`UPDATE tasks SET status = ?, ended_at = ?, end_reason = ? WHERE status = 'active' AND id IN (SELECT value FROM json_each(?))`),
      revokeTokensOfTasks: p(`UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND task_id IN (SELECT value FROM json_each(?))`),
      revokeToken: p('UPDATE tokens SET revoked_at = ? WHERE jti = ? AND revoked_at IS NULL RETURNING expires_at'),
      revokeKidTokens: p('UPDATE tokens SET revoked_at = ? WHERE kid = ? AND expires_at > ? AND revoked_at IS NULL RETURNING jti'),
      kidCoverage: p('SELECT MAX(expires_at) AS m FROM tokens WHERE kid = ? AND expires_at > ?'),
      kidTokenState: p('SELECT COUNT(*) AS live, COALESCE(SUM(revoked_at IS NULL), 0) AS unrevoked FROM tokens WHERE kid = ? AND expires_at > ?'),
      keyEventOf: p(`SELECT 1 AS told FROM events WHERE kind = 'key' AND kid = ? LIMIT 1`),
      insertEvent: p('INSERT INTO events (kind, at, task_ids, jtis, kid, reason, covers_until) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING cursor'),
      eventsSince: p('SELECT * FROM events WHERE cursor > ? ORDER BY cursor LIMIT ?'),
      latestCursor: p(`SELECT seq FROM sqlite_sequence WHERE name = 'events'`),
      oldestCursor: p('SELECT MIN(cursor) AS c FROM events'),
      getMeta: p('SELECT value FROM meta WHERE key = ?'),
      setMeta: p('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      snapTasks: p(`SELECT id FROM tasks WHERE expires_at > ? AND status != 'active' ORDER BY id`),
      // A revoked token of an ended task is already covered by its task id (tokens never outlive their task).
      snapJtis: p(`SELECT k.jti FROM tokens k LEFT JOIN tasks t ON t.id = k.task_id
        WHERE k.revoked_at IS NOT NULL AND k.expires_at > ? AND (t.id IS NULL OR t.status = 'active' OR t.expires_at < k.expires_at)
        ORDER BY k.jti`),
      snapKids: p(`SELECT DISTINCT kid FROM events WHERE kind = 'key' AND kid IS NOT NULL AND covers_until > ? ORDER BY kid`),
      dueTasks: p(`SELECT * FROM tasks WHERE id IN (
          SELECT id FROM tasks WHERE status = 'active' AND expires_at <= @now
          UNION SELECT id FROM tasks WHERE status = 'active' AND lease_expires_at <= @now)
        ORDER BY MIN(expires_at, COALESCE(lease_expires_at, expires_at)), id LIMIT @limit`),
      liveByKid: p('SELECT kid, COUNT(*) AS n FROM tokens WHERE expires_at > ? GROUP BY kid'),
      gcTokens: p('DELETE FROM tokens WHERE task_id IN (SELECT id FROM tasks WHERE expires_at < ?)'),
      gcTasks: p('DELETE FROM tasks WHERE expires_at < ?'),
      gcEvents: p('DELETE FROM events WHERE covers_until < ?'),
    };
    const s = this.s;
    this.savepoint = db.transaction((fn: () => void) => fn());
    this.batchTx = db.transaction((run: () => void) => run());
    // Runs only inside `batched`, whose savepoint makes the two statements one unit (a second savepoint here cost two more statements per token).
    this.recordTokenTx = (t: TokenRecord) => {
      if (s.bumpTask.run(t.taskId).changes !== 1) {
        const row = s.taskStatus.get(t.taskId) as { status: string } | undefined;
        if (!row) throw mayflyError('ERR_TASK_NOT_FOUND', `task ${t.taskId} not found`, { taskId: t.taskId });
        throw mayflyError('ERR_TASK_NOT_ACTIVE', `task ${t.taskId} is ${row.status}; no token may be recorded for it`, { taskId: t.taskId });
      }
      s.insertToken.run(t.jti, t.taskId, t.kid, t.sub, t.audience, JSON.stringify(t.scopes), t.issuedAt, t.expiresAt, t.certThumbprint, t.singleUse ? 1 : 0, t.tool, t.argsDigest, t.revokedAt);
      this.tasks.bumped(t.taskId);
    };
  }

  /**
   * Opens (creating file and parent directories if needed) the database at
   * `path`, enables WAL and migrates the schema. ERR_STORE if the file is not
   * a usable SQLite database, is locked, or has a newer schema.
   */
  static open(path: string, options: SqliteStoreOptions = {}): SqliteStore {
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw mayflyError('ERR_STORE', `cannot create data directory ${dirname(path)} for the store; check permissions`, { path }, err);
    }
    let db: Db | undefined;
    try {
      db = new Database(path, { timeout: options.busyTimeoutMs ?? 2000 });
      try {
        chmodSync(path, 0o600);
      } catch {
        // Best effort: the file holds no secrets, only who asked for what.
      }
      // Reading journal_mode touches the header: a non-database file fails here with SQLITE_NOTADB.
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (mode !== 'wal') throw mayflyError('ERR_STORE', `store database ${path} could not be switched to WAL mode (got ${String(mode)}); is it on a network file system?`, { path });
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = OFF');
      migrate(db, path);
      const store = new SqliteStore(db, path);
      if (options.checkpointInWorker) store.startCheckpointer(options.checkpointIntervalMs ?? 200);
      return store;
    } catch (err) {
      db?.close();
      throw storeError(path, 'open', err);
    }
  }

  private startCheckpointer(intervalMs: number): void {
    const db = this.db;
    // Only a backstop: the worker keeps the WAL backfilled, so when a commit does cross this many
    // pages (sustained writes never leave the worker a quiet moment to let the WAL restart) the
    // checkpoint it runs has little left to copy.
    db.pragma(`wal_autocheckpoint = ${WAL_BACKSTOP_PAGES}`);
    this.checkpointer = startCheckpointer(this.path, intervalMs, () => {
      // The worker is gone: SQLite checkpoints inside commits again, so the WAL stays bounded.
      if (db.open) db.pragma('wal_autocheckpoint = 1000');
    });
  }

  /** Checkpoints done by the worker (null when checkpoints run inside commits). */
  checkpointStats(): CheckpointStats | null {
    return this.checkpointer?.stats() ?? null;
  }

  private run<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw storeError(this.path, what, err, this.db);
    }
  }

  /**
   * Group commit for the issuance path (createTask, recordToken). Writes
   * queued during one event-loop turn run in a single transaction at
   * setImmediate, each inside its own savepoint so one failure (a task ended
   * meanwhile) rolls back only that write. Each promise resolves after the
   * commit, so durability and read-your-writes are as before; what changes is
   * that 64 concurrent issuances cost one commit instead of 64. Ending and
   * revoking stay immediate: a revocation that runs before the batch makes
   * the batched token write fail, so that token is never returned.
   */
  private batched(what: string, fn: () => void): Promise<void> {
    if (this.closed) return Promise.reject(storeError(this.path, what, new Error('store is closed')));
    return new Promise((resolve, reject) => {
      this.batch.push({ what, fn, resolve, reject });
      if (this.batch.length === 1) setImmediate(() => this.flushBatch());
    });
  }

  private flushBatch(): void {
    const items = this.batch;
    this.batch = [];
    if (items.length === 0) return;
    const outcomes: unknown[] = new Array(items.length);
    try {
      this.batchTx(() => {
        items.forEach((it, i) => {
          try {
            this.savepoint(it.fn);
          } catch (err) {
            outcomes[i] = err;
          }
        });
      });
    } catch (err) {
      // Rolled back as a whole: what the batch put in the cache never became true.
      this.tasks.clear();
      for (const it of items) it.reject(storeError(this.path, it.what, err, this.db));
      return;
    }
    items.forEach((it, i) => (outcomes[i] === undefined ? it.resolve() : it.reject(storeError(this.path, it.what, outcomes[i], this.db))));
  }

  /**
   * Runs `fn` in one transaction, then resolves once the WAL holding its
   * commit is on disk. The commit itself is synchronous (every later read
   * sees it); the fsync runs on the thread pool. If the fsync fails the
   * promise rejects with ERR_STORE: the change may or may not survive a power
   * loss, so the caller must not report it as done.
   */
  private async durably<T>(what: string, fn: () => T): Promise<T> {
    const result = this.run(what, () => this.db.transaction(fn).immediate());
    try {
      await this.walSync();
    } catch (err) {
      throw mayflyError('ERR_STORE', `store database ${this.path}: the ${what} commit could not be flushed to disk (fsync failed); check the disk`, { path: this.path }, err);
    }
    return result;
  }

  /**
   * Resolves after an fsync of the WAL file that started after this call:
   * that fsync covers every commit made before the call. Group commit for
   * durability: while one fsync runs, every caller waits for the next one,
   * and all of them share it. fsync on any descriptor of a file flushes the
   * file; a checkpoint that moved the frames into the database file first
   * has already fsynced that file (synchronous=NORMAL does before it lets
   * the WAL be reused).
   */
  private walSync(): Promise<void> {
    let waiter = this.queuedSync;
    if (!waiter) {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      waiter = this.queuedSync = { promise, resolve, reject };
    }
    if (!this.syncing) this.startWalSync();
    return waiter.promise;
  }

  /** Starts the queued fsync; when it ends, the one queued meanwhile (if any) starts. */
  private startWalSync(): void {
    const waiter = this.queuedSync;
    if (!waiter) return;
    this.queuedSync = null;
    this.syncing = this.syncWalFile()
      .then(waiter.resolve, waiter.reject)
      .finally(() => {
        this.syncing = null;
        this.startWalSync();
      });
  }

  /**
   * fdatasync of the WAL (what SQLite itself does at a FULL commit on Linux:
   * data and size, one thread-pool round trip) through a descriptor kept
   * open for the life of the store. The WAL file is only removed and
   * recreated when the last connection closes, and this one stays open, so
   * the descriptor always names the live WAL.
   */
  private syncWalFile(): Promise<void> {
    if (this.walFd === null) {
      try {
        this.walFd = openSync(`${this.path}-wal`, 'r');
      } catch (err) {
        // No WAL file: the last connection to close copied it into the database file and removed it.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return fsyncPath(this.path);
        return Promise.reject(err);
      }
    }
    const fd = this.walFd;
    return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  }

  /** Creates a task; ERR_STORE if the id already exists. */
  async createTask(task: TaskRecord): Promise<void> {
    return this.batched('createTask', () => {
      // In the insert's own transaction: an endTask of the parent runs wholly before or after it.
      if (task.parentId !== null && task.status === 'active') {
        assertParentActive(task.parentId, (this.s.taskStatus.get(task.parentId) as { status: string } | undefined)?.status);
      }
      const row: TaskRow = {
        id: task.id,
        owner: task.owner,
        owner_kind: task.ownerKind,
        purpose: task.purpose,
        labels: JSON.stringify(task.labels),
        created_at: task.createdAt,
        expires_at: task.expiresAt,
        lease_expires_at: task.leaseExpiresAt,
        status: task.status,
        ended_at: task.endedAt,
        end_reason: task.endReason,
        parent_id: task.parentId,
        root_id: task.rootId,
        depth: task.depth,
        scope_ceiling: task.scopeCeiling === null ? null : JSON.stringify(task.scopeCeiling),
        actors: JSON.stringify(task.actors),
        owner_identity: task.ownerIdentity === undefined ? null : JSON.stringify(task.ownerIdentity),
        tokens_issued: task.tokensIssued,
      };
      this.s.insertTask.run(row);
      this.tasks.put(row);
    });
  }

  /** The task with that id, or null. */
  async getTask(id: string): Promise<TaskRecord | null> {
    const cached = this.tasks.get(id);
    if (cached) return cached;
    const row = this.run('getTask', () => this.s.getTask.get(id) as TaskRow | undefined);
    if (!row) return null;
    this.tasks.put(row);
    return taskFromRow(row);
  }

  /** All descendants, ordered by depth, createdAt, id. */
  async getDescendants(id: string): Promise<TaskRecord[]> {
    return this.run('getDescendants', () => (this.s.descendants.all(id) as TaskRow[]).map(taskFromRow));
  }

  /** Sets the lease of an active task; false if unknown or not active. */
  async renewLease(id: string, leaseExpiresAt: EpochMs): Promise<boolean> {
    this.tasks.forget(id);
    return this.run('renewLease', () => this.s.renewLease.run(leaseExpiresAt, id).changes === 1);
  }

  /**
   * Records a token and bumps tokensIssued in one transaction. Refuses
   * (ERR_TASK_NOT_ACTIVE) if the task has ended, so a token minted while its
   * task is being ended is never left unrevoked; ERR_TASK_NOT_FOUND if unknown.
   */
  async recordToken(token: TokenRecord): Promise<void> {
    return this.batched('recordToken', () => this.recordTokenTx(token));
  }

  /** The token with that jti, or null. */
  async getToken(jti: string): Promise<TokenRecord | null> {
    const row = this.run('getToken', () => this.s.getToken.get(jti) as TokenRow | undefined);
    return row ? tokenFromRow(row) : null;
  }

  /** Ends an active task and its active descendants, fsynced; see Store.endTask. */
  async endTask(id: string, status: Exclude<TaskStatus, 'active'>, reason: string, now: EpochMs): Promise<TaskEndResult> {
    return this.durably('endTask', () => {
      const row = this.s.taskStatus.get(id) as { status: string } | undefined;
      if (!row) throw mayflyError('ERR_TASK_NOT_FOUND', `task ${id} not found`, { taskId: id });
      if (row.status !== 'active') return { ...EMPTY_END, taskIds: [] };
      const closure = this.s.activeClosureOfTask.all(id) as { id: string; expires_at: number }[];
      return this.endClosure(new Set([id]), closure, status, reason, now);
    });
  }

  /** Revokes every active task of `owner` and their descendants, fsynced, one event. */
  async endTasksOfOwner(owner: string, reason: string, now: EpochMs): Promise<TaskEndResult> {
    return this.durably('endTasksOfOwner', () => {
      const closure = this.s.activeClosureOfOwner.all(owner) as { id: string; owner: string; expires_at: number }[];
      if (closure.length === 0) return { ...EMPTY_END, taskIds: [] };
      const seeds = new Set(closure.filter((r) => r.owner === owner).map((r) => r.id));
      return this.endClosure(seeds, closure, 'revoked', reason, now);
    });
  }

  /** Inside a transaction: ends `closure` (seeds first, ordered by depth), revokes tokens, appends one event. */
  private endClosure(seeds: Set<string>, closure: { id: string; expires_at: number }[], status: Exclude<TaskStatus, 'active'>, reason: string, now: EpochMs): TaskEndResult {
    const seedIds: string[] = [];
    const descIds: string[] = [];
    let coversUntil = 0;
    for (const r of closure) {
      (seeds.has(r.id) ? seedIds : descIds).push(r.id);
      if (r.expires_at > coversUntil) coversUntil = r.expires_at;
    }
    this.s.endTasks.run(status, now, reason, JSON.stringify(seedIds));
    if (descIds.length > 0) this.s.endTasks.run('revoked', now, descendantEndReason(status, reason), JSON.stringify(descIds));
    const taskIds = [...seedIds, ...descIds];
    for (const t of taskIds) this.tasks.forget(t);
    const revoked = this.s.revokeTokensOfTasks.run(now, JSON.stringify(taskIds)).changes;
    const event = this.insertEvent({ kind: 'task', at: now, taskIds, jtis: [], kid: null, reason, coversUntil });
    return { taskIds: [...taskIds], revokedTokens: revoked, event };
  }

  private insertEvent(e: Omit<RevocationEvent, 'cursor'>): RevocationEvent {
    const r = this.s.insertEvent.get(e.kind, e.at, JSON.stringify(e.taskIds), JSON.stringify(e.jtis), e.kid, e.reason, e.coversUntil) as { cursor: number };
    return { cursor: r.cursor, kind: e.kind, at: e.at, taskIds: [...e.taskIds], jtis: [...e.jtis], kid: e.kid, reason: e.reason, coversUntil: e.coversUntil };
  }

  /** Revokes one token, fsynced; null if unknown or already revoked. */
  async revokeToken(jti: string, reason: string, now: EpochMs): Promise<RevocationEvent | null> {
    return this.durably('revokeToken', () => {
      const r = this.s.revokeToken.get(now, jti) as { expires_at: number } | undefined;
      if (!r) return null;
      return this.insertEvent({ kind: 'token', at: now, taskIds: [], jtis: [jti], kid: null, reason, coversUntil: r.expires_at });
    });
  }

  /** Revokes every unexpired, unrevoked token signed by `kid`, fsynced; always appends one kind-key event. */
  async revokeTokensByKid(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent> {
    return this.durably('revokeTokensByKid', () => {
      const m = (this.s.kidCoverage.get(kid, now) as { m: number | null }).m;
      const jtis = (this.s.revokeKidTokens.all(now, kid, now) as { jti: string }[]).map((r) => r.jti).sort();
      return this.insertEvent({ kind: 'key', at: now, taskIds: [], jtis, kid, reason, coversUntil: Math.max(now, m ?? now) });
    });
  }

  /** See Store.finishKeyRevocation; reads without a write transaction (or fsync) when there is nothing to finish. */
  async finishKeyRevocation(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent | null> {
    const unfinished = () => {
      const t = this.s.kidTokenState.get(kid, now) as { live: number; unrevoked: number };
      return t.unrevoked > 0 || (t.live > 0 && !this.s.keyEventOf.get(kid));
    };
    if (!this.run('finishKeyRevocation', unfinished)) return null;
    return this.durably('finishKeyRevocation', () => {
      if (!unfinished()) return null;
      const m = (this.s.kidCoverage.get(kid, now) as { m: number | null }).m;
      const jtis = (this.s.revokeKidTokens.all(now, kid, now) as { jti: string }[]).map((r) => r.jti).sort();
      return this.insertEvent({ kind: 'key', at: now, taskIds: [], jtis, kid, reason, coversUntil: Math.max(now, m ?? now) });
    });
  }

  /** Appends a free-standing event, fsynced, and returns it with its cursor. */
  async appendEvent(event: Omit<RevocationEvent, 'cursor'>): Promise<RevocationEvent> {
    return this.durably('appendEvent', () => this.insertEvent(event));
  }

  /** Events after `cursor`, oldest first. */
  async eventsSince(cursor: number, limit: number): Promise<RevocationEvent[]> {
    return this.run('eventsSince', () => (this.s.eventsSince.all(cursor, limit) as EventRow[]).map(eventFromRow));
  }

  /** See Store.cursorRange; `oldest` is latest + 1 when every event was pruned. */
  async cursorRange(): Promise<{ oldest: number; latest: number }> {
    return this.run('cursorRange', () => this.db.transaction(() => this.cursorRangeSync())());
  }

  private cursorRangeSync(): { oldest: number; latest: number } {
    const latest = (this.s.latestCursor.get() as { seq: number } | undefined)?.seq ?? 0;
    if (!this.s.getMeta.get('pruned')) return { oldest: 0, latest };
    const oldest = (this.s.oldestCursor.get() as { c: number | null }).c;
    return { oldest: oldest ?? latest + 1, latest };
  }

  /** See Store.revocationSnapshot; read in one transaction so the cursor matches the lists. */
  async revocationSnapshot(now: EpochMs): Promise<RevocationSnapshot> {
    return this.run('revocationSnapshot', () =>
      this.db.transaction(() => ({
        cursor: this.cursorRangeSync().latest,
        taskIds: (this.s.snapTasks.all(now) as { id: string }[]).map((r) => r.id),
        jtis: (this.s.snapJtis.all(now) as { jti: string }[]).map((r) => r.jti),
        kids: (this.s.snapKids.all(now) as { kid: string }[]).map((r) => r.kid),
      }))(),
    );
  }

  /** Active tasks past their deadline or lease, soonest first. */
  async dueTasks(now: EpochMs, limit: number): Promise<TaskRecord[]> {
    return this.run('dueTasks', () => (this.s.dueTasks.all({ now, limit }) as TaskRow[]).map(taskFromRow));
  }

  /** Count of unexpired tokens (revoked or not) per kid. */
  async liveTokensByKid(now: EpochMs): Promise<Record<string, number>> {
    return this.run('liveTokensByKid', () => {
      const out: Record<string, number> = {};
      for (const r of this.s.liveByKid.all(now) as { kid: string; n: number }[]) out[r.kid] = r.n;
      return out;
    });
  }

  /** Deletes tasks (any status) and their tokens, and events, whose coverage ended more than `graceMs` ago. */
  async gc(now: EpochMs, graceMs: number): Promise<number> {
    const cutoff = now - graceMs;
    this.tasks.clear();
    return this.run('gc', () =>
      this.db.transaction(() => {
        let n = this.s.gcTokens.run(cutoff).changes;
        n += this.s.gcTasks.run(cutoff).changes;
        const ev = this.s.gcEvents.run(cutoff).changes;
        if (ev > 0) this.s.setMeta.run('pruned', '1');
        return n + ev;
      }).immediate(),
    );
  }

  /** Records the audit chain head of one broker, in the meta table (no migration), fsynced before resolving. */
  async putAuditHead(head: AuditHead): Promise<void> {
    const value = JSON.stringify({ seq: head.seq, hash: head.hash, at: head.at });
    await this.durably('putAuditHead', () => this.s.setMeta.run(auditHeadKey(head.brokerId), value));
  }

  /** The audit chain head last recorded for that broker, or null. */
  async getAuditHead(brokerId: string): Promise<AuditHead | null> {
    const row = this.run('getAuditHead', () => this.s.getMeta.get(auditHeadKey(brokerId)) as { value: string } | undefined);
    if (!row) return null;
    const v = JSON.parse(row.value) as { seq: number; hash: string; at: number };
    return { brokerId, seq: v.seq, hash: v.hash, at: v.at };
  }

  /** Closes the database (checkpointing the WAL); later calls fail with ERR_STORE. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flushBatch();
    this.closed = true;
    this.tasks.clear();
    await this.checkpointer?.stop();
    while (this.syncing) await this.syncing;
    if (this.walFd !== null) closeSync(this.walFd);
    this.walFd = null;
    this.run('close', () => this.db.close());
  }
}

/** Tasks remembered by the SQLite store: enough for every task live at a few thousand issuances per second. */
const TASK_CACHE_SIZE = 20_000;

/**
 * Committed task rows by id, kept exact by the store that owns the file: the
 * one process that writes it (`--workers` > 1 is refused on SQLite). A row
 * enters when it is read or created, follows tokens_issued as tokens are
 * recorded, and leaves whenever anything else about it changes (lease,
 * ending, GC) or a batch that touched it rolls back. What it saves is the
 * SQLite read; every hit is parsed into a new record, as a read would be,
 * so callers own what they get.
 */
class TaskCache {
  private readonly byId = new Map<string, TaskRow>();

  constructor(private readonly max: number) {}

  get(id: string): TaskRecord | null {
    const row = this.byId.get(id);
    return row === undefined ? null : taskFromRow(row);
  }

  /** Remembers `row`, which the cache then owns. */
  put(row: TaskRow): void {
    if (this.byId.size >= this.max && !this.byId.has(row.id)) this.byId.delete(this.byId.keys().next().value as string);
    this.byId.set(row.id, row);
  }

  /** One more token recorded for `taskId` (inside the same transaction as the write). */
  bumped(taskId: string): void {
    const row = this.byId.get(taskId);
    if (row !== undefined) row.tokens_issued++;
  }

  forget(taskId: string): void {
    this.byId.delete(taskId);
  }

  clear(): void {
    this.byId.clear();
  }
}

/** fsync of the file at `path` on the thread pool (open read-only, fsync, close). */
function fsyncPath(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    openFd(path, 'r', (err, fd) => {
      if (err) return reject(err);
      fsync(fd, (syncErr) => closeFd(fd, () => (syncErr ? reject(syncErr) : resolve())));
    });
  });
}

/** Meta-table key of a broker's audit head. */
function auditHeadKey(brokerId: string): string {
  return `audit_head:${brokerId}`;
}

function migrate(db: Db, path: string): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > MIGRATIONS.length) {
    throw mayflyError('ERR_STORE', `store database ${path} has schema version ${version}, newer than this broker supports (${MIGRATIONS.length}); upgrade mayfly or point it at another data dir`, { path });
  }
  for (let v = version; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}
