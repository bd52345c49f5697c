//! Per-run limits: deadline, memory budget, output and log caps. Each hit fails only that run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{handler, quick, records, spawn_run, wait};
use serde_json::json;
use walle_vm::{Limits, VmError, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

fn deadline(ms: u64) -> Limits {
    Limits {
        deadline: Duration::from_millis(ms),
        ..Limits::default()
    }
}

#[test]
fn infinite_loops_on_two_workers_both_hit_their_deadlines() {
    let pool = Arc::new(VmPool::new(2).unwrap());
    pool.load(handler(
        "spin-a@1",
        "    while True:\n        pass",
        deadline(200),
    ))
    .unwrap();
    pool.load(handler(
        "spin-b@1",
        "    n = 0\n    while True:\n        n += 1",
        deadline(400),
    ))
    .unwrap();
    pool.load(handler(
        "fine@1",
        "    return sum(range(10))",
        deadline(2000),
    ))
    .unwrap();
    // Both loops run at the same time on their own workers; each interpreter must see its own
    // interrupt even though the other may clear the process-wide "signal pending" flag.
    let a = spawn_run(&pool, "spin-a@1");
    let b = spawn_run(&pool, "spin-b@1");
    let a = wait(&a).unwrap_err();
    let b = wait(&b).unwrap_err();
    assert_eq!(
        a,
        VmError::DeadlineExceeded {
            task: "spin-a@1".into(),
            deadline_ms: 200
        }
    );
    assert_eq!(
        b,
        VmError::DeadlineExceeded {
            task: "spin-b@1".into(),
            deadline_ms: 400
        }
    );
    // The workers are free again, for the normal task and for the runaway ones.
    for _ in 0..4 {
        assert_eq!(records(&pool, "fine@1", json!(null)), vec![json!(45)]);
    }
    assert!(matches!(
        pool.run("spin-a@1", json!(null)),
        Err(VmError::DeadlineExceeded { .. })
    ));
}

#[test]
fn many_concurrent_runaways_are_all_stopped() {
    let pool = Arc::new(VmPool::new(4).unwrap());
    let keys: Vec<String> = (0..4).map(|i| format!("spin-{i}@1")).collect();
    for key in &keys {
        pool.load(handler(key, "    while True:\n        pass", deadline(100)))
            .unwrap();
    }
    for _ in 0..3 {
        let runs: Vec<_> = keys.iter().map(|k| spawn_run(&pool, k)).collect();
        for run in &runs {
            assert!(matches!(wait(run), Err(VmError::DeadlineExceeded { .. })));
        }
    }
}

#[test]
fn a_script_that_swallows_the_interrupt_still_fails() {
    let pool = VmPool::new(1).unwrap();
    let body = "    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass";
    pool.load(handler("stubborn@1", body, deadline(200)))
        .unwrap();
    assert!(matches!(
        pool.run("stubborn@1", json!(null)),
        Err(VmError::DeadlineExceeded { .. })
    ));
}

#[test]
fn a_stubborn_script_is_stopped_without_losing_its_worker() {
    let pool = VmPool::new(1).unwrap();
    // It also hides the sandbox module, which must not matter to how it is stopped.
    let body = "    import collections\n    collections._sys.modules['_walle_sandbox'] = None\n    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass";
    pool.load(handler("stubborn@1", body, deadline(200)))
        .unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        pool.run("stubborn@1", json!(null)),
        Err(VmError::DeadlineExceeded { .. })
    ));
    // Stopped by the interrupts, not by abandoning the worker after the grace.
    assert!(started.elapsed() < walle_vm::ABANDON_GRACE);
    assert!(matches!(
        pool.run("stubborn@1", json!(null)),
        Err(VmError::DeadlineExceeded { .. })
    ));
}

#[test]
fn a_load_that_never_ends_hits_the_deadline() {
    let pool = VmPool::new(1).unwrap();
    let code = common::task("forever@1", "while True:\n    pass\n", deadline(200));
    assert!(matches!(
        pool.load(code),
        Err(VmError::DeadlineExceeded { .. })
    ));
}

fn small_budget() -> Limits {
    Limits {
        memory_bytes: 32 * 1024 * 1024,
        deadline: Duration::from_secs(20),
        ..Limits::default()
    }
}

#[test]
fn a_huge_string_is_refused_before_it_is_allocated() {
    let pool = VmPool::new(1).unwrap();
    pool.load(handler(
        "bomb@1",
        "    s = 'x' * (10**9)\n    return len(s)",
        small_budget(),
    ))
    .unwrap();
    let err = pool.run("bomb@1", json!(null)).unwrap_err();
    assert_eq!(
        err,
        VmError::MemoryExceeded {
            task: "bomb@1".into(),
            max: 32 * 1024 * 1024
        }
    );
    // Catching the MemoryError does not make the run succeed.
    pool.load(handler(
        "sly@1",
        "    try:\n        s = [0] * (10**9)\n    except MemoryError:\n        return 'got away'",
        small_budget(),
    ))
    .unwrap();
    assert!(matches!(
        pool.run("sly@1", json!(null)),
        Err(VmError::MemoryExceeded { .. })
    ));
}

#[test]
fn an_ever_growing_list_is_stopped_while_another_task_runs() {
    let pool = Arc::new(VmPool::new(2).unwrap());
    pool.load(handler(
        "grow@1",
        "    l = []\n    while True:\n        l.append('y' * 1000)",
        small_budget(),
    ))
    .unwrap();
    pool.load(handler(
        "busy@1",
        "    t = 0\n    for i in range(200000):\n        t += i\n    return t",
        Limits::default(),
    ))
    .unwrap();
    let grow = spawn_run(&pool, "grow@1");
    let busy = spawn_run(&pool, "busy@1");
    assert!(matches!(wait(&grow), Err(VmError::MemoryExceeded { .. })));
    assert_eq!(wait(&busy).unwrap().records, vec![json!(19999900000i64)]);
    // The list was freed with the failed run: the same task runs fine within its budget again.
    pool.load(handler(
        "small@1",
        "    return len([0] * 1000)",
        small_budget(),
    ))
    .unwrap();
    assert_eq!(records(&pool, "small@1", json!(null)), vec![json!(1000)]);
    assert!(matches!(
        pool.run("grow@1", json!(null)),
        Err(VmError::MemoryExceeded { .. })
    ));
}

#[test]
fn a_huge_result_fails_with_output_too_large_before_being_copied() {
    let pool = VmPool::new(1).unwrap();
    pool.load(handler(
        "flood-out@1",
        "    return ['x' * 100000] * 100",
        quick(),
    ))
    .unwrap();
    let err = pool.run("flood-out@1", json!(null)).unwrap_err();
    assert!(
        matches!(err, VmError::OutputTooLarge { ref task, max, .. } if task == "flood-out@1" && max == Limits::DEFAULT_MAX_OUTPUT_BYTES),
        "{err}"
    );
}

#[test]
fn printed_text_is_the_runs_log_truncated_at_its_cap() {
    let pool = VmPool::new(1).unwrap();
    let limits = Limits {
        max_log_bytes: 100,
        ..quick()
    };
    pool.load(handler(
        "chatty@1",
        "    print('hello', ctx)\n    return 1",
        limits,
    ))
    .unwrap();
    let out = pool.run("chatty@1", json!("world")).unwrap();
    assert_eq!(out.logs, "hello world\n");
    pool.load(handler(
        "flood-log@1",
        "    for i in range(10000):\n        print('line', i)\n    return 'done'",
        limits,
    ))
    .unwrap();
    let out = pool.run("flood-log@1", json!(null)).unwrap();
    assert_eq!(out.records, vec![json!("done")]);
    assert!(out.logs.starts_with("line 0\nline 1\n"), "{}", out.logs);
    assert!(out.logs.contains("[walle: log truncated,"), "{}", out.logs);
    assert!(out.logs.len() < 200, "{}", out.logs.len());
    // Each run has its own log.
    assert_eq!(pool.run("chatty@1", json!(2)).unwrap().logs, "hello 2\n");
}

#[test]
fn a_native_loop_stops_at_its_deadline_and_keeps_its_worker() {
    let pool = VmPool::new(1).unwrap();
    let counter = "n = 0\ndef run(ctx):\n    global n\n    n += 1\n    return n\n";
    pool.load(common::task("counter@1", counter, Limits::default()))
        .unwrap();
    // One native call: `sum` steps the range natively, with no bytecode boundary in between.
    pool.load(handler(
        "stuck@1",
        "    return sum(range(10**15))",
        deadline(200),
    ))
    .unwrap();
    assert_eq!(records(&pool, "counter@1", json!(null)), vec![json!(1)]);
    assert_eq!(
        pool.run("stuck@1", json!(null)).unwrap_err(),
        VmError::DeadlineExceeded {
            task: "stuck@1".into(),
            deadline_ms: 200
        }
    );
    // Nothing was abandoned: the neighbour kept its interpreter and its module state.
    assert_eq!(pool.health().abandoned_total, 0);
    assert_eq!(records(&pool, "counter@1", json!(null)), vec![json!(2)]);
}

#[test]
fn one_native_call_allocating_past_the_budget_fails_without_losing_its_worker() {
    let pool = VmPool::new(1).unwrap();
    let limits = Limits {
        deadline: Duration::from_millis(500),
        ..small_budget()
    };
    pool.load(handler(
        "hog@1",
        "    return len(list(range(10**9)))",
        limits,
    ))
    .unwrap();
    pool.load(handler("fine@1", "    return 'fine'", Limits::default()))
        .unwrap();
    assert_eq!(
        pool.run("hog@1", json!(null)).unwrap_err(),
        VmError::MemoryExceeded {
            task: "hog@1".into(),
            max: 32 * 1024 * 1024
        }
    );
    assert_eq!(records(&pool, "fine@1", json!(null)), vec![json!("fine")]);
    assert_eq!(pool.health().abandoned_total, 0);
}
