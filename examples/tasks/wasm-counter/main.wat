;; wasm-counter: counts its runs in task state, logs, and uploads
;;   {"task":"wasm-counter","run":N,"context_bytes":M}
;; The `walle` imports and their return conventions are documented in task-vm/src/wasm.rs.
(module
  (import "walle" "context_len" (func $context_len (result i32)))
  (import "walle" "log" (func $log (param i32 i32 i32)))
  (import "walle" "upload" (func $upload (param i32 i32) (result i32)))
  (import "walle" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  (import "walle" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; Constant text. Offsets are fixed so the code below can name them.
  (data (i32.const 0) "runs")                                ;; state key, 4 bytes
  (data (i32.const 16) "counted a run")                      ;; log line, 13 bytes
  (data (i32.const 32) "{\"task\":\"wasm-counter\",\"run\":")  ;; record head, 29 bytes
  (data (i32.const 64) ",\"context_bytes\":")               ;; 17 bytes

  ;; Scratch: the stored count at 256 (32 bytes), the record being built at 512.
  (global $count_buf i32 (i32.const 256))
  (global $record i32 (i32.const 512))

  ;; The decimal number in the `len` bytes at `ptr` (digits only; 0 if there are none).
  (func $parse_u32 (param $ptr i32) (param $len i32) (result i32)
    (local $n i32) (local $end i32) (local $digit i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (local.set $digit (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $digit) (i32.const 9)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $digit)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; Writes `n` in decimal at `ptr`; returns the number of bytes written.
  (func $write_u32 (param $ptr i32) (param $n i32) (result i32)
    (local $len i32) (local $rest i32) (local $i i32)
    ;; Count the digits first, then fill them in from the right.
    (local.set $rest (local.get $n))
    (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
      (br_if $count (local.get $rest)))
    (local.set $i (local.get $len))
    (loop $fill
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $ptr) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $fill (local.get $i)))
    (local.get $len))

  (func (export "run") (result i32)
    (local $got i32) (local $count i32) (local $len i32) (local $at i32)
    ;; count = state["runs"] + 1 (absent reads as 0 bytes, hence count 1).
    (local.set $got (call $state_get (i32.const 0) (i32.const 4) (global.get $count_buf) (i32.const 32)))
    (if (i32.lt_s (local.get $got) (i32.const 0)) (then (return (i32.const 1))))
    (local.set $count
      (i32.add (call $parse_u32 (global.get $count_buf) (local.get $got)) (i32.const 1)))
    (local.set $len (call $write_u32 (global.get $count_buf) (local.get $count)))
    (drop (call $state_set (i32.const 0) (i32.const 4) (global.get $count_buf) (local.get $len)))
    (call $log (i32.const 1) (i32.const 16) (i32.const 13))

    ;; The record: head, count, ",\"context_bytes\":", context size, "}".
    (memory.copy (global.get $record) (i32.const 32) (i32.const 29))
    (local.set $at (i32.add (global.get $record) (i32.const 29)))
    (local.set $at (i32.add (local.get $at) (call $write_u32 (local.get $at) (local.get $count))))
    (memory.copy (local.get $at) (i32.const 64) (i32.const 17))
    (local.set $at (i32.add (local.get $at) (i32.const 17)))
    (local.set $at (i32.add (local.get $at) (call $write_u32 (local.get $at) (call $context_len))))
    (i32.store8 (local.get $at) (i32.const 125)) ;; '}'
    (local.set $at (i32.add (local.get $at) (i32.const 1)))
    (call $upload (global.get $record) (i32.sub (local.get $at) (global.get $record))))
)
