/**
 * Semantics every Store adapter shares, kept in one place so the memory and
 * SQLite adapters cannot drift (both also pass test/contracts/store.contract.ts).
 */
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
