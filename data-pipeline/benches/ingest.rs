//! The full on-device path per event, on one thread: parse and validate the JSON line
//! (`Event::from_json`), append to the `EventStore` (SQLite in a temporary directory, batches of
//! 256), match against 1,000 installed trigger patterns, observe in a `FeatureSet` with 200
//! installed features of mixed kinds, and compute the features of every firing.
//!
//! `cargo bench -p walle-pipeline --bench ingest` (release). The workload is the matcher
//! benchmark's (`benches/workload`): the same 1,000 patterns and app sessions visiting item
//! pages; the first 50 of the 250 tasks also declare 4 features each. It prints:
//!
//! * each stage alone over the whole stream (events/s and µs per event), so the costs can be
//!   told apart, and observe again with 2,000 more features no event passes (what the filter
//!   index saves);
//! * ingest + store + match together (the issue's target: 200,000 events/s with 1,000 patterns
//!   on one core), and the full path with features;
//! * p50/p99 event→firing latency on the full path: from the start of processing an event
//!   (before parsing) to the firings coming out of the matcher, and to their features computed;
//! * heap per installed pattern and per installed feature (counting allocator), and the heap
//!   the features' windows hold at the end of the stream beside `FeatureSet::stats()`'s estimate.
//!
//! Each stage alone is timed as the best of three runs. Environment: `WALLE_BENCH_EVENTS`
//! (default 200,000), `WALLE_BENCH_BATCH` (events per store transaction, default the store's
//! 256).

mod workload;

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use walle_pipeline::{
    Event, EventStore, FeatureSet, FeatureSpec, Firing, PatternSpec, StoreConfig, TriggerSet,
};
use workload::{Counting, FEATURES, PATTERNS, features, heap, patterns, percentile, stream};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs of each stage alone; the fastest counts.
const RUNS: usize = 3;

/// The fastest of [`RUNS`] runs of `run` (which returns the time of its timed part).
fn best(mut run: impl FnMut() -> Duration) -> Duration {
    (0..RUNS).map(|_| run()).min().unwrap_or_default()
}

/// Features installed beside the 200 whose filters the stream never passes.
const IDLE_FEATURES: usize = 2000;

/// Task `t`: tasks declare 4 patterns each, and the first `FEATURES / 4` also 4 features each.
fn task(t: usize) -> String {
    format!("task-{t}")
}

fn install_triggers(specs: &[PatternSpec]) -> TriggerSet {
    let mut set = TriggerSet::new();
    for (t, chunk) in specs.chunks(4).enumerate() {
        set.install(&task(t), chunk);
    }
    set
}

fn install_features(specs: &[FeatureSpec]) -> FeatureSet {
    let mut set = FeatureSet::new();
    for (t, chunk) in specs.chunks(4).enumerate() {
        set.install(&task(t), chunk)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    set
}

fn open_store(dir: &tempfile::TempDir, name: &str) -> EventStore {
    EventStore::open(&dir.path().join(name), store_config()).unwrap_or_else(|e| panic!("{e}"))
}

fn store_config() -> StoreConfig {
    let mut config = StoreConfig::default();
    if let Some(batch) = std::env::var("WALLE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.batch_events = batch;
    }
    config
}

struct Stage {
    name: &'static str,
    elapsed: Duration,
}

fn us_per_event(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn rate(d: Duration, n: usize) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let count: usize = std::env::var("WALLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut rng = StdRng::seed_from_u64(7);
    let pattern_specs = patterns(&mut rng);
    let events = stream(&mut rng, count);
    let feature_specs = features(&mut rng);
    let lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap_or_default())
        .collect();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));

    // Installed sizes.
    let before = heap();
    let triggers = install_triggers(&pattern_specs);
    let pattern_bytes = heap() - before;
    drop(triggers);
    let before = heap();
    let installed_features = install_features(&feature_specs);
    let feature_bytes = heap() - before;
    let states = installed_features.stats().states;
    drop(installed_features);

    // Each stage alone, the best of RUNS runs (the machine may be shared).
    let mut stages = Vec::new();
    let parse = best(|| {
        let started = Instant::now();
        for line in &lines {
            black_box(Event::from_json(line).ok());
        }
        started.elapsed()
    });
    stages.push(Stage {
        name: "parse + validate (Event::from_json)",
        elapsed: parse,
    });

    let mut run = 0;
    let store_time = best(|| {
        run += 1;
        let mut store = open_store(&dir, &format!("stage-{run}.sqlite"));
        let started = Instant::now();
        for e in &events {
            store.append(e).unwrap_or_else(|e| panic!("{e}"));
        }
        store.flush().unwrap_or_else(|e| panic!("{e}"));
        started.elapsed()
    });
    stages.push(Stage {
        name: "store append (EventStore::append)",
        elapsed: store_time,
    });

    let mut firings = 0usize;
    let match_time = best(|| {
        let mut triggers = install_triggers(&pattern_specs);
        firings = 0;
        let started = Instant::now();
        for e in &events {
            firings += triggers.on_event(e).len();
        }
        started.elapsed()
    });
    stages.push(Stage {
        name: "match (TriggerSet::on_event, 1,000 patterns)",
        elapsed: match_time,
    });

    // 2,000 more features whose filters no event of the stream passes (other pages, custom
    // events): what they add per event is what the filter index does not save.
    let idle: Vec<FeatureSpec> = (0..IDLE_FEATURES)
        .map(|n| {
            let filter = if n % 2 == 0 {
                format!(r#"where = [{{ field = "page", prefix = "settings/{n}/" }}]"#)
            } else {
                format!(
                    r#"event = "custom"
where = [{{ field = "args.name", equals = "promo-{n}" }}]"#
                )
            };
            let text = format!(
                "name = \"idle{n}\"\naggregate = \"count\"\n{filter}\nwindow = {{ sliding_ms = 600000 }}\n"
            );
            toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
        })
        .collect();
    let (mut window_heap, mut stats) = (0, None);
    let (mut observe_time, mut with_idle) = (Duration::MAX, Duration::MAX);
    // Alternated, so that both see the same machine.
    for _ in 0..RUNS {
        let before = heap();
        let mut feature_set = install_features(&feature_specs);
        let installed = heap() - before;
        let started = Instant::now();
        for e in &events {
            feature_set.observe(e);
        }
        observe_time = observe_time.min(started.elapsed());
        window_heap = heap() - before - installed;
        stats = Some(feature_set.stats());
        drop(feature_set);

        let mut feature_set = install_features(&feature_specs);
        for (t, chunk) in idle.chunks(4).enumerate() {
            feature_set
                .install(&format!("idle-{t}"), chunk)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let started = Instant::now();
        for e in &events {
            feature_set.observe(e);
        }
        with_idle = with_idle.min(started.elapsed());
    }
    let stats = stats.unwrap_or_default();
    stages.push(Stage {
        name: "observe (FeatureSet::observe, 200 features)",
        elapsed: observe_time,
    });

    // Computing features needs the windows as of each firing: replay and compute in order.
    let mut feature_set = install_features(&feature_specs);
    let mut with_features = 0usize;
    let mut compute_time = Duration::ZERO;
    let mut triggers = install_triggers(&pattern_specs);
    for e in &events {
        feature_set.observe(e);
        for f in triggers.on_event(e) {
            let t = Instant::now();
            let values = feature_set.compute(&f);
            compute_time += t.elapsed();
            with_features += usize::from(!values.is_empty());
        }
    }
    drop((feature_set, triggers));

    // Ingest + store + match: the issue's target path.
    let mut store = open_store(&dir, "ism.sqlite");
    let mut triggers = install_triggers(&pattern_specs);
    let started = Instant::now();
    let mut fired = 0usize;
    for line in &lines {
        let Ok(e) = Event::from_json(line) else {
            continue;
        };
        store.append(&e).unwrap_or_else(|e| panic!("{e}"));
        fired += triggers.on_event(&e).len();
    }
    store.flush().unwrap_or_else(|e| panic!("{e}"));
    let ism = started.elapsed();
    drop((store, triggers));

    // The full path, with latencies.
    let mut store = open_store(&dir, "full.sqlite");
    let mut triggers = install_triggers(&pattern_specs);
    let mut feature_set = install_features(&feature_specs);
    let mut to_firing = Vec::new();
    let mut to_features = Vec::new();
    let mut out: Vec<(Firing, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    let started = Instant::now();
    for line in &lines {
        let t0 = Instant::now();
        let Ok(e) = Event::from_json(line) else {
            continue;
        };
        store.append(&e).unwrap_or_else(|e| panic!("{e}"));
        feature_set.observe(&e);
        let f = triggers.on_event(&e);
        if f.is_empty() {
            continue;
        }
        to_firing.push(t0.elapsed());
        for firing in f {
            let values = feature_set.compute(&firing);
            out.push((firing, values));
        }
        to_features.push(t0.elapsed());
        // Handing firings to the runner is not part of the path.
        if out.len() > 4096 {
            out.clear();
        }
    }
    store.flush().unwrap_or_else(|e| panic!("{e}"));
    let full = started.elapsed();
    to_firing.sort();
    to_features.sort();

    println!(
        "ingest path, one thread: {count} events, {PATTERNS} patterns, {FEATURES} features ({states} distinct states), store batches of {}",
        store_config().batch_events
    );
    println!("stages alone:");
    let mut sum = Duration::ZERO;
    for s in &stages {
        sum += s.elapsed;
        println!(
            "  {:<46} {:>10.0} events/s  {:>6.2} us/event",
            s.name,
            rate(s.elapsed, count),
            us_per_event(s.elapsed, count)
        );
    }
    println!(
        "  {:<46} {:>10} {:>17.2} us per firing of a task with features ({with_features} of {} firings)",
        "compute (FeatureSet::compute, 4 features)",
        "",
        compute_time.as_secs_f64() * 1e6 / with_features.max(1) as f64,
        firings
    );
    println!(
        "  {:<46} {:>10.0} events/s  {:>6.2} us/event",
        "observe, + 2,000 features no event passes",
        rate(with_idle, count),
        us_per_event(with_idle, count)
    );
    println!(
        "  {:<46} {:>10.0} events/s  {:>6.2} us/event",
        "sum of the stages",
        rate(sum, count),
        us_per_event(sum, count)
    );
    println!(
        "ingest + store + match: {:.0} events/s ({:.2} us/event, {fired} firings; target 200,000 events/s)",
        rate(ism, count),
        us_per_event(ism, count)
    );
    println!(
        "full path (+ observe + compute): {:.0} events/s ({:.2} us/event)",
        rate(full, count),
        us_per_event(full, count)
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "event->firing latency ({} events that fired): p50 {:.2} us, p99 {:.2} us, max {:.0} us; with features computed: p50 {:.2} us, p99 {:.2} us",
        to_firing.len(),
        us(percentile(&to_firing, 0.5)),
        us(percentile(&to_firing, 0.99)),
        us(to_firing.last().copied().unwrap_or_default()),
        us(percentile(&to_features, 0.5)),
        us(percentile(&to_features, 0.99)),
    );
    println!(
        "memory: {:.0} bytes per installed pattern; {:.0} bytes per installed feature; windows at the end: {} KiB measured ({:.0} bytes per feature), {} KiB estimated by stats(), {} partitions, {} events kept",
        pattern_bytes as f64 / PATTERNS as f64,
        feature_bytes as f64 / FEATURES as f64,
        window_heap / 1024,
        window_heap as f64 / FEATURES as f64,
        stats.memory_bytes / 1024,
        stats.partitions,
        stats.kept_events
    );
}
