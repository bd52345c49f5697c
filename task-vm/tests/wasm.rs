//! WASM tasks end to end at the `WasmTask` level: the shipped example, every `walle` import,
//! the limits (fuel, deadline, memory, output cap), and that a failed run leaves the task usable.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{float_input, node, onnx_model};
use serde_json::{Value, json};
use walle_vm::host::{Models, with_log};
use walle_vm::{MemoryState, RunHost, RunOutput, StateStore, VmError, WasmLimits, WasmTask};

/// Output and log caps of the runs here.
const CAP: u64 = 1024;

/// One run of `task` with `context`; the output as the VM would send it.
fn run(task: &WasmTask, context: Value, state: &MemoryState) -> Result<RunOutput, VmError> {
    run_with_models(task, context, state, &mut Models::default())
}

fn run_with_models(
    task: &WasmTask,
    context: Value,
    state: &MemoryState,
    models: &mut Models,
) -> Result<RunOutput, VmError> {
    let (finished, logs) = with_log(CAP, || {
        let mut host = RunHost::new(task.key(), &context, state, models, CAP);
        let returned = task.call(&mut host)?;
        let records = host.finish(returned)?;
        Ok::<_, VmError>((records, host.take_state_writes()))
    });
    let (records, writes) = finished?;
    state
        .commit(walle_vm::task_name(task.key()), &writes)
        .map_err(VmError::Pool)?;
    Ok(RunOutput {
        records,
        logs,
        state: writes,
    })
}

/// A module importing every `walle` function, with one page of exported memory, `data`
/// segments and `body` as the `run` function's body.
fn guest(data: &str, body: &str) -> String {
    format!(
        r#"(module
  (import "walle" "context_len" (func $context_len (result i32)))
  (import "walle" "context_read" (func $context_read (param i32 i32) (result i32)))
  (import "walle" "log" (func $log (param i32 i32 i32)))
  (import "walle" "upload" (func $upload (param i32 i32) (result i32)))
  (import "walle" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  (import "walle" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))
  (import "walle" "nn_run" (func $nn_run (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  {data}
  (func (export "run") (result i32)
    (local $n i32)
    {body}))"#
    )
}

fn load(key: &str, wat: &str, limits: WasmLimits) -> WasmTask {
    WasmTask::load(key, wat.as_bytes(), limits).unwrap()
}

/// Dispatches on the context's JSON length, so one loaded task can fail in every way and then
/// succeed: 1 spins, 2 grows memory forever, 3 passes a bad pointer, 5 returns 7, 6 traps,
/// anything else bumps a digit in memory and uploads it (always 1: memory is fresh per run).
const MOODY: &str = r#"
    (local.set $n (call $context_len))
    (if (i32.eq (local.get $n) (i32.const 1)) (then (loop $spin (br $spin))))
    (if (i32.eq (local.get $n) (i32.const 2))
      (then (loop $grow (drop (memory.grow (i32.const 16))) (br $grow))))
    (if (i32.eq (local.get $n) (i32.const 3))
      (then (return (call $upload (i32.const -16) (i32.const 32)))))
    (if (i32.eq (local.get $n) (i32.const 5)) (then (return (i32.const 7))))
    (if (i32.eq (local.get $n) (i32.const 6)) (then unreachable))
    (i32.store8 (i32.const 100) (i32.add (i32.load8_u (i32.const 100)) (i32.const 1)))
    (call $upload (i32.const 100) (i32.const 1))"#;

fn moody(key: &str, limits: WasmLimits) -> WasmTask {
    load(key, &guest(r#"(data (i32.const 100) "0")"#, MOODY), limits)
}

fn assert_good_run(task: &WasmTask, state: &MemoryState) {
    let out = run(task, json!(null), state).unwrap();
    assert_eq!(out.records, vec![json!(1)]);
}

#[test]
fn the_example_counts_its_runs_in_state_and_uploads_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/wasm-counter");
    let manifest = std::fs::read_to_string(dir.join("walle.toml")).unwrap();
    assert!(manifest.contains("runtime = \"wasm\"") && manifest.contains("entry = \"main.wat\""));
    let wat = std::fs::read(dir.join("main.wat")).unwrap();
    let task = WasmTask::load("wasm-counter@1.0.0", &wat, WasmLimits::default()).unwrap();
    let state = MemoryState::default();
    let context = json!({"matched": [{"event": "enter"}, {"event": "exit"}]});
    let size = context.to_string().len();
    for n in 1..=2 {
        let out = run(&task, context.clone(), &state).unwrap();
        let record = json!({"task": "wasm-counter", "run": n, "context_bytes": size});
        assert_eq!(out.records, vec![record]);
        assert_eq!(out.logs, "[info] counted a run\n");
        assert_eq!(state.get("wasm-counter", "runs").unwrap(), Some(json!(n)));
    }
}

#[test]
fn context_is_read_whole_or_its_size_is_reported() {
    let body = r#"
    (local.set $n (call $context_len))
    ;; Too small: nothing written, -len returned.
    (if (i32.ne (call $context_read (i32.const 1024) (i32.const 2)) (i32.sub (i32.const 0) (local.get $n)))
      (then (return (i32.const 2))))
    (if (i32.ne (call $context_read (i32.const 1024) (i32.const 4096)) (local.get $n))
      (then (return (i32.const 3))))
    (call $upload (i32.const 1024) (local.get $n))"#;
    let task = load("ctx@1", &guest("", body), WasmLimits::default());
    let context = json!({"xs": [1, 2.5, -3], "name": "wallé", "nested": {"ok": true}});
    let out = run(&task, context.clone(), &MemoryState::default()).unwrap();
    assert_eq!(out.records, vec![context]);
}

#[test]
fn log_keeps_each_level_and_rejects_an_unknown_one() {
    let body = r#"
    (call $log (i32.const 0) (i32.const 0) (i32.const 1))
    (call $log (i32.const 1) (i32.const 0) (i32.const 2))
    (call $log (i32.const 2) (i32.const 0) (i32.const 3))
    (call $log (i32.const 3) (i32.const 0) (i32.const 4))
    (if (i32.eq (call $context_len) (i32.const 1))
      (then (call $log (i32.const 9) (i32.const 0) (i32.const 1))))
    (i32.const 0)"#;
    let task = load(
        "log@1",
        &guest(r#"(data (i32.const 0) "abcd")"#, body),
        Default::default(),
    );
    let out = run(&task, Value::Null, &MemoryState::default()).unwrap();
    assert_eq!(out.logs, "[debug] a\n[info] ab\n[warn] abc\n[error] abcd\n");
    let err = run(&task, json!(1), &MemoryState::default()).unwrap_err();
    assert!(
        matches!(&err, VmError::BadGuestArgument { import: "log", reason, .. } if reason.contains("level 9")),
        "{err}"
    );
}

#[test]
fn state_is_read_written_and_deleted_with_the_documented_sizes() {
    let data = r#"(data (i32.const 0) "k") (data (i32.const 8) "n") (data (i32.const 16) "{\"a\":[1,2]}") (data (i32.const 32) "5")"#;
    let body = r#"
    (if (call $state_get (i32.const 0) (i32.const 1) (i32.const 256) (i32.const 64))
      (then (return (i32.const 1))))
    (drop (call $state_set (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 11)))
    (if (i32.ne (call $state_get (i32.const 0) (i32.const 1) (i32.const 256) (i32.const 4)) (i32.const -11))
      (then (return (i32.const 2))))
    (if (i32.ne (call $state_get (i32.const 0) (i32.const 1) (i32.const 256) (i32.const 64)) (i32.const 11))
      (then (return (i32.const 3))))
    (drop (call $upload (i32.const 256) (i32.const 11)))
    (drop (call $state_set (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 0)))
    (if (call $state_get (i32.const 0) (i32.const 1) (i32.const 256) (i32.const 64))
      (then (return (i32.const 4))))
    (call $state_set (i32.const 8) (i32.const 1) (i32.const 32) (i32.const 1))"#;
    let task = load("st@1", &guest(data, body), Default::default());
    let state = MemoryState::default();
    let out = run(&task, Value::Null, &state).unwrap();
    assert_eq!(out.records, vec![json!({"a": [1, 2]})]);
    assert_eq!(state.get("st", "k").unwrap(), None);
    assert_eq!(state.get("st", "n").unwrap(), Some(json!(5)));
}

/// A one-node `Relu` model over a float input `x` of shape [4], output `y`.
fn relu_model() -> Vec<u8> {
    onnx_model(
        vec![node("Relu", &["x"], "y")],
        float_input("x", &[4]),
        Vec::new(),
        "y",
    )
}

#[test]
fn nn_run_runs_a_bundled_model_and_reports_errors() {
    let input = r#"{\"x\": {\"shape\": [4], \"data\": [-1, 2.5, -3, 4]}}"#;
    let input_len = input.replace('\\', "").len();
    let data = format!(
        r#"(data (i32.const 0) "relu") (data (i32.const 8) "nope") (data (i32.const 16) "{input}")"#
    );
    // Context 1: too small a buffer; 2: an unknown model; else run and upload the outputs.
    let body = format!(
        r#"
    (local.set $n (call $context_len))
    (if (i32.eq (local.get $n) (i32.const 1))
      (then (return (call $nn_run (i32.const 0) (i32.const 4) (i32.const 16) (i32.const {input_len}) (i32.const 1024) (i32.const 8)))))
    (if (i32.eq (local.get $n) (i32.const 2))
      (then (return (call $nn_run (i32.const 8) (i32.const 4) (i32.const 16) (i32.const {input_len}) (i32.const 1024) (i32.const 256)))))
    (local.set $n (call $nn_run (i32.const 0) (i32.const 4) (i32.const 16) (i32.const {input_len}) (i32.const 1024) (i32.const 256)))
    (call $upload (i32.const 1024) (local.get $n))"#
    );
    let task = load("nn@1", &guest(&data, &body), Default::default());
    let mut models = Models::new(&[("relu".into(), Arc::new(relu_model()))]);
    let state = MemoryState::default();
    let out = run_with_models(&task, Value::Null, &state, &mut models).unwrap();
    let expected = json!({"y": {"shape": [4], "data": [0.0, 2.5, 0.0, 4.0]}});
    assert_eq!(out.records, vec![expected.clone()]);
    let needed = expected.to_string().len() as i32;
    let err = run_with_models(&task, json!(1), &state, &mut models).unwrap_err();
    assert_eq!(
        err,
        VmError::GuestFailed {
            task: "nn@1".into(),
            code: -needed
        }
    );
    let err = run_with_models(&task, json!(22), &state, &mut models).unwrap_err();
    assert!(
        matches!(&err, VmError::Model { model, .. } if model == "nope"),
        "{err}"
    );
}

#[test]
fn a_bad_pointer_ends_the_run_with_a_clear_error() {
    let task = moody("ptr@1", WasmLimits::default());
    let state = MemoryState::default();
    let err = run(&task, json!(333), &state).unwrap_err();
    match &err {
        VmError::BadGuestArgument {
            task,
            import,
            reason,
        } => {
            assert_eq!((task.as_str(), *import), ("ptr@1", "upload"));
            assert!(reason.contains("outside the 65536-byte memory"), "{reason}");
        }
        other => panic!("expected a bad guest argument, got {other}"),
    }
    assert_good_run(&task, &state);
}

#[test]
fn every_failure_leaves_the_task_ready_for_a_good_run() {
    let limits = WasmLimits {
        fuel: 20_000_000,
        deadline: Duration::from_secs(30),
        memory_bytes: 4 << 20,
    };
    let task = moody("moody@1", limits);
    let state = MemoryState::default();
    assert_good_run(&task, &state);
    let err = run(&task, json!(1), &state).unwrap_err();
    assert_eq!(
        err,
        VmError::FuelExhausted {
            task: "moody@1".into(),
            fuel: 20_000_000
        }
    );
    assert_good_run(&task, &state);
    let err = run(&task, json!(22), &state).unwrap_err();
    assert!(
        matches!(err, VmError::MemoryLimit { requested, limit, .. } if requested > limit && limit == 4 << 20),
        "{err}"
    );
    assert_good_run(&task, &state);
    let err = run(&task, json!(55555), &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task moody@1: run() returned failure code 7"
    );
    assert_good_run(&task, &state);
    let err = run(&task, json!(666666), &state).unwrap_err();
    assert!(
        matches!(&err, VmError::Trap { message, .. } if message.contains("unreachable")),
        "{err}"
    );
    assert_good_run(&task, &state);
}

#[test]
fn an_endless_loop_with_fuel_to_spare_hits_the_deadline() {
    let limits = WasmLimits {
        fuel: 1 << 62,
        deadline: Duration::from_millis(200),
        ..WasmLimits::default()
    };
    let task = moody("spin@1", limits);
    let state = MemoryState::default();
    let started = Instant::now();
    let err = run(&task, json!(1), &state).unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err,
        VmError::DeadlineExceeded {
            task: "spin@1".into(),
            deadline_ms: 200
        }
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_good_run(&task, &state);
}

#[test]
fn a_huge_initial_memory_fails_the_run_not_the_process() {
    let wat = r#"(module (memory (export "memory") 20000) (func (export "run") (result i32) (i32.const 0)))"#;
    let limits = WasmLimits {
        memory_bytes: 16 << 20,
        ..WasmLimits::default()
    };
    let task = load("huge@1", wat, limits);
    let err = run(&task, Value::Null, &MemoryState::default()).unwrap_err();
    assert_eq!(
        err,
        VmError::MemoryLimit {
            task: "huge@1".into(),
            requested: 20000 * 65536,
            limit: 16 << 20
        }
    );
}

#[test]
fn uploads_past_the_output_cap_fail_the_run() {
    // Uploads a JSON string of 2000 'a's: more than the 1024-byte cap.
    let body = r#"
    (i32.store8 (i32.const 0) (i32.const 34))
    (memory.fill (i32.const 1) (i32.const 97) (i32.const 2000))
    (i32.store8 (i32.const 2001) (i32.const 34))
    (call $upload (i32.const 0) (i32.const 2002))"#;
    let task = load("big@1", &guest("", body), Default::default());
    let err = run(&task, Value::Null, &MemoryState::default()).unwrap_err();
    assert!(
        matches!(err, VmError::OutputTooLarge { max: 1024, .. }),
        "{err}"
    );
}

#[test]
fn bad_modules_fail_to_load_with_what_is_wrong() {
    let limits = WasmLimits::default();
    let garbage = WasmTask::load("g@1", b"\0asm\x01\0\0\0\xff\xff garbage", limits).err();
    assert!(
        matches!(garbage, Some(VmError::WasmCompile { .. })),
        "{garbage:?}"
    );
    let text = WasmTask::load("t@1", b"(module (func $f (result i32)", limits).err();
    assert!(
        matches!(text, Some(VmError::WasmCompile { .. })),
        "{text:?}"
    );
    let no_run = WasmTask::load("r@1", br#"(module (memory (export "memory") 1))"#, limits).err();
    assert!(
        matches!(&no_run, Some(VmError::MissingExport { export, .. }) if export == "run"),
        "{no_run:?}"
    );
    let no_memory = WasmTask::load(
        "m@1",
        br#"(module (func (export "run") (result i32) i32.const 0))"#,
        limits,
    )
    .err();
    assert!(
        matches!(&no_memory, Some(VmError::MissingExport { export, .. }) if export == "memory"),
        "{no_memory:?}"
    );
    let wat = r#"(module (import "walle" "open_socket" (func)) (memory (export "memory") 1)
        (func (export "run") (result i32) i32.const 0))"#;
    let unknown = WasmTask::load("i@1", wat.as_bytes(), limits).err();
    assert!(
        matches!(&unknown, Some(VmError::WasmLink { message, .. }) if message.contains("open_socket")),
        "{unknown:?}"
    );
}

#[test]
fn two_tasks_run_at_once_on_two_threads() {
    let spinner = moody(
        "spinner@1",
        WasmLimits {
            fuel: 1 << 62,
            deadline: Duration::from_secs(3),
            ..WasmLimits::default()
        },
    );
    let worker = moody("worker@1", WasmLimits::default());
    let started = Instant::now();
    let (spun, worked) = std::thread::scope(|scope| {
        let spun = scope.spawn(|| {
            let result = run(&spinner, json!(1), &MemoryState::default());
            (result, started.elapsed())
        });
        let worked = scope.spawn(|| {
            let state = MemoryState::default();
            (0..20).for_each(|_| assert_good_run(&worker, &state));
            started.elapsed()
        });
        (spun.join().unwrap(), worked.join().unwrap())
    });
    assert!(matches!(spun.0, Err(VmError::DeadlineExceeded { .. })));
    assert!(
        worked < spun.1,
        "the worker finished at {worked:?}, after the spinner ({:?})",
        spun.1
    );
}

#[test]
fn a_wasm_task_can_move_between_and_be_shared_by_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<WasmTask>();
}

#[test]
fn the_pool_runs_the_example_beside_a_python_task_with_state_and_logs() {
    use walle_vm::{Limits, TaskCode, VmPool};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/wasm-counter");
    let wat = std::fs::read(dir.join("main.wat")).unwrap();
    let state = Arc::new(MemoryState::default());
    let pool = VmPool::with_state(2, state.clone()).unwrap();
    let task = |key: &str, source: &str, wasm: Option<Vec<u8>>| TaskCode {
        key: key.into(),
        entry_path: "main".into(),
        source: source.into(),
        handler: "run".into(),
        modules: Vec::new(),
        limits: Limits::default(),
        models: Vec::new(),
        llms: Vec::new(),
        wasm: wasm.map(Arc::new),
    };
    pool.load(task("wasm-counter@1.0.0", "", Some(wat)))
        .unwrap();
    pool.load(task("py@1", "def run(ctx):\n    return ctx", None))
        .unwrap();
    for n in 1..=2 {
        let out = pool.run("wasm-counter@1.0.0", json!({})).unwrap();
        assert_eq!(out.records[0]["run"], json!(n));
        assert_eq!(out.logs, "[info] counted a run\n");
        assert_eq!(pool.run("py@1", json!(n)).unwrap().records, vec![json!(n)]);
    }
    assert_eq!(state.get("wasm-counter", "runs").unwrap(), Some(json!(2)));
    let broken = pool.load(task("bad@1", "", Some(b"\0asm garbage".to_vec())));
    assert!(
        matches!(broken, Err(VmError::WasmCompile { .. })),
        "{broken:?}"
    );
}
