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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use walle_pipeline::{Event, EventKind, PatternSpec, TriggerSet};

/// Counts the bytes currently allocated.
struct Counting;

static HEAP: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn heap() -> isize {
    HEAP.load(Ordering::Relaxed)
}

const PATTERNS: usize = 1000;
const ITEMS: usize = 20_000;
const CATEGORIES: usize = 400;
const ACTIONS: [&str; 6] = ["cart", "like", "share", "buy", "review", "zoom"];

fn item(i: usize) -> String {
    format!("sku{i}")
}

fn category_of(item: usize) -> usize {
    item % CATEGORIES
}

fn patterns(rng: &mut StdRng) -> Vec<PatternSpec> {
    (0..PATTERNS)
        .map(|n| {
            let sku = item(rng.gen_range(0..ITEMS));
            let cat = rng.gen_range(0..CATEGORIES);
            let action = ACTIONS[rng.gen_range(0..ACTIONS.len())];
            let other = ACTIONS[rng.gen_range(0..ACTIONS.len())];
            let price = rng.gen_range(1..20) * 50;
            let text = match n % 10 {
                // Item-page view of one item, or of any item of a category (prefix).
                0..=2 => format!(
                    r#"name = "ipv-{n}"
partition_by = ["session", "item"]
within_ms = 1800000
steps = [{{ event = "enter", item = "{sku}" }}, {{ event = "exit", item = "{sku}" }}]"#
                ),
                3 => format!(
                    r#"name = "ipv-cat-{n}"
partition_by = ["session", "item"]
within_ms = 1800000
steps = [{{ event = "enter", where = [{{ field = "page", prefix = "item/c{cat}/" }}] }}, {{ event = "exit" }}]"#
                ),
                // Engaged view: enter, one or more chosen actions, exit.
                4 | 5 => format!(
                    r#"name = "engaged-{n}"
partition_by = ["session", "item"]
within_ms = 600000
steps = [
  {{ event = "enter", item = "{sku}" }},
  {{ event = "click", where = [{{ field = "args.action", in = ["{action}", "{other}"] }}], one_or_more = true }},
  {{ event = "exit" }},
]"#
                ),
                // Abandoned cart: an expensive add-to-cart not followed by a buy within a minute.
                6 | 7 => format!(
                    r#"name = "abandoned-{n}"
partition_by = ["session", "item"]
within_ms = 60000
steps = [
  {{ event = "click", where = [{{ field = "page", prefix = "item/c{cat}/" }}, {{ field = "args.action", equals = "cart" }}, {{ field = "args.price", gt = {price} }}] }},
  {{ event = "click", where = [{{ field = "args.action", equals = "buy" }}], not = true }},
]"#
                ),
                // Strict: exposed then immediately clicked.
                8 => format!(
                    r#"name = "expose-click-{n}"
partition_by = ["session"]
steps = [{{ event = "expose", item = "{sku}" }}, {{ event = "click", item = "{sku}", contiguity = "strict" }}]"#
                ),
                // Three scrolls on a category's item pages.
                _ => format!(
                    r#"name = "scrolls-{n}"
partition_by = ["session", "item"]
within_ms = 120000
skip = "no_skip"
steps = [{{ event = "scroll", where = [{{ field = "page", prefix = "item/c{cat}/" }}], times = 3 }}]"#
                ),
            };
            toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
        })
        .collect()
}

/// Sessions browsing item pages, interleaved; about 12 ms of event time per event.
fn stream(rng: &mut StdRng, count: usize) -> Vec<Event> {
    struct Visit {
        session: String,
        item: usize,
        left: usize,
    }
    let mut active: Vec<Visit> = Vec::new();
    let mut out = Vec::with_capacity(count);
    let mut ts = 1_700_000_000_000i64;
    let mut sessions = 0usize;
    while out.len() < count {
        ts += rng.gen_range(0..25);
        if active.len() < 200 || rng.gen_bool(0.05) {
            sessions += 1;
            active.push(Visit {
                session: format!("s{sessions}"),
                item: rng.gen_range(0..ITEMS),
                left: 0,
            });
            let v = active.last().map(|v| (v.session.clone(), v.item));
            if let Some((session, sku)) = v {
                let mut e = base(out.len(), ts, &session, sku, EventKind::Enter);
                e.args = Default::default();
                out.push(e);
            }
            if let Some(v) = active.last_mut() {
                v.left = rng.gen_range(2..20);
            }
            continue;
        }
        let at = rng.gen_range(0..active.len());
        let (session, sku) = (active[at].session.clone(), active[at].item);
        active[at].left -= 1;
        let kind = if active[at].left == 0 {
            EventKind::Exit
        } else {
            match rng.gen_range(0..10) {
                0..=3 => EventKind::Click,
                4..=6 => EventKind::Scroll,
                _ => EventKind::Expose,
            }
        };
        let mut e = base(out.len(), ts, &session, sku, kind.clone());
        if kind == EventKind::Click {
            e.args.insert(
                "action".into(),
                json!(ACTIONS[rng.gen_range(0..ACTIONS.len())]),
            );
            e.args.insert("price".into(), json!(rng.gen_range(1..1000)));
        }
        if kind == EventKind::Expose {
            // Exposes concern other items (recommendations on the page).
            e.item = item(rng.gen_range(0..ITEMS));
        }
        out.push(e);
        if kind == EventKind::Exit {
            active.swap_remove(at);
        }
    }
    out
}

fn base(n: usize, ts: i64, session: &str, sku: usize, kind: EventKind) -> Event {
    Event {
        id: format!("e{n}"),
        ts,
        session: session.to_owned(),
        page: format!("item/c{}/{}", category_of(sku), item(sku)),
        event: kind,
        item: item(sku),
        args: Default::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

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
