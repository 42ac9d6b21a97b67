import { describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { parseSpiffeId, parseTrustDomain, trustDomainId } from '../../src/identity/spiffe-id.js';

describe('parseSpiffeId: valid', () => {
  it.each([
    ['spiffe://example.org', 'example.org', ''],
    ['spiffe://example.org/workload', 'example.org', '/workload'],
    ['spiffe://k8s-west.example.com/ns/staging/sa/default', 'k8s-west.example.com', '/ns/staging/sa/default'],
    ['spiffe://a_b.c-d.1/Path.With-Mixed_Case/9', 'a_b.c-d.1', '/Path.With-Mixed_Case/9'],
    ['spiffe://td/...', 'td', '/...'],
  ])('%s', (input, td, path) => {
    const id = parseSpiffeId(input);
    expect(id.trustDomain).toBe(td);
    expect(id.path).toBe(path);
    expect(id.toString()).toBe(input);
    expect(`${id}`).toBe(input);
    expect(JSON.stringify({ id })).toBe(JSON.stringify({ id: input }));
  });

  it('accepts exactly 2048 bytes', () => {
    const prefix = 'spiffe://example.org/';
    const s = prefix + 'a'.repeat(2048 - prefix.length);
    expect(parseSpiffeId(s).toString()).toHaveLength(2048);
  });
});

describe('parseSpiffeId: invalid', () => {
  it.each([
    ['', /empty/],
    ['http://example.org/w', /scheme must be 'spiffe:\/\/'/],
    ['SPIFFE://example.org/w', /scheme must be lowercase/],
    ['spiffe:example.org/w', /scheme/],
    ['spiffe://', /trust domain is missing/],
    ['spiffe:///w', /trust domain is missing/],
    ['spiffe://Example.org/w', /uppercase is not allowed/],
    ['spiffe://exa mple.org/w', /trust domain/],
    ['spiffe://example.org:8443/w', /port is not allowed/],
    ['spiffe://example.org:/w', /port is not allowed/],
    ['spiffe://user@example.org/w', /userinfo is not allowed/],
    ['spiffe://user:pw@example.org/w', /userinfo is not allowed/],
    ['spiffe://example.org/w?x=1', /query is not allowed/],
    ['spiffe://example.org/w#frag', /fragment is not allowed/],
    ['spiffe://example.org/', /trailing \//],
    ['spiffe://example.org/a/', /trailing \//],
    ['spiffe://example.org//a', /empty segment/],
    ['spiffe://example.org/a/../b', /dot segment "\.\."/],
    ['spiffe://example.org/./b', /dot segment "\."/],
    ['spiffe://example.org/..', /dot segment/],
    ['spiffe://example.org/a%2Fb', /percent-encoding is not allowed/],
    ['spiffe://example.org/a b', /path segment/],
    ['spiffe://example.org/caf\u00e9', /path segment/],
    ['spiffe://example.org/' + 'a'.repeat(2048), /longer than 2048 bytes/],
    ['spiffe://' + 'a'.repeat(256) + '/w', /exceeds 255 bytes/],
  ])('%j', (input, message) => {
    let err: unknown;
    try {
      parseSpiffeId(input);
    } catch (e) {
      err = e;
    }
    expect(isMayflyError(err, 'ERR_SPIFFE_ID_INVALID')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });

  it('rejects non-strings', () => {
    expect(() => parseSpiffeId(undefined as unknown as string)).toThrow(/empty/);
  });
});

describe('trust domains', () => {
  it('parseTrustDomain accepts a name and trustDomainId builds the root ID', () => {
    expect(parseTrustDomain('example.org')).toBe('example.org');
    expect(trustDomainId('example.org').toString()).toBe('spiffe://example.org');
  });
  it.each(['', 'Example.org', 'a/b', 'a:1'])('parseTrustDomain rejects %j', (td) => {
    expect(() => parseTrustDomain(td)).toThrow(expect.objectContaining({ code: 'ERR_SPIFFE_ID_INVALID' }));
  });
});
