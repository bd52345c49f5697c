//! The task VM benchmark: Walle's figures and CPython 3.11's, from one run.
//!
//! `bash bench/vm/run.sh [N RUNS ROUNDS]` (release build). Measures
//! * interpreter creation: time to load a task (a fresh sandboxed interpreter) and the memory
//!   each one adds, against CPython subinterpreters;
//! * per-run overhead of an empty task (submit, run, answer), against a `ThreadPoolExecutor`
//!   round trip, and of one host call (`walle.state.get`), against a dict lookup;
//! * throughput of the CPU-bound pure-Python `bench/vm/workload.py` with 1 and 2 workers,
//!   against CPython running it in 1 and 2 threads (one GIL) and in 2 processes.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use walle_vm::{Limits, TaskAllocator, TaskCode, VmPool};

#[global_allocator]
static ALLOCATOR: TaskAllocator = TaskAllocator;

const WORKLOAD: &str = include_str!("../../bench/vm/workload.py");
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/vm/cpython_peer.py");
const INTERPRETERS: usize = 20;
const EMPTY_RUNS: usize = 2000;
const HOST_CALLS: u64 = 200_000;

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let n = args.next().unwrap_or(Ok(20_000))?;
    let runs = args.next().unwrap_or(Ok(20))? as usize;
    let rounds = args.next().unwrap_or(Ok(5))? as usize;

    let peer = cpython(n, runs, rounds)?;
    let (load_ms, rss_kib, charged_kib) = interpreter_creation()?;
    let (empty_us, host_ns, call_ns) = overheads()?;
    let one = throughput(1, n, runs, rounds)?;
    let two = throughput(2, n, runs, rounds)?;

    println!(
        "task VM benchmark: workload n = {n}, {runs} runs per worker per round, median of {rounds} rounds"
    );
    println!("peer: CPython {}", peer["python"].as_str().unwrap_or("?"));
    println!();
    println!("| measure | walle-vm (RustPython) | CPython |");
    println!("|---|---|---|");
    println!(
        "| interpreter creation (median of {INTERPRETERS}) | {load_ms:.1} ms | {} (subinterpreter) |",
        figure(&peer["subinterpreter_ms"], "ms")
    );
    println!(
        "| memory per interpreter (RSS growth) | {rss_kib:.0} KiB ({charged_kib:.0} KiB charged to the task) | {} (subinterpreter) |",
        figure(&peer["subinterpreter_kib"], "KiB")
    );
    println!(
        "| empty run, submit to answer (median) | {empty_us:.1} µs | {} (ThreadPoolExecutor round trip) |",
        figure(&peer["executor_round_trip_us"], "µs")
    );
    println!(
        "| host call `walle.state.get` | {host_ns:.0} ns | {} (`dict.get`) |",
        figure(&peer["dict_get_ns"], "ns")
    );
    println!(
        "| Python function call | {call_ns:.0} ns | {} |",
        figure(&peer["function_call_ns"], "ns")
    );
    let peer_one = peer["threads1"].as_f64().unwrap_or(f64::NAN);
    println!("| throughput, 1 worker / 1 thread | {one:.1} runs/s | {peer_one:.1} runs/s |");
    println!(
        "| throughput, 2 workers / 2 threads | {two:.1} runs/s ({:.2}× of 1) | {:.1} runs/s ({:.2}× of 1) |",
        two / one,
        peer["threads2"].as_f64().unwrap_or(f64::NAN),
        peer["threads2"].as_f64().unwrap_or(f64::NAN) / peer_one,
    );
    println!(
        "| throughput, 2 processes | | {:.1} runs/s ({:.2}× of 1) |",
        peer["processes2"].as_f64().unwrap_or(f64::NAN),
        peer["processes2"].as_f64().unwrap_or(f64::NAN) / peer_one,
    );
    Ok(())
}

fn figure(value: &Value, unit: &str) -> String {
    match value.as_f64() {
        Some(v) => format!("{v:.1} {unit}"),
        None => "n/a".to_owned(),
    }
}

fn task(key: &str, source: &str) -> TaskCode {
    TaskCode::python(key, source, Limits::default())
}

/// Median load time (ms), RSS growth per interpreter (KiB), heap charged per task (KiB).
fn interpreter_creation() -> Result<(f64, f64, f64), Failure> {
    let pool = VmPool::new(1)?;
    // The first load also builds the worker's shared types; measure the ones after it.
    pool.load(task("first@1", "def run(ctx):\n    return None\n"))?;
    let before = rss_kib()?;
    let mut times = Vec::new();
    let mut charged = 0;
    for i in 0..INTERPRETERS {
        let key = format!("empty-{i}@1");
        let start = Instant::now();
        pool.load(task(&key, "def run(ctx):\n    return None\n"))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        charged += pool.task_memory(&key).unwrap_or(0);
    }
    let per = INTERPRETERS as f64;
    Ok((
        median(times),
        (rss_kib()? - before) / per,
        charged as f64 / 1024.0 / per,
    ))
}

/// Median empty-run round trip (µs); ns per host call and per Python function call.
fn overheads() -> Result<(f64, f64, f64), Failure> {
    let pool = VmPool::new(1)?;
    pool.load(task("empty@1", "def run(ctx):\n    return None\n"))?;
    pool.run("empty@1", json!(null))?;
    let mut times = Vec::with_capacity(EMPTY_RUNS);
    for _ in 0..EMPTY_RUNS {
        let start = Instant::now();
        pool.run("empty@1", json!(null))?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let empty = median(times);
    let calls = |key: &str, body: &str| -> Result<f64, Failure> {
        let source = format!(
            "import walle\n\ndef noop(key):\n    return None\n\ndef run(ctx):\n    fn = {body}\n    for _ in range(ctx['n']):\n        fn('k')\n"
        );
        pool.load(task(key, &source))?;
        pool.run(key, json!({"n": 10}))?;
        let mut times = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            pool.run(key, json!({ "n": HOST_CALLS }))?;
            times.push(start.elapsed().as_secs_f64() * 1e9 / HOST_CALLS as f64);
        }
        Ok(median(times))
    };
    Ok((
        empty,
        calls("host@1", "walle.state.get")?,
        calls("call@1", "noop")?,
    ))
}

/// Runs per second of the workload on `workers` workers, one task and one caller per worker.
fn throughput(workers: usize, n: u64, runs: usize, rounds: usize) -> Result<f64, Failure> {
    let pool = Arc::new(VmPool::new(workers)?);
    let keys: Vec<String> = (0..workers).map(|w| format!("workload-{w}@1")).collect();
    for key in &keys {
        pool.load(task(key, WORKLOAD))?;
        pool.run(key, json!({ "n": n }))?;
    }
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let callers: Vec<_> = keys
            .iter()
            .map(|key| {
                let (pool, key) = (pool.clone(), key.clone());
                std::thread::spawn(move || -> Result<(), String> {
                    for _ in 0..runs {
                        pool.run(&key, json!({ "n": n }))
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for caller in callers {
            caller.join().map_err(|_| "a caller thread panicked")??;
        }
        rates.push((workers * runs) as f64 / start.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

/// CPython's figures, from `bench/vm/cpython_peer.py` (interpreter: `$WALLE_PYTHON` or `python3`).
fn cpython(n: u64, runs: usize, rounds: usize) -> Result<Value, Failure> {
    let python = std::env::var("WALLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args([PEER, &n.to_string(), &runs.to_string(), &rounds.to_string()])
        .output()
        .map_err(|e| format!("cannot run {python} {PEER}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{PEER} failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn rss_kib() -> Result<f64, Failure> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("/proc/self/statm has no resident field")?
        .parse()?;
    Ok(pages * 4.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
