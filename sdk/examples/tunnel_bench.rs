//! Tunnel benchmark: a task output of ~30 KB, from the moment the event that triggers it is
//! tracked until the cloud has acknowledged the upload (the record left the device's outbox),
//! over real gRPC on loopback, with a cloud and a device in this process.
//!
//! `cargo run --release -p walle-sdk --example tunnel_bench -- [RECORDS] [PAYLOAD_BYTES]`
//! (defaults 200 and 30000; the record's JSON comes out about 0.79 × PAYLOAD_BYTES, so 38500 gives
//! a 30 KB record). Prints p50/p99 of the whole path and of the task run inside it,
//! then the throughput of a burst. See bench/RESULTS.md for figures and the peers' numbers.

use std::path::Path;
use std::time::{Duration, Instant};

use walle_device::Agent;
use walle_pipeline::{Event, EventKind};
use walle_sdk::demo::Fleet;

const TASK: &str = r#"
import walle

def run(ctx):
    enter = ctx["matched"][0]
    return {"session": enter["session"], "blob": BLOB}
"#;

fn task_dir(root: &Path, payload_bytes: usize) -> std::path::PathBuf {
    let dir = root.join("tunnel-bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("walle.toml"),
        format!(
            r#"name = "tunnel-bench"
version = "1.0.0"
runtime = "python"
entry = "main.py"
handler = "run"

[[triggers]]
name = "visit"
partition_by = ["session"]
steps = [{{ event = "enter" }}, {{ event = "exit" }}]

[limits]
max_output_bytes = {}
"#,
            payload_bytes + 1024
        ),
    )
    .unwrap();
    // Digits of a pseudo-random walk: JSON numbers, compressible about as much as real features.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut numbers = Vec::new();
    let mut length = 0;
    while length < payload_bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let number = format!("{:.4}", (x % 1_000_000) as f64 / 1000.0);
        length += number.len() + 2;
        numbers.push(number);
    }
    let script = format!("BLOB = [{}]\n{TASK}", numbers.join(", "));
    std::fs::write(dir.join("main.py"), script).unwrap();
    dir
}

fn event(session: &str, kind: EventKind, ts: i64) -> Event {
    Event {
        id: format!("{session}-{}", kind.as_str()),
        ts,
        session: session.into(),
        page: "item".into(),
        event: kind,
        item: String::new(),
        args: Default::default(),
    }
}

/// Tracks one visit and waits until the cloud acknowledged its record.
async fn one_upload(agent: &Agent, n: usize) -> (Duration, Duration) {
    let uploaded = agent.status().records_uploaded;
    let session = format!("s{n}");
    let ts = n as i64 * 10;
    agent.track(event(&session, EventKind::Enter, ts)).unwrap();
    let start = Instant::now();
    agent
        .track(event(&session, EventKind::Exit, ts + 1))
        .unwrap();
    let mut ran_at = None;
    loop {
        let status = agent.status();
        if ran_at.is_none() && status.runs_ok > n as u64 {
            ran_at = Some(start.elapsed());
        }
        if status.records_uploaded > uploaded {
            let total = start.elapsed();
            return (total, ran_at.unwrap_or(total));
        }
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().map_or(200, |a| a.parse().unwrap());
    let payload_bytes: usize = args.next().map_or(30_000, |a| a.parse().unwrap());
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await.unwrap();
    fleet
        .publish(&task_dir(root.path(), payload_bytes))
        .await
        .unwrap();
    fleet
        .client
        .create_release("tunnel-bench", "1.0.0")
        .await
        .unwrap();
    fleet.wait_installed("tunnel-bench", "1.0.0").await.unwrap();
    let agent = &fleet.agents[0];

    // Warm-up: the first run creates the interpreter.
    let warm_up = 5;
    for n in 0..warm_up {
        one_upload(agent, n).await;
    }
    let mut totals = Vec::with_capacity(records);
    let mut runs = Vec::with_capacity(records);
    for n in warm_up..warm_up + records {
        let (total, run) = one_upload(agent, n).await;
        totals.push(total);
        runs.push(run);
    }
    totals.sort();
    runs.sort();
    let record = agent.outputs("tunnel-bench").pop().unwrap().to_string();
    let compressed = walle_proto::tunnel::compress(vec![walle_proto::v1::TunnelRecord {
        payload: record.clone().into_bytes(),
        ..Default::default()
    }]);
    println!(
        "record: {} bytes of JSON, {} bytes in a zstd batch",
        record.len(),
        compressed.len()
    );
    println!(
        "one record, event → cloud ack ({records} records): p50 {:.2} ms, p99 {:.2} ms \
         (of which the task run up to its output: p50 {:.2} ms)",
        ms(percentile(&totals, 0.5)),
        ms(percentile(&totals, 0.99)),
        ms(percentile(&runs, 0.5)),
    );

    // Throughput: a burst of visits, until every record is acknowledged. The visits are fed
    // as fast as the task's run queue takes them (at most BURST_AHEAD waiting, inside the
    // device's 256 places per task), so no run is dropped.
    let burst = 1000;
    let before = agent.status().records_uploaded;
    let start = Instant::now();
    for n in 0..burst {
        while agent.status().runs_pending >= BURST_AHEAD {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let session = format!("burst{n}");
        let ts = 10_000_000 + n as i64 * 10;
        agent.track(event(&session, EventKind::Enter, ts)).unwrap();
        agent
            .track(event(&session, EventKind::Exit, ts + 1))
            .unwrap();
    }
    agent
        .wait_for(Duration::from_secs(600), |s| {
            s.records_uploaded >= before + burst as u64
        })
        .await
        .unwrap();
    let elapsed = start.elapsed();
    println!(
        "burst of {burst} records: {:.0} records/s, {:.1} MB/s of JSON acknowledged",
        burst as f64 / elapsed.as_secs_f64(),
        (burst * record.len()) as f64 / elapsed.as_secs_f64() / 1e6
    );
    fleet.shutdown().await;
}

/// Most runs waiting at once during the burst.
const BURST_AHEAD: usize = 200;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
