//! Matches installed tasks' trigger patterns against the event stream.
//!
//! This is the straightforward matcher: each event is offered to each installed pattern. It keeps
//! one partial match per (pattern, partition) and a bounded window of the partition's events
//! since the match began, which is what the task receives when the pattern completes.

use std::collections::HashMap;

use crate::event::Event;
use crate::pattern::PatternSpec;

/// Events kept in one partial match's window; older ones are dropped first.
pub const MAX_WINDOW_EVENTS: usize = 512;
/// Partial matches kept per pattern; the oldest is evicted beyond this.
pub const MAX_PARTIALS_PER_PATTERN: usize = 4096;

/// A completed match: run `task` with this context.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub task: String,
    pub trigger: String,
    /// The events that satisfied the steps, in step order.
    pub matched: Vec<Event>,
    /// Every event of the partition from the first matched event to the last, in arrival order.
    pub window: Vec<Event>,
}

impl Firing {
    /// The trigger context as tasks receive it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "task": self.task,
            "trigger": self.trigger,
            "matched": self.matched.iter().map(Event::to_json).collect::<Vec<_>>(),
            "window": self.window.iter().map(Event::to_json).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug)]
struct Partial {
    next_step: usize,
    started_ts: i64,
    opened_seq: u64,
    matched: Vec<Event>,
    window: Vec<Event>,
}

#[derive(Debug)]
struct InstalledPattern {
    task: String,
    spec: PatternSpec,
    partials: HashMap<Vec<String>, Partial>,
}

/// All installed tasks' patterns and their in-flight matches.
#[derive(Debug, Default)]
pub struct TriggerSet {
    patterns: Vec<InstalledPattern>,
    seq: u64,
}

impl TriggerSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs (or replaces) a task's patterns. In-flight matches of other tasks are untouched.
    pub fn install(&mut self, task: &str, patterns: &[PatternSpec]) {
        self.remove(task);
        self.patterns
            .extend(patterns.iter().map(|spec| InstalledPattern {
                task: task.to_owned(),
                spec: spec.clone(),
                partials: HashMap::new(),
            }));
    }

    /// Removes a task's patterns and their in-flight matches.
    pub fn remove(&mut self, task: &str) {
        self.patterns.retain(|p| p.task != task);
    }

    /// Number of installed patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether no pattern is installed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Offers one event to every pattern and returns the matches it completes.
    pub fn on_event(&mut self, event: &Event) -> Vec<Firing> {
        self.seq += 1;
        let seq = self.seq;
        self.patterns
            .iter_mut()
            .filter_map(|pattern| pattern.advance(event, seq))
            .collect()
    }
}

impl InstalledPattern {
    fn advance(&mut self, event: &Event, seq: u64) -> Option<Firing> {
        let key: Vec<String> = self
            .spec
            .partition_by
            .iter()
            .map(|field| event.field(field).unwrap_or_default().to_owned())
            .collect();
        if let Some(partial) = self.partials.get(&key)
            && let Some(within) = self.spec.within_ms
            && event.ts.saturating_sub(partial.started_ts) > within as i64
        {
            self.partials.remove(&key);
        }
        match self.partials.get_mut(&key) {
            Some(partial) => {
                push_bounded(&mut partial.window, event.clone());
                if !step_matches(&self.spec, partial.next_step, event) {
                    return None;
                }
                partial.matched.push(event.clone());
                partial.next_step += 1;
            }
            None => {
                if !step_matches(&self.spec, 0, event) {
                    return None;
                }
                self.evict_oldest_if_full();
                self.partials.insert(
                    key.clone(),
                    Partial {
                        next_step: 1,
                        started_ts: event.ts,
                        opened_seq: seq,
                        matched: vec![event.clone()],
                        window: vec![event.clone()],
                    },
                );
            }
        }
        let done = self.partials.get(&key)?.next_step == self.spec.steps.len();
        if !done {
            return None;
        }
        let partial = self.partials.remove(&key)?;
        Some(Firing {
            task: self.task.clone(),
            trigger: self.spec.name.clone(),
            matched: partial.matched,
            window: partial.window,
        })
    }

    fn evict_oldest_if_full(&mut self) {
        if self.partials.len() < MAX_PARTIALS_PER_PATTERN {
            return;
        }
        let oldest = self
            .partials
            .iter()
            .min_by_key(|(_, p)| p.opened_seq)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.partials.remove(&key);
        }
    }
}

fn step_matches(spec: &PatternSpec, step: usize, event: &Event) -> bool {
    spec.steps.get(step).is_some_and(|s| {
        s.conditions()
            .all(|(field, value)| event.field(field) == Some(value))
    })
}

fn push_bounded(window: &mut Vec<Event>, event: Event) {
    if window.len() >= MAX_WINDOW_EVENTS {
        window.remove(0);
    }
    window.push(event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::pattern::StepSpec;

    fn ev(id: u32, ts: i64, kind: EventKind, item: &str) -> Event {
        Event {
            id: format!("e{id}"),
            ts,
            session: "s1".into(),
            page: "item".into(),
            event: kind,
            item: item.into(),
            args: Default::default(),
        }
    }

    fn ipv(within_ms: Option<u64>) -> PatternSpec {
        let step = |kind: &str| StepSpec {
            event: Some(kind.into()),
            page: Some("item".into()),
            ..Default::default()
        };
        PatternSpec {
            name: "ipv".into(),
            partition_by: vec!["session".into(), "item".into()],
            within_ms,
            steps: vec![step("enter"), step("exit")],
        }
    }

    #[test]
    fn fires_with_the_window_of_its_partition() {
        let mut set = TriggerSet::new();
        set.install("t", &[ipv(None)]);
        assert!(set.on_event(&ev(1, 0, EventKind::Enter, "a")).is_empty());
        assert!(set.on_event(&ev(2, 1, EventKind::Enter, "b")).is_empty());
        assert!(set.on_event(&ev(3, 2, EventKind::Click, "a")).is_empty());
        assert!(set.on_event(&ev(4, 3, EventKind::Exit, "b")).len() == 1);
        let fired = set.on_event(&ev(5, 4, EventKind::Exit, "a"));
        assert_eq!(fired.len(), 1);
        let ids: Vec<_> = fired[0].window.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e1", "e3", "e5"]);
        assert_eq!(fired[0].matched.len(), 2);
        // The match is consumed: another exit alone fires nothing.
        assert!(set.on_event(&ev(6, 5, EventKind::Exit, "a")).is_empty());
    }

    #[test]
    fn within_bound_drops_stale_partials() {
        let mut set = TriggerSet::new();
        set.install("t", &[ipv(Some(10))]);
        set.on_event(&ev(1, 0, EventKind::Enter, "a"));
        assert!(set.on_event(&ev(2, 50, EventKind::Exit, "a")).is_empty());
        set.on_event(&ev(3, 60, EventKind::Enter, "a"));
        assert_eq!(set.on_event(&ev(4, 65, EventKind::Exit, "a")).len(), 1);
    }

    #[test]
    fn removing_a_task_keeps_other_tasks_matches() {
        let mut set = TriggerSet::new();
        set.install("keep", &[ipv(None)]);
        set.install("drop", &[ipv(None)]);
        set.on_event(&ev(1, 0, EventKind::Enter, "a"));
        set.remove("drop");
        let fired = set.on_event(&ev(2, 1, EventKind::Exit, "a"));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].task, "keep");
    }
}
