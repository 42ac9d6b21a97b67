/**
 * Presets for well-known OIDC workload issuers, as data the config layer
 * turns into OidcIssuerConfig entries. Claim names are the ones the issuers
 * really emit; docs/federation.md shows rules that use them.
 */
import { mayflyError } from '../core/errors.js';
import type { JwsAlg } from '../tokens/jws.js';
import type { OidcIssuerConfig } from './oidc.js';

/** One claim an issuer emits, with how to reach it in the payload. */
export interface PresetClaim {
  /** Name used in rules (`claims: { <name>: ... }`). */
  name: string;
  /** Path into the payload; differs from [name] only for nested claims such as `kubernetes.io`. */
  path: readonly string[];
  description: string;
}

/** A well-known issuer. */
export interface OidcPreset {
  id: 'github-actions' | 'gitlab-ci' | 'kubernetes';
  title: string;
  /** Fixed issuer URL; undefined when the operator must supply it. */
  issuer: string | undefined;
  /** What to put in `issuer` when it is configurable or differs per deployment. */
  issuerHint: string;
  allowedAlgs: JwsAlg[];
  /** Format of `sub`, with placeholders. */
  subjectFormats: string[];
  /** Claims worth matching in policy rules. */
  claims: PresetClaim[];
  /** How the workload asks its platform for a token with Mayfly's audience. */
  audienceHint: string;
}

const flat = (name: string, description: string): PresetClaim => ({ name, path: [name], description });

/** GitHub Actions OIDC (https://docs.github.com/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect). */
export const GITHUB_ACTIONS: OidcPreset = {
  id: 'github-actions',
  title: 'GitHub Actions',
  issuer: 'https://token.actions.githubusercontent.com',
  issuerHint: 'https://token.actions.githubusercontent.com (GitHub Enterprise Cloud with a unique issuer: https://token.actions.githubusercontent.com/<enterprise-slug>)',
  allowedAlgs: ['RS256'],
  subjectFormats: [
    'repo:<owner>/<repo>:ref:<ref>',
    'repo:<owner>/<repo>:environment:<environment>',
    'repo:<owner>/<repo>:pull_request',
  ],
  claims: [
    flat('repository', 'owner/name of the repository running the workflow, e.g. acme/api'),
    flat('repository_id', 'numeric repository id (survives renames)'),
    flat('repository_owner', 'organisation or user that owns the repository'),
    flat('repository_owner_id', 'numeric owner id (survives renames; prefer it over repository_owner)'),
    flat('repository_visibility', 'public, private or internal'),
    flat('ref', 'git ref that triggered the run, e.g. refs/heads/main or refs/tags/v1.2.3'),
    flat('ref_type', 'branch or tag'),
    flat('ref_protected', 'whether branch protection applies to the ref'),
    flat('sha', 'commit SHA'),
    flat('environment', 'deployment environment of the job; absent when the job has none'),
    flat('workflow', 'workflow name'),
    flat('workflow_ref', '<owner>/<repo>/<path>@<ref> of the calling workflow'),
    flat('job_workflow_ref', '<owner>/<repo>/<path>@<ref> of the workflow file defining the job (the reusable workflow when one is used)'),
    flat('event_name', 'triggering event, e.g. push, pull_request, workflow_dispatch'),
    flat('actor', 'user that triggered the run'),
    flat('actor_id', 'numeric id of actor'),
    flat('run_id', 'workflow run id'),
    flat('run_attempt', 'attempt number of the run'),
    flat('runner_environment', 'github-hosted or self-hosted'),
  ],
  audienceHint: 'request the token with audience "mayfly" (actions/core getIDToken("mayfly"), or &audience=mayfly on ACTIONS_ID_TOKEN_REQUEST_URL); the job needs `permissions: id-token: write`',
};

/** GitLab CI/CD ID tokens (https://docs.gitlab.com/ci/secrets/id_token_authentication/). */
export const GITLAB_CI: OidcPreset = {
  id: 'gitlab-ci',
  title: 'GitLab CI/CD',
  issuer: 'https://gitlab.com',
  issuerHint: 'https://gitlab.com, or the external URL of a self-managed instance (e.g. https://gitlab.example.com)',
  allowedAlgs: ['RS256'],
  subjectFormats: ['project_path:<group>/<project>:ref_type:<branch|tag>:ref:<ref>'],
  claims: [
    flat('project_path', 'full path of the project, e.g. acme/platform/api'),
    flat('project_id', 'numeric project id (survives renames)'),
    flat('namespace_path', 'group or user namespace, e.g. acme/platform'),
    flat('namespace_id', 'numeric namespace id'),
    flat('ref', 'branch or tag name, without refs/heads/ (e.g. main)'),
    flat('ref_type', 'branch or tag'),
    flat('ref_path', 'full ref, e.g. refs/heads/main'),
    flat('ref_protected', '"true" when the ref is protected (a string)'),
    flat('environment', 'environment of the job, when it deploys'),
    flat('environment_protected', '"true" when the environment is protected'),
    flat('deployment_tier', 'production, staging, testing, development or other'),
    flat('pipeline_source', 'push, web, schedule, merge_request_event, ...'),
    flat('pipeline_id', 'pipeline id'),
    flat('job_id', 'job id'),
    flat('user_login', 'username that started the job'),
    flat('ci_config_ref_uri', 'ref path of the top-level pipeline definition'),
    flat('runner_environment', 'gitlab-hosted or self-hosted'),
    flat('sha', 'commit SHA'),
  ],
  audienceHint: 'declare the token in .gitlab-ci.yml: `id_tokens: { MAYFLY_ID_TOKEN: { aud: mayfly } }`',
};

/** Kubernetes projected service-account tokens (https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/). */
export const KUBERNETES: OidcPreset = {
  id: 'kubernetes',
  title: 'Kubernetes service-account tokens',
  issuer: undefined,
  issuerHint: 'the API server --service-account-issuer value (kubectl get --raw /.well-known/openid-configuration shows it), e.g. https://kubernetes.default.svc.cluster.local or https://oidc.eks.<region>.amazonaws.com/id/<id>',
  allowedAlgs: ['RS256', 'ES256'],
  subjectFormats: ['system:serviceaccount:<namespace>:<serviceaccount>'],
  claims: [
    { name: 'kubernetes.io.namespace', path: ['kubernetes.io', 'namespace'], description: 'namespace of the pod' },
    { name: 'kubernetes.io.serviceaccount.name', path: ['kubernetes.io', 'serviceaccount', 'name'], description: 'service account name' },
    { name: 'kubernetes.io.serviceaccount.uid', path: ['kubernetes.io', 'serviceaccount', 'uid'], description: 'service account uid (changes when it is recreated)' },
    { name: 'kubernetes.io.pod.name', path: ['kubernetes.io', 'pod', 'name'], description: 'pod name (pod-bound tokens)' },
    { name: 'kubernetes.io.pod.uid', path: ['kubernetes.io', 'pod', 'uid'], description: 'pod uid (pod-bound tokens)' },
    { name: 'kubernetes.io.node.name', path: ['kubernetes.io', 'node', 'name'], description: 'node name (Kubernetes 1.30+ with node-bound claims)' },
  ],
  audienceHint: 'mount a projected serviceAccountToken volume with `audience: mayfly` and a short expirationSeconds (minimum 600)',
};

/** All presets by id. */
export const OIDC_PRESETS: Readonly<Record<OidcPreset['id'], OidcPreset>> = {
  'github-actions': GITHUB_ACTIONS,
  'gitlab-ci': GITLAB_CI,
  kubernetes: KUBERNETES,
};

/** Reads a claim by preset path (e.g. ['kubernetes.io', 'namespace']); undefined when any step is missing. */
export function readClaimPath(claims: Record<string, unknown>, path: readonly string[]): unknown {
  let cur: unknown = claims;
  for (const step of path) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur)) return undefined;
    cur = (cur as Record<string, unknown>)[step];
  }
  return cur;
}

/** Builds an OidcIssuerConfig from a preset; `issuer` is required for presets without a fixed issuer. */
export function issuerConfigFromPreset(
  presetId: OidcPreset['id'],
  options: Omit<OidcIssuerConfig, 'issuer' | 'name'> & { name?: string; issuer?: string },
): OidcIssuerConfig {
  const preset = OIDC_PRESETS[presetId];
  if (!preset) throw mayflyError('ERR_CONFIG_INVALID', `unknown OIDC preset ${JSON.stringify(presetId)}`, { field: 'preset' });
  const issuer = options.issuer ?? preset.issuer;
  if (!issuer) throw mayflyError('ERR_CONFIG_INVALID', `preset ${presetId} needs an issuer: ${preset.issuerHint}`, { field: 'issuer' });
  return { ...options, name: options.name ?? presetId, issuer, allowedAlgs: options.allowedAlgs ?? preset.allowedAlgs };
}
