/**
 * Conformance suite every Store adapter passes (memory, SQLite, later
 * PostgreSQL). Each test gets a fresh store from `factory`.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../src/core/ports.js';
import type { TaskRecord, TokenRecord } from '../../src/core/types.js';

const T0 = Date.UTC(2026, 0, 1);
const MIN = 60_000;

/** A task record with sensible defaults. */
export function task(id: string, over: Partial<TaskRecord> = {}): TaskRecord {
  return {
    id,
    owner: 'spiffe://example.org/agent',
    ownerKind: 'spiffe',
    purpose: `purpose of ${id}`,
    labels: {},
    createdAt: T0,
    expiresAt: T0 + 60 * MIN,
    leaseExpiresAt: null,
    status: 'active',
    endedAt: null,
    endReason: null,
    parentId: null,
    rootId: id,
    depth: 0,
    scopeCeiling: null,
    actors: [],
    tokensIssued: 0,
    ...over,
  };
}

/** A child task of `parent`. */
export function child(id: string, parent: TaskRecord, over: Partial<TaskRecord> = {}): TaskRecord {
  return task(id, { parentId: parent.id, rootId: parent.rootId, depth: parent.depth + 1, createdAt: parent.createdAt + 1, actors: [...parent.actors, parent.owner], ...over });
}

/** A token record with sensible defaults. */
export function token(jti: string, taskId: string, over: Partial<TokenRecord> = {}): TokenRecord {
  return {
    jti,
    taskId,
    kid: 'kid-a',
    sub: 'spiffe://example.org/agent',
    audience: 'https://api.example.com',
    scopes: ['read'],
    issuedAt: T0,
    expiresAt: T0 + 5 * MIN,
    certThumbprint: null,
    singleUse: false,
    tool: null,
    argsDigest: null,
    revokedAt: null,
    ...over,
  };
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
}

/** Registers the Store conformance suite for one adapter. */
/** What a backend's test file gives the suite beyond a fresh store. */
export interface StoreContractHooks {
  /**
   * Marks one task completed without touching its descendants, by writing the
   * backend's storage directly: the state a store written before createTask
   * refused children of ended parents may still hold. endTask must reach the
   * active tasks below it.
   */
  endOnlyThis(store: Store, id: string, at: number): Promise<void>;
}

export function runStoreContract(name: string, factory: () => Store | Promise<Store>, hooks: StoreContractHooks): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;
    let closed = false;
    beforeEach(async () => {
      store = await factory();
      closed = false;
    });
    afterEach(async () => {
      if (!closed) await store.close();
    });

    /** root → (c1 → g1, c2); plus an unrelated task. */
    async function tree() {
      const root = task('root');
      const c1 = child('c1', root);
      const c2 = child('c2', root, { createdAt: T0 + 2 });
      const g1 = child('g1', c1);
      const other = task('other');
      for (const t of [root, c1, c2, g1, other]) await store.createTask(t);
      for (const t of [root, c1, c2, g1, other]) await store.recordToken(token(`jti-${t.id}`, t.id));
      return { root, c1, c2, g1, other };
    }

    describe('tasks', () => {
      it('round-trips a task exactly, JSON columns included', async () => {
        const t = task('t1', {
          ownerKind: 'oidc',
          owner: 'https://issuer.example#user-1',
          purpose: 'résumé ✓ "quoted" \\ back\nslash',
          labels: { env: 'prod', 'a.b/c': '', emoji: '🦋', __proto__x: 'y', nested: '{"not":"json"}' },
          leaseExpiresAt: T0 + 5 * MIN,
          scopeCeiling: ['read', 'write:repo/*'],
          actors: ['spiffe://example.org/a', 'https://issuer.example#u'],
          rootId: 'r',
          parentId: 'p',
          depth: 2,
          tokensIssued: 3,
          ownerIdentity: {
            kind: 'oidc',
            id: 'https://issuer.example#user-1',
            method: 'oidc',
            issuer: 'https://issuer.example',
            source: 'gha',
            claims: { sub: 'user-1', repository: 'acme/api', nested: { deep: [1, 'two', null, true] }, 'odd key': 'é' },
          },
        });
        // A live child needs its parent, active (see below).
        await store.createTask(task('p', { rootId: 'r', depth: 1 }));
        await store.createTask(t);
        expect(await store.getTask('t1')).toEqual(t);
        // Kept with its children's reads too, and a task without one reads back without one.
        expect((await store.getTask('t1'))!.ownerIdentity!.claims['nested']).toEqual({ deep: [1, 'two', null, true] });
        await store.createTask(task('t2', { scopeCeiling: [] }));
        expect((await store.getTask('t2'))!.scopeCeiling).toEqual([]);
        await store.createTask(task('t3'));
        expect((await store.getTask('t3'))!.scopeCeiling).toBeNull();
        expect((await store.getTask('t3'))!.labels).toEqual({});
        expect((await store.getTask('t3'))!.ownerIdentity).toBeUndefined();
      });

      it('keeps a label literally named __proto__ as data', async () => {
        const labels = JSON.parse('{"__proto__":"x","k":"v"}') as Record<string, string>;
        await store.createTask(task('t', { labels }));
        const got = (await store.getTask('t'))!;
        expect(Object.keys(got.labels).sort()).toEqual(['__proto__', 'k']);
        expect(Object.getOwnPropertyDescriptor(got.labels, '__proto__')?.value).toBe('x');
      });

      it('returns null for an unknown task and rejects a duplicate id', async () => {
        expect(await store.getTask('nope')).toBeNull();
        await store.createTask(task('t'));
        expect(await codeOf(store.createTask(task('t')))).toBe('ERR_STORE');
      });

      it('hands out copies: mutating a result does not change the store', async () => {
        await store.createTask(task('t', { labels: { a: '1' }, actors: ['x'] }));
        const got = (await store.getTask('t'))!;
        got.labels['a'] = '2';
        got.actors.push('y');
        got.status = 'revoked';
        expect(await store.getTask('t')).toEqual(task('t', { labels: { a: '1' }, actors: ['x'] }));
      });

      it('lists all descendants (3 levels), ordered by depth, excluding the task itself', async () => {
        const { root, c1, c2, g1 } = await tree();
        expect((await store.getDescendants('root')).map((t) => t.id)).toEqual(['c1', 'c2', 'g1']);
        expect((await store.getDescendants('c1')).map((t) => t.id)).toEqual(['g1']);
        expect(await store.getDescendants('g1')).toEqual([]);
        expect(await store.getDescendants('unknown')).toEqual([]);
        const all = await store.getDescendants(root.id);
        expect(all[0]).toEqual({ ...c1, tokensIssued: 1 });
        expect(all[1]!.id).toBe(c2.id);
        expect(all[2]!.depth).toBe(g1.depth);
      });

      it('refuses an active child under an ended or unknown parent, changing nothing; keeps an ended child record as given', async () => {
        const root = task('root');
        await store.createTask(root);
        await store.endTask('root', 'completed', 'done', T0 + 1);
        const refused = await codeOf(store.createTask(child('late', root)));
        expect(refused).toBe('ERR_TASK_NOT_ACTIVE');
        expect(await store.getTask('late')).toBeNull();
        expect(await store.getDescendants('root')).toEqual([]);
        expect(await codeOf(store.createTask(child('orphan', task('no-such-parent'))))).toBe('ERR_TASK_NOT_FOUND');
        expect(await store.getTask('orphan')).toBeNull();
        // Only a live child is refused: a record of one that has ended is no live child of an ended parent.
        const ended = child('ended', root, { status: 'revoked', endedAt: T0 + 1, endReason: 'x' });
        await store.createTask(ended);
        expect(await store.getTask('ended')).toEqual(ended);
        // Below an active parent, children and grandchildren are created as before.
        const live = task('live');
        await store.createTask(live);
        await store.createTask(child('kid', live));
        await store.createTask(child('grandkid', child('kid', live)));
        expect((await store.getDescendants('live')).map((t) => t.id)).toEqual(['kid', 'grandkid']);
      });

      it('renews the lease of an active task only', async () => {
        await store.createTask(task('t', { leaseExpiresAt: T0 + MIN }));
        expect(await store.renewLease('t', T0 + 2 * MIN)).toBe(true);
        expect((await store.getTask('t'))!.leaseExpiresAt).toBe(T0 + 2 * MIN);
        await store.endTask('t', 'completed', 'done', T0 + MIN);
        expect(await store.renewLease('t', T0 + 3 * MIN)).toBe(false);
        expect((await store.getTask('t'))!.leaseExpiresAt).toBe(T0 + 2 * MIN);
        expect(await store.renewLease('unknown', T0)).toBe(false);
      });
    });

    describe('tokens', () => {
      it('round-trips a token exactly and counts it on its task', async () => {
        await store.createTask(task('t'));
        const full = token('j1', 't', { scopes: ['a', 'b:c/*', 'ü'], certThumbprint: 'x5t-abc', singleUse: true, tool: 'git.push', argsDigest: 'sha256:00ff' });
        const bare = token('j2', 't', { scopes: [] });
        await store.recordToken(full);
        await store.recordToken(bare);
        expect(await store.getToken('j1')).toEqual(full);
        expect(await store.getToken('j2')).toEqual(bare);
        expect(await store.getToken('nope')).toBeNull();
        expect((await store.getTask('t'))!.tokensIssued).toBe(2);
      });

      it('refuses tokens of unknown or ended tasks and duplicate jtis, changing nothing', async () => {
        expect(await codeOf(store.recordToken(token('j', 'unknown')))).toBe('ERR_TASK_NOT_FOUND');
        await store.createTask(task('t'));
        await store.recordToken(token('j1', 't'));
        expect(await codeOf(store.recordToken(token('j1', 't')))).toBe('ERR_STORE');
        expect((await store.getTask('t'))!.tokensIssued).toBe(1);
        await store.endTask('t', 'completed', 'done', T0 + 1);
        expect(await codeOf(store.recordToken(token('j2', 't')))).toBe('ERR_TASK_NOT_ACTIVE');
        expect(await store.getToken('j2')).toBeNull();
        expect((await store.getTask('t'))!.tokensIssued).toBe(1);
      });

      it('revokes one token once, with an event covering until it expires', async () => {
        await store.createTask(task('t'));
        await store.recordToken(token('j1', 't', { expiresAt: T0 + 7 * MIN }));
        const ev = await store.revokeToken('j1', 'leaked', T0 + MIN);
        expect(ev).toEqual({ cursor: ev!.cursor, kind: 'token', at: T0 + MIN, taskIds: [], jtis: ['j1'], kid: null, reason: 'leaked', coversUntil: T0 + 7 * MIN });
        expect(ev!.cursor).toBeGreaterThan(0);
        expect((await store.getToken('j1'))!.revokedAt).toBe(T0 + MIN);
        expect(await store.revokeToken('j1', 'again', T0 + 2 * MIN)).toBeNull();
        expect((await store.getToken('j1'))!.revokedAt).toBe(T0 + MIN);
        expect(await store.revokeToken('unknown', 'x', T0)).toBeNull();
        expect(await store.eventsSince(0, 10)).toEqual([ev]);
      });

      it('revokes every unexpired token of a kid in one kind-key event', async () => {
        await store.createTask(task('t'));
        await store.recordToken(token('a2', 't', { kid: 'A', expiresAt: T0 + 9 * MIN }));
        await store.recordToken(token('a1', 't', { kid: 'A', expiresAt: T0 + 5 * MIN }));
        await store.recordToken(token('a-old', 't', { kid: 'A', expiresAt: T0 + MIN }));
        await store.recordToken(token('a-rev', 't', { kid: 'A', expiresAt: T0 + 5 * MIN }));
        await store.recordToken(token('b1', 't', { kid: 'B', expiresAt: T0 + 5 * MIN }));
        await store.revokeToken('a-rev', 'x', T0);
        const now = T0 + 2 * MIN;
        const ev = await store.revokeTokensByKid('A', 'key compromised', now);
        expect(ev).toMatchObject({ kind: 'key', kid: 'A', at: now, taskIds: [], jtis: ['a1', 'a2'], reason: 'key compromised', coversUntil: T0 + 9 * MIN });
        expect((await store.getToken('a1'))!.revokedAt).toBe(now);
        expect((await store.getToken('a2'))!.revokedAt).toBe(now);
        expect((await store.getToken('a-old'))!.revokedAt).toBeNull();
        expect((await store.getToken('a-rev'))!.revokedAt).toBe(T0);
        expect((await store.getToken('b1'))!.revokedAt).toBeNull();
        const empty = await store.revokeTokensByKid('C', 'unused key', now);
        expect(empty).toMatchObject({ kind: 'key', kid: 'C', jtis: [], coversUntil: now });
        expect(empty.cursor).toBeGreaterThan(ev.cursor);
      });

      it('finishes an unfinished key revocation once: revokes and announces, then does nothing', async () => {
        await store.createTask(task('t'));
        await store.recordToken(token('a1', 't', { kid: 'A', expiresAt: T0 + 5 * MIN }));
        await store.recordToken(token('a2', 't', { kid: 'A', expiresAt: T0 + 9 * MIN }));
        await store.recordToken(token('a-old', 't', { kid: 'A', expiresAt: T0 + MIN }));
        await store.recordToken(token('b1', 't', { kid: 'B', expiresAt: T0 + 5 * MIN }));
        const now = T0 + 2 * MIN;
        const ev = await store.finishKeyRevocation('A', 'signing key revoked', now);
        expect(ev).toMatchObject({ kind: 'key', kid: 'A', at: now, taskIds: [], jtis: ['a1', 'a2'], reason: 'signing key revoked', coversUntil: T0 + 9 * MIN });
        expect(ev!.cursor).toBeGreaterThan(0);
        expect((await store.getToken('a1'))!.revokedAt).toBe(now);
        expect((await store.getToken('a2'))!.revokedAt).toBe(now);
        expect((await store.getToken('a-old'))!.revokedAt).toBeNull();
        expect((await store.getToken('b1'))!.revokedAt).toBeNull();
        // Finished: later calls (every lifecycle tick) change nothing and announce nothing.
        expect(await store.finishKeyRevocation('A', 'signing key revoked', now + 1)).toBeNull();
        expect(await store.finishKeyRevocation('A', 'signing key revoked', T0 + 6 * MIN)).toBeNull();
        expect(await store.eventsSince(0, 10)).toEqual([ev]);
        // An explicit revokeTokensByKid (the command run again) still revokes and announces.
        const again = await store.revokeTokensByKid('A', 'signing key revoked', now + 2);
        expect(again).toMatchObject({ kind: 'key', kid: 'A', jtis: [] });
        expect(again.cursor).toBeGreaterThan(ev!.cursor);
      });

      it('finishes a key revocation whose tokens are revoked but never announced, and one with a token recorded after its event', async () => {
        await store.createTask(task('t'));
        await store.recordToken(token('a1', 't', { kid: 'A', expiresAt: T0 + 5 * MIN }));
        await store.revokeToken('a1', 'leaked', T0);
        const tokenEv = (await store.eventsSince(0, 10))[0]!;
        // A revoked live token and no kind-key event: verifiers holding the key were never told of the key.
        const ev = await store.finishKeyRevocation('A', 'signing key revoked', T0 + MIN);
        expect(ev).toMatchObject({ kind: 'key', kid: 'A', jtis: [], coversUntil: T0 + 5 * MIN });
        expect(await store.finishKeyRevocation('A', 'signing key revoked', T0 + MIN)).toBeNull();
        // A token recorded after the event (signed by a replica that had not seen the revocation yet).
        await store.recordToken(token('a-late', 't', { kid: 'A', expiresAt: T0 + 8 * MIN }));
        const late = await store.finishKeyRevocation('A', 'signing key revoked', T0 + 2 * MIN);
        expect(late).toMatchObject({ kind: 'key', kid: 'A', jtis: ['a-late'], coversUntil: T0 + 8 * MIN });
        expect((await store.getToken('a-late'))!.revokedAt).toBe(T0 + 2 * MIN);
        expect(await store.finishKeyRevocation('A', 'signing key revoked', T0 + 2 * MIN)).toBeNull();
        expect((await store.eventsSince(0, 10)).map((e) => e.cursor)).toEqual([tokenEv.cursor, ev!.cursor, late!.cursor]);
      });

      it('announces nothing for a kid without live tokens, also after gc removed its event', async () => {
        await store.createTask(task('t', { expiresAt: T0 + 10 * MIN }));
        expect(await store.finishKeyRevocation('none', 'signing key revoked', T0)).toBeNull();
        await store.recordToken(token('a-old', 't', { kid: 'A', expiresAt: T0 + MIN }));
        expect(await store.finishKeyRevocation('A', 'signing key revoked', T0 + MIN)).toBeNull();
        await store.recordToken(token('a1', 't', { kid: 'A', expiresAt: T0 + 5 * MIN }));
        const ev = await store.revokeTokensByKid('A', 'signing key revoked', T0 + 2 * MIN);
        expect(ev.jtis).toEqual(['a1']);
        expect(await store.finishKeyRevocation('A', 'signing key revoked', T0 + 3 * MIN)).toBeNull();
        // The event's coverage ends with a1; gc drops it (the task and its tokens outlive it). Nothing is live, so nothing is announced again.
        expect(await store.gc(T0 + 6 * MIN, 0)).toBe(1);
        expect(await store.eventsSince(0, 10)).toEqual([]);
        expect(await store.finishKeyRevocation('A', 'signing key revoked', T0 + 6 * MIN)).toBeNull();
        expect((await store.cursorRange()).latest).toBe(ev.cursor);
      });

      it('counts unexpired tokens per kid', async () => {
        await store.createTask(task('t'));
        await store.recordToken(token('a1', 't', { kid: 'A', expiresAt: T0 + 5 * MIN }));
        await store.recordToken(token('a2', 't', { kid: 'A', expiresAt: T0 + 9 * MIN }));
        await store.recordToken(token('b1', 't', { kid: 'B', expiresAt: T0 + MIN }));
        expect(await store.liveTokensByKid(T0)).toEqual({ A: 2, B: 1 });
        expect(await store.liveTokensByKid(T0 + MIN)).toEqual({ A: 2 });
        expect(await store.liveTokensByKid(T0 + 9 * MIN)).toEqual({});
      });
    });

    describe('ending tasks', () => {
      it('cascades over three levels: statuses, reasons, tokens, one event', async () => {
        const { other } = await tree();
        const now = T0 + MIN;
        const res = await store.endTask('root', 'completed', 'all done', now);
        expect(res.taskIds).toEqual(['root', 'c1', 'c2', 'g1']);
        expect(res.revokedTokens).toBe(4);
        expect(res.event).toEqual({ cursor: res.event!.cursor, kind: 'task', at: now, taskIds: ['root', 'c1', 'c2', 'g1'], jtis: [], kid: null, reason: 'all done', coversUntil: T0 + 60 * MIN });
        const root = (await store.getTask('root'))!;
        expect(root).toMatchObject({ status: 'completed', endedAt: now, endReason: 'all done' });
        for (const id of ['c1', 'c2', 'g1']) {
          const t = (await store.getTask(id))!;
          expect(t.status).toBe('revoked');
          expect(t.endedAt).toBe(now);
          expect(t.endReason).toContain('all done');
          expect((await store.getToken(`jti-${id}`))!.revokedAt).toBe(now);
        }
        expect((await store.getTask(other.id))!.status).toBe('active');
        expect((await store.getToken('jti-other'))!.revokedAt).toBeNull();
        expect(await store.eventsSince(0, 10)).toEqual([res.event]);
      });

      it('ends only the subtree of a middle task', async () => {
        await tree();
        const res = await store.endTask('c1', 'revoked', 'operator', T0 + MIN);
        expect(res.taskIds).toEqual(['c1', 'g1']);
        expect(res.revokedTokens).toBe(2);
        expect((await store.getTask('root'))!.status).toBe('active');
        expect((await store.getTask('c2'))!.status).toBe('active');
        // Ending the root later skips the already ended subtree.
        const res2 = await store.endTask('root', 'expired', 'deadline', T0 + 2 * MIN);
        expect(res2.taskIds).toEqual(['root', 'c2']);
        expect(res2.revokedTokens).toBe(2);
        expect((await store.getTask('root'))!.status).toBe('expired');
        expect((await store.getTask('g1'))!.endedAt).toBe(T0 + MIN);
      });

      it('is idempotent: ending an ended task changes nothing and appends no event', async () => {
        await tree();
        const first = await store.endTask('root', 'completed', 'done', T0 + MIN);
        const again = await store.endTask('root', 'revoked', 'again', T0 + 2 * MIN);
        expect(again).toEqual({ taskIds: [], revokedTokens: 0, event: null });
        expect(await store.endTask('g1', 'revoked', 'again', T0 + 2 * MIN)).toEqual({ taskIds: [], revokedTokens: 0, event: null });
        expect((await store.getTask('root'))!).toMatchObject({ status: 'completed', endedAt: T0 + MIN, endReason: 'done' });
        expect(await store.eventsSince(0, 10)).toEqual([first.event]);
      });

      it('throws ERR_TASK_NOT_FOUND for an unknown task', async () => {
        expect(await codeOf(store.endTask('nope', 'completed', 'x', T0))).toBe('ERR_TASK_NOT_FOUND');
      });

      it('reaches active descendants below an already ended task', async () => {
        const root = task('root');
        const mid = child('mid', root);
        const leaf = child('leaf', mid);
        for (const t of [root, mid, leaf]) await store.createTask(t);
        // createTask no longer lets this state arise (below); a store from before may hold it.
        await hooks.endOnlyThis(store, 'mid', T0);
        const res = await store.endTask('root', 'revoked', 'stop', T0 + MIN);
        expect(res.taskIds).toEqual(['root', 'leaf']);
        expect((await store.getTask('mid'))!.endReason).toBe('done');
      });

      it('sets coversUntil to the latest deadline among the ended tasks', async () => {
        const root = task('root', { expiresAt: T0 + 10 * MIN });
        const c = child('c', root, { expiresAt: T0 + 30 * MIN });
        const ended = child('e', root, { expiresAt: T0 + 90 * MIN, status: 'revoked', endedAt: T0 });
        for (const t of [root, c, ended]) await store.createTask(t);
        const res = await store.endTask('root', 'revoked', 'x', T0 + MIN);
        expect(res.event!.coversUntil).toBe(T0 + 30 * MIN);
      });

      it('ends every active task of an owner and their descendants in one event', async () => {
        const a1 = task('a1', { owner: 'alice' });
        const a2 = task('a2', { owner: 'alice', createdAt: T0 + 5, expiresAt: T0 + 120 * MIN });
        const aDone = task('a-done', { owner: 'alice', status: 'completed', endedAt: T0 });
        const bUnderA = child('b-under-a', a1, { owner: 'bob' });
        const b = task('b', { owner: 'bob' });
        for (const t of [a1, a2, aDone, bUnderA, b]) await store.createTask(t);
        await store.recordToken(token('ja1', 'a1'));
        await store.recordToken(token('jb-under', 'b-under-a'));
        await store.recordToken(token('jb', 'b'));
        const res = await store.endTasksOfOwner('alice', 'identity revoked', T0 + MIN);
        expect([...res.taskIds].sort()).toEqual(['a1', 'a2', 'b-under-a']);
        expect(res.revokedTokens).toBe(2);
        expect(res.event).toMatchObject({ kind: 'task', reason: 'identity revoked', coversUntil: T0 + 120 * MIN, jtis: [] });
        expect([...res.event!.taskIds].sort()).toEqual(['a1', 'a2', 'b-under-a']);
        expect((await store.getTask('a1'))!).toMatchObject({ status: 'revoked', endReason: 'identity revoked' });
        expect((await store.getTask('b-under-a'))!.status).toBe('revoked');
        expect((await store.getTask('b'))!.status).toBe('active');
        expect((await store.getToken('jb'))!.revokedAt).toBeNull();
        expect((await store.getTask('a-done'))!.status).toBe('completed');
        expect(await store.endTasksOfOwner('alice', 'again', T0 + 2 * MIN)).toEqual({ taskIds: [], revokedTokens: 0, event: null });
        expect(await store.endTasksOfOwner('nobody', 'x', T0)).toEqual({ taskIds: [], revokedTokens: 0, event: null });
        expect((await store.eventsSince(0, 10)).length).toBe(1);
      });
    });

    describe('revocation feed', () => {
      it('appends free-standing events with strictly increasing cursors and pages through them', async () => {
        expect(await store.cursorRange()).toEqual({ oldest: 0, latest: 0 });
        const evs = [];
        for (let i = 0; i < 5; i++) {
          evs.push(await store.appendEvent({ kind: 'keyset', at: T0 + i, taskIds: [], jtis: [], kid: `v${i}`, reason: 'rotation', coversUntil: T0 + 10 * MIN }));
        }
        for (let i = 1; i < evs.length; i++) expect(evs[i]!.cursor).toBeGreaterThan(evs[i - 1]!.cursor);
        expect(evs[0]).toEqual({ cursor: evs[0]!.cursor, kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'v0', reason: 'rotation', coversUntil: T0 + 10 * MIN });
        expect(await store.eventsSince(0, 100)).toEqual(evs);
        expect(await store.eventsSince(evs[1]!.cursor, 2)).toEqual([evs[2], evs[3]]);
        expect(await store.eventsSince(evs[4]!.cursor, 10)).toEqual([]);
        expect(await store.cursorRange()).toEqual({ oldest: 0, latest: evs[4]!.cursor });
      });

      it('never reuses a cursor, even after gc pruned the newest events', async () => {
        const a = await store.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'v1', reason: 'r', coversUntil: T0 + 60 * MIN });
        const b = await store.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'v2', reason: 'r', coversUntil: T0 + MIN });
        const c = await store.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'v3', reason: 'r', coversUntil: T0 + MIN });
        expect(await store.gc(T0 + 10 * MIN, 0)).toBe(2);
        expect(await store.eventsSince(0, 10)).toEqual([a]);
        expect(await store.cursorRange()).toEqual({ oldest: a.cursor, latest: c.cursor });
        const d = await store.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'v4', reason: 'r', coversUntil: T0 + MIN });
        expect(d.cursor).toBeGreaterThan(c.cursor);
        expect(b.cursor).toBeLessThan(c.cursor);
        // Prune everything: oldest moves past latest, and the next cursor is still fresh.
        expect(await store.gc(T0 + 120 * MIN, 0)).toBe(2);
        expect(await store.cursorRange()).toEqual({ oldest: d.cursor + 1, latest: d.cursor });
        const e = await store.appendEvent({ kind: 'keyset', at: T0, taskIds: [], jtis: [], kid: 'v5', reason: 'r', coversUntil: T0 + MIN });
        expect(e.cursor).toBe(d.cursor + 1);
        expect(await store.cursorRange()).toEqual({ oldest: e.cursor, latest: e.cursor });
      });

      it('snapshots everything revoked that still matters', async () => {
        const now = T0 + 10 * MIN;
        const live = task('live');
        const ended = task('ended', { expiresAt: T0 + 60 * MIN });
        const endedPast = task('ended-past', { expiresAt: T0 + 5 * MIN });
        for (const t of [live, ended, endedPast]) await store.createTask(t);
        await store.recordToken(token('j-live-rev', 'live', { expiresAt: T0 + 20 * MIN }));
        await store.recordToken(token('j-live-expired', 'live', { expiresAt: T0 + 5 * MIN }));
        await store.recordToken(token('j-live-ok', 'live', { expiresAt: T0 + 20 * MIN }));
        await store.recordToken(token('j-ended', 'ended', { expiresAt: T0 + 20 * MIN }));
        await store.revokeToken('j-live-rev', 'x', T0 + MIN);
        await store.revokeToken('j-live-expired', 'x', T0 + MIN);
        await store.endTask('ended', 'completed', 'done', T0 + MIN);
        await store.endTask('ended-past', 'completed', 'done', T0 + MIN);
        await store.revokeTokensByKid('dead-kid', 'compromised', T0 + 2 * MIN);
        const lastEv = await store.revokeTokensByKid('old-kid', 'compromised', T0 - 10 * MIN);
        const snap = await store.revocationSnapshot(now);
        expect(snap).toEqual({ cursor: lastEv.cursor, taskIds: ['ended'], jtis: ['j-live-rev'], kids: [] });
        // A key event with tokens still live keeps its kid in the snapshot.
        await store.recordToken(token('j-k', 'live', { kid: 'k2', expiresAt: T0 + 30 * MIN }));
        const kEv = await store.revokeTokensByKid('k2', 'compromised', now);
        const snap2 = await store.revocationSnapshot(now);
        expect(snap2).toEqual({ cursor: kEv.cursor, taskIds: ['ended'], jtis: ['j-k', 'j-live-rev'], kids: ['k2'] });
        expect((await store.revocationSnapshot(T0 + 60 * MIN)).taskIds).toEqual([]);
      });
    });

    describe('due tasks and gc', () => {
      it('finds active tasks past their deadline or lease, soonest first, bounded by limit', async () => {
        await store.createTask(task('deadline', { expiresAt: T0 + 5 * MIN }));
        await store.createTask(task('lease', { expiresAt: T0 + 60 * MIN, leaseExpiresAt: T0 + 3 * MIN }));
        await store.createTask(task('fine', { expiresAt: T0 + 60 * MIN, leaseExpiresAt: T0 + 30 * MIN }));
        await store.createTask(task('nolease', { expiresAt: T0 + 60 * MIN }));
        await store.createTask(task('ended-due', { expiresAt: T0 + MIN, status: 'expired', endedAt: T0 + MIN }));
        const now = T0 + 10 * MIN;
        expect((await store.dueTasks(now, 10)).map((t) => t.id)).toEqual(['lease', 'deadline']);
        expect((await store.dueTasks(now, 1)).map((t) => t.id)).toEqual(['lease']);
        expect(await store.dueTasks(T0, 10)).toEqual([]);
        // Exactly at the boundary counts as due.
        expect((await store.dueTasks(T0 + 3 * MIN, 10)).map((t) => t.id)).toEqual(['lease']);
        // Renewing the lease takes a task off the list.
        await store.renewLease('lease', T0 + 20 * MIN);
        expect((await store.dueTasks(now, 10)).map((t) => t.id)).toEqual(['deadline']);
        const full = (await store.dueTasks(now, 10))[0]!;
        expect(full).toEqual(task('deadline', { expiresAt: T0 + 5 * MIN }));
        await store.endTask('deadline', 'expired', 'deadline reached', now);
        expect(await store.dueTasks(now, 10)).toEqual([]);
      });

      it('deletes expired tasks (any status) with their tokens, and stale events, after the grace period', async () => {
        const old = task('old', { expiresAt: T0 + 10 * MIN });
        const oldChild = child('old-child', old, { expiresAt: T0 + 10 * MIN });
        const young = task('young', { expiresAt: T0 + 100 * MIN });
        const stale = task('stale-active', { expiresAt: T0 + 10 * MIN });
        for (const t of [old, oldChild, young, stale]) await store.createTask(t);
        await store.recordToken(token('j-old', 'old', { expiresAt: T0 + 5 * MIN }));
        await store.recordToken(token('j-old-child', 'old-child', { expiresAt: T0 + 5 * MIN }));
        await store.recordToken(token('j-young', 'young', { expiresAt: T0 + 5 * MIN }));
        const ev = await store.endTask('old', 'completed', 'done', T0 + MIN);
        const grace = 5 * MIN;
        // Within the grace period nothing goes.
        expect(await store.gc(T0 + 15 * MIN, grace)).toBe(0);
        expect(await store.getTask('old')).not.toBeNull();
        // old, old-child, stale-active, two tokens, one event.
        expect(await store.gc(T0 + 15 * MIN + 1, grace)).toBe(6);
        for (const id of ['old', 'old-child', 'stale-active']) expect(await store.getTask(id)).toBeNull();
        expect(await store.getToken('j-old')).toBeNull();
        expect(await store.getToken('j-young')).not.toBeNull();
        expect(await store.getTask('young')).not.toBeNull();
        expect(await store.eventsSince(0, 10)).toEqual([]);
        expect(await store.cursorRange()).toEqual({ oldest: ev.event!.cursor + 1, latest: ev.event!.cursor });
        expect(await store.gc(T0 + 15 * MIN + 1, grace)).toBe(0);
      });
    });

    describe('interleavings', () => {
      it('never leaves an unrevoked token on an ended task when recordToken races endTask', async () => {
        await tree();
        const results = await Promise.allSettled([
          store.recordToken(token('race-1', 'g1')),
          store.endTask('root', 'revoked', 'stop', T0 + MIN),
          store.recordToken(token('race-2', 'g1')),
          store.recordToken(token('race-3', 'c2')),
        ]);
        expect(results[1]!.status).toBe('fulfilled');
        for (const jti of ['race-1', 'race-2', 'race-3']) {
          const tok = await store.getToken(jti);
          if (tok) expect(tok.revokedAt).not.toBeNull();
        }
        expect(results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason.code === 'ERR_TASK_NOT_ACTIVE')).toBe(true);
      });

      it('never leaves an active child under an ended parent when createTask races endTask', async () => {
        for (const [i, endFirst] of [[0, false], [1, true], [2, false], [3, true]] as const) {
          const root = task(`root-${i}`);
          await store.createTask(root);
          const kid = child(`kid-${i}`, root);
          const create = () => store.createTask(kid);
          const end = () => store.endTask(root.id, 'completed', 'done', T0 + MIN);
          const [c, e] = endFirst ? (([x, y]) => [y, x])(await Promise.allSettled([end(), create()])) : await Promise.allSettled([create(), end()]);
          expect(e!.status).toBe('fulfilled');
          const got = await store.getTask(kid.id);
          if (c!.status === 'rejected') {
            expect((c as PromiseRejectedResult).reason.code).toBe('ERR_TASK_NOT_ACTIVE');
            expect(got).toBeNull();
          } else {
            // Created first: ended with its parent, in the same event.
            expect(got!.status).toBe('revoked');
            expect((e as PromiseFulfilledResult<{ taskIds: string[] }>).value.taskIds).toContain(kid.id);
          }
          expect((await store.getTask(root.id))!.status).toBe('completed');
        }
      });

      it('two concurrent ends produce exactly one event', async () => {
        await tree();
        const [a, b, c] = await Promise.all([
          store.endTask('root', 'completed', 'done', T0 + MIN),
          store.endTask('root', 'revoked', 'operator', T0 + MIN),
          store.endTask('c1', 'revoked', 'operator', T0 + MIN),
        ]);
        expect(a.taskIds).toEqual(['root', 'c1', 'c2', 'g1']);
        expect(b.event).toBeNull();
        expect(c.event).toBeNull();
        expect((await store.eventsSince(0, 10)).length).toBe(1);
      });

      it('finishes a key revocation once under concurrent calls, also racing revokeTokensByKid', async () => {
        await store.createTask(task('t'));
        for (let i = 0; i < 20; i++) await store.recordToken(token(`k${i}`, 't', { kid: 'K', expiresAt: T0 + 10 * MIN }));
        const now = T0 + MIN;
        const finished = await Promise.all(Array.from({ length: 6 }, () => store.finishKeyRevocation('K', 'signing key revoked', now)));
        const done = finished.filter((e) => e !== null);
        expect(done).toHaveLength(1);
        expect(done[0]!.jtis).toHaveLength(20);
        expect(await store.eventsSince(0, 100)).toHaveLength(1);
        // A fresh key: the command's own revocation and a lifecycle run at the same moment announce it once between them.
        for (let i = 0; i < 5; i++) await store.recordToken(token(`l${i}`, 't', { kid: 'L', expiresAt: T0 + 10 * MIN }));
        const [cmd, ...runs] = await Promise.all([store.revokeTokensByKid('L', 'signing key revoked', now), ...Array.from({ length: 4 }, () => store.finishKeyRevocation('L', 'signing key revoked', now))]);
        const lEvents = (await store.eventsSince(0, 100)).filter((e) => e.kid === 'L');
        const byRuns = runs.filter((e) => e !== null);
        // The command always announces; a run announces only if it came first, and then the command revoked nothing more.
        expect(lEvents).toHaveLength(1 + byRuns.length);
        expect(byRuns.length).toBeLessThanOrEqual(1);
        expect([...cmd.jtis, ...byRuns.flatMap((e) => e!.jtis)].sort()).toEqual(['l0', 'l1', 'l2', 'l3', 'l4']);
      });

      it('counts every token under concurrent recordToken calls', async () => {
        await store.createTask(task('t'));
        await Promise.all(Array.from({ length: 50 }, (_, i) => store.recordToken(token(`j${i}`, 't'))));
        expect((await store.getTask('t'))!.tokensIssued).toBe(50);
        const evs = await Promise.all(Array.from({ length: 20 }, (_, i) => store.revokeToken(`j${i}`, 'x', T0 + 1)));
        const cursors = evs.map((e) => e!.cursor);
        expect(new Set(cursors).size).toBe(20);
        expect([...cursors].sort((x, y) => x - y)).toEqual(cursors);
      });
    });

    describe('audit head', () => {
      it('keeps one head per broker, replaced by the next put, untouched by gc', async () => {
        expect(await store.getAuditHead('broker-a')).toBeNull();
        const h1 = { brokerId: 'broker-a', seq: 7, hash: 'a'.repeat(64), at: T0 };
        await store.putAuditHead(h1);
        await store.putAuditHead({ brokerId: 'broker-b', seq: 3, hash: 'b'.repeat(64), at: T0 + 1 });
        expect(await store.getAuditHead('broker-a')).toEqual(h1);
        const h2 = { brokerId: 'broker-a', seq: 12, hash: 'c'.repeat(64), at: T0 + 2 };
        await store.putAuditHead(h2);
        await store.gc(T0 + 365 * 24 * 60 * MIN, 0);
        expect(await store.getAuditHead('broker-a')).toEqual(h2);
        expect(await store.getAuditHead('broker-b')).toEqual({ brokerId: 'broker-b', seq: 3, hash: 'b'.repeat(64), at: T0 + 1 });
        // A copy: changing the result changes nothing stored.
        const got = (await store.getAuditHead('broker-a'))!;
        got.seq = 1;
        expect((await store.getAuditHead('broker-a'))!.seq).toBe(12);
      });
    });

    it('fails with ERR_STORE after close', async () => {
      await store.createTask(task('t'));
      await store.close();
      closed = true;
      expect(await codeOf(store.getTask('t'))).toBe('ERR_STORE');
      expect(await codeOf(store.createTask(task('u')))).toBe('ERR_STORE');
      expect(await codeOf(store.endTask('t', 'completed', 'x', T0))).toBe('ERR_STORE');
      expect(await codeOf(store.putAuditHead({ brokerId: 'b', seq: 1, hash: 'a'.repeat(64), at: T0 }))).toBe('ERR_STORE');
      expect(await codeOf(store.getAuditHead('b'))).toBe('ERR_STORE');
    });
  });
}
