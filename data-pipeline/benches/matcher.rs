//! Trigger matcher throughput, latency and memory with 1,000 installed patterns.
//!
//! `cargo bench -p walle-pipeline --bench matcher` (release). Installs 1,000 patterns of
//! realistic variety (item-page views, click loops, abandoned carts with a trailing negation,
//! strict expose-then-click, repeated scrolls; equality, `in`, prefix and numeric conditions;
//! partitioned by session and item or by session), then feeds a synthetic stream of app
//! sessions visiting item pages on one thread and prints:
//!
//! * events/s of the compiled `TriggerSet`, and of the reference matcher (every event offered to
//!   every run of every pattern; `tests/reference`) on a prefix of the same stream, as the peer
//!   baseline; both must fire the same on that prefix;
//! * p50/p99 event→firing latency: the duration of the `on_event` calls that returned a firing;
//! * heap bytes per installed pattern (compiled structures, via a counting allocator), and the
//!   heap held by in-flight matches at the end of the stream.
//!
//! Environment: `WALLE_BENCH_EVENTS` (default 1,000,000), `WALLE_BENCH_REF_EVENTS` (default
//! 5,000).

#[path = "../tests/reference/mod.rs"]
mod reference;

mod workload;

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use walle_pipeline::TriggerSet;
use workload::{Counting, PATTERNS, heap, patterns, percentile, stream};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let count: usize = std::env::var("WALLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let ref_count: usize = std::env::var("WALLE_BENCH_REF_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
        .min(count);
    let mut rng = StdRng::seed_from_u64(7);
    let specs = patterns(&mut rng);
    let events = stream(&mut rng, count);

    let before = heap();
    let mut set = TriggerSet::new();
    let install_started = Instant::now();
    for (t, chunk) in specs.chunks(4).enumerate() {
        set.install(&format!("task-{t}"), chunk);
    }
    let install_elapsed = install_started.elapsed();
    let compiled_bytes = heap() - before;
    assert_eq!(set.len(), PATTERNS);

    let mut latencies = Vec::new();
    let mut fired = 0usize;
    let started = Instant::now();
    for e in &events {
        let t = Instant::now();
        let f = set.on_event(e);
        if !f.is_empty() {
            latencies.push(t.elapsed());
            fired += f.len();
        }
    }
    let elapsed = started.elapsed();
    let in_flight = heap() - before - compiled_bytes;
    latencies.sort();

    // The peer: the reference matcher, on a prefix, checked against a fresh compiled set.
    let mut peer = reference::Reference::new();
    let mut check = TriggerSet::new();
    for (t, chunk) in specs.chunks(4).enumerate() {
        let task = format!("task-{t}");
        peer.install(&task, chunk).unwrap_or_else(|e| panic!("{e}"));
        check.install(&task, chunk);
    }
    let mut peer_fired = 0usize;
    let peer_started = Instant::now();
    for e in &events[..ref_count] {
        peer_fired += peer.on_event(e).len();
    }
    let peer_elapsed = peer_started.elapsed();
    let check_fired: usize = events[..ref_count]
        .iter()
        .map(|e| check.on_event(e).len())
        .sum();
    assert_eq!(check_fired, peer_fired, "compiled and reference disagree");

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!("trigger matcher, {PATTERNS} patterns, one thread");
    println!(
        "compiled:  {count} events in {:.2} s = {:.0} events/s, {fired} firings ({:.1} per 100 events), {} in flight at the end",
        elapsed.as_secs_f64(),
        rate(count, elapsed),
        fired as f64 * 100.0 / count as f64,
        set.partial_count()
    );
    println!(
        "reference: {ref_count} events in {:.2} s = {:.0} events/s ({peer_fired} firings, same as compiled on that prefix)",
        peer_elapsed.as_secs_f64(),
        rate(ref_count, peer_elapsed)
    );
    println!(
        "event->firing latency (on_event calls that fired): p50 {:.2} us, p99 {:.2} us, max {:.2} us",
        percentile(&latencies, 0.5).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    );
    println!(
        "install: {} tasks of 4 patterns in {:.1} ms (each install rebuilds the index over all patterns installed so far)",
        PATTERNS / 4,
        install_elapsed.as_secs_f64() * 1e3
    );
    println!(
        "memory: {:.0} bytes per installed pattern ({} KiB compiled); {} KiB held by in-flight matches and partitions",
        compiled_bytes as f64 / PATTERNS as f64,
        compiled_bytes / 1024,
        in_flight / 1024
    );
}
