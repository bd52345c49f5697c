//! The incremental `FeatureSet` agrees with the reference feature computer (every feature
//! recomputed from the full event list at every compute) on seeded random streams of events,
//! installs, removals, clock advances and firings, under two sets of limits: tiny caps with no
//! sweeping (partition eviction, event and distinct caps exact), and sweeping of expired
//! partitions with room for every partition (sweeping never changes a result).
//!
//! Alphabets are small so that windows overlap, partitions collide, events come late and caps
//! bite. A disagreement is shrunk (operations dropped while it persists) and printed with its
//! seed.

mod feature_reference;
mod reference;

use feature_reference::FeatureReference;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use walle_pipeline::{
    Condition, Event, EventKind, FeatureLimits, FeatureSet, FeatureSpec, Firing, WindowSpec,
};

/// Random streams checked per set of limits.
const STREAMS: u64 = 3_000;
const MAX_OPS: usize = 70;
const TASKS: [&str; 3] = ["t0", "t1", "t2"];

#[derive(Debug, Clone)]
enum Op {
    Event(Event),
    Advance(i64),
    Install(String, Vec<FeatureSpec>),
    Remove(String),
    Compute(Firing),
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

fn condition(rng: &mut StdRng) -> Condition {
    let field = |f: &str| Condition {
        field: f.to_owned(),
        ..Default::default()
    };
    match rng.gen_range(0..5) {
        0 => Condition {
            equals: Some(json!(pick(rng, &["x", "y"]))),
            ..field("args.a")
        },
        1 => Condition {
            gt: Some(json!(1)),
            ..field("args.v")
        },
        2 => Condition {
            r#in: Some(vec![json!("x"), json!("")]),
            ..field("item")
        },
        3 => Condition {
            prefix: Some("h".into()),
            ..field("page")
        },
        _ => Condition {
            not_equals: Some(json!("exit")),
            ..field("event")
        },
    }
}

fn window(rng: &mut StdRng) -> Option<WindowSpec> {
    let w = WindowSpec::default();
    Some(match rng.gen_range(0..12) {
        0 => return None,
        1 => WindowSpec { r#match: true, ..w },
        2 | 3 => WindowSpec {
            count: Some(rng.gen_range(1..=5)),
            ..w
        },
        4 | 5 => WindowSpec {
            tumbling_ms: Some(rng.gen_range(4..=30)),
            ..w
        },
        6 | 7 => WindowSpec {
            sliding_ms: Some(rng.gen_range(3..=30)),
            ..w
        },
        8 | 9 => {
            let slide = rng.gen_range(2..=6);
            WindowSpec {
                sliding_ms: Some(slide * rng.gen_range(1..=4)),
                slide_ms: Some(slide),
                ..w
            }
        }
        _ => WindowSpec {
            session_gap_ms: Some(rng.gen_range(1..=8)),
            ..w
        },
    })
}

fn feature(rng: &mut StdRng, name: String) -> FeatureSpec {
    let aggregate = *pick(
        rng,
        &[
            "count",
            "sum",
            "avg",
            "min",
            "max",
            "first",
            "last",
            "distinct_count",
            "duration",
        ],
    );
    let of = match aggregate {
        "duration" => None,
        "count" if rng.gen_bool(0.5) => None,
        "sum" | "avg" | "min" | "max" => Some(*pick(rng, &["args.v", "args.v", "ts"])),
        _ => Some(*pick(rng, &["args.v", "args.v", "ts", "item", "page"])),
    };
    let mut partition_by: Vec<String> = Vec::new();
    for f in ["session", "item", "page"] {
        if rng.gen_bool(if f == "page" { 0.1 } else { 0.4 }) {
            partition_by.push(f.into());
        }
    }
    if rng.gen_bool(0.5) {
        partition_by.reverse();
    }
    FeatureSpec {
        name,
        aggregate: aggregate.into(),
        of: of.map(Into::into),
        event: rng
            .gen_bool(0.3)
            .then(|| pick(rng, &["click", "enter"]).to_string()),
        page: rng.gen_bool(0.1).then(|| "a".to_string()),
        item: None,
        session: None,
        r#where: (0..rng.gen_range(0..=1)).map(|_| condition(rng)).collect(),
        partition_by,
        window: window(rng),
    }
}

fn features(rng: &mut StdRng) -> Vec<FeatureSpec> {
    (0..rng.gen_range(1..=4))
        .map(|i| feature(rng, format!("f{i}")))
        .collect()
}

fn event(rng: &mut StdRng, n: usize, ts: i64) -> Event {
    let mut args = Map::new();
    if rng.gen_bool(0.85) {
        // Exactly summable in the reference's fixed point, plus what numeric aggregates skip.
        let v = pick(
            rng,
            &[
                json!(5),
                json!(2.5),
                json!(0.1),
                json!(0.3),
                json!(-7),
                json!(1e15),
                json!(123456.789),
                json!(5.0),
                json!("x"),
                json!(true),
                Value::Null,
                json!(2e300),
                json!([1]),
            ],
        )
        .clone();
        args.insert("v".into(), v);
    }
    if rng.gen_bool(0.6) {
        args.insert("a".into(), json!(pick(rng, &["x", "y"])));
    }
    Event {
        id: format!("e{n}"),
        ts,
        session: pick(rng, &["s1", "s2"]).to_string(),
        page: pick(rng, &["a", "b", "h"]).to_string(),
        event: pick(rng, &[EventKind::Enter, EventKind::Click, EventKind::Exit]).clone(),
        item: pick(rng, &["x", "y", ""]).to_string(),
        args,
    }
}

fn stream(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    for task in TASKS.iter().take(rng.gen_range(1..=3)) {
        ops.push(Op::Install(task.to_string(), features(&mut rng)));
    }
    let mut ts = 0i64;
    let mut recent: Vec<Event> = Vec::new();
    for n in 0..rng.gen_range(0..=MAX_OPS) {
        match rng.gen_range(0..100) {
            0..=3 => ops.push(Op::Advance(ts + rng.gen_range(0..15))),
            4..=6 => {
                let task = pick(&mut rng, &TASKS).to_string();
                ops.push(Op::Install(task, features(&mut rng)));
            }
            7 | 8 => ops.push(Op::Remove(pick(&mut rng, &TASKS).to_string())),
            9..=30 if !recent.is_empty() => {
                // A firing whose last matched event is a recent one, its window a run of recent
                // events up to it.
                let end = recent.len() - rng.gen_range(0..recent.len().min(3));
                let start = end.saturating_sub(rng.gen_range(1..=6));
                let window = recent[start..end].to_vec();
                let last = window[window.len() - 1].clone();
                ops.push(Op::Compute(Firing {
                    task: pick(&mut rng, &TASKS).to_string(),
                    trigger: "t".into(),
                    matched: vec![window[0].clone(), last],
                    window,
                }));
            }
            _ => {
                ts += rng.gen_range(0..4);
                let t = if rng.gen_bool(0.15) {
                    (ts - rng.gen_range(0..15)).max(0)
                } else {
                    ts
                };
                let e = event(&mut rng, n, t);
                recent.push(e.clone());
                ops.push(Op::Event(e));
            }
        }
    }
    ops
}

type Computed = Map<String, Value>;

/// Runs `ops` through both; returns the first compute they disagree on.
fn disagreement(ops: &[Op], limits: FeatureLimits) -> Option<(usize, Computed, Computed)> {
    let mut set = FeatureSet::with_limits(limits);
    let mut reference = FeatureReference::new(limits);
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Event(e) => {
                set.observe(e);
                reference.observe(e);
            }
            Op::Advance(ts) => {
                set.advance_to(*ts);
                reference.advance_to(*ts);
            }
            Op::Install(task, specs) => {
                assert!(
                    set.install(task, specs).is_ok(),
                    "generated features are valid: {specs:#?}"
                );
                reference.install(task, specs);
            }
            Op::Remove(task) => {
                set.remove(task);
                reference.remove(task);
            }
            Op::Compute(firing) => {
                let got = set.compute(firing);
                let want = reference.compute(firing);
                if got != want {
                    return Some((i, got, want));
                }
            }
        }
    }
    None
}

/// Drops operations while the disagreement persists.
fn shrink(mut ops: Vec<Op>, limits: FeatureLimits) -> Vec<Op> {
    let mut i = 0;
    while i < ops.len() {
        let mut shorter = ops.clone();
        shorter.remove(i);
        if disagreement(&shorter, limits).is_some() {
            ops = shorter;
        } else {
            i += 1;
        }
    }
    ops
}

fn check(limits: FeatureLimits, salt: u64) {
    let base: u64 = std::env::var("WALLE_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xfea7);
    // Feature values computed, and those that saw something, per window kind: the generator must
    // keep every kind busy.
    let mut seen: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for i in 0..STREAMS {
        let seed = base.wrapping_add(salt).wrapping_add(i);
        let ops = stream(seed);
        if let Some((at, got, want)) = disagreement(&ops, limits) {
            let small = shrink(ops, limits);
            let (at2, got2, want2) = disagreement(&small, limits).unwrap_or((at, got, want));
            panic!(
                "seed {seed}: disagreement at op {at2}\nfeature set: {got2:?}\nreference:   {want2:?}\nops: {small:#?}"
            );
        }
        let mut reference = FeatureReference::new(limits);
        let mut installed: std::collections::HashMap<String, Vec<FeatureSpec>> = Default::default();
        for op in &ops {
            match op {
                Op::Event(e) => reference.observe(e),
                Op::Advance(ts) => reference.advance_to(*ts),
                Op::Install(t, s) => {
                    reference.install(t, s);
                    installed.insert(t.clone(), s.clone());
                }
                Op::Remove(t) => {
                    reference.remove(t);
                    installed.remove(t);
                }
                Op::Compute(f) => {
                    let values = reference.compute(f);
                    for spec in installed.get(&f.task).into_iter().flatten() {
                        let kind = window_kind(spec);
                        let v = &values[&spec.name];
                        let entry = seen.entry(kind).or_default();
                        entry.0 += 1;
                        entry.1 += usize::from(!v.is_null() && *v != json!(0));
                    }
                }
            }
        }
    }
    for (kind, (values, non_empty)) in &seen {
        assert!(
            non_empty * 3 > *values,
            "{kind}: {non_empty} of {values} values saw anything ({seen:?})"
        );
    }
    assert_eq!(seen.len(), 6, "every window kind: {seen:?}");
}

fn window_kind(spec: &FeatureSpec) -> &'static str {
    match &spec.window {
        None => "match",
        Some(w) if w.r#match => "match",
        Some(w) if w.count.is_some() => "count",
        Some(w) if w.tumbling_ms.is_some() => "tumbling",
        Some(w) if w.slide_ms.is_some() => "hopping",
        Some(w) if w.sliding_ms.is_some() => "sliding",
        Some(_) => "session",
    }
}

#[test]
fn tiny_caps_without_sweeping_agree_with_reference() {
    check(
        FeatureLimits {
            max_partitions: 2,
            max_window_events: 3,
            max_distinct: 2,
            sweep_per_event: 0,
        },
        0,
    );
}

#[test]
fn sweeping_expired_partitions_agrees_with_reference() {
    check(
        FeatureLimits {
            max_partitions: 1000,
            max_window_events: 4,
            max_distinct: 3,
            sweep_per_event: 3,
        },
        1_000_000,
    );
}
