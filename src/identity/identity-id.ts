/**
 * The two spellings of an identity id (the `sub` of Mayfly tokens and the
 * owner of tasks): a SPIFFE ID naming a workload, or `<issuer>#<sub>` for an
 * OIDC identity. Used wherever an operator types one in (revoke-identity).
 */
import { mayflyError } from '../core/errors.js';
import { parseSpiffeId } from './spiffe-id.js';

/** Returns `id` unchanged if it is a workload SPIFFE ID or `<https issuer>#<sub>`; throws ERR_INVALID_ARGUMENT otherwise. */
export function parseIdentityId(id: string): string {
  if (id.startsWith('spiffe://')) {
    const parsed = parseSpiffeId(id);
    if (parsed.path === '') throw mayflyError('ERR_SPIFFE_ID_INVALID', `${id} names a trust domain, not a workload: add the workload path, e.g. spiffe://${parsed.trustDomain}/ci/runner`);
    return id;
  }
  const hash = id.indexOf('#');
  if (hash > 0 && hash < id.length - 1) {
    const issuer = id.slice(0, hash);
    let url: URL | undefined;
    try {
      url = new URL(issuer);
    } catch {
      url = undefined;
    }
    if (url && url.protocol === 'https:' && !url.search && !url.hash) return id;
  }
  throw mayflyError('ERR_INVALID_ARGUMENT', `${JSON.stringify(id)} is not an identity: use a SPIFFE ID (spiffe://example.org/ci/runner) or <issuer>#<sub> (https://token.actions.githubusercontent.com#repo:acme/api:ref:refs/heads/main)`);
}
