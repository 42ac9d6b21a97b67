;; A tiny policy module that speaks the OPA WebAssembly ABI 1.x the way a
;; module from `opa build -t wasm` does, so the real @open-policy-agent/opa-wasm
;; SDK can load and evaluate it without an opa binary.
;; ABI reference: https://www.openpolicyagent.org/docs/wasm ("Imports",
;; "Exports", "Memory Buffer", "ABI 1.2 fast path opa_eval").
;;
;; Values. OPA's real heap holds typed values (opa_value*); the SDK treats
;; value addresses as opaque and only moves JSON in and out through
;; opa_json_parse / opa_json_dump, so here a value is an 8-byte header
;; {i32 ptr, i32 len} over its serialized JSON bytes. Static values (the
;; entrypoints and builtins maps, result sets) live in data segments.
;;
;; The builder (builder.ts) fills in the double-brace placeholders: ABI version
;; globals, the data segments, the heap start, the optional opa_eval export
;; and $decide, which picks a result set by looking for marker bytes in the
;; input (or data) JSON.
(module
  ;; Imports required by the ABI: memory is provided by the host.
  (import "env" "memory" (memory 2))
  (import "env" "opa_abort" (func $opa_abort (param i32)))
  (import "env" "opa_println" (func $opa_println (param i32)))
  (import "env" "opa_builtin0" (func $opa_builtin0 (param i32 i32) (result i32)))
  (import "env" "opa_builtin1" (func $opa_builtin1 (param i32 i32 i32) (result i32)))
  (import "env" "opa_builtin2" (func $opa_builtin2 (param i32 i32 i32 i32) (result i32)))
  (import "env" "opa_builtin3" (func $opa_builtin3 (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "opa_builtin4" (func $opa_builtin4 (param i32 i32 i32 i32 i32 i32) (result i32)))

  ;; "opa_wasm_abi_version" / "opa_wasm_abi_minor_version": i32 constants (ABI doc, "ABI Versions").
  (global (export "opa_wasm_abi_version") i32 (i32.const {{ABI_MAJOR}}))
  (global (export "opa_wasm_abi_minor_version") i32 (i32.const {{ABI_MINOR}}))
  (global $heap (mut i32) (i32.const {{HEAP_START}}))

{{DATA}}

  ;; Bump allocator; grows memory when the heap outruns it. The SDK resets
  ;; the heap pointer between evaluations (opa_heap_ptr_set), which is how
  ;; OPA modules reclaim per-evaluation garbage.
  (func $opa_malloc (export "opa_malloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.lt_s
              (memory.grow (i32.div_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535)) (i32.const 65536)))
              (i32.const 0))
          (then (call $opa_abort (i32.const {{OOM_MSG}})) (unreachable)))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "opa_free") (param i32))
  (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))
  (func (export "opa_heap_ptr_set") (param $p i32) (global.set $heap (local.get $p)))

  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next))))

  ;; A value header over existing bytes.
  (func $value (param $ptr i32) (param $len i32) (result i32)
    (local $v i32)
    (local.set $v (call $opa_malloc (i32.const 8)))
    (i32.store (local.get $v) (local.get $ptr))
    (i32.store offset=4 (local.get $v) (local.get $len))
    (local.get $v))
  (func $vptr (param $v i32) (result i32)
    (if (result i32) (local.get $v) (then (i32.load (local.get $v))) (else (i32.const 0))))
  (func $vlen (param $v i32) (result i32)
    (if (result i32) (local.get $v) (then (i32.load offset=4 (local.get $v))) (else (i32.const 0))))

  ;; opa_json_parse(addr, len) -> value addr, 0 on error. Copies the bytes so
  ;; the value does not alias the caller's buffer (real OPA builds a tree).
  (func $opa_json_parse (export "opa_json_parse") (param $ptr i32) (param $len i32) (result i32)
    (local $buf i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    (local.set $buf (call $opa_malloc (local.get $len)))
    (call $copy (local.get $buf) (local.get $ptr) (local.get $len))
    (call $value (local.get $buf) (local.get $len)))
  (func (export "opa_value_parse") (param $ptr i32) (param $len i32) (result i32)
    (call $opa_json_parse (local.get $ptr) (local.get $len)))

  ;; opa_json_dump(value) -> addr of a NUL-terminated JSON string.
  (func $opa_json_dump (export "opa_json_dump") (param $v i32) (result i32)
    (local $out i32) (local $len i32)
    (local.set $len (call $vlen (local.get $v)))
    (local.set $out (call $opa_malloc (i32.add (local.get $len) (i32.const 1))))
    (call $copy (local.get $out) (call $vptr (local.get $v)) (local.get $len))
    (i32.store8 (i32.add (local.get $out) (local.get $len)) (i32.const 0))
    (local.get $out))
  (func (export "opa_value_dump") (param $v i32) (result i32)
    (call $opa_json_dump (local.get $v)))

  ;; 1 if the needle value's bytes occur in the haystack value's bytes.
  (func $has (param $hay i32) (param $needle i32) (result i32)
    (local $h i32) (local $hl i32) (local $n i32) (local $nl i32) (local $i i32) (local $j i32)
    (local.set $h (call $vptr (local.get $hay)))
    (local.set $hl (call $vlen (local.get $hay)))
    (local.set $n (call $vptr (local.get $needle)))
    (local.set $nl (call $vlen (local.get $needle)))
    (if (i32.gt_u (local.get $nl) (local.get $hl)) (then (return (i32.const 0))))
    (block $miss
      (loop $outer
        (br_if $miss (i32.gt_u (i32.add (local.get $i) (local.get $nl)) (local.get $hl)))
        (local.set $j (i32.const 0))
        (block $differs
          (loop $inner
            (if (i32.eq (local.get $j) (local.get $nl)) (then (return (i32.const 1))))
            (br_if $differs
              (i32.ne (i32.load8_u (i32.add (local.get $h) (i32.add (local.get $i) (local.get $j))))
                      (i32.load8_u (i32.add (local.get $n) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $inner)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    (i32.const 0))

  ;; Wraps a builtin's JSON result as a result set: [{"result":<v>}]; undefined (0) -> [].
  (func $wrap (param $v i32) (result i32)
    (local $len i32) (local $out i32)
    (if (i32.eqz (local.get $v)) (then (return (i32.const {{EMPTY_SET}}))))
    (local.set $len (i32.add (call $vlen (local.get $v)) (i32.const 13)))
    (local.set $out (call $opa_malloc (local.get $len)))
    (call $copy (local.get $out) (i32.const {{WRAP_PREFIX}}) (i32.const 11))
    (call $copy (i32.add (local.get $out) (i32.const 11)) (call $vptr (local.get $v)) (call $vlen (local.get $v)))
    (call $copy (i32.add (local.get $out) (i32.sub (local.get $len) (i32.const 2))) (i32.const {{WRAP_SUFFIX}}) (i32.const 2))
    (call $value (local.get $out) (local.get $len)))

  ;; The "policy": (entrypoint id, input value, data value) -> result set value.
  (func $decide (param $ep i32) (param $in i32) (param $data i32) (result i32)
{{DECIDE}}
  )

  (func (export "entrypoints") (result i32) (i32.const {{ENTRYPOINTS}}))
  (func (export "builtins") (result i32) (i32.const {{BUILTINS}}))

  ;; Evaluation context: {input, data, entrypoint, result} (ABI doc, "opa_eval_ctx_*").
  (func (export "opa_eval_ctx_new") (result i32)
    (local $c i32)
    (local.set $c (call $opa_malloc (i32.const 16)))
    (i64.store (local.get $c) (i64.const 0))
    (i64.store offset=8 (local.get $c) (i64.const 0))
    (local.get $c))
  (func (export "opa_eval_ctx_set_input") (param $c i32) (param $v i32) (i32.store (local.get $c) (local.get $v)))
  (func (export "opa_eval_ctx_set_data") (param $c i32) (param $v i32) (i32.store offset=4 (local.get $c) (local.get $v)))
  (func (export "opa_eval_ctx_set_entrypoint") (param $c i32) (param $e i32) (i32.store offset=8 (local.get $c) (local.get $e)))
  (func (export "opa_eval_ctx_get_result") (param $c i32) (result i32) (i32.load offset=12 (local.get $c)))
  ;; eval(ctx) -> 0 on success; the result set is read back with opa_eval_ctx_get_result.
  (func (export "eval") (param $c i32) (result i32)
    (i32.store offset=12 (local.get $c)
      (call $decide (i32.load offset=8 (local.get $c)) (i32.load (local.get $c)) (i32.load offset=4 (local.get $c))))
    (i32.const 0))

  ;; ABI 1.2 fast path: opa_eval(reserved, entrypoint, data, input, input_len,
  ;; heap_ptr, format) -> addr of the serialized result set (format 0 = JSON).
  ;; The input bytes are already in memory at `input`; the heap starts at heap_ptr.
  (func $opa_eval (param $reserved i32) (param $ep i32) (param $data i32) (param $input i32) (param $input_len i32) (param $heap_ptr i32) (param $format i32) (result i32)
    (global.set $heap (local.get $heap_ptr))
    (call $opa_json_dump
      (call $decide (local.get $ep) (call $value (local.get $input) (local.get $input_len)) (local.get $data))))
{{OPA_EVAL_EXPORT}}
)
