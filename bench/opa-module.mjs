// The bench's OPA policy module, built with the tests' OPA-ABI builder
// (test/helpers/opa-wasm/render.mjs): no `opa` binary, the real SDK.
export { buildOpaWasm, renderOpaWat } from '../test/helpers/opa-wasm/render.mjs';

/**
 * The bench policy: what the dev rules allow the demo workload, as OPA would
 * answer it. issue_token for audience demo-api -> allow with scopes [read]
 * (the request must ask for read); begin_task -> allow; anything else -> no
 * decision (the decision point turns that into a deny). Markers are matched
 * against the JSON the SDK serializes the DecisionInput to.
 */
export const BENCH_POLICY_SPEC = {
  rules: [
    { when: '"action":"begin_task"', then: { result: { allow: true, reasons: ['bench: begin_task allowed'] } } },
    { when: '"audience":"demo-api"', then: { result: { allow: true, reasons: ['bench: demo-api'], scopes: ['read'] } } },
  ],
};
