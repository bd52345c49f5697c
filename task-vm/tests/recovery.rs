//! After hostile runs the process is idle again and its memory is back near where it started:
//! nothing a stopped run did keeps a core busy or its pages resident. (Its own test binary, so no
//! other test's threads or heap blur the figures.)

mod common;

use std::time::Duration;

use common::{handler, records};
use serde_json::json;
use walle_vm::{Limits, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// CPU time (user + system) the VM's worker threads have used, in clock ticks.
fn worker_cpu_ticks() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let path = entry.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.starts_with("walle-vm") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += ticks(14) + ticks(15);
    }
    total
}

const MIB: u64 = 1024 * 1024;

/// Hostile bodies that each fill their 64 MiB budget (or try to) before they are stopped.
const MEMORY_HOGS: &[&str] = &[
    "    l = []\n    while True:\n        l.append(1000)",
    "    l = []\n    while True:\n        l.append(str(len(l)) * 100)",
    "    return len(list(range(10**10)))",
    "    return len(sorted(range(10**8)))",
    "    return len(''.join(['x' * 10**6] * 1000))",
    "    import collections, itertools\n    collections.deque(itertools.count(), 0)",
    "    d = {}\n    for i in range(10**8):\n        d[i] = str(i)",
];

#[test]
fn after_hostile_runs_the_workers_are_idle_and_memory_is_back_near_baseline() {
    let pool = VmPool::new(2).unwrap();
    pool.load(handler("benign@1", "    return 'ok'", Limits::default()))
        .unwrap();
    // Warm both workers and the allocator before the baseline.
    for _ in 0..4 {
        assert_eq!(records(&pool, "benign@1", json!(null)), vec![json!("ok")]);
    }
    let baseline = rss();
    let limits = Limits {
        deadline: Duration::from_secs(2),
        memory_bytes: 64 * MIB,
        ..Limits::default()
    };
    for round in 0..2 {
        for (i, body) in MEMORY_HOGS.iter().enumerate() {
            let key = format!("hog-{round}-{i}@1");
            pool.load(handler(&key, body, limits)).unwrap();
            assert!(pool.run(&key, json!(null)).is_err(), "{body}");
            assert_eq!(records(&pool, "benign@1", json!(null)), vec![json!("ok")]);
            pool.unload(&key);
        }
    }
    assert_eq!(pool.health().abandoned_total, 0);
    // The unloads are queued behind nothing; one more run on each worker has them done.
    for _ in 0..4 {
        assert_eq!(records(&pool, "benign@1", json!(null)), vec![json!("ok")]);
    }
    let after = rss();
    assert!(
        after < baseline + 48 * MIB,
        "resident memory went from {} MiB to {} MiB after the hostile runs",
        baseline / MIB,
        after / MIB
    );
    // No worker is still busy: over a second, they use (almost) no CPU.
    let before = worker_cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = worker_cpu_ticks() - before;
    // Clock ticks are 1/100 s on Linux: 5 ticks is 5 % of one core.
    assert!(
        used <= 5,
        "the VM's workers used {used} ticks in an idle second"
    );
}
