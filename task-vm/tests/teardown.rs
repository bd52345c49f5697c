//! Unloading a task frees its interpreter: RustPython has no cycle collector, so the VM breaks
//! the cycles of a task's modules and classes itself (`python.rs`), and must touch nothing
//! another interpreter on the same worker thread uses.

use std::sync::Arc;

use serde_json::json;
use walle_vm::{Limits, TaskCode, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

/// A task that builds what keeps objects alive in cycles: classes (each in its own MRO), methods
/// using `super()` (a `__class__` cell), closures, and classes of the standard library.
const CYCLIC_TASK: &str = r#"
import collections, json, re, random, functools, itertools, heapq, bisect, math

Point = collections.namedtuple("Point", "x y")

class Base:
    def describe(self):
        return "base"

class Item(Base):
    def __init__(self, n):
        self.n = n
    def describe(self):
        return super().describe() + f":{self.n}"

def counter():
    count = 0
    def bump():
        nonlocal count
        count += 1
        return count
    return bump

PATTERN = re.compile(r"(\w+)-(\d+)")
RNG = random.Random(7)

@functools.lru_cache(maxsize=8)
def square(n):
    return n * n

def run(ctx):
    bump = counter()
    items = [Item(i) for i in range(20)]
    ordered = collections.OrderedDict((i.describe(), bump()) for i in items)
    match = PATTERN.match("item-42")
    decoded = json.loads(json.dumps({"p": Point(1, 2)._asdict()}))
    return [{"n": len(ordered), "m": match.group(2), "p": decoded["p"]["x"],
             "r": RNG.randint(0, 9) >= 0, "s": square(4)}]
"#;

/// Bytes the process's heap has in use (glibc's count: exact, unlike RSS).
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads glibc's arena statistics.
    unsafe { libc::mallinfo2().uordblks as u64 }
}

fn load_run_unload(pool: &VmPool, key: &str, source: &str) {
    pool.load(TaskCode::python(key, source, Limits::default()))
        .unwrap();
    let output = pool.run(key, json!({})).unwrap();
    assert_eq!(output.records[0]["n"], 20, "{:?}", output.records);
    pool.unload(key);
}

#[test]
fn a_task_loaded_and_unloaded_again_and_again_does_not_grow_the_heap() {
    let pool = VmPool::new(1).unwrap();
    for round in 0..5 {
        load_run_unload(&pool, &format!("cyclic@1.0.{round}"), CYCLIC_TASK);
    }
    // Unload is queued to the worker: a run of another task after it means it is done.
    let settled = || {
        pool.load(TaskCode::python(
            "probe@1",
            "def run(ctx):\n    return []\n",
            Limits::default(),
        ))
        .unwrap();
        pool.run("probe@1", json!({})).unwrap();
        pool.unload("probe@1");
        heap_in_use()
    };
    let before = settled();
    let rounds = 30;
    for round in 5..5 + rounds {
        load_run_unload(&pool, &format!("cyclic@1.0.{round}"), CYCLIC_TASK);
    }
    let after = settled();
    let per_load = after.saturating_sub(before) / rounds;
    // Without the cycle breaking each load of this task kept about 6.5 MB; with it, about
    // 0.7 MB is left (cycles inside the standard modules' objects: lru caches' linked lists,
    // closures, nested classes).
    assert!(
        per_load < 1536 * 1024,
        "each load and unload kept {per_load} bytes ({before} -> {after})"
    );
}

#[test]
fn unloading_one_task_leaves_the_other_tasks_of_its_worker_working() {
    let pool = Arc::new(VmPool::new(1).unwrap());
    pool.load(TaskCode::python("steady@1", CYCLIC_TASK, Limits::default()))
        .unwrap();
    for round in 0..5 {
        load_run_unload(&pool, &format!("churn@1.0.{round}"), CYCLIC_TASK);
        let output = pool.run("steady@1", json!({})).unwrap();
        assert_eq!(
            output.records,
            [json!({"n": 20, "m": "42", "p": 1, "r": true, "s": 16})]
        );
    }
}
