import { isMayflyError } from '../../src/core/errors.js';

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
