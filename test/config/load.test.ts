import { mkdtempSync, writeFileSync } from 'node:fs';
import { keyStoreKind } from '../../src/cli/keystore.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { MayflyError } from '../../src/core/errors.js';

const base = { issuer: 'https://broker.test', tls: { cert_file: 'c.pem', key_file: 'k.pem' } };

function message(doc: unknown): string {
  try {
    parseConfig(doc, 'mayfly.yaml');
  } catch (e) {
    expect((e as MayflyError).code).toBe('ERR_CONFIG_INVALID');
    return (e as MayflyError).message;
  }
  throw new Error('config was accepted');
}

describe('config validation', () => {
  it('fills every default from a minimal config', () => {
    const c = parseConfig(base);
    expect(c.listen).toEqual({ grpc: '127.0.0.1:8443', http: '127.0.0.1:8444' });
    expect(c.tokens).toEqual({ default_ttl_seconds: 300, max_ttl_seconds: 3600 });
    expect(c.tasks.default_ttl_seconds).toBe(900);
    expect(c.store.backend).toBe('sqlite');
    expect(c.keys).toMatchObject({ alg: 'ES256', kek_env: 'MAYFLY_KEK' });
    // keys.store follows the store: file beside SQLite, the shared table on PostgreSQL.
    expect(keyStoreKind(c)).toBe('file');
    expect(keyStoreKind(parseConfig({ ...base, store: { backend: 'postgres', url: 'postgres://m@db:5432/mayfly' } }))).toBe('postgres');
    expect(c.policy.engine).toBe('builtin');
    expect(c.feed.max_buffered_bytes).toBe(1024 * 1024);
  });

  it.each([
    ['a missing issuer', { tls: base.tls }, /issuer/],
    ['a bad listen address', { ...base, listen: { grpc: 'localhost' } }, /listen\.grpc: must be HOST:PORT/],
    ['an unknown option', { ...base, tokenz: {} }, /\(root\): unknown option\(s\) tokenz/],
    ['an unknown nested option', { ...base, tokens: { ttl: 5 } }, /tokens: unknown option\(s\) ttl/],
    ['default TTL above max', { ...base, tokens: { default_ttl_seconds: 7200, max_ttl_seconds: 3600 } }, /tokens\.default_ttl_seconds: default_ttl_seconds must not exceed max_ttl_seconds/],
    ['pre-publication shorter than the JWKS cache', { ...base, keys: { pre_publish_seconds: 60, jwks_max_age_seconds: 300 } }, /keys\.pre_publish_seconds: .*JWKS pollers/],
    ['an HMAC algorithm for an OIDC issuer', { ...base, oidc: { issuers: [{ name: 'gh', issuer: 'https://x', audiences: ['m'], algorithms: ['HS256'] }] } }, /oidc\.issuers\.0\.algorithms\.0/],
    ['a trust domain without a bundle', { ...base, trust_domains: { 'example.org': {} } }, /trust_domains\.example\.org: a trust domain needs bundle_file or bundle_endpoint/],
    ['an uppercase trust domain', { ...base, trust_domains: { 'Example.org': { bundle_file: 'ca.pem' } } }, /trust_domains\.Example\.org/],
    ['a plain-http bundle endpoint', { ...base, trust_domains: { 'example.org': { bundle_endpoint: { url: 'http://x/bundle' } } } }, /bundle endpoint must be https/],
    ['a feed buffer bound below 64 KiB', { ...base, feed: { max_buffered_bytes: 1000 } }, /feed\.max_buffered_bytes: .*65536/],
    ['a fractional feed buffer bound', { ...base, feed: { max_buffered_bytes: 100_000.5 } }, /feed\.max_buffered_bytes/],
    ['OPA without its block', { ...base, policy: { engine: 'opa' } }, /policy\.opa: engine "opa" needs an "opa" block/],
  ])('rejects %s, naming the field', (_name, doc, pattern) => {
    expect(message(doc)).toMatch(pattern);
  });

  it('reports YAML syntax errors with the file name', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mayfly-cfg-'));
    const path = join(dir, 'mayfly.yaml');
    writeFileSync(path, 'issuer: [unclosed\n');
    expect(() => loadConfig(path)).toThrow(/is not valid YAML/);
    expect(() => loadConfig(join(dir, 'missing.yaml'))).toThrow(/config file .*missing\.yaml does not exist/);
  });
});
