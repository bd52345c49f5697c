//! The synthetic workload the pipeline benchmarks share: 1,000 trigger patterns of realistic
//! variety, app sessions browsing item pages, and a counting allocator to measure heap.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;
use walle_pipeline::{Event, EventKind, FeatureSpec, PatternSpec};

/// Counts the bytes currently allocated.
pub struct Counting;

/// Bytes currently allocated through [`Counting`].
pub static HEAP: AtomicIsize = AtomicIsize::new(0);

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

/// Bytes currently allocated.
pub fn heap() -> isize {
    HEAP.load(Ordering::Relaxed)
}

/// Trigger patterns installed.
pub const PATTERNS: usize = 1000;
/// Distinct items the sessions visit.
pub const ITEMS: usize = 20_000;
/// Item categories (the `item/c<cat>/` page prefix).
pub const CATEGORIES: usize = 400;
/// `args.action` of clicks.
pub const ACTIONS: [&str; 6] = ["cart", "like", "share", "buy", "review", "zoom"];

/// The id of item `i`.
pub fn item(i: usize) -> String {
    format!("sku{i}")
}

/// The category of item `item`.
pub fn category_of(item: usize) -> usize {
    item % CATEGORIES
}

/// [`PATTERNS`] trigger patterns of realistic variety.
pub fn patterns(rng: &mut StdRng) -> Vec<PatternSpec> {
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
pub fn stream(rng: &mut StdRng, count: usize) -> Vec<Event> {
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

/// An event of `session` on the page of item `sku`, without args.
pub fn base(n: usize, ts: i64, session: &str, sku: usize, kind: EventKind) -> Event {
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

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Features installed by the ingest benchmark.
pub const FEATURES: usize = 200;

/// [`FEATURES`] features of mixed kinds: every aggregate over every window kind, partitioned by
/// session and item, session, item or not at all; 40 % filter on one category's pages (an
/// event passes few of those), 45 % on an event kind or click action (many events pass), 15 %
/// take every event.
pub fn features(rng: &mut StdRng) -> Vec<FeatureSpec> {
    const AGGREGATES: [&str; 9] = [
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "first",
        "last",
        "distinct_count",
        "duration",
    ];
    const WINDOWS: [&str; 6] = [
        "",
        "window = { count = 20 }",
        "window = { tumbling_ms = 3600000 }",
        "window = { sliding_ms = 600000 }",
        "window = { sliding_ms = 600000, slide_ms = 60000 }",
        "window = { session_gap_ms = 300000 }",
    ];
    const PARTITIONS: [&str; 4] = [
        r#"partition_by = ["session", "item"]"#,
        r#"partition_by = ["session"]"#,
        r#"partition_by = ["item"]"#,
        "",
    ];
    (0..FEATURES)
        .map(|n| {
            let aggregate = AGGREGATES[n % AGGREGATES.len()];
            let of = match aggregate {
                "count" | "duration" => "",
                "sum" | "avg" | "min" | "max" => r#"of = "args.price""#,
                _ => [r#"of = "item""#, r#"of = "args.action""#, r#"of = "ts""#][rng.gen_range(0..3)],
            };
            let filter = match rng.gen_range(0..20) {
                0..=7 => format!(
                    r#"where = [{{ field = "page", prefix = "item/c{}/" }}]"#,
                    rng.gen_range(0..CATEGORIES)
                ),
                8..=12 => format!(
                    r#"event = "{}""#,
                    ["click", "scroll", "expose", "enter", "exit"][rng.gen_range(0..5)]
                ),
                13..=16 => format!(
                    r#"event = "click"
where = [{{ field = "args.action", equals = "{}" }}]"#,
                    ACTIONS[rng.gen_range(0..ACTIONS.len())]
                ),
                _ => String::new(),
            };
            let window = WINDOWS[rng.gen_range(0..WINDOWS.len())];
            let partition = PARTITIONS[rng.gen_range(0..PARTITIONS.len())];
            let text = format!(
                "name = \"f{n}\"\naggregate = \"{aggregate}\"\n{of}\n{filter}\n{partition}\n{window}\n"
            );
            toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
        })
        .collect()
}
