import { describe, expect, it } from 'vitest';
import { isMayflyError, MayflyError, mayflyError, verdictError } from '../../src/core/errors.js';

describe('verdictError', () => {
  it('is a MayflyError with its code, message and details, and no stack frames', () => {
    const e = verdictError('ERR_TOKEN_REVOKED', 'token has been revoked', { jti: 'j1' });
    expect(e).toBeInstanceOf(MayflyError);
    expect(isMayflyError(e, 'ERR_TOKEN_REVOKED')).toBe(true);
    expect(e.message).toBe('token has been revoked');
    expect(e.details).toEqual({ jti: 'j1' });
    expect(e.kind).toBe(mayflyError('ERR_TOKEN_REVOKED', 'x').kind);
    expect(e.stack).toBe('MayflyError: token has been revoked');
  });

  it('leaves the stack trace limit as it found it, so other errors keep their frames', () => {
    const before = Error.stackTraceLimit;
    verdictError('ERR_TOKEN_REVOKED', 'revoked');
    expect(Error.stackTraceLimit).toBe(before);
    expect(mayflyError('ERR_INTERNAL', 'boom').stack?.split('\n').length).toBeGreaterThan(1);
  });
});
