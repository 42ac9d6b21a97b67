/**
 * Semantics every Store adapter shares, kept in one place so the memory and
 * SQLite adapters cannot drift (both also pass test/contracts/store.contract.ts).
 */
import { mayflyError } from '../core/errors.js';
import type { TaskEndResult, TaskStatus } from '../core/types.js';

/** What ending an already-ended task returns: nothing changed, no event. */
export const EMPTY_END: Readonly<TaskEndResult> = Object.freeze({ taskIds: [], revokedTokens: 0, event: null });

/**
 * endReason recorded on a descendant ended by the cascade. Descendants are
 * always `revoked`: they did not complete or expire themselves, an ancestor
 * ended under them.
 */
export function descendantEndReason(ancestorStatus: Exclude<TaskStatus, 'active'>, reason: string): string {
  return `ancestor task ${ancestorStatus}: ${reason}`;
}

/**
 * Refuses an active child whose parent is not active (`status` as read in the
 * same atomic step as the insert; undefined: no such task). See Store.createTask.
 */
export function assertParentActive(parentId: string, status: string | undefined): void {
  if (status === undefined) throw mayflyError('ERR_TASK_NOT_FOUND', `parent task ${parentId} not found`, { taskId: parentId });
  if (status !== 'active') throw mayflyError('ERR_TASK_NOT_ACTIVE', `parent task ${parentId} is ${status}: no child task can begin under it`, { taskId: parentId });
}
