# Mayfly decision policy for OPA: the built-in rules engine (src/policy/builtin.ts)
# in Rego, reading the SAME rules document from data.rules. Point Mayfly at it:
#
#   policy:
#     engine: opa
#     opa:
#       policy_file: bundle.tar.gz
#       entrypoint: mayfly/authz/decision
#       data_file: policies/default-rules.yaml   # becomes data.rules
#
# Build (needs the opa binary):
#   opa build -t wasm -e mayfly/authz/decision policies/example
#
# NOT COMPILED HERE: Mayfly's build and CI have no opa binary or Go toolchain,
# so this file is neither compiled nor tested in this repository. What is
# tested is the decision contract it must honour (docs/policy/contract.md) and
# the OPA engine over modules that speak the OPA wasm ABI. Differences from
# the built-in engine: deny reasons do not name the closest rule, and the
# `sprintf` builtin comes from the JS SDK (glob.match and regex.match are
# native in OPA's wasm runtime).
package mayfly.authz

import rego.v1

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

all_actions := ["begin_task", "issue_token", "exchange", "delegate"]

# Patterns: exact, "glob:" ("*" one segment, "**" any, split on "/"), "re:" (anchored).
matches(p, v) if {
	not startswith(p, "glob:")
	not startswith(p, "re:")
	p == v
}

matches(p, v) if {
	startswith(p, "glob:")
	glob.match(substring(p, 5, -1), ["/"], v)
}

matches(p, v) if {
	startswith(p, "re:")
	regex.match(concat("", ["^(?:", substring(p, 3, -1), ")$"]), v)
}

as_list(x) := x if is_array(x)

as_list(x) := [x] if is_string(x)

any_match(ps, v) if {
	some p in as_list(ps)
	matches(p, v)
}

# Claim values compare as text, like String(value) in the built-in engine.
text(v) := v if is_string(v)

text(v) := sprintf("%v", [v]) if is_number(v)

text(v) := sprintf("%v", [v]) if is_boolean(v)

identity_ok(r) if {
	input.identity.kind == "spiffe"
	any_match(r.match.spiffe, input.identity.id)
}

identity_ok(r) if {
	input.identity.kind == "oidc"
	m := r.match.oidc
	issuer_ok(m)
	every c, ps in object.get(m, "claims", {}) {
		any_match(ps, text(input.identity.claims[c]))
	}
	every c in object.get(m, "present", []) {
		input.identity.claims[c] != null
	}
}

issuer_ok(m) if not m.issuer

issuer_ok(m) if any_match(m.issuer, input.identity.issuer)

action_ok(r) if {
	input.request.action in object.get(r, "actions", all_actions)
	depth_ok(r)
}

depth_ok(_) if input.request.action != "delegate"

depth_ok(r) if not r.max_delegation_depth

depth_ok(r) if object.get(input, ["task", "depth"], 0) + 1 <= r.max_delegation_depth

audience_ok(_) if {
	input.request.action == "begin_task"
	not input.request.audience
}

audience_ok(r) if {
	some p in object.get(r, "audiences", [])
	matches(p, input.request.audience)
}

# Rules are ordered: the first one that matches identity, action and audience decides.
granting := [i | some i, r in data.rules; identity_ok(r); action_ok(r); audience_ok(r)]

rule := data.rules[granting[0]]

requested := input.request.scopes

granted := [s |
	some i, s in requested
	s in object.get(rule, "scopes", [])
	not s in array.slice(requested, 0, i)
]

scopes_ok if count(granted) > 0

scopes_ok if {
	input.request.action == "begin_task"
	count(requested) == 0
}

# max_ttl_seconds is optional in a rule: without a cap the broker's own limits apply.
max_ttl := t if {
	input.request.action == "begin_task"
	t := object.get(rule, "max_task_ttl_seconds", object.get(rule, "max_ttl_seconds", null))
	t != null
}

max_ttl := rule.max_ttl_seconds if input.request.action != "begin_task"

default ttl_cap := {}

ttl_cap := {"max_ttl_seconds": max_ttl} if max_ttl

# An exchange without a task begins one: the rule's task cap bounds it, as it would a begin_task.
begins_task if {
	input.request.action == "exchange"
	not input.task
}

task_cap := t if {
	t := object.get(rule, "max_task_ttl_seconds", object.get(rule, "max_ttl_seconds", null))
	t != null
}

default task_ttl_cap := {}

task_ttl_cap := {"max_task_ttl_seconds": task_cap} if {
	begins_task
	task_cap
}

decision := object.union(object.union({
	"allow": true,
	"reasons": [concat("", ["rule \"", rule.name, "\" allows ", input.request.action])],
	"scopes": granted,
}, ttl_cap), task_ttl_cap) if {
	rule
	scopes_ok
}

decision := {
	"allow": false,
	"reasons": [concat("", ["rule \"", rule.name, "\": none of the requested scopes are allowed"])],
} if {
	rule
	not scopes_ok
}
