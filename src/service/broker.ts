/**
 * The broker's use-cases: begin, issue, exchange, complete, renew,
 * introspect, revoke. Transport-agnostic: the transports authenticate the
 * caller (service/authenticate.ts), then call one of these with a
 * CallContext. Each call authorizes (service/authorize.ts), validates
 * (service/validate.ts), asks policy at most once, mints then verifies,
 * stores, and writes exactly one audit record.
 */
import { DECISION_CONTRACT_VERSION, type Decision, type DecisionInput, type PolicyAction } from '../core/decision.js';
import { MayflyError, mayflyError } from '../core/errors.js';
import type { AuditEntry, CertificateBinding } from '../core/ports.js';
import type { Identity, TaskEndResult, TaskOwnerIdentity, TaskRecord, TokenRecord } from '../core/types.js';
import { buildClaims, type MayflyClaims } from '../tokens/claims.js';
import { tokenHash } from '../tokens/hashes.js';
import { mintToken } from '../tokens/mint.js';
import { verifyMayflyToken } from '../tokens/verify.js';
import { decisionInputDigest } from '../policy/digest.js';
import { audited, auditIdentity } from './audited.js';
import { Authorizer } from './authorize.js';
import type { CallContext, ServiceDeps } from './deps.js';
import { IssuanceCounter } from './issuance-counter.js';
import * as v from './validate.js';

export interface BeginTaskParams {
  purpose?: unknown;
  ttlSeconds?: unknown;
  labels?: unknown;
  parentTaskId?: unknown;
  scopes?: unknown;
  leaseSeconds?: unknown;
  actor?: unknown;
}

export interface IssueTokenParams {
  taskId?: unknown;
  audience?: unknown;
  scopes?: unknown;
  ttlSeconds?: unknown;
  tool?: unknown;
  argsDigest?: unknown;
  singleUse?: unknown;
}

/** RFC 8693 token exchange: a token for an existing task, or for a task begun by this exchange. */
export interface ExchangeParams {
  /** The task to issue for; absent: the exchange begins a task of its own. */
  taskId?: unknown;
  audience?: unknown;
  scopes?: unknown;
  /** Requested token lifetime. */
  ttlSeconds?: unknown;
  /** Lifetime of the task the exchange begins (default: the token's). */
  taskTtlSeconds?: unknown;
  /** Purpose of the task the exchange begins. */
  purpose?: unknown;
}

export interface IssuedToken {
  token: string;
  tokenId: string;
  expiresAt: number;
  scopes: string[];
  taskId: string;
}

export interface ExchangedToken extends IssuedToken {
  /** Deadline of the task this exchange began; absent when it issued for an existing task. */
  taskExpiresAt?: number;
}

export interface IntrospectResult {
  active: boolean;
  reason?: 'expired' | 'revoked' | 'unknown_signer' | 'malformed' | 'not_yet_valid' | 'unknown_token' | 'wrong_issuer' | 'invalid_signature' | 'not_visible';
  claims?: MayflyClaims;
}

/** Why a Mayfly token did not verify, by error code and detail (never by message text). */
function inactiveReason(err: MayflyError): IntrospectResult['reason'] {
  switch (err.code) {
    case 'ERR_JWT_EXPIRED':
      return 'expired';
    case 'ERR_KEY_UNKNOWN':
      return 'unknown_signer';
    case 'ERR_JWT_SIGNATURE':
      return 'invalid_signature';
    case 'ERR_JWT_INVALID':
      return err.details?.['reason'] === 'not_yet_valid' ? 'not_yet_valid' : err.details?.['reason'] === 'wrong_issuer' ? 'wrong_issuer' : 'malformed';
    default:
      return 'malformed';
  }
}

/** A token to mint for a task, after policy said yes. */
interface MintRequest {
  task: TaskRecord;
  audience: string;
  requested: string[];
  ttlSeconds: number;
  decision: Decision;
  tool: string | null;
  argsDigest: string | null;
  singleUse: boolean;
  now: number;
  started: number;
}

export class BrokerService {
  private readonly issuance = new IssuanceCounter();
  private readonly access: Authorizer;

  constructor(private readonly d: ServiceDeps) {
    this.access = d.access ?? new Authorizer({ admins: d.config.admins });
  }

  /** Starts a task owned by the caller (or a delegated child of a task the caller holds). */
  async beginTask(ctx: CallContext, p: BeginTaskParams): Promise<TaskRecord> {
    return this.audited('task.begin', ctx, async (rec) => {
      const cfg = this.d.config.tasks;
      const purpose = v.text('purpose', p.purpose, v.LIMITS.purposeMax);
      const ttl = v.ttlSeconds('ttl_seconds', p.ttlSeconds, cfg.defaultTtlSeconds, cfg.maxTtlSeconds);
      const labels = v.labels(p.labels);
      const lease = v.ttlSeconds('lease_seconds', p.leaseSeconds, 0, cfg.maxLeaseSeconds);
      const parentId = p.parentTaskId ? v.opaqueId('parent_task_id', p.parentTaskId) : null;
      const requestedScopes = v.scopes(p.scopes);
      const actor = v.text('actor', p.actor, v.LIMITS.actorMax, false);
      const now = this.d.clock.now();

      this.access.requireMayStartTask(ctx.identity, parentId);
      let parent: TaskRecord | null = null;
      if (parentId) {
        parent = await this.loadOwnedTask(ctx.identity, parentId, rec);
        this.assertActive(parent, now);
        if (parent.depth + 1 > this.d.config.tasks.maxDelegationDepth) {
          throw mayflyError('ERR_DELEGATION_DENIED', `delegation depth ${parent.depth + 1} exceeds the configured maximum ${this.d.config.tasks.maxDelegationDepth}`);
        }
        if (parent.scopeCeiling) {
          const outside = requestedScopes.filter((s) => !parent!.scopeCeiling!.includes(s));
          if (outside.length > 0) throw mayflyError('ERR_DELEGATION_DENIED', `child task scopes must be a subset of the parent's; not in parent: ${outside.join(' ')}`);
        }
      }
      const action: PolicyAction = parent ? 'delegate' : 'begin_task';
      const decision = await this.decide(ctx, rec, {
        action,
        scopes: requestedScopes,
        ttl_seconds: ttl,
        purpose,
        labels,
      }, parent ?? undefined, now);
      let expiresAt = now + Math.min(ttl, decision.max_ttl_seconds ?? ttl) * 1000;
      if (parent) expiresAt = Math.min(expiresAt, parent.expiresAt);
      // Delegated children are capped at what policy granted; root tasks keep the request as ceiling when given.
      const ceiling = parent ? (decision.scopes ?? requestedScopes) : requestedScopes.length > 0 ? (decision.scopes ?? requestedScopes) : null;
      const task = await this.createTask(ctx.identity, { purpose, labels, now, expiresAt, lease, parent, ceiling, actor });
      rec.task_id = task.id;
      rec.parent_task_id = task.parentId ?? undefined;
      rec.expires_at = new Date(expiresAt).toISOString();
      return task;
    });
  }

  /** Mints a token for one audience, scoped to the task. Only the task's owner may. */
  async issueToken(ctx: CallContext, p: IssueTokenParams): Promise<IssuedToken> {
    return this.audited('token.issue', ctx, async (rec) => {
      const started = performance.now();
      const taskId = v.opaqueId('task_id', p.taskId);
      rec.task_id = taskId;
      const { audience, requested, ttlSeconds } = this.tokenTarget(p, rec);
      const tool = v.text('tool', p.tool, v.LIMITS.toolMax, false) || null;
      const argsDigest = v.digest('args_digest', p.argsDigest);
      const singleUse = p.singleUse === true;
      const now = this.d.clock.now();

      const task = await this.taskForToken(ctx, taskId, audience, requested, rec, now);
      const decision = await this.decide(ctx, rec, {
        action: 'issue_token',
        audience,
        scopes: requested,
        ttl_seconds: ttlSeconds,
        labels: task.labels,
        ...(tool ? { tool } : {}),
        ...(argsDigest ? { args_digest: argsDigest } : {}),
      }, task, now);
      return this.mint(ctx, rec, { task, audience, requested, ttlSeconds, decision, tool, argsDigest, singleUse, now, started });
    });
  }

  /**
   * RFC 8693 token exchange for an already authenticated subject: one policy
   * decision (action `exchange`) and one audit record (`token.exchange`).
   * Without a task id it begins the task and mints its token in one step.
   */
  async exchange(ctx: CallContext, p: ExchangeParams): Promise<ExchangedToken> {
    return this.audited('token.exchange', ctx, async (rec) => {
      const started = performance.now();
      const taskId = p.taskId === undefined ? null : v.opaqueId('task_id', p.taskId);
      if (taskId) rec.task_id = taskId;
      const { audience, requested, ttlSeconds } = this.tokenTarget(p, rec);
      const now = this.d.clock.now();

      if (taskId) {
        const task = await this.taskForToken(ctx, taskId, audience, requested, rec, now);
        const decision = await this.decide(ctx, rec, { action: 'exchange', audience, scopes: requested, ttl_seconds: ttlSeconds, labels: task.labels }, task, now);
        return this.mint(ctx, rec, { tool: null, argsDigest: null, singleUse: false, now, started, task, audience, requested, ttlSeconds, decision });
      }

      this.access.requireMayStartTask(ctx.identity, null);
      const cfg = this.d.config.tasks;
      const taskTtl = v.ttlSeconds('ttl_seconds', p.taskTtlSeconds ?? p.ttlSeconds, cfg.defaultTtlSeconds, cfg.maxTtlSeconds);
      const purpose = p.purpose === undefined ? `token exchange for ${audience}` : v.text('purpose', p.purpose, v.LIMITS.purposeMax);
      const labels = { via: 'token-exchange' };
      const decision = await this.decide(ctx, rec, { action: 'exchange', audience, scopes: requested, ttl_seconds: ttlSeconds, task_ttl_seconds: taskTtl, purpose, labels }, undefined, now);
      const taskCap = decision.max_task_ttl_seconds ?? decision.max_ttl_seconds ?? taskTtl;
      const expiresAt = now + Math.min(taskTtl, taskCap) * 1000;
      const task = await this.createTask(ctx.identity, { purpose, labels, now, expiresAt, lease: 0, parent: null, ceiling: null, actor: '' });
      Object.assign(rec, { task_id: task.id, task_begun: true, task_expires_at: new Date(expiresAt).toISOString() });
      const issued: ExchangedToken = await this.mint(ctx, rec, { tool: null, argsDigest: null, singleUse: false, now, started, task, audience, requested, ttlSeconds, decision });
      issued.taskExpiresAt = task.expiresAt;
      return issued;
    });
  }

  /** Audience, scopes and lifetime of a requested token, validated and noted on the audit record. */
  private tokenTarget(p: { audience?: unknown; scopes?: unknown; ttlSeconds?: unknown }, rec: AuditEntry): { audience: string; requested: string[]; ttlSeconds: number } {
    const audience = v.audience(p.audience);
    rec.audience = audience;
    const requested = v.scopes(p.scopes);
    rec.requested_scopes = requested;
    const tcfg = this.d.config.tokens;
    return { audience, requested, ttlSeconds: v.ttlSeconds('ttl_seconds', p.ttlSeconds, tcfg.defaultTtlSeconds, tcfg.maxTtlSeconds) };
  }

  /** The task a token is asked for: owned by the caller, active, and, for a task-token holder, only narrowed. */
  private async taskForToken(ctx: CallContext, taskId: string, audience: string, requested: string[], rec: AuditEntry, now: number): Promise<TaskRecord> {
    const task = await this.loadOwnedTask(ctx.identity, taskId, rec);
    this.assertActive(task, now);
    this.access.requireNarrowing(ctx.identity, audience, requested);
    if (task.scopeCeiling) {
      const outside = requested.filter((s) => !task.scopeCeiling!.includes(s));
      if (outside.length > 0) throw mayflyError('ERR_SCOPE_DENIED', `scopes not available to this task: ${outside.join(' ')}`);
    }
    return task;
  }

  /** Mints, records and reports a token policy has allowed. exp ≤ min(now + requested TTL, policy max TTL, task deadline). */
  private async mint(ctx: CallContext, rec: AuditEntry, m: MintRequest): Promise<IssuedToken> {
    const { task, audience, decision, tool, argsDigest, singleUse, now } = m;
    const granted = decision.scopes ?? m.requested;
    let exp = Math.min(now + m.ttlSeconds * 1000, task.expiresAt);
    if (decision.max_ttl_seconds !== undefined) exp = Math.min(exp, now + decision.max_ttl_seconds * 1000);
    exp = Math.floor(exp / 1000) * 1000;
    if (exp <= now) throw mayflyError('ERR_TASK_NOT_ACTIVE', 'the task ends before a token could be valid');

    const { signer, publicKey, info } = this.d.keys.active();
    const jti = this.newId(now);
    const certThumbprint = ctx.identity.certThumbprint ?? null;
    const claims = buildClaims({
      issuer: this.d.config.issuer,
      subject: task.owner,
      audience,
      scopes: granted,
      jti,
      taskId: task.id,
      issuedAtMs: now,
      expiresAtMs: exp,
      certThumbprint,
      actors: task.actors,
      parentTaskId: task.parentId,
      tool,
      argsDigest,
      singleUse,
      ...(decision.claims ? { extra: decision.claims } : {}),
    });
    const token = mintToken(claims, signer, publicKey, now);
    const record: TokenRecord = { jti, taskId: task.id, kid: info.kid, sub: task.owner, audience, scopes: granted, issuedAt: now, expiresAt: exp, certThumbprint, singleUse, tool, argsDigest, revokedAt: null };
    await this.d.store.recordToken(record);
    this.d.keys.noteTokenExpiry(info.kid, exp);
    this.issuance.add(ctx.identity.id, now);
    Object.assign(rec, { jti, kid: info.kid, scopes: granted, expires_at: new Date(exp).toISOString(), tool: tool ?? undefined, args_digest: argsDigest ?? undefined });
    this.d.observer?.tokenIssued?.(audience, performance.now() - m.started);
    return { token, tokenId: jti, expiresAt: exp, scopes: granted, taskId: task.id };
  }

  /** Writes a new active task owned by the caller (a root task, or a child of `parent`). */
  private async createTask(
    owner: Identity,
    t: { purpose: string; labels: Record<string, string>; now: number; expiresAt: number; lease: number; parent: TaskRecord | null; ceiling: string[] | null; actor: string },
  ): Promise<TaskRecord> {
    const { parent, now, expiresAt } = t;
    const id = this.newId(now);
    const task: TaskRecord = {
      id,
      owner: owner.id,
      ownerKind: owner.kind,
      purpose: t.purpose,
      labels: t.labels,
      createdAt: now,
      expiresAt,
      leaseExpiresAt: t.lease > 0 ? Math.min(now + t.lease * 1000, expiresAt) : null,
      status: 'active',
      endedAt: null,
      endReason: null,
      parentId: parent?.id ?? null,
      rootId: parent?.rootId ?? id,
      depth: parent ? parent.depth + 1 : 0,
      scopeCeiling: t.ceiling,
      actors: parent ? [...(parent.actors.length ? parent.actors : [parent.owner]), t.actor || owner.id] : [],
      tokensIssued: 0,
    };
    // Who began it, as verified then; a child begun with a task token inherits its parent's beginner.
    const beganBy = owner.method === 'task-token' ? parent?.ownerIdentity : ownerIdentityOf(owner);
    if (beganBy !== undefined) task.ownerIdentity = beganBy;
    await this.d.store.createTask(task);
    this.d.observer?.taskBegun?.();
    return task;
  }

  /** Ends the task and all its descendants; every token of them is revoked durably before this resolves. */
  async completeTask(ctx: CallContext, p: { taskId?: unknown }): Promise<TaskEndResult> {
    return this.audited('task.complete', ctx, async (rec) => {
      const taskId = v.opaqueId('task_id', p.taskId);
      rec.task_id = taskId;
      const task = await this.loadOwnedTask(ctx.identity, taskId, rec);
      if (task.status !== 'active') {
        throw mayflyError('ERR_TASK_NOT_ACTIVE', `task is already ${task.status}${task.endReason ? ` (${task.endReason})` : ''}`);
      }
      const res = await this.d.store.endTask(taskId, 'completed', 'completed by owner', this.d.clock.now());
      this.afterEnd(res, 'completed');
      rec.revoked_tokens = res.revokedTokens;
      rec.task_ids = res.taskIds;
      return res;
    });
  }

  /** Heartbeat: extends the task's lease. */
  async renewTask(ctx: CallContext, p: { taskId?: unknown; leaseSeconds?: unknown }): Promise<number> {
    return this.audited('task.renew', ctx, async (rec) => {
      const taskId = v.opaqueId('task_id', p.taskId);
      rec.task_id = taskId;
      const lease = v.ttlSeconds('lease_seconds', p.leaseSeconds, 30, this.d.config.tasks.maxLeaseSeconds);
      const task = await this.loadOwnedTask(ctx.identity, taskId, rec);
      const now = this.d.clock.now();
      this.assertActive(task, now);
      const until = Math.min(now + lease * 1000, task.expiresAt);
      if (!(await this.d.store.renewLease(taskId, until))) throw mayflyError('ERR_TASK_NOT_ACTIVE', 'task is no longer active');
      return until;
    });
  }

  /**
   * RFC 7662 semantics: never throws for a bad token; answers active=false
   * with the reason. A revoked token presented here is misuse and alerts.
   * A task-token holder asking about another task's token gets
   * `active: false, reason: not_visible` and no claims: decided here, once,
   * so both transports answer alike.
   */
  async introspect(ctx: CallContext, p: { token?: unknown }): Promise<IntrospectResult> {
    return this.audited('token.introspect', ctx, async (rec) => {
      const token = typeof p.token === 'string' ? p.token : '';
      if (!token) throw mayflyError('ERR_INVALID_ARGUMENT', 'token is required', { field: 'token' });
      rec.token_sha256 = tokenHash(token);
      const result = await this.check(token);
      rec.active = result.active;
      rec.reason = result.reason;
      if (result.claims) {
        rec.jti = result.claims.jti;
        rec.task_id = result.claims.tid;
      }
      if (result.reason === 'revoked') this.misuse(ctx, rec, 'revoked_use');
      if (result.claims && !this.access.maySeeTokenOf(ctx.identity, result.claims.tid)) {
        rec.visible = false;
        return { active: false, reason: 'not_visible' };
      }
      return result;
    });
  }

  /** Checks a Mayfly token against keys, claims and durable state. Pure read. */
  async check(token: string): Promise<IntrospectResult> {
    const now = this.d.clock.now();
    let claims: MayflyClaims;
    try {
      claims = verifyMayflyToken(token, (kid) => this.d.keys.publicKey(kid), {
        issuer: this.d.config.issuer,
        now,
        clockSkewSeconds: this.d.config.clockSkewSeconds,
      }).claims;
    } catch (e) {
      return { active: false, reason: inactiveReason(MayflyError.from(e)) };
    }
    const record = await this.d.store.getToken(claims.jti);
    if (!record) return { active: false, reason: 'unknown_token', claims };
    if (record.revokedAt !== null) return { active: false, reason: 'revoked', claims };
    const task = await this.d.store.getTask(record.taskId);
    if (!task || task.status !== 'active') return { active: false, reason: 'revoked', claims };
    return { active: true, claims };
  }

  /**
   * Authenticates a caller holding a Mayfly task token (bearer): the token
   * must be active; the identity is the task owner, limited to that task.
   */
  async authenticateTaskToken(token: string, binding: CertificateBinding = {}): Promise<Identity> {
    const r = await this.check(token);
    if (!r.active || !r.claims) {
      throw mayflyError('ERR_UNAUTHENTICATED', `task token is not active (${r.reason ?? 'invalid'})`);
    }
    const c = r.claims;
    // RFC 8705 §3: a certificate-bound token is only good together with its certificate.
    const bound = c.cnf?.['x5t#S256'];
    if (bound !== undefined) {
      const how = 'send it as the bearer (gRPC authorization metadata, HTTP Authorization header, or subject_token of /oauth2/token) over mTLS with the certificate it was issued to';
      if (binding.certThumbprint === undefined) {
        throw mayflyError('ERR_UNAUTHENTICATED', binding.certificateError
          ? `this task token is bound to a client certificate, and the one presented did not verify (${binding.certificateError}): ${how}`
          : `this task token is bound to a client certificate (cnf.x5t#S256) and none was presented: ${how}`);
      }
      if (binding.certThumbprint !== bound) {
        throw mayflyError('ERR_UNAUTHENTICATED', `the client certificate presented is not the one this task token is bound to (cnf.x5t#S256): ${how}`);
      }
    }
    return {
      kind: c.sub.startsWith('spiffe://') ? 'spiffe' : 'oidc',
      id: c.sub,
      method: 'task-token',
      claims: { tid: c.tid, jti: c.jti, aud: c.aud, scope: c.scope },
      credentialExpiresAt: c.exp * 1000,
      // Tokens this holder gets stay bound to the same certificate.
      ...(bound !== undefined ? { certThumbprint: bound } : {}),
    };
  }

  /** RFC 7009: revokes one token. Callers: the task owner, or the holder of that token. */
  async revokeToken(ctx: CallContext, p: { token?: unknown; tokenId?: unknown }): Promise<boolean> {
    return this.audited('token.revoke', ctx, async (rec) => {
      let jti: string;
      if (typeof p.token === 'string' && p.token) {
        rec.token_sha256 = tokenHash(p.token);
        const r = await this.check(p.token);
        // RFC 7009 §2.2: invalid or unknown tokens are not an error.
        if (!r.claims) return false;
        jti = r.claims.jti;
      } else {
        jti = v.opaqueId('token_id', p.tokenId);
      }
      rec.jti = jti;
      const record = await this.d.store.getToken(jti);
      if (!record) return false;
      const task = await this.d.store.getTask(record.taskId);
      rec.task_id = record.taskId;
      if (!task || !this.access.mayActOnTask(ctx.identity, task)) {
        throw mayflyError('ERR_NOT_TASK_OWNER', 'only the owner of the task may revoke its tokens');
      }
      const ev = await this.d.store.revokeToken(jti, 'revoked by owner', this.d.clock.now());
      if (ev) {
        this.d.events.publish(ev);
        this.d.observer?.revocation?.('token');
      }
      return ev !== null;
    });
  }

  /** Admin: ends every live task of an identity (compromised workload, offboarded repository). */
  async revokeIdentity(ctx: CallContext, p: { identity?: unknown; reason?: unknown }): Promise<TaskEndResult> {
    return this.audited('identity.revoke', ctx, async (rec) => {
      const target = v.text('identity', p.identity, 2048);
      const reason = v.text('reason', p.reason, 256, false) || 'identity revoked by admin';
      rec.target = target;
      this.access.require('admin', ctx.identity);
      const res = await this.d.store.endTasksOfOwner(target, reason, this.d.clock.now());
      this.afterEnd(res, 'revoked');
      rec.revoked_tokens = res.revokedTokens;
      rec.task_ids = res.taskIds;
      return res;
    });
  }

  /** Ends tasks whose deadline or lease passed. Called periodically by the wiring. */
  async expireDue(limit = 500): Promise<number> {
    const now = this.d.clock.now();
    const due = await this.d.store.dueTasks(now, limit);
    let n = 0;
    for (const t of due) {
      const leaseLapsed = t.leaseExpiresAt !== null && t.leaseExpiresAt <= now && t.expiresAt > now;
      const reason = leaseLapsed ? 'lease lapsed' : 'deadline reached';
      const res = await this.d.store.endTask(t.id, leaseLapsed ? 'revoked' : 'expired', reason, now);
      if (res.taskIds.length === 0) continue;
      n += res.taskIds.length;
      this.afterEnd(res, leaseLapsed ? 'lease_lapsed' : 'expired');
      this.d.audit.write({ event: 'task.expire', outcome: 'success', task_id: t.id, task_ids: res.taskIds, reason, revoked_tokens: res.revokedTokens });
    }
    return n;
  }

  /** Records misuse reported by a relying party (revoked token presented, cnf mismatch, replay). */
  reportMisuse(ctx: CallContext, p: { kind?: unknown; tokenId?: unknown; detail?: unknown }): void {
    const kind = p.kind === 'cnf_mismatch' || p.kind === 'replay' ? p.kind : 'revoked_use';
    const rec: AuditEntry = { event: 'token.misuse', outcome: 'denied', request_id: ctx.requestId, identity: auditIdentity(ctx.identity), reported_by: ctx.identity.id };
    if (!this.access.allows('misuse.report', ctx.identity)) {
      // A refused report raises no alert, but the attempt is on record.
      rec.code = 'ERR_NOT_AUTHORIZED_CLIENT';
      rec.reason = 'misuse reports are accepted from feed subscribers (relying parties) only';
      this.d.audit.write(rec);
      this.access.require('misuse.report', ctx.identity);
    }
    rec.jti = typeof p.tokenId === 'string' ? p.tokenId.slice(0, 64) : undefined;
    rec.detail = typeof p.detail === 'string' ? p.detail.slice(0, 256) : undefined;
    this.misuse(ctx, rec, kind);
    this.d.audit.write(rec);
  }

  /** Recent issuance counts for an identity (policy context; rate limiting in Rego). */
  recentIssuance(id: string): { last_minute: number; last_hour: number } {
    return this.issuance.counts(id, this.d.clock.now());
  }

  private misuse(_ctx: CallContext, rec: AuditEntry, kind: 'revoked_use' | 'cnf_mismatch' | 'replay'): void {
    rec.misuse = kind;
    rec.alert = true;
    this.d.observer?.misuse?.(kind);
    if (rec.event !== 'token.misuse') {
      this.d.audit.write({ event: 'token.misuse', outcome: 'denied', misuse: kind, alert: true, jti: rec.jti, task_id: rec.task_id, token_sha256: rec.token_sha256, request_id: rec.request_id, identity: rec.identity });
    }
  }

  private afterEnd(res: TaskEndResult, reason: string): void {
    if (res.event) this.d.events.publish(res.event);
    if (res.taskIds.length > 0) {
      this.d.observer?.taskEnded?.(reason, res.taskIds.length);
      this.d.observer?.revocation?.('task');
    }
  }

  private async decide(ctx: CallContext, rec: AuditEntry, request: DecisionInput['request'], task: TaskRecord | undefined, now: number): Promise<Decision> {
    const id = policyIdentity(ctx.identity, task);
    const input: DecisionInput = {
      version: DECISION_CONTRACT_VERSION,
      identity: {
        kind: id.kind,
        id: id.id,
        ...(id.trustDomain ? { trust_domain: id.trustDomain } : {}),
        ...(id.issuer ? { issuer: id.issuer } : {}),
        method: id.method,
        claims: id.claims,
        ...(id.certThumbprint ? { cert_sha256: id.certThumbprint } : {}),
      },
      request,
      // Members in canonical (sorted) order, so the input digest need not sort them.
      ...(task
        ? {
            task: {
              age_seconds: Math.max(0, Math.floor((now - task.createdAt) / 1000)),
              deadline: Math.floor(task.expiresAt / 1000),
              depth: task.depth,
              id: task.id,
              owner: task.owner,
              parent_chain: task.parentId ? [task.rootId, ...(task.rootId !== task.parentId ? [task.parentId] : [])] : [],
              purpose: task.purpose,
              tokens_issued: task.tokensIssued,
            },
          }
        : {}),
      context: {
        broker_id: this.d.config.brokerId,
        ...(ctx.peer ? { peer: ctx.peer } : {}),
        recent_issuance: this.issuance.counts(id.id, now),
        time: Math.floor(now / 1000),
      },
    };
    const decision = await this.d.policy.decide(input);
    // Members in canonical (sorted) order, as the audit record writes them.
    rec.decision = {
      allow: decision.allow,
      engine: decision.engine,
      input_sha256: decisionInputDigest(input),
      latency_us: decision.latencyUs,
      reasons: decision.reasons,
      revision: decision.revision,
      source: decision.source,
    };
    this.d.observer?.policyEval?.(decision.engine, decision.allow, decision.latencyUs);
    if (!decision.allow) {
      const why = decision.reasons.length > 0 ? decision.reasons.join('; ') : 'no rule allows this request';
      throw mayflyError('ERR_POLICY_DENIED', `denied by policy: ${why}`);
    }
    if (request.scopes.length > 0 && decision.scopes && decision.scopes.length === 0) {
      throw mayflyError('ERR_SCOPE_DENIED', `none of the requested scopes (${request.scopes.join(' ')}) is allowed`);
    }
    return decision;
  }

  /** Loads a task and checks the caller may act on it; unknown and foreign tasks are audited denials. */
  private async loadOwnedTask(identity: Identity, taskId: string, rec: AuditEntry): Promise<TaskRecord> {
    const task = await this.d.store.getTask(taskId);
    if (!task) throw mayflyError('ERR_TASK_NOT_FOUND', 'no such task');
    if (!this.access.mayActOnTask(identity, task)) {
      rec.task_owner = task.owner;
      throw mayflyError('ERR_NOT_TASK_OWNER', 'this task belongs to another identity');
    }
    return task;
  }

  private assertActive(task: TaskRecord, now: number): void {
    if (task.status !== 'active') {
      throw mayflyError('ERR_TASK_NOT_ACTIVE', `task is ${task.status}${task.endReason ? ` (${task.endReason})` : ''}`);
    }
    if (task.expiresAt <= now) throw mayflyError('ERR_TASK_NOT_ACTIVE', 'task deadline has passed');
    if (task.leaseExpiresAt !== null && task.leaseExpiresAt <= now) throw mayflyError('ERR_TASK_NOT_ACTIVE', 'task lease has lapsed');
  }

  /**
   * 18 bytes, URL-safe (24 characters): a 48-bit millisecond timestamp, then
   * 96 random bits. Ids made close in time share a prefix, so the store's
   * primary-key B-trees take new rows in a few hot pages instead of one
   * random page per row (a commit writes every page it touched). The time is
   * no secret: iat and the task's creation time say the same.
   */
  private newId(now: number): string {
    const b = this.d.random.bytes(18);
    b.writeUIntBE(Math.min(Math.max(0, Math.floor(now)), 2 ** 48 - 1), 0, 6);
    return b.toString('base64url');
  }

  private audited<T>(event: AuditEntry['event'], ctx: CallContext, fn: (rec: AuditEntry) => Promise<T>): Promise<T> {
    return audited(this.d.audit, this.d.observer, event, ctx, fn);
  }
}

/** The identity as the task keeps it: what was verified, never a task token's reconstruction. */
function ownerIdentityOf(id: Identity): TaskOwnerIdentity | undefined {
  if (id.method === 'task-token') return undefined;
  return {
    kind: id.kind,
    id: id.id,
    method: id.method,
    claims: id.claims,
    ...(id.trustDomain ? { trustDomain: id.trustDomain } : {}),
    ...(id.issuer ? { issuer: id.issuer } : {}),
    ...(id.source ? { source: id.source } : {}),
  };
}

/**
 * Who policy judges. A task-token holder speaks for the identity that began
 * the task: policy sees that identity's kind, issuer or trust domain and
 * claims, as the task recorded them (a task token carries none of them), with
 * method task-token so rules can still tell. Narrowing itself (same audience,
 * subset of scopes) is enforced before policy, in authorize.ts.
 */
function policyIdentity(id: Identity, task: TaskRecord | undefined): Identity {
  if (id.method !== 'task-token' || task?.ownerIdentity === undefined || task.ownerIdentity.id !== id.id) return id;
  const o = task.ownerIdentity;
  return {
    ...id,
    kind: o.kind,
    claims: o.claims,
    ...(o.trustDomain ? { trustDomain: o.trustDomain } : {}),
    ...(o.issuer ? { issuer: o.issuer } : {}),
    ...(o.source ? { source: o.source } : {}),
  };
}
