/**
 * Task-scoped credentials for workloads: begin a task, get cached tokens for
 * it, keep its lease alive, and always complete it.
 *
 *   const out = await withTask({ client, purpose: 'nightly report' }, async (task) => {
 *     const token = await task.token('demo-api', { scopes: ['read'] });
 *     return callApi(token);
 *   }); // the task is completed here, so every token of it is revoked
 *
 * Or with explicit resource management (TypeScript 5.2+ `await using`):
 *
 *   await using task = await beginTask({ client, purpose: 'nightly report' });
 *
 * The handle is disposable under `Symbol.asyncDispose ?? Symbol.for('Symbol.asyncDispose')`.
 * Node >= 20.4 defines Symbol.asyncDispose; on an older runtime, install the
 * polyfill key once before any `await using` runs (TypeScript's helper looks
 * up Symbol.asyncDispose and throws if it is missing):
 *
 *   (Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for('Symbol.asyncDispose');
 *
 * Type-checking `await using` needs TypeScript >= 5.2 and either
 * "esnext.disposable" in `lib` or @types/node >= 20 (which declares it).
 */
import { isMayflyError, MayflyError } from '../core/errors.js';
import type { BrokerClient } from './broker-client.js';

/** The symbol `await using` calls: native where present, the well-known polyfill key otherwise. */
export const asyncDisposeSymbol: symbol = (Symbol as { asyncDispose?: symbol }).asyncDispose ?? Symbol.for('Symbol.asyncDispose');

/** The BrokerClient calls a task handle makes (a BrokerClient fits). */
export type TaskBrokerClient = Pick<BrokerClient, 'beginTask' | 'issueToken' | 'completeTask' | 'renewTask'>;

export interface TaskOptions {
  client: TaskBrokerClient;
  purpose: string;
  /** Task lifetime; 0/undefined = the broker's default. */
  ttlSeconds?: number;
  labels?: Record<string, string>;
  /** Lease: the broker ends the task if it is not renewed in time (default 30 s; 0 = no lease). Renewed every lease/3. */
  leaseSeconds?: number;
  /** Delegation: begin this task as a child of that task. */
  parentTaskId?: string;
  /** Delegation: the scopes the child may use (a subset of the parent's). */
  scopes?: string[];
  /** Delegation: the actor (sub-agent or tool) the child task is for. */
  actor?: string;
  /** Where completion and heartbeat failures go (default console.warn). */
  onError?: (message: string, err: MayflyError) => void;
}

export interface TokenOptions {
  scopes?: string[];
  ttlSeconds?: number;
  /** Agents: the tool the token is for, and a digest of the call's arguments. Such tokens are not cached. */
  tool?: string;
  argsDigest?: string;
  /** A single-use token; never cached. */
  singleUse?: boolean;
}

export interface IssuedTaskToken {
  token: string;
  tokenId: string;
  /** Unix ms. */
  expiresAt: number;
  scopes: string[];
}

export interface ChildTaskOptions {
  purpose: string;
  scopes?: string[];
  actor?: string;
  ttlSeconds?: number;
  labels?: Record<string, string>;
  /** Default: the parent's lease. */
  leaseSeconds?: number;
}

export interface TaskHandle {
  readonly id: string;
  readonly parentTaskId: string | null;
  readonly depth: number;
  /** Unix ms. */
  readonly expiresAt: number;
  /** True once completed (or found ended by the broker). */
  readonly ended: boolean;
  /** A bearer token for `audience`; cached per (audience, scopes) and refreshed when less than 20% of its lifetime is left. */
  token(audience: string, options?: TokenOptions): Promise<string>;
  /** Like token() but with the token's metadata. */
  issue(audience: string, options?: TokenOptions): Promise<IssuedTaskToken>;
  /** Begins a delegated child task (BeginTask with parent_task_id); completed with this task at the latest. */
  child(options: ChildTaskOptions): Promise<TaskHandle>;
  /** Completes the task (and its open children); every token of it is revoked. Idempotent. */
  complete(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const REFRESH_FRACTION = 0.2;

interface CacheEntry {
  value: IssuedTaskToken;
  issuedAt: number;
}

class Task implements TaskHandle {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<IssuedTaskToken>>();
  private readonly children = new Set<Task>();
  private heartbeat: NodeJS.Timeout | null = null;
  private completion: Promise<void> | null = null;
  private _ended = false;

  constructor(
    private readonly o: TaskOptions,
    readonly id: string,
    readonly parentTaskId: string | null,
    readonly depth: number,
    readonly expiresAt: number,
    private readonly leaseSeconds: number,
    private readonly onEnded: (() => void) | null,
  ) {
    if (leaseSeconds > 0) {
      this.heartbeat = setInterval(() => void this.renew(), Math.max(100, Math.floor((leaseSeconds * 1000) / 3)));
      this.heartbeat.unref();
    }
  }

  get ended(): boolean {
    return this._ended;
  }

  async token(audience: string, options: TokenOptions = {}): Promise<string> {
    return (await this.issue(audience, options)).token;
  }

  async issue(audience: string, options: TokenOptions = {}): Promise<IssuedTaskToken> {
    if (this._ended) throw new MayflyError('ERR_TASK_NOT_ACTIVE', 'task is already completed');
    const cacheable = !options.singleUse && !options.tool && !options.argsDigest;
    if (!cacheable) return this.mint(audience, options);
    const key = `${audience}\u0000${[...new Set(options.scopes ?? [])].sort().join(' ')}\u0000${options.ttlSeconds ?? 0}`;
    const hit = this.cache.get(key);
    const now = Date.now();
    if (hit && hit.value.expiresAt - now > (hit.value.expiresAt - hit.issuedAt) * REFRESH_FRACTION) return hit.value;
    const running = this.inflight.get(key);
    if (running) return running;
    const p = this.mint(audience, options)
      .then((value) => {
        this.cache.set(key, { value, issuedAt: now });
        return value;
      })
      .finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p;
  }

  private async mint(audience: string, options: TokenOptions): Promise<IssuedTaskToken> {
    const res = await this.o.client.issueToken({
      taskId: this.id,
      audience,
      scopes: options.scopes ?? [],
      ttlSeconds: options.ttlSeconds ?? 0,
      tool: options.tool ?? '',
      argsDigest: options.argsDigest ?? '',
      singleUse: options.singleUse === true,
    });
    return { token: res.token, tokenId: res.tokenId, expiresAt: Number(res.expiresAt) * 1000, scopes: res.scopes };
  }

  async child(options: ChildTaskOptions): Promise<TaskHandle> {
    if (this._ended) throw new MayflyError('ERR_TASK_NOT_ACTIVE', 'task is already completed');
    const child = await begin(
      {
        client: this.o.client,
        purpose: options.purpose,
        ...(options.ttlSeconds !== undefined ? { ttlSeconds: options.ttlSeconds } : {}),
        ...(options.labels ? { labels: options.labels } : {}),
        leaseSeconds: options.leaseSeconds ?? this.leaseSeconds,
        parentTaskId: this.id,
        ...(options.scopes ? { scopes: options.scopes } : {}),
        ...(options.actor ? { actor: options.actor } : {}),
        ...(this.o.onError ? { onError: this.o.onError } : {}),
      },
      (c) => () => this.children.delete(c),
    );
    this.children.add(child);
    return child;
  }

  complete(): Promise<void> {
    // A failed completion (broker unreachable) can be retried; a successful one is remembered.
    this.completion ??= this.doComplete().catch((e: unknown) => {
      this.completion = null;
      throw e;
    });
    return this.completion;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.complete();
  }

  private async doComplete(): Promise<void> {
    this.stop();
    // Children first, so each one's end is recorded as its own completion; the parent's end cascades anyway.
    await Promise.all([...this.children].map((c) => c.complete().catch(() => undefined)));
    try {
      await this.o.client.completeTask(this.id);
    } catch (e) {
      const err = MayflyError.from(e);
      // Already ended (lease lapsed, parent completed, revoked): the goal is reached.
      if (!isMayflyError(err, 'ERR_TASK_NOT_ACTIVE')) throw err;
    }
  }

  /** Marks the task ended locally and stops the heartbeat. */
  stop(): void {
    this._ended = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.cache.clear();
    this.onEnded?.();
  }

  private async renew(): Promise<void> {
    if (this._ended) return;
    try {
      await this.o.client.renewTask(this.id, this.leaseSeconds);
    } catch (e) {
      const err = MayflyError.from(e);
      if (isMayflyError(err, 'ERR_TASK_NOT_ACTIVE') || isMayflyError(err, 'ERR_TASK_NOT_FOUND')) {
        // The broker ended the task (deadline, revocation, parent completed): stop renewing.
        if (this.heartbeat) clearInterval(this.heartbeat);
        this.heartbeat = null;
        this._ended = true;
        this.cache.clear();
      }
      report(this.o, `lease renewal of task ${this.id} failed`, err);
    }
  }
}

function report(o: TaskOptions, message: string, err: MayflyError): void {
  if (o.onError) o.onError(message, err);
  else console.warn(`mayfly: ${message}: ${err.code}: ${err.message}`);
}

// Node < 20.4 has no Symbol.asyncDispose (the class key above was then "undefined"): key the method by the polyfill symbol too.
if (asyncDisposeSymbol !== (Symbol as { asyncDispose?: symbol }).asyncDispose) {
  Object.defineProperty(Task.prototype, asyncDisposeSymbol, { value: Task.prototype.complete, writable: true, configurable: true });
}

async function begin(options: TaskOptions, onEndedOf: ((t: Task) => () => void) | null): Promise<Task> {
  const lease = options.leaseSeconds ?? 30;
  const res = await options.client.beginTask({
    purpose: options.purpose,
    ttlSeconds: options.ttlSeconds ?? 0,
    labels: options.labels ?? {},
    parentTaskId: options.parentTaskId ?? '',
    scopes: options.scopes ?? [],
    leaseSeconds: lease,
    actor: options.actor ?? '',
  });
  let task!: Task;
  const onEnded = onEndedOf ? () => onEndedOf(task)() : null;
  task = new Task(options, res.taskId, res.parentTaskId || null, res.depth, Number(res.expiresAt) * 1000, lease, onEnded);
  return task;
}

/** Begins a task and returns its handle; complete it (or `await using` it). */
export async function beginTask(options: TaskOptions): Promise<TaskHandle> {
  return begin(options, null);
}

/**
 * Runs `fn` inside a task: begins it, renews its lease while `fn` runs,
 * completes it afterwards (also when `fn` throws). A completion failure is
 * reported through `onError` and never replaces an error thrown by `fn`;
 * when `fn` succeeded, the completion failure is reported and the result is
 * still returned (the task ends at its lease or deadline at the latest).
 */
export async function withTask<T>(options: TaskOptions, fn: (task: TaskHandle) => Promise<T>): Promise<T> {
  const task = await begin(options, null);
  try {
    return await fn(task);
  } finally {
    try {
      await task.complete();
    } catch (e) {
      report(options, `completing task ${task.id} failed`, MayflyError.from(e));
    }
  }
}
