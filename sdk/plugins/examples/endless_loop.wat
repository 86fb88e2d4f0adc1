;; endless_loop: a deliberately bad plugin. It passes validate_module (the ABI's exports, env.log
;; as its only import) but process never returns: the host stops it at its deadline (reason
;; "timeout") and replaces the instance. bench/plugins.py times that; the tests use modules like it.
;;
;; WAT is compiled with wasmtime.wat2wasm (Python) or wat2wasm (wabt); no toolchain otherwise.
(module
  (import "env" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "looping forever")
  ;; A bump allocator that frees the most recent block only (the host frees in reverse order).
  (global $top (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $len)))
    ;; Grow the memory when the block does not fit; 0 (no memory) when it cannot.
    (block $fits
      (br_if $fits (i32.le_u (global.get $top) (i32.mul (memory.size) (i32.const 65536))))
      (if (i32.eq
            (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $top) (i32.mul (memory.size) (i32.const 65536)))
                                             (i32.const 16))
                                  (i32.const 1)))
            (i32.const -1))
        (then
          (global.set $top (local.get $ptr))
          (return (i32.const 0)))))
    (local.get $ptr))
  (func (export "dealloc") (param $ptr i32) (param $len i32)
    (if (i32.eq (i32.add (local.get $ptr) (local.get $len)) (global.get $top))
      (then (global.set $top (local.get $ptr)))))
  (func (export "process") (param $ptr i32) (param $len i32) (result i64)
    (call $log (i32.const 3) (i32.const 16) (i32.const 15))
    (loop $forever (br $forever))
    (i64.const 0)))
