/**
 * The store section: backends, the PostgreSQL URL from the file or
 * MAYFLY_STORE_URL, field-naming errors, and a password that never shows.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { MayflyError } from '../../src/core/errors.js';
import { buildStore, resolveStoreUrl } from '../../src/cli/build-store.js';
import { redactPgUrl } from '../../src/store/postgres.js';

const base = { issuer: 'https://broker.test', tls: { cert_file: 'c.pem', key_file: 'k.pem' } };
const SECRET = 's3cr3t-pw';

function failure(fn: () => unknown): MayflyError {
  try {
    fn();
  } catch (e) {
    return e as MayflyError;
  }
  throw new Error('accepted');
}

describe('store config', () => {
  it('accepts a postgres backend with a URL and fills the pool defaults', () => {
    const c = parseConfig({ ...base, store: { backend: 'postgres', url: `postgres://mayfly:${SECRET}@db.internal:5432/mayfly` } });
    expect(c.store).toMatchObject({ backend: 'postgres', pool_max: 10, connect_timeout_ms: 5000, statement_timeout_ms: 10_000, migrate: true });
    expect(resolveStoreUrl(c, {})).toBe(`postgres://mayfly:${SECRET}@db.internal:5432/mayfly`);
  });

  it.each([
    ['not a URL', `user ${SECRET} at db`, /store\.url: must be a URL like postgres:\/\//],
    ['another scheme', `mysql://root:${SECRET}@db/mayfly`, /store\.url: must start with postgres:\/\/ or postgresql:\/\/ \(got mysql:\/\/\)/],
    ['no database', `postgres://mayfly:${SECRET}@db.internal:5432`, /store\.url: must name a database/],
  ])('rejects %s, naming the field and never the password', (_what, url, re) => {
    const e = failure(() => parseConfig({ ...base, store: { backend: 'postgres', url } }, 'mayfly.yaml'));
    expect(e.code).toBe('ERR_CONFIG_INVALID');
    expect(e.message).toMatch(re);
    expect(e.message).not.toContain(SECRET);
  });

  it('rejects an unknown store option and a pool outside its range', () => {
    expect(failure(() => parseConfig({ ...base, store: { backend: 'postgres', uri: 'x' } })).message).toMatch(/store: unknown option\(s\) uri/);
    expect(failure(() => parseConfig({ ...base, store: { pool_max: 1 } })).message).toMatch(/store\.pool_max/);
  });

  it('takes the URL from MAYFLY_STORE_URL, over store.url, and validates it by name', () => {
    const c = parseConfig({ ...base, store: { backend: 'postgres', url: 'postgres://file@db/one' } });
    expect(resolveStoreUrl(c, { MAYFLY_STORE_URL: 'postgres://env@db/two' })).toBe('postgres://env@db/two');
    const bad = failure(() => resolveStoreUrl(c, { MAYFLY_STORE_URL: `http://u:${SECRET}@db/x` }));
    expect(bad.code).toBe('ERR_CONFIG_INVALID');
    expect(bad.message).toMatch(/MAYFLY_STORE_URL is invalid:\n {2}store\.url \(from MAYFLY_STORE_URL\): must start with postgres:\/\//);
    expect(bad.message).not.toContain(SECRET);
  });

  it('requires a URL for the postgres backend', async () => {
    const c = parseConfig({ ...base, store: { backend: 'postgres' } });
    const e = await buildStore(c, '/nonexistent', { env: {} }).then(
      () => {
        throw new Error('built');
      },
      (err: MayflyError) => err,
    );
    expect(e.code).toBe('ERR_CONFIG_INVALID');
    expect(e.message).toBe('store.url: required when store.backend is postgres (or set MAYFLY_STORE_URL)');
  });

  it('redacts the password of a URL for logs', () => {
    expect(redactPgUrl(`postgres://mayfly:${SECRET}@db:5432/m?sslmode=require&password=${SECRET}`)).toBe('postgres://mayfly:***@db:5432/m?sslmode=require&password=***');
    expect(redactPgUrl('postgres://mayfly@db/m')).toBe('postgres://mayfly@db/m');
  });
});
