//! The compiled matcher agrees with the reference matcher on random pattern sets and random
//! streams (with installs, removals and clock advances in the middle).
//!
//! Alphabets are small so that matches, strict breaks, negations and expiries actually happen.
//! A disagreement is shrunk (operations dropped while it persists) and printed with its seed.

mod reference;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use walle_pipeline::{
    Condition, Contiguity, Event, EventKind, Firing, PatternSpec, SkipPolicy, StepSpec, TriggerSet,
};

use reference::Reference;

/// Random streams checked; the issue asks for at least 10,000.
const STREAMS: u64 = 12_000;
const MAX_OPS: usize = 60;
const TASKS: [&str; 3] = ["t0", "t1", "t2"];

#[derive(Debug, Clone)]
enum Op {
    Event(Event),
    Advance(i64),
    Install(String, Vec<PatternSpec>),
    Remove(String),
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

fn condition(rng: &mut StdRng) -> Condition {
    let field = |f: &str| Condition {
        field: f.to_owned(),
        ..Default::default()
    };
    match rng.gen_range(0..9) {
        0 => Condition {
            prefix: Some(pick(rng, &["item/", "item/a", "h"]).to_string()),
            ..field("page")
        },
        1 => Condition {
            r#in: Some(vec![json!("cart"), json!(pick(rng, &["buy", "like"]))]),
            ..field("args.action")
        },
        2 => Condition {
            not_equals: Some(json!(pick(rng, &["cart", "buy"]))),
            ..field("args.action")
        },
        3 => Condition {
            gt: Some(json!(pick(rng, &[100, 50, 200]))),
            ..field("args.price")
        },
        4 => Condition {
            le: Some(json!(pick(rng, &[150, 50]))),
            ..field("args.price")
        },
        5 => Condition {
            lt: Some(json!(100.5)),
            ..field("args.price")
        },
        6 => Condition {
            ge: Some(json!(150)),
            ..field("args.price")
        },
        7 => {
            let value = pick(rng, &[json!(150), json!(50.0), json!("150"), json!(true)]).clone();
            let name = if rng.gen_bool(0.7) {
                "args.price"
            } else {
                "args.vip"
            };
            Condition {
                equals: Some(value),
                ..field(name)
            }
        }
        _ => Condition {
            equals: Some(json!(pick(rng, &["x", "y"]))),
            ..field("item")
        },
    }
}

fn step(rng: &mut StdRng) -> StepSpec {
    let mut s = StepSpec::default();
    if rng.gen_bool(0.8) {
        s.event = Some(pick(rng, &["enter", "exit", "click", "scroll"]).to_string());
    }
    if rng.gen_bool(0.2) {
        s.page = Some(pick(rng, &["item/a", "item/b", "home"]).to_string());
    }
    if rng.gen_bool(0.1) {
        s.item = Some(pick(rng, &["x", "y"]).to_string());
    }
    if rng.gen_bool(0.05) {
        s.session = Some("s1".into());
    }
    let n = if s.event.is_none() && s.page.is_none() && s.item.is_none() && s.session.is_none() {
        rng.gen_range(1..=2)
    } else if rng.gen_bool(0.35) {
        1
    } else {
        0
    };
    s.r#where = (0..n).map(|_| condition(rng)).collect();
    s
}

fn pattern(rng: &mut StdRng, name: String) -> PatternSpec {
    let mut partition_by: Vec<String> = Vec::new();
    for f in ["session", "item", "page"] {
        if rng.gen_bool(if f == "page" { 0.1 } else { 0.5 }) {
            partition_by.push(f.into());
        }
    }
    if rng.gen_bool(0.5) {
        partition_by.reverse();
    }
    let positives = rng.gen_range(1..=4);
    let mut steps = Vec::new();
    for i in 0..positives {
        if i > 0 {
            for _ in 0..rng.gen_range(0..=1) {
                if rng.gen_bool(0.3) {
                    steps.push(StepSpec {
                        not: true,
                        ..step(rng)
                    });
                }
            }
        }
        let mut s = step(rng);
        if rng.gen_bool(0.3) {
            s.contiguity = Contiguity::Strict;
        }
        match rng.gen_range(0..10) {
            0..=5 => {}
            6 | 7 => s.times = Some(rng.gen_range(1..=3)),
            _ => s.one_or_more = true,
        }
        steps.push(s);
    }
    if rng.gen_bool(0.15) {
        steps.push(StepSpec {
            not: true,
            ..step(rng)
        });
    }
    let needs_within = steps.last().is_some_and(|s| s.not || s.one_or_more);
    let within_ms = if needs_within || rng.gen_bool(0.5) {
        Some(rng.gen_range(3..=30))
    } else {
        None
    };
    PatternSpec {
        name,
        partition_by,
        within_ms,
        skip: if rng.gen_bool(0.5) {
            SkipPolicy::PastLastEvent
        } else {
            SkipPolicy::NoSkip
        },
        steps,
    }
}

fn patterns(rng: &mut StdRng) -> Vec<PatternSpec> {
    (0..rng.gen_range(1..=4))
        .map(|i| pattern(rng, format!("p{i}")))
        .collect()
}

fn event(rng: &mut StdRng, n: usize, ts: i64) -> Event {
    let mut args = serde_json::Map::new();
    match rng.gen_range(0..4) {
        0 => {}
        _ => {
            args.insert("action".into(), json!(pick(rng, &["cart", "buy", "like"])));
        }
    }
    match rng.gen_range(0..7) {
        0 | 1 => {}
        2 => {
            args.insert("price".into(), Value::Null);
        }
        3 => {
            args.insert("price".into(), json!("150"));
        }
        _ => {
            args.insert(
                "price".into(),
                pick(rng, &[json!(50), json!(150), json!(250.5)]).clone(),
            );
        }
    }
    if rng.gen_bool(0.2) {
        args.insert("vip".into(), json!(rng.gen_bool(0.5)));
    }
    Event {
        id: format!("e{n}"),
        ts,
        session: pick(rng, &["s1", "s2"]).to_string(),
        page: pick(rng, &["item/a", "item/b", "home"]).to_string(),
        event: pick(
            rng,
            &[
                EventKind::Enter,
                EventKind::Exit,
                EventKind::Click,
                EventKind::Scroll,
            ],
        )
        .clone(),
        item: pick(rng, &["x", "y"]).to_string(),
        args,
    }
}

fn stream(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    for task in TASKS.iter().take(rng.gen_range(1..=3)) {
        ops.push(Op::Install(task.to_string(), patterns(&mut rng)));
    }
    let mut ts = 0i64;
    for n in 0..rng.gen_range(0..=MAX_OPS) {
        match rng.gen_range(0..100) {
            0..=3 => ops.push(Op::Advance(ts + rng.gen_range(0..15))),
            4..=6 => {
                let task = pick(&mut rng, &TASKS).to_string();
                ops.push(Op::Install(task, patterns(&mut rng)));
            }
            7 | 8 => ops.push(Op::Remove(pick(&mut rng, &TASKS).to_string())),
            _ => {
                ts += rng.gen_range(0..4);
                let t = if rng.gen_bool(0.05) {
                    (ts - rng.gen_range(0..8)).max(0)
                } else {
                    ts
                };
                ops.push(Op::Event(event(&mut rng, n, t)));
            }
        }
    }
    ops
}

type Seen = (String, String, Vec<String>, Vec<String>);

fn seen(firings: Vec<Firing>) -> Vec<Seen> {
    let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect();
    firings
        .into_iter()
        .map(|f| (f.task, f.trigger, ids(&f.matched), ids(&f.window)))
        .collect()
}

/// Runs `ops` through both matchers; returns the first operation they disagree on.
fn disagreement(ops: &[Op]) -> Option<(usize, Vec<Seen>, Vec<Seen>)> {
    let mut compiled = TriggerSet::new();
    let mut reference = Reference::new();
    for (i, op) in ops.iter().enumerate() {
        let (got, want) = match op {
            Op::Event(e) => (compiled.on_event(e), reference.on_event(e)),
            Op::Advance(ts) => (compiled.advance_to(*ts), reference.advance_to(*ts)),
            Op::Install(task, specs) => {
                let a = compiled.try_install(task, specs).is_ok();
                let b = reference.install(task, specs).is_ok();
                assert!(a && b, "generated patterns are valid: {specs:#?}");
                (Vec::new(), Vec::new())
            }
            Op::Remove(task) => {
                compiled.remove(task);
                reference.remove(task);
                (Vec::new(), Vec::new())
            }
        };
        let (got, want) = (seen(got), seen(want));
        if got != want {
            return Some((i, got, want));
        }
    }
    None
}

/// Drops operations while the disagreement persists.
fn shrink(mut ops: Vec<Op>) -> Vec<Op> {
    let mut i = 0;
    while i < ops.len() {
        let mut shorter = ops.clone();
        shorter.remove(i);
        if disagreement(&shorter).is_some() {
            ops = shorter;
        } else {
            i += 1;
        }
    }
    ops
}

#[test]
fn compiled_matcher_agrees_with_reference_on_random_streams() {
    let base: u64 = std::env::var("WALLE_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut firings = 0usize;
    let mut events = 0usize;
    for i in 0..STREAMS {
        let seed = base.wrapping_add(i);
        let ops = stream(seed);
        if let Some((at, got, want)) = disagreement(&ops) {
            let small = shrink(ops);
            let (at2, got2, want2) = disagreement(&small).unwrap_or((at, got, want));
            panic!(
                "seed {seed}: disagreement at op {at2}\ncompiled:  {got2:?}\nreference: {want2:?}\nops: {small:#?}"
            );
        }
        let mut reference = Reference::new();
        for op in &ops {
            match op {
                Op::Event(e) => {
                    events += 1;
                    firings += reference.on_event(e).len();
                }
                Op::Advance(ts) => firings += reference.advance_to(*ts).len(),
                Op::Install(t, s) => {
                    let _ = reference.install(t, s);
                }
                Op::Remove(t) => reference.remove(t),
            }
        }
    }
    // The generator must produce streams where things happen.
    assert!(
        firings > (STREAMS as usize) * 2,
        "{firings} firings in {events} events"
    );
}
