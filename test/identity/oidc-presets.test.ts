import { describe, expect, it } from 'vitest';
import { isMayflyError } from '../../src/core/errors.js';
import { issuerConfigFromPreset, OIDC_PRESETS, readClaimPath } from '../../src/identity/oidc-presets.js';
import { OidcVerifier } from '../../src/identity/oidc.js';

describe('OIDC presets', () => {
  it('GitHub Actions and GitLab CI have fixed issuers; Kubernetes needs one', () => {
    expect(OIDC_PRESETS['github-actions'].issuer).toBe('https://token.actions.githubusercontent.com');
    expect(OIDC_PRESETS['gitlab-ci'].issuer).toBe('https://gitlab.com');
    expect(OIDC_PRESETS.kubernetes.issuer).toBeUndefined();
  });

  it('documents the real claim names', () => {
    const names = (id: keyof typeof OIDC_PRESETS) => OIDC_PRESETS[id].claims.map((c) => c.name);
    expect(names('github-actions')).toEqual(expect.arrayContaining(['repository', 'repository_owner_id', 'ref', 'environment', 'job_workflow_ref']));
    expect(names('gitlab-ci')).toEqual(expect.arrayContaining(['project_path', 'ref_type', 'ref', 'environment']));
    expect(names('kubernetes')).toEqual(expect.arrayContaining(['kubernetes.io.namespace', 'kubernetes.io.serviceaccount.name']));
  });

  it('reads nested Kubernetes claims by path', () => {
    const claims = { sub: 'system:serviceaccount:payments:api', 'kubernetes.io': { namespace: 'payments', serviceaccount: { name: 'api', uid: 'u1' } } };
    const ns = OIDC_PRESETS.kubernetes.claims.find((c) => c.name === 'kubernetes.io.namespace')!;
    const sa = OIDC_PRESETS.kubernetes.claims.find((c) => c.name === 'kubernetes.io.serviceaccount.name')!;
    expect(readClaimPath(claims, ns.path)).toBe('payments');
    expect(readClaimPath(claims, sa.path)).toBe('api');
    expect(readClaimPath(claims, ['kubernetes.io', 'pod', 'name'])).toBeUndefined();
  });

  const cases: Array<[string, () => unknown, string]> = [
    ['github preset builds a valid verifier config', () => new OidcVerifier([issuerConfigFromPreset('github-actions', { name: 'github', audiences: ['mayfly'], jwks: { jwks: { keys: [] } } })]).close(), 'OK'],
    ['kubernetes without issuer', () => issuerConfigFromPreset('kubernetes', { audiences: ['mayfly'] }), 'ERR_CONFIG_INVALID'],
    ['kubernetes with issuer', () => issuerConfigFromPreset('kubernetes', { issuer: 'https://kubernetes.default.svc.cluster.local', audiences: ['mayfly'] }), 'OK'],
    ['unknown preset', () => issuerConfigFromPreset('jenkins' as never, { audiences: ['mayfly'] }), 'ERR_CONFIG_INVALID'],
  ];
  it.each(cases)('%s → %s', (_n, fn, code) => {
    let got = 'OK';
    try {
      fn();
    } catch (e) {
      if (!isMayflyError(e)) throw e;
      got = e.code;
    }
    expect(got).toBe(code);
  });

  it('preset defaults: name from the preset, algs from the preset', () => {
    expect(issuerConfigFromPreset('gitlab-ci', { audiences: ['mayfly'] })).toMatchObject({ name: 'gitlab-ci', issuer: 'https://gitlab.com', allowedAlgs: ['RS256'] });
  });
});
