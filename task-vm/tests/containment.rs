//! Native-code abuse is contained: a script that would spend its time or memory inside the
//! interpreter's native code (a loop over an iterator, a huge integer, a huge allocation, a deep
//! parse) fails near its deadline with the limit named, no worker is lost, and a benign task on
//! the same worker loses no run and keeps its true run time. When a worker is lost anyway (a
//! model's huge allocation parks it), the tasks queued behind it still run and the culprit is
//! quarantined after repeated offences.

mod common;

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

use common::{float_input, handler, node, onnx_model, records};
use prost::Message;
use serde_json::json;
use walle_engine::onnx::pb;
use walle_vm::{Limits, QUARANTINE_STRIKES, TaskCode, TimedRun, VmError, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

fn hostile_limits() -> Limits {
    Limits {
        deadline: Duration::from_secs(3),
        memory_bytes: 64 * 1024 * 1024,
        ..Limits::default()
    }
}

/// What a contained hostile run must fail with.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Deadline,
    Memory,
    /// Deadline or memory: which one trips first depends on the machine's speed.
    AnyLimit,
    /// An exception whose text holds this.
    Raised(&'static str),
}

fn matches(error: &VmError, expect: Expect) -> bool {
    match expect {
        Expect::Deadline => matches!(error, VmError::DeadlineExceeded { .. }),
        Expect::Memory => matches!(error, VmError::MemoryExceeded { .. }),
        Expect::AnyLimit => matches!(
            error,
            VmError::DeadlineExceeded { .. } | VmError::MemoryExceeded { .. }
        ),
        Expect::Raised(text) => {
            matches!(error, VmError::Raised { traceback, .. } if traceback.contains(text))
        }
    }
}

/// Hostile handler bodies that spend their time or memory in native code.
const HOSTILE: &[(&str, &str, Expect)] = &[
    ("sum", "    return sum(range(10**15))", Expect::Deadline),
    (
        "max-repeat",
        "    import itertools\n    return max(itertools.repeat(1, 10**12))",
        Expect::AnyLimit,
    ),
    (
        "deque-count",
        "    import collections, itertools\n    collections.deque(itertools.count(), 0)",
        Expect::AnyLimit,
    ),
    (
        "sorted",
        "    return len(sorted(range(10**8)))",
        Expect::Memory,
    ),
    (
        "list-range",
        "    return len(list(range(10**10)))",
        Expect::Memory,
    ),
    (
        "star-range",
        "    return len([*range(10**10)])",
        Expect::Memory,
    ),
    (
        "power",
        "    return 10**10**8",
        Expect::Raised("limited to"),
    ),
    (
        "squaring",
        "    x = 3\n    while True:\n        x = x * x",
        Expect::Raised("limited to"),
    ),
    (
        "squaring-in-exec",
        "    exec('x = 3\\nwhile True:\\n    x *= x')",
        Expect::Raised("limited to"),
    ),
    (
        "from-bytes",
        "    return str(int.from_bytes(b'\\xff' * 10**6, 'big'))",
        Expect::Raised("limited to"),
    ),
    (
        "hex-int",
        "    return int('f' * 10**6, 16)",
        Expect::Raised("limited to"),
    ),
    (
        "modpow",
        "    return pow(3, 2**10**6, 2**4096)",
        Expect::Raised("word operations"),
    ),
    (
        "factorial",
        "    import math\n    return math.factorial(10**6)",
        Expect::Raised("limited to"),
    ),
    (
        "bytearray",
        "    return len(bytearray(10**10))",
        Expect::Memory,
    ),
    ("ljust", "    return len('x'.ljust(10**10))", Expect::Memory),
    (
        "format-width",
        "    return len(f'{1:>10000000000}')",
        Expect::Memory,
    ),
    (
        "join",
        "    return len(''.join(['x' * 10**6] * 1000))",
        Expect::Memory,
    ),
    (
        "replace",
        "    return len(('a' * 1000).replace('a', 'b' * 10**6))",
        Expect::Memory,
    ),
    (
        "translate",
        "    return len(('a' * 10**6).translate({97: 'x' * 1000}))",
        Expect::Memory,
    ),
    (
        "split",
        "    return len(('a ' * 10**7).split())",
        Expect::Memory,
    ),
    (
        "splitlines",
        "    return len(('a\\n' * 10**7).splitlines())",
        Expect::Memory,
    ),
    (
        "to-bytes",
        "    return len((1).to_bytes(10**10, 'big'))",
        Expect::Memory,
    ),
    (
        "getrandbits",
        "    import random\n    return random.getrandbits(10**10)",
        Expect::Raised("limited to"),
    ),
    (
        "nested-parse",
        "    return eval('(' * 300000 + ')' * 300000)",
        Expect::Raised("too many nested parentheses"),
    ),
    (
        "deep-chain",
        "    return eval('-' * 200000 + '1')",
        Expect::Raised("too deeply nested"),
    ),
    (
        "huge-source",
        "    return compile('x = 1\\n' * 10**6, 'big', 'exec')",
        Expect::Memory,
    ),
];

/// Runs `key` on another thread; the answer arrives on the returned channel.
fn spawn_staged(pool: &Arc<VmPool>, key: &str) -> std::sync::mpsc::Receiver<TimedRun> {
    let (tx, rx) = channel();
    let (pool, key) = (pool.clone(), key.to_owned());
    std::thread::spawn(move || {
        let _ = tx.send(pool.run_staged(&key, json!(null)));
    });
    rx
}

fn wait(rx: &std::sync::mpsc::Receiver<TimedRun>) -> TimedRun {
    rx.recv_timeout(common::PATIENCE)
        .expect("run did not finish in time")
}

#[test]
fn each_native_abuse_fails_with_its_limit_and_the_neighbour_keeps_its_runs() {
    for &(name, body, expect) in HOSTILE {
        // One worker: the neighbour's runs queue behind the hostile one.
        let pool = Arc::new(VmPool::new(1).unwrap());
        let key = format!("{name}@1");
        pool.load(handler(&key, body, hostile_limits())).unwrap();
        let neighbour = Limits {
            deadline: Duration::from_millis(500),
            ..Limits::default()
        };
        pool.load(handler("neighbour@1", "    return 'ok'", neighbour))
            .unwrap();
        let hostile = spawn_staged(&pool, &key);
        // Queued while the hostile run executes (or, on a slow start, just before it).
        let benign = spawn_staged(&pool, "neighbour@1");
        let hostile = wait(&hostile);
        let error = hostile.result.expect_err(name);
        assert!(matches(&error, expect), "{name}: {error}");
        let benign = wait(&benign);
        assert_eq!(benign.result.unwrap().records, vec![json!("ok")], "{name}");
        // Its run time is its own, not the hostile run's: it waited, then ran in no time.
        assert!(
            benign.timing.executed < Duration::from_millis(500),
            "{name}: the neighbour's run took {:?}",
            benign.timing
        );
        assert_eq!(
            pool.health().abandoned_total,
            0,
            "{name}: a worker was lost"
        );
        assert_eq!(
            records(&pool, "neighbour@1", json!(null)),
            vec![json!("ok")]
        );
    }
}

#[test]
fn a_run_queued_behind_a_slow_neighbour_keeps_its_own_deadline_and_duration() {
    let pool = Arc::new(VmPool::new(1).unwrap());
    let slow = Limits {
        deadline: Duration::from_secs(5),
        ..Limits::default()
    };
    pool.load(handler(
        "slow@1",
        "    n = 0\n    for i in range(3 * 10**5):\n        n += i\n    return n",
        slow,
    ))
    .unwrap();
    // Its deadline is shorter than the slow run: counted from its own start, it is met.
    let quick = Limits {
        deadline: Duration::from_millis(100),
        ..Limits::default()
    };
    pool.load(handler("quick@1", "    return 'quick'", quick))
        .unwrap();
    let slow_run = spawn_staged(&pool, "slow@1");
    std::thread::sleep(Duration::from_millis(20));
    let quick_run = wait(&spawn_staged(&pool, "quick@1"));
    let slow_run = wait(&slow_run);
    assert!(slow_run.result.is_ok());
    assert_eq!(quick_run.result.unwrap().records, vec![json!("quick")]);
    assert!(
        quick_run.timing.queued > quick_run.timing.executed,
        "{:?}",
        quick_run.timing
    );
}

#[test]
fn module_level_abuse_fails_its_load_near_the_deadline_and_others_load() {
    let pool = Arc::new(VmPool::new(1).unwrap());
    let hostile = common::task(
        "install-bomb@1",
        "x = sum(range(10**15))\ndef run(ctx):\n    return x\n",
        hostile_limits(),
    );
    let loading = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.load(hostile))
    };
    pool.load(handler("after@1", "    return 'loaded'", Limits::default()))
        .unwrap();
    let error = loading.join().unwrap().unwrap_err();
    assert!(matches!(error, VmError::DeadlineExceeded { .. }), "{error}");
    assert_eq!(
        records(&pool, "after@1", json!(null)),
        vec![json!("loaded")]
    );
    assert_eq!(pool.health().abandoned_total, 0);
}

/// `Expand(x, shape)` with `x: [1]`: a constant `shape` (shape inference knows the output's
/// size), or one the script passes in (it does not).
fn expand_model(constant: Option<[i64; 2]>) -> Vec<u8> {
    let shape = |values: Vec<i64>| pb::TensorProto {
        name: "shape".into(),
        dims: vec![2],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values,
        ..Default::default()
    };
    let model = onnx_model(
        vec![node("Expand", &["x", "shape"], "y")],
        float_input("x", &[1]),
        constant.map(|c| shape(c.to_vec())).into_iter().collect(),
        "y",
    );
    if constant.is_some() {
        return model;
    }
    let mut model = pb::ModelProto::decode(model.as_slice()).expect("a model just encoded");
    if let Some(graph) = model.graph.as_mut() {
        let mut input = float_input("shape", &[2]);
        if let Some(pb::type_proto::Value::TensorType(tensor)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            tensor.elem_type = pb::tensor_proto::DataType::Int64 as i32;
        }
        graph.input.push(input);
    }
    model.encode_to_vec()
}

/// A task whose model asks for 16,000² floats (1 GB, the engine's own limit) with a shape it
/// passes in: nothing can check the size before the allocation, which the allocator parks at
/// the task's hard cap, and the VM loses the worker.
fn model_task(key: &str) -> TaskCode {
    let body = "    import walle\n    shape = walle.tensor([16000, 16000], dtype='i64')\n    return walle.nn.load('bomb').run({'x': walle.tensor([1.0]), 'shape': shape})";
    let mut code = handler(
        key,
        body,
        Limits {
            deadline: Duration::from_millis(300),
            ..Limits::default()
        },
    );
    code.models
        .push(("bomb".into(), Arc::new(expand_model(None))));
    code
}

#[test]
fn a_model_node_whose_known_size_exceeds_the_budget_is_refused_before_it_allocates() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import walle\n    return walle.nn.load('big').run({'x': walle.tensor([1.0])})";
    let mut code = handler("big-model@1", body, Limits::default());
    code.models
        .push(("big".into(), Arc::new(expand_model(Some([16_000, 16_000])))));
    pool.load(code).unwrap();
    let error = pool.run("big-model@1", json!(null)).unwrap_err();
    assert!(matches!(error, VmError::MemoryExceeded { .. }), "{error}");
    assert_eq!(pool.health().abandoned_total, 0);
}

#[test]
fn a_lost_worker_is_replaced_its_queue_still_runs_and_a_repeat_offender_is_quarantined() {
    let pool = Arc::new(VmPool::new(1).unwrap());
    let counter = "n = 0\ndef run(ctx):\n    global n\n    n += 1\n    return n\n";
    pool.load(common::task("counter@1", counter, Limits::default()))
        .unwrap();
    pool.load(model_task("bomb@1")).unwrap();
    assert_eq!(records(&pool, "counter@1", json!(null)), vec![json!(1)]);

    let stuck = spawn_staged(&pool, "bomb@1");
    // Queued behind the parked run on the same worker: it must run, not fail `not_loaded`.
    std::thread::sleep(Duration::from_millis(100));
    let queued = spawn_staged(&pool, "counter@1");
    let error = wait(&stuck).result.unwrap_err();
    assert!(matches!(error, VmError::MemoryExceeded { .. }), "{error}");
    // The neighbour was loaded again on the fresh worker: its module state started over.
    assert_eq!(wait(&queued).result.unwrap().records, vec![json!(1)]);
    let health = pool.health();
    assert_eq!((health.abandoned_total, health.lost_threads), (1, 1));
    assert!(health.quarantined.is_empty());

    // The second offence quarantines it; its run queued behind is refused as quarantined.
    assert_eq!(QUARANTINE_STRIKES, 2);
    let stuck = spawn_staged(&pool, "bomb@1");
    std::thread::sleep(Duration::from_millis(100));
    let queued = spawn_staged(&pool, "bomb@1");
    let error = wait(&stuck).result.unwrap_err();
    assert!(matches!(error, VmError::MemoryExceeded { .. }), "{error}");
    let error = wait(&queued).result.unwrap_err();
    assert!(
        matches!(&error, VmError::Quarantined { task, reason } if task == "bomb@1" && reason.contains("stuck")),
        "{error}"
    );
    let error = pool.run("bomb@1", json!(null)).unwrap_err();
    assert_eq!(error.kind(), "quarantined");
    assert!(matches!(
        pool.load(model_task("bomb@1")),
        Err(VmError::Quarantined { .. })
    ));
    let health = pool.health();
    assert_eq!(health.quarantined.len(), 1);
    assert_eq!(health.abandoned_total, u64::from(QUARANTINE_STRIKES));
    // Loaded again after each loss: its state started over once more.
    assert_eq!(records(&pool, "counter@1", json!(null)), vec![json!(1)]);

    // Released, a fixed version loads and runs.
    pool.release("bomb@1");
    pool.load(handler("bomb@1", "    return 'fixed'", Limits::default()))
        .unwrap();
    assert_eq!(records(&pool, "bomb@1", json!(null)), vec![json!("fixed")]);
}

/// `x·x`, squared again `nodes` times, over a `side`×`side` input: seconds of native work.
fn slow_model(nodes: usize, side: i64) -> Vec<u8> {
    let mut graph = Vec::new();
    let mut last = "x".to_owned();
    for i in 0..nodes {
        let out = if i + 1 == nodes {
            "y".to_owned()
        } else {
            format!("y{i}")
        };
        graph.push(node("MatMul", &[&last, &last], &out));
        last = out;
    }
    onnx_model(graph, float_input("x", &[side, side]), vec![], "y")
}

#[test]
fn a_slow_model_stops_between_nodes_at_the_deadline() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import walle\n    x = walle.zeros([128, 128])\n    return walle.nn.load('slow').run({'x': x})['y'].shape";
    let mut code = handler(
        "slow-model@1",
        body,
        Limits {
            deadline: Duration::from_millis(300),
            ..Limits::default()
        },
    );
    code.models
        .push(("slow".into(), Arc::new(slow_model(5_000, 128))));
    pool.load(code).unwrap();
    let error = pool.run("slow-model@1", json!(null)).unwrap_err();
    assert!(matches!(error, VmError::DeadlineExceeded { .. }), "{error}");
    assert_eq!(pool.health().abandoned_total, 0);
}
