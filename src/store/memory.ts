/**
 * In-memory Store. DEV/TEST ONLY: nothing survives a restart, so revocations
 * are lost with the process. Use SqliteStore for anything real.
 *
 * It implements exactly the semantics of SqliteStore (both pass
 * test/contracts/store.contract.ts). Every method does all its work
 * synchronously before its promise settles, so calls are atomic with respect
 * to each other, as transactions are in SQLite. Records are copied on the way
 * in and out so callers can never mutate stored state.
 */
import { mayflyError } from '../core/errors.js';
import type { RevocationSnapshot, Store } from '../core/ports.js';
import type { AuditHead, EpochMs, RevocationEvent, TaskEndResult, TaskRecord, TaskStatus, TokenRecord } from '../core/types.js';
import { assertParentActive, descendantEndReason, EMPTY_END } from './semantics.js';

function copyTask(t: TaskRecord): TaskRecord {
  const copy: TaskRecord = { ...t, labels: { ...t.labels }, scopeCeiling: t.scopeCeiling === null ? null : [...t.scopeCeiling], actors: [...t.actors] };
  if (t.ownerIdentity !== undefined) copy.ownerIdentity = structuredClone(t.ownerIdentity);
  return copy;
}

function copyToken(t: TokenRecord): TokenRecord {
  return { ...t, scopes: [...t.scopes] };
}

function copyEvent(e: RevocationEvent): RevocationEvent {
  return { ...e, taskIds: [...e.taskIds], jtis: [...e.jtis] };
}

function byDepthCreatedId(a: TaskRecord, b: TaskRecord): number {
  return a.depth - b.depth || a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** Dev/test-only Store kept in process memory. */
export class MemoryStore implements Store {
  private readonly tasks = new Map<string, TaskRecord>();
  private readonly children = new Map<string, Set<string>>();
  private readonly tokens = new Map<string, TokenRecord>();
  private readonly tokensByTask = new Map<string, Set<string>>();
  /** Ordered by cursor. */
  private events: RevocationEvent[] = [];
  private lastCursor = 0;
  private pruned = false;
  private closed = false;
  private readonly auditHeads = new Map<string, AuditHead>();

  private check(): void {
    if (this.closed) throw mayflyError('ERR_STORE', 'store is closed');
  }

  /** Creates a task; ERR_STORE if the id already exists. */
  async createTask(task: TaskRecord): Promise<void> {
    this.check();
    if (this.tasks.has(task.id)) throw mayflyError('ERR_STORE', `task ${task.id} already exists`, { taskId: task.id });
    if (task.parentId !== null && task.status === 'active') assertParentActive(task.parentId, this.tasks.get(task.parentId)?.status);
    this.tasks.set(task.id, copyTask(task));
    if (task.parentId !== null) {
      let set = this.children.get(task.parentId);
      if (!set) this.children.set(task.parentId, (set = new Set()));
      set.add(task.id);
    }
  }

  /** The task with that id, or null. */
  async getTask(id: string): Promise<TaskRecord | null> {
    this.check();
    const t = this.tasks.get(id);
    return t ? copyTask(t) : null;
  }

  /** All descendants, ordered by depth, createdAt, id. */
  async getDescendants(id: string): Promise<TaskRecord[]> {
    this.check();
    return this.closure([id]).map(copyTask).sort(byDepthCreatedId);
  }

  /** Sets the lease of an active task; false if unknown or not active. */
  async renewLease(id: string, leaseExpiresAt: EpochMs): Promise<boolean> {
    this.check();
    const t = this.tasks.get(id);
    if (!t || t.status !== 'active') return false;
    t.leaseExpiresAt = leaseExpiresAt;
    return true;
  }

  /** Records a token of an active task and bumps tokensIssued. */
  async recordToken(token: TokenRecord): Promise<void> {
    this.check();
    const t = this.tasks.get(token.taskId);
    if (!t) throw mayflyError('ERR_TASK_NOT_FOUND', `task ${token.taskId} not found`, { taskId: token.taskId });
    if (t.status !== 'active') throw mayflyError('ERR_TASK_NOT_ACTIVE', `task ${token.taskId} is ${t.status}; no token may be recorded for it`, { taskId: token.taskId });
    if (this.tokens.has(token.jti)) throw mayflyError('ERR_STORE', `token ${token.jti} already recorded`, { jti: token.jti });
    this.tokens.set(token.jti, copyToken(token));
    let set = this.tokensByTask.get(token.taskId);
    if (!set) this.tokensByTask.set(token.taskId, (set = new Set()));
    set.add(token.jti);
    t.tokensIssued += 1;
  }

  /** The token with that jti, or null. */
  async getToken(jti: string): Promise<TokenRecord | null> {
    this.check();
    const t = this.tokens.get(jti);
    return t ? copyToken(t) : null;
  }

  /** Ends an active task and its active descendants; see Store.endTask. */
  async endTask(id: string, status: Exclude<TaskStatus, 'active'>, reason: string, now: EpochMs): Promise<TaskEndResult> {
    this.check();
    const t = this.tasks.get(id);
    if (!t) throw mayflyError('ERR_TASK_NOT_FOUND', `task ${id} not found`, { taskId: id });
    if (t.status !== 'active') return { ...EMPTY_END, taskIds: [] };
    return this.endMany([id], status, reason, now);
  }

  /** Revokes every active task of `owner` and their descendants in one step. */
  async endTasksOfOwner(owner: string, reason: string, now: EpochMs): Promise<TaskEndResult> {
    this.check();
    const seeds = [...this.tasks.values()].filter((t) => t.owner === owner && t.status === 'active').sort(byDepthCreatedId);
    if (seeds.length === 0) return { ...EMPTY_END, taskIds: [] };
    return this.endMany(
      seeds.map((t) => t.id),
      'revoked',
      reason,
      now,
    );
  }

  private endMany(seedIds: string[], status: Exclude<TaskStatus, 'active'>, reason: string, now: EpochMs): TaskEndResult {
    const seedSet = new Set(seedIds);
    const seeds = seedIds.map((id) => this.tasks.get(id)!);
    const desc = this.closure(seedIds)
      .filter((t) => t.status === 'active' && !seedSet.has(t.id))
      .sort(byDepthCreatedId);
    const ended = [...seeds, ...desc];
    let coversUntil = 0;
    let revoked = 0;
    for (const t of ended) {
      const isSeed = seedSet.has(t.id);
      t.status = isSeed ? status : 'revoked';
      t.endedAt = now;
      t.endReason = isSeed ? reason : descendantEndReason(status, reason);
      if (t.expiresAt > coversUntil) coversUntil = t.expiresAt;
      for (const jti of this.tokensByTask.get(t.id) ?? []) {
        const tok = this.tokens.get(jti);
        if (tok && tok.revokedAt === null) {
          tok.revokedAt = now;
          revoked += 1;
        }
      }
    }
    const event = this.push({ kind: 'task', at: now, taskIds: ended.map((t) => t.id), jtis: [], kid: null, reason, coversUntil });
    return { taskIds: [...event.taskIds], revokedTokens: revoked, event: copyEvent(event) };
  }

  /** Revokes one token; null if unknown or already revoked. */
  async revokeToken(jti: string, reason: string, now: EpochMs): Promise<RevocationEvent | null> {
    this.check();
    const tok = this.tokens.get(jti);
    if (!tok || tok.revokedAt !== null) return null;
    tok.revokedAt = now;
    return copyEvent(this.push({ kind: 'token', at: now, taskIds: [], jtis: [jti], kid: null, reason, coversUntil: tok.expiresAt }));
  }

  /** Revokes every unexpired, unrevoked token signed by `kid`; always appends one kind-key event. */
  async revokeTokensByKid(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent> {
    this.check();
    const jtis: string[] = [];
    let coversUntil = now;
    for (const tok of this.tokens.values()) {
      if (tok.kid !== kid || tok.expiresAt <= now) continue;
      if (tok.expiresAt > coversUntil) coversUntil = tok.expiresAt;
      if (tok.revokedAt === null) {
        tok.revokedAt = now;
        jtis.push(tok.jti);
      }
    }
    jtis.sort();
    return copyEvent(this.push({ kind: 'key', at: now, taskIds: [], jtis, kid, reason, coversUntil }));
  }

  /** See Store.finishKeyRevocation. */
  async finishKeyRevocation(kid: string, reason: string, now: EpochMs): Promise<RevocationEvent | null> {
    this.check();
    let live = false;
    let unrevoked = false;
    for (const tok of this.tokens.values()) {
      if (tok.kid !== kid || tok.expiresAt <= now) continue;
      live = true;
      if (tok.revokedAt === null) unrevoked = true;
    }
    const told = this.events.some((e) => e.kind === 'key' && e.kid === kid);
    if (!unrevoked && (!live || told)) return null;
    return this.revokeTokensByKid(kid, reason, now);
  }

  /** Appends a free-standing event and returns it with its cursor. */
  async appendEvent(event: Omit<RevocationEvent, 'cursor'>): Promise<RevocationEvent> {
    this.check();
    return copyEvent(this.push({ ...event, taskIds: [...event.taskIds], jtis: [...event.jtis] }));
  }

  /** Events after `cursor`, oldest first. */
  async eventsSince(cursor: number, limit: number): Promise<RevocationEvent[]> {
    this.check();
    const out: RevocationEvent[] = [];
    for (const e of this.events) {
      if (out.length >= limit) break;
      if (e.cursor > cursor) out.push(copyEvent(e));
    }
    return out;
  }

  /** See Store.cursorRange; `oldest` is latest + 1 when every event was pruned. */
  async cursorRange(): Promise<{ oldest: number; latest: number }> {
    this.check();
    if (!this.pruned) return { oldest: 0, latest: this.lastCursor };
    return { oldest: this.events[0]?.cursor ?? this.lastCursor + 1, latest: this.lastCursor };
  }

  /** See Store.revocationSnapshot. */
  async revocationSnapshot(now: EpochMs): Promise<RevocationSnapshot> {
    this.check();
    const taskIds: string[] = [];
    for (const t of this.tasks.values()) if (t.status !== 'active' && t.expiresAt > now) taskIds.push(t.id);
    const jtis: string[] = [];
    for (const tok of this.tokens.values()) {
      if (tok.revokedAt === null || tok.expiresAt <= now) continue;
      const t = this.tasks.get(tok.taskId);
      // A token of an ended task is already covered by the task id (tokens never outlive their task).
      if (!t || t.status === 'active' || t.expiresAt < tok.expiresAt) jtis.push(tok.jti);
    }
    const kids = new Set<string>();
    for (const e of this.events) if (e.kind === 'key' && e.kid !== null && e.coversUntil > now) kids.add(e.kid);
    return { cursor: this.lastCursor, taskIds: taskIds.sort(), jtis: jtis.sort(), kids: [...kids].sort() };
  }

  /** Active tasks past their deadline or lease, soonest first. */
  async dueTasks(now: EpochMs, limit: number): Promise<TaskRecord[]> {
    this.check();
    const due = [...this.tasks.values()].filter((t) => t.status === 'active' && (t.expiresAt <= now || (t.leaseExpiresAt !== null && t.leaseExpiresAt <= now)));
    const key = (t: TaskRecord) => Math.min(t.expiresAt, t.leaseExpiresAt ?? t.expiresAt);
    due.sort((a, b) => key(a) - key(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return due.slice(0, limit).map(copyTask);
  }

  /** Count of unexpired tokens (revoked or not) per kid. */
  async liveTokensByKid(now: EpochMs): Promise<Record<string, number>> {
    this.check();
    const out: Record<string, number> = {};
    for (const tok of this.tokens.values()) if (tok.expiresAt > now) out[tok.kid] = (out[tok.kid] ?? 0) + 1;
    return out;
  }

  /** Deletes tasks (any status) and their tokens, and events, whose coverage ended more than `graceMs` ago. */
  async gc(now: EpochMs, graceMs: number): Promise<number> {
    this.check();
    let removed = 0;
    for (const t of [...this.tasks.values()]) {
      if (t.expiresAt + graceMs >= now) continue;
      for (const jti of this.tokensByTask.get(t.id) ?? []) if (this.tokens.delete(jti)) removed += 1;
      this.tokensByTask.delete(t.id);
      this.tasks.delete(t.id);
      if (t.parentId !== null) this.children.get(t.parentId)?.delete(t.id);
      removed += 1;
    }
    const kept = this.events.filter((e) => e.coversUntil + graceMs >= now);
    if (kept.length !== this.events.length) {
      removed += this.events.length - kept.length;
      this.events = kept;
      this.pruned = true;
    }
    return removed;
  }

  /** Records the audit chain head of one broker. */
  async putAuditHead(head: AuditHead): Promise<void> {
    this.check();
    this.auditHeads.set(head.brokerId, { ...head });
  }

  /** The audit chain head last recorded for that broker, or null. */
  async getAuditHead(brokerId: string): Promise<AuditHead | null> {
    this.check();
    const h = this.auditHeads.get(brokerId);
    return h ? { ...h } : null;
  }

  /** Drops everything; later calls fail with ERR_STORE. */
  async close(): Promise<void> {
    this.closed = true;
    this.tasks.clear();
    this.tokens.clear();
    this.events = [];
  }

  private push(e: Omit<RevocationEvent, 'cursor'>): RevocationEvent {
    const event: RevocationEvent = { cursor: ++this.lastCursor, ...e };
    this.events.push(event);
    return event;
  }

  /** Tasks strictly below `ids`, any status. Cycle-safe. */
  private closure(ids: string[]): TaskRecord[] {
    const seen = new Set<string>(ids);
    const out: TaskRecord[] = [];
    const queue = [...ids];
    while (queue.length > 0) {
      const id = queue.shift()!;
      for (const c of this.children.get(id) ?? []) {
        if (seen.has(c)) continue;
        seen.add(c);
        const t = this.tasks.get(c);
        if (t) {
          out.push(t);
          queue.push(c);
        }
      }
    }
    return out;
  }
}
