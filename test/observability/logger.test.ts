import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { childLogger, createLogger, requestId } from '../../src/observability/logger.js';

const JWS = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCIsImV4cCI6MX0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU';

function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  return { lines, destination, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('createLogger', () => {
  it('writes JSON lines with level label, ISO time and service', () => {
    const c = capture();
    createLogger({ destination: c.destination }).info({ task_id: 't1' }, 'task begun');
    expect(c.records()[0]).toMatchObject({ level: 'info', service: 'mayfly', task_id: 't1', msg: 'task begun' });
    expect(c.records()[0]!.time).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it('respects the level', () => {
    const c = capture();
    const log = createLogger({ level: 'warn', destination: c.destination });
    log.info('hidden');
    log.warn('shown');
    expect(c.records().map((r) => r.msg)).toEqual(['shown']);
  });

  it.each([
    ['token', { token: JWS }],
    ['subject_token', { subject_token: JWS }],
    ['nested authorization', { req: { headers: { authorization: `Bearer ${JWS}` } } }],
    ['one level down', { grant: { access_token: JWS } }],
    ['private key', { key: { private_key: 'PEM...', kty: 'EC' } }],
    ['JWK private part', { jwk: { kty: 'EC', d: 'private-scalar' } }],
  ])('redacts %s', (_name, fields) => {
    const c = capture();
    createLogger({ destination: c.destination }).info(fields, 'x');
    expect(c.lines[0]).not.toContain(JWS);
    expect(c.lines[0]).not.toContain('PEM...');
    expect(c.lines[0]).not.toContain('private-scalar');
    expect(c.lines[0]).toContain('[REDACTED]');
  });

  it('scrubs a JWS from messages and unexpected top-level fields', () => {
    const c = capture();
    createLogger({ destination: c.destination }).warn({ presented: JWS }, `rejected ${JWS}`);
    expect(c.lines[0]).not.toContain(JWS);
    expect(c.records()[0]!.msg).toMatch(/^rejected sha256:[0-9a-f]{64}$/);
  });

  it('child loggers carry component and request id', () => {
    const c = capture();
    const id = requestId();
    childLogger(createLogger({ destination: c.destination }), 'issue', { request_id: id }).info('ok');
    expect(c.records()[0]).toMatchObject({ component: 'issue', request_id: id });
  });
});

describe('requestId', () => {
  it('is 96 random bits in base64url', () => {
    const ids = new Set(Array.from({ length: 100 }, () => requestId()));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(/^[A-Za-z0-9_-]{16}$/);
  });
  it('uses the injected randomness', () => {
    expect(requestId({ bytes: (n) => Buffer.alloc(n, 0xff) })).toBe('_'.repeat(16));
  });
});
