//! The containment benchmark: how soon a hostile task is stopped, Walle's figure and CPython's
//! from one run.
//!
//! `bash bench/vm/hostile.sh [DEADLINE_MS KILL_AFTER_S]` (release build). Each case of
//! `bench/vm/hostile_cases.py` spends its time or memory in native code. Walle runs it as a task
//! (the deadline, a 64 MiB budget, one worker shared with a benign task) and reports when the
//! run ended, with which limit, whether the worker was lost, and how long the benign task's next
//! run took; CPython runs it with a SIGALRM deadline (`hostile_peer.py`), which can only raise
//! between bytecodes, and is killed if it has not stopped by then.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use walle_vm::{Limits, TaskAllocator, TaskCode, VmPool};

#[global_allocator]
static ALLOCATOR: TaskAllocator = TaskAllocator;

const BENCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/vm");

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let deadline_ms = args.next().unwrap_or(Ok(1000))?;
    let kill_after_s = args.next().unwrap_or(Ok(10))?;
    let cases = cases()?;
    let peer = cpython(deadline_ms, kill_after_s)?;
    println!(
        "containment benchmark: deadline {deadline_ms} ms, 64 MiB budget; peer: CPython {} (SIGALRM at the deadline, killed after {kill_after_s} s)",
        peer["python"].as_str().unwrap_or("?")
    );
    println!();
    println!(
        "| case | walle-vm: stopped after | limit | worker lost | neighbour's next run | CPython: stopped after |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, body) in cases {
        let walle = contain(&body, Duration::from_millis(deadline_ms))?;
        let cpython = match peer["stopped_after_s"][&name].as_f64() {
            Some(s) => format!("{:.0} ms", s * 1e3),
            None => format!("not stopped in {kill_after_s} s (killed)"),
        };
        println!(
            "| {name} | {:.0} ms | {} | {} | {:.1} ms | {cpython} |",
            walle.stopped_ms, walle.limit, walle.lost, walle.neighbour_ms
        );
    }
    println!();
    println!("resident memory after all cases: {} MiB", rss_kib()? / 1024);
    Ok(())
}

/// What happened to one hostile case in Walle's VM.
struct Contained {
    stopped_ms: f64,
    limit: &'static str,
    lost: &'static str,
    neighbour_ms: f64,
}

fn contain(body: &str, deadline: Duration) -> Result<Contained, Failure> {
    let pool = VmPool::new(1)?;
    let limits = Limits {
        deadline,
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    pool.load(TaskCode::python(
        "hostile@1",
        &format!("def run(ctx):\n    {body}\n"),
        limits,
    ))?;
    pool.load(TaskCode::python(
        "neighbour@1",
        "def run(ctx):\n    return 'ok'\n",
        Limits::default(),
    ))?;
    let start = Instant::now();
    let result = pool.run("hostile@1", json!(null));
    let stopped_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    pool.run("neighbour@1", json!(null))?;
    let neighbour_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(Contained {
        stopped_ms,
        limit: match &result {
            Ok(_) => "none (it finished)",
            Err(e) => e.kind(),
        },
        lost: if pool.health().abandoned_total > 0 {
            "yes"
        } else {
            "no"
        },
        neighbour_ms,
    })
}

/// The cases, read by Python from `hostile_cases.py` (one list for both sides).
fn cases() -> Result<Vec<(String, String)>, Failure> {
    let output = Command::new("python3")
        .current_dir(BENCH)
        .args([
            "-c",
            "import json, hostile_cases; print(json.dumps(hostile_cases.CASES))",
        ])
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "reading the cases: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn cpython(deadline_ms: u64, kill_after_s: u64) -> Result<Value, Failure> {
    let output = Command::new("python3")
        .arg(format!("{BENCH}/hostile_peer.py"))
        .arg(format!("{}", deadline_ms as f64 / 1e3))
        .arg(kill_after_s.to_string())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the CPython peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn rss_kib() -> Result<u64, Failure> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}
