//! The reference feature computer: the semantics of `walle_pipeline::feature` implemented as
//! directly as possible, to check the incremental `FeatureSet` against.
//!
//! It keeps every observed event and, at each compute, recomputes every feature from that full
//! list: the partition's events since the feature's state was created (or since the partition
//! last came back after being evicted), the window selected from them by its definition, and
//! the aggregate recomputed from scratch (sums exactly, in 2^-60 fixed point). Conditions are
//! evaluated by the matcher's reference. Nothing is shared with the crate but the public types.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use walle_pipeline::feature::MAX_MAGNITUDE;
use walle_pipeline::{Condition, Event, FeatureLimits, FeatureSpec, Firing, StepSpec};

use super::reference::step_holds;

/// A window as the reference reads it (normalized, so equal windows compare equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Win {
    Match,
    Count(usize),
    Sliding(i64),
    Panes(i64, i64),
    Session(i64),
}

fn window(spec: &FeatureSpec) -> Win {
    let Some(w) = &spec.window else {
        return Win::Match;
    };
    if w.r#match {
        Win::Match
    } else if let Some(n) = w.count {
        Win::Count(n as usize)
    } else if let Some(s) = w.tumbling_ms {
        Win::Panes(s as i64, s as i64)
    } else if let Some(s) = w.sliding_ms {
        match w.slide_ms {
            Some(h) => Win::Panes(s as i64, h as i64),
            None => Win::Sliding(s as i64),
        }
    } else if let Some(g) = w.session_gap_ms {
        Win::Session(g as i64)
    } else {
        panic!("generated windows name a kind: {w:?}")
    }
}

/// The feature's filter as a step (the matcher reference evaluates steps).
fn filter(spec: &FeatureSpec) -> StepSpec {
    StepSpec {
        event: spec.event.clone(),
        page: spec.page.clone(),
        item: spec.item.clone(),
        session: spec.session.clone(),
        r#where: spec.r#where.clone(),
        ..Default::default()
    }
}

/// What identifies a feature's state: everything but the name, conditions as a sorted set.
fn state_key(spec: &FeatureSpec) -> String {
    let mut conditions: Vec<String> = spec
        .r#where
        .iter()
        .cloned()
        .chain(
            [
                ("event", &spec.event),
                ("page", &spec.page),
                ("item", &spec.item),
                ("session", &spec.session),
            ]
            .into_iter()
            .filter_map(|(field, value)| {
                value.as_ref().map(|v| Condition {
                    field: field.into(),
                    equals: Some(Value::String(v.clone())),
                    ..Default::default()
                })
            }),
        )
        .map(|c| serde_json::to_string(&c).unwrap())
        .collect();
    conditions.sort();
    conditions.dedup();
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}",
        spec.aggregate,
        spec.of,
        spec.partition_by,
        window(spec),
        conditions
    )
}

fn partition(spec: &FeatureSpec, event: &Event) -> Vec<String> {
    spec.partition_by
        .iter()
        .map(|f| match f.as_str() {
            "session" => event.session.clone(),
            "page" => event.page.clone(),
            "event" => event.event.as_str().to_owned(),
            "item" => event.item.clone(),
            other => panic!("partition field {other}"),
        })
        .collect()
}

/// The event's value of `of`, if present and not null (an empty item is no item).
fn value(of: &str, event: &Event) -> Option<Value> {
    let v = match of {
        "ts" => Value::from(event.ts),
        "session" => Value::from(event.session.clone()),
        "page" => Value::from(event.page.clone()),
        "event" => Value::from(event.event.as_str()),
        "item" if event.item.is_empty() => return None,
        "item" => Value::from(event.item.clone()),
        _ => event.args.get(of.strip_prefix("args.")?)?.clone(),
    };
    (!v.is_null()).then_some(v)
}

fn numeric(v: &Value) -> Option<f64> {
    let x = v.as_f64()?;
    (x.abs() <= MAX_MAGNITUDE).then_some(x)
}

/// The exact sum of `values`, correctly rounded: in 2^-60 fixed point (the generated values
/// fit), converted once.
fn exact_sum(values: &[f64]) -> f64 {
    let scale = 2f64.powi(60);
    let mut total: i128 = 0;
    for &x in values {
        let fixed = x * scale;
        assert!(
            fixed.fract() == 0.0 && fixed.abs() < 2f64.powi(120),
            "{x} does not fit the reference's fixed point"
        );
        total += fixed as i128;
    }
    (total as f64) / scale
}

fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_992.0 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// How `distinct_count` tells values apart.
fn distinct_key(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("n{}", n.as_f64().unwrap_or(f64::NAN) + 0.0),
        other => format!("j{other}"),
    }
}

/// One observed event: its arrival number and the clock right after it.
#[derive(Debug, Clone)]
struct Seen {
    arrival: u64,
    clock: i64,
    event: Event,
}

/// The aggregate over `window` (events with their arrival numbers).
fn aggregate(spec: &FeatureSpec, window: &[(u64, &Event)], limits: &FeatureLimits) -> Value {
    let of = spec.of.as_deref();
    let mut ordered: Vec<(i64, u64, &Event)> = window.iter().map(|&(a, e)| (e.ts, a, e)).collect();
    ordered.sort_by_key(|&(ts, a, _)| (ts, a));
    let values: Vec<Value> = ordered
        .iter()
        .filter_map(|&(_, _, e)| of.and_then(|f| value(f, e)))
        .collect();
    let numbers: Vec<f64> = values.iter().filter_map(numeric).collect();
    match spec.aggregate.as_str() {
        "count" if of.is_none() => Value::from(ordered.len()),
        "count" => Value::from(values.len()),
        "sum" => number(exact_sum(&numbers)),
        "avg" if numbers.is_empty() => Value::Null,
        "avg" => number(exact_sum(&numbers) / numbers.len() as f64),
        "min" => numbers
            .iter()
            .copied()
            .reduce(f64::min)
            .map_or(Value::Null, number),
        "max" => numbers
            .iter()
            .copied()
            .reduce(f64::max)
            .map_or(Value::Null, number),
        "first" => values.first().cloned().unwrap_or(Value::Null),
        "last" => values.last().cloned().unwrap_or(Value::Null),
        "distinct_count" => {
            let set: HashSet<String> = values.iter().map(distinct_key).collect();
            Value::from(set.len().min(limits.max_distinct))
        }
        "duration" => match (ordered.first(), ordered.last()) {
            (Some(a), Some(b)) => Value::from(b.0 - a.0),
            _ => Value::Null,
        },
        other => panic!("aggregate {other}"),
    }
}

/// Whether an event at `ts` may open a new partition at `clock`.
fn admits_new(win: Win, ts: i64, clock: i64) -> bool {
    match win {
        Win::Match => false,
        Win::Count(_) => true,
        Win::Sliding(s) => ts > clock - s,
        Win::Panes(s, h) => ts >= lowest(clock, s, h),
        Win::Session(g) => clock - ts <= g,
    }
}

/// The earliest ts in the hopping window at `clock`.
fn lowest(clock: i64, size: i64, slide: i64) -> i64 {
    (clock.div_euclid(slide) + 1) * slide - size
}

/// The reference feature computer.
pub struct FeatureReference {
    limits: FeatureLimits,
    tasks: HashMap<String, Vec<FeatureSpec>>,
    /// Per state key: how many installed features use it and the arrival count at its creation.
    states: HashMap<String, (usize, u64)>,
    seen: Vec<Seen>,
    clock: Option<i64>,
}

impl FeatureReference {
    pub fn new(limits: FeatureLimits) -> Self {
        FeatureReference {
            limits,
            tasks: HashMap::new(),
            states: HashMap::new(),
            seen: Vec::new(),
            clock: None,
        }
    }

    pub fn install(&mut self, task: &str, specs: &[FeatureSpec]) {
        let created = self.seen.len() as u64;
        for spec in specs.iter().filter(|s| window(s) != Win::Match) {
            self.states.entry(state_key(spec)).or_insert((0, created)).0 += 1;
        }
        if let Some(old) = self.tasks.insert(task.to_owned(), specs.to_vec()) {
            self.release(&old);
        }
    }

    pub fn remove(&mut self, task: &str) {
        if let Some(old) = self.tasks.remove(task) {
            self.release(&old);
        }
    }

    fn release(&mut self, specs: &[FeatureSpec]) {
        for spec in specs.iter().filter(|s| window(s) != Win::Match) {
            let key = state_key(spec);
            if let Some(state) = self.states.get_mut(&key) {
                state.0 -= 1;
                if state.0 == 0 {
                    self.states.remove(&key);
                }
            }
        }
    }

    pub fn observe(&mut self, event: &Event) {
        let clock = self.clock.map_or(event.ts, |c| c.max(event.ts));
        self.clock = Some(clock);
        self.seen.push(Seen {
            arrival: self.seen.len() as u64 + 1,
            clock,
            event: event.clone(),
        });
    }

    pub fn advance_to(&mut self, ts: i64) {
        self.clock = Some(self.clock.map_or(ts, |c| c.max(ts)));
    }

    pub fn compute(&self, firing: &Firing) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(specs) = self.tasks.get(&firing.task) else {
            return out;
        };
        for spec in specs {
            out.insert(spec.name.clone(), self.feature(spec, firing));
        }
        out
    }

    fn feature(&self, spec: &FeatureSpec, firing: &Firing) -> Value {
        let step = filter(spec);
        let win = window(spec);
        let empty = aggregate(spec, &[], &self.limits);
        let Some(last) = firing.matched.last() else {
            return empty;
        };
        let key = partition(spec, last);
        if win == Win::Match {
            let events: Vec<(u64, &Event)> = firing
                .window
                .iter()
                .enumerate()
                .filter(|(_, e)| partition(spec, e) == key && step_holds(&step, e))
                .map(|(i, e)| (i as u64, e))
                .collect();
            return aggregate(spec, &events, &self.limits);
        }
        let Some(clock) = self.clock else {
            return empty;
        };
        let Some(&(_, created)) = self.states.get(&state_key(spec)) else {
            return empty;
        };
        // The partitions' lives: replay which partitions exist (created when an event may open
        // one, evicted least recently seen first) and since when.
        let passing: Vec<&Seen> = self
            .seen
            .iter()
            .filter(|s| s.arrival > created && step_holds(&step, &s.event))
            .collect();
        let mut alive: HashMap<Vec<String>, (u64, u64)> = HashMap::new(); // key -> (born, last seen)
        for s in &passing {
            let k = partition(spec, &s.event);
            if let Some(life) = alive.get_mut(&k) {
                life.1 = s.arrival;
            } else if admits_new(win, s.event.ts, s.clock) {
                if alive.len() >= self.limits.max_partitions {
                    let oldest = alive
                        .iter()
                        .min_by_key(|(_, life)| life.1)
                        .map(|(k, _)| k.clone())
                        .unwrap();
                    alive.remove(&oldest);
                }
                alive.insert(k, (s.arrival, s.arrival));
            }
        }
        let Some(&(born, _)) = alive.get(&key) else {
            return empty;
        };
        let life: Vec<&Seen> = passing
            .into_iter()
            .filter(|s| s.arrival >= born && partition(spec, &s.event) == key)
            .collect();
        let chosen: Vec<&Seen> = match win {
            Win::Match => unreachable!(),
            Win::Count(n) => {
                let n = n.min(self.limits.max_window_events);
                life[life.len().saturating_sub(n)..].to_vec()
            }
            Win::Sliding(size) => {
                let mut inside: Vec<&Seen> = life
                    .into_iter()
                    .filter(|s| s.event.ts > clock - size)
                    .collect();
                inside.sort_by_key(|s| (s.event.ts, s.arrival));
                let cap = self.limits.max_window_events;
                inside[inside.len().saturating_sub(cap)..].to_vec()
            }
            Win::Panes(size, slide) => life
                .into_iter()
                .filter(|s| s.event.ts >= lowest(clock, size, slide))
                .collect(),
            Win::Session(gap) => {
                let mut open: Option<(i64, i64, Vec<&Seen>)> = None;
                for s in life {
                    let ts = s.event.ts;
                    if open.as_ref().is_some_and(|o| s.clock - o.1 > gap) {
                        open = None;
                    }
                    match &mut open {
                        None if s.clock - ts > gap => {}
                        None => open = Some((ts, ts, vec![s])),
                        Some(o) if ts < o.0 - gap => {}
                        Some(o) => {
                            o.0 = o.0.min(ts);
                            o.1 = o.1.max(ts);
                            o.2.push(s);
                        }
                    }
                }
                match open {
                    Some((_, end, members)) if clock - end <= gap => members,
                    _ => Vec::new(),
                }
            }
        };
        let events: Vec<(u64, &Event)> = chosen.iter().map(|s| (s.arrival, &s.event)).collect();
        aggregate(spec, &events, &self.limits)
    }
}
