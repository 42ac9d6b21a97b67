import { describe, expect, it } from 'vitest';
import { tokenResponse } from '../../src/transport/http/routes/token-exchange.js';

/** The body as the route wrote it before: the object handed to fastify's JSON serializer. */
function asObject(issued: Parameters<typeof tokenResponse>[0], expiresIn: number): string {
  return JSON.stringify({
    access_token: issued.token,
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: expiresIn,
    scope: issued.scopes.join(' '),
    mayfly_task_id: issued.taskId,
    ...(issued.taskExpiresAt ? { mayfly_task_expires_at: Math.floor(issued.taskExpiresAt / 1000) } : {}),
  });
}

describe('token exchange response body', () => {
  const base = { token: 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln', tokenId: 'j', expiresAt: 0, scopes: ['read', 'write'], taskId: 'AaI9Et9TYIfPV59qc_GfKSrA' };
  it.each([
    ['a task begun by the exchange', { ...base, taskExpiresAt: Date.UTC(2026, 11, 3, 18, 17, 56, 723) }, 300],
    ['an existing task (no task deadline)', base, 0],
    ['no scopes', { ...base, scopes: [] }, 59],
    ['strings JSON must escape', { ...base, token: 'a"b\\c\u2028', scopes: ['x"y'], taskId: 't\n' }, 1],
  ])('is byte for byte the serialized response object: %s', (_n, issued, expiresIn) => {
    const body = tokenResponse(issued, expiresIn);
    expect(body).toBe(asObject(issued, expiresIn));
    expect(JSON.parse(body)).toEqual(JSON.parse(asObject(issued, expiresIn)));
  });
});
