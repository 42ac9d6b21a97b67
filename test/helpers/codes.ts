import { isMayflyError } from '../../src/core/errors.js';

/** `code: message` of what a synchronous call throws, or `returned` when it returns. */
export function failureOf(fn: () => unknown, returned = 'accepted'): string {
  try {
    fn();
  } catch (e) {
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
  return returned;
}

/** The MayflyError code a promise rejects with, or 'OK'; anything else that is thrown is rethrown. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    if (isMayflyError(e)) return e.code;
    throw e;
  }
}
