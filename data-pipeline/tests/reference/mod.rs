//! The reference matcher: the semantics of `walle_pipeline::pattern` implemented as directly as
//! possible, to check the compiled `TriggerSet` against.
//!
//! Every event is offered to every pattern, and within the pattern to every run of the event's
//! partition; conditions are evaluated straight from the `StepSpec`s; each pattern keeps the
//! full event log of each partition; deadlines are found by scanning all runs. Nothing here is
//! shared with the compiled matcher except the public spec types. It ignores the cap on runs per
//! pattern (tests stay far below it).

#![allow(dead_code)]

use std::collections::HashMap;

use serde_json::Value;
use walle_pipeline::matcher::MAX_WINDOW_EVENTS;
use walle_pipeline::pattern::MAX_LOOP_EVENTS;
use walle_pipeline::{
    Condition, Contiguity, Event, Firing, PatternError, PatternSpec, SkipPolicy, StepSpec,
    validate_patterns,
};

/// A positive step and the negations in the gap before it.
struct Positive {
    step: StepSpec,
    negs_before: Vec<StepSpec>,
}

struct Pattern {
    id: u64,
    task: String,
    spec: PatternSpec,
    positives: Vec<Positive>,
    trailing_negs: Vec<StepSpec>,
    /// Every event of every partition seen since the pattern was installed.
    logs: HashMap<Vec<String>, Vec<Event>>,
    runs: Vec<RefRun>,
}

struct RefRun {
    id: u64,
    key: Vec<String>,
    /// The positive step being filled (`positives.len()` when all are).
    step: usize,
    count: u32,
    /// Log positions of the first and the latest event taken.
    first: usize,
    last: usize,
    start_ts: i64,
    /// (positive step, event) for every event taken.
    taken: Vec<(usize, Event)>,
}

/// The reference matcher.
#[derive(Default)]
pub struct Reference {
    patterns: Vec<Pattern>,
    clock: Option<i64>,
    next_pattern: u64,
    next_run: u64,
}

fn value_of(event: &Event, field: &str) -> Option<Value> {
    let v = match field {
        "session" => Value::String(event.session.clone()),
        "page" => Value::String(event.page.clone()),
        "event" => Value::String(event.event.as_str().to_owned()),
        "item" => Value::String(event.item.clone()),
        _ => event.args.get(field.strip_prefix("args.")?)?.clone(),
    };
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(v),
        _ => None,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => false,
    }
}

fn holds(c: &Condition, event: &Event) -> bool {
    let Some(v) = value_of(event, &c.field) else {
        return false;
    };
    let num = |bound: &Option<Value>, cmp: fn(f64, f64) -> bool| {
        bound.as_ref().map(|b| match (v.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if v.is_number() => cmp(x, y),
            _ => false,
        })
    };
    if let Some(x) = &c.equals {
        return same(&v, x);
    }
    if let Some(x) = &c.not_equals {
        return !same(&v, x);
    }
    if let Some(xs) = &c.r#in {
        return xs.iter().any(|x| same(&v, x));
    }
    if let Some(p) = &c.prefix {
        return v.as_str().is_some_and(|s| s.starts_with(p.as_str()));
    }
    num(&c.lt, |x, y| x < y)
        .or(num(&c.le, |x, y| x <= y))
        .or(num(&c.gt, |x, y| x > y))
        .or(num(&c.ge, |x, y| x >= y))
        .unwrap_or(false)
}

pub fn step_holds(step: &StepSpec, event: &Event) -> bool {
    step.event
        .as_ref()
        .is_none_or(|v| event.event.as_str() == v)
        && step.page.as_ref().is_none_or(|v| &event.page == v)
        && step.item.as_ref().is_none_or(|v| &event.item == v)
        && step.session.as_ref().is_none_or(|v| &event.session == v)
        && step.r#where.iter().all(|c| holds(c, event))
}

fn strict(step: &StepSpec) -> bool {
    step.contiguity == Contiguity::Strict
}

/// What offering an event did to a run.
enum Res {
    Keep,
    Dead,
    Done,
}

impl Pattern {
    fn new(id: u64, task: &str, spec: &PatternSpec) -> Pattern {
        let mut positives = Vec::new();
        let mut negs = Vec::new();
        for step in &spec.steps {
            if step.not {
                negs.push(step.clone());
            } else {
                positives.push(Positive {
                    step: step.clone(),
                    negs_before: std::mem::take(&mut negs),
                });
            }
        }
        Pattern {
            id,
            task: task.to_owned(),
            spec: spec.clone(),
            positives,
            trailing_negs: negs,
            logs: HashMap::new(),
            runs: Vec::new(),
        }
    }

    fn key(&self, event: &Event) -> Vec<String> {
        self.spec
            .partition_by
            .iter()
            .map(|f| match value_of(event, f) {
                Some(Value::String(s)) => s,
                _ => String::new(),
            })
            .collect()
    }

    fn needs(&self, step: usize) -> u32 {
        self.positives[step].step.times.unwrap_or(1)
    }

    fn is_loop(&self, step: usize) -> bool {
        self.positives[step].step.one_or_more
    }

    /// Whether the run has all its positive events and only waits for its window to end.
    fn waits_for_time(&self, run: &RefRun) -> bool {
        let m = self.positives.len();
        run.step == m || (run.step == m - 1 && self.is_loop(run.step) && run.count > 0)
    }

    /// Run `run` takes `event` (at log position `pos`) into positive step `step`.
    fn take(&self, run: &mut RefRun, step: usize, pos: usize, event: &Event) -> Res {
        if step != run.step {
            run.step = step;
            run.count = 0;
        }
        run.count += 1;
        run.last = pos;
        run.taken.push((step, event.clone()));
        if !self.is_loop(step) && run.count == self.needs(step) {
            run.step += 1;
            run.count = 0;
        }
        if run.step == self.positives.len() && self.trailing_negs.is_empty() {
            Res::Done
        } else {
            Res::Keep
        }
    }

    /// Offers the event at log position `pos` of the run's partition to the run.
    fn offer(&self, run: &mut RefRun, pos: usize, event: &Event) -> Res {
        let m = self.positives.len();
        let next_to_last = pos == run.last + 1;
        let fits = |s: usize| {
            step_holds(&self.positives[s].step, event)
                && (!strict(&self.positives[s].step) || next_to_last)
        };
        let forbidden = |negs: &[StepSpec]| negs.iter().any(|n| step_holds(n, event));
        if run.step == m {
            return if forbidden(&self.trailing_negs) {
                Res::Dead
            } else {
                Res::Keep
            };
        }
        let s = run.step;
        if self.is_loop(s) && run.count > 0 {
            if s + 1 < m && fits(s + 1) {
                return self.take(run, s + 1, pos, event);
            }
            if fits(s) {
                return self.take(run, s, pos, event);
            }
            let negs = if s + 1 < m {
                &self.positives[s + 1].negs_before
            } else {
                &self.trailing_negs
            };
            if forbidden(negs) {
                return Res::Dead;
            }
            if strict(&self.positives[s].step) {
                // The partition's next event did not extend the loop: it is closed, and the
                // following step goes on with its own contiguity.
                run.step = s + 1;
                run.count = 0;
                if s + 1 < m && strict(&self.positives[s + 1].step) {
                    return Res::Dead;
                }
            }
            return Res::Keep;
        }
        if fits(s) {
            return self.take(run, s, pos, event);
        }
        if run.count == 0 && forbidden(&self.positives[s].negs_before) {
            return Res::Dead;
        }
        if strict(&self.positives[s].step) {
            return Res::Dead;
        }
        Res::Keep
    }

    fn firing(&self, run: &RefRun) -> Firing {
        let log = &self.logs[&run.key];
        let from = run
            .first
            .max((run.last + 1).saturating_sub(MAX_WINDOW_EVENTS));
        let mut matched = Vec::new();
        for s in 0..self.positives.len() {
            let events: Vec<&Event> = run
                .taken
                .iter()
                .filter(|(step, _)| *step == s)
                .map(|(_, e)| e)
                .collect();
            let keep = if self.is_loop(s) {
                MAX_LOOP_EVENTS
            } else {
                events.len()
            };
            matched.extend(
                events[events.len().saturating_sub(keep)..]
                    .iter()
                    .map(|e| (*e).clone()),
            );
        }
        Firing {
            task: self.task.clone(),
            trigger: self.spec.name.clone(),
            matched,
            window: log[from..=run.last].to_vec(),
        }
    }

    /// Drops every run of `key` that started at or before log position `last`.
    fn skip_past(&mut self, key: &[String], last: usize) {
        if self.spec.skip == SkipPolicy::PastLastEvent {
            self.runs.retain(|r| r.key != key || r.first > last);
        }
    }

    fn deadline(&self, run: &RefRun) -> Option<i64> {
        self.spec.within_ms.map(|w| run.start_ts + w as i64)
    }
}

impl Reference {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs (replacing) a task's patterns; on invalid patterns changes nothing.
    pub fn install(&mut self, task: &str, specs: &[PatternSpec]) -> Result<(), PatternError> {
        validate_patterns(specs)?;
        self.remove(task);
        for spec in specs {
            self.patterns
                .push(Pattern::new(self.next_pattern, task, spec));
            self.next_pattern += 1;
        }
        Ok(())
    }

    pub fn remove(&mut self, task: &str) {
        self.patterns.retain(|p| p.task != task);
    }

    pub fn advance_to(&mut self, ts: i64) -> Vec<Firing> {
        if self.clock.is_some_and(|c| ts <= c) {
            return Vec::new();
        }
        self.clock = Some(ts);
        // Every run whose deadline the clock passed, earliest deadline first.
        let mut due: Vec<(i64, u64, u64)> = Vec::new();
        for p in &self.patterns {
            for r in &p.runs {
                if let Some(d) = p.deadline(r)
                    && d < ts
                {
                    due.push((d, p.id, r.id));
                }
            }
        }
        due.sort();
        let mut out = Vec::new();
        for (_, pattern_id, run_id) in due {
            let Some(p) = self.patterns.iter_mut().find(|p| p.id == pattern_id) else {
                continue;
            };
            let Some(at) = p.runs.iter().position(|r| r.id == run_id) else {
                continue;
            };
            let run = p.runs.remove(at);
            if p.waits_for_time(&run) {
                out.push(p.firing(&run));
                p.skip_past(&run.key, run.last);
            }
        }
        out
    }

    pub fn on_event(&mut self, event: &Event) -> Vec<Firing> {
        let mut out = self.advance_to(event.ts);
        let clock = self.clock.unwrap_or(event.ts);
        for p in &mut self.patterns {
            let key = p.key(event);
            let log = p.logs.entry(key.clone()).or_default();
            log.push(event.clone());
            let pos = log.len() - 1;
            let mut fired_here = false;
            let mut runs = std::mem::take(&mut p.runs);
            let mut i = 0;
            while i < runs.len() {
                if runs[i].key != key {
                    i += 1;
                    continue;
                }
                match p.offer(&mut runs[i], pos, event) {
                    Res::Keep => i += 1,
                    Res::Dead => {
                        runs.remove(i);
                    }
                    Res::Done => {
                        let run = runs.remove(i);
                        out.push(p.firing(&run));
                        fired_here = true;
                        if p.spec.skip == SkipPolicy::PastLastEvent {
                            runs.retain(|r| r.key != key || r.first > pos);
                        }
                    }
                }
            }
            p.runs = runs;
            if fired_here && p.spec.skip == SkipPolicy::PastLastEvent {
                continue;
            }
            if !step_holds(&p.positives[0].step, event) {
                continue;
            }
            if p.spec
                .within_ms
                .is_some_and(|w| event.ts + (w as i64) < clock)
            {
                continue;
            }
            let mut run = RefRun {
                id: self.next_run,
                key: key.clone(),
                step: 0,
                count: 0,
                first: pos,
                last: pos,
                start_ts: event.ts,
                taken: Vec::new(),
            };
            self.next_run += 1;
            match p.take(&mut run, 0, pos, event) {
                Res::Done => {
                    out.push(p.firing(&run));
                    p.skip_past(&key, pos);
                }
                _ => p.runs.push(run),
            }
        }
        out
    }
}
