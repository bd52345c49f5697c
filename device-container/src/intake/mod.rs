//! The intake: where events come in and become run requests.
//!
//! It owns the event store (every accepted event, in the device database), the active tasks'
//! triggers and feature windows ([`TaskPipeline`]), the counts of accepted and rejected events,
//! and the runs dropped for want of room. Events arrive from the host app (`Agent::track`), from
//! the local ingest endpoint ([`endpoint`]), and, as time passes, from the timers ([`timers`])
//! and the triggers' own clock; each completed match becomes a run submitted to the runner's
//! [`RunQueue`]. Activation changes the triggers through [`Triggers`] when a version switches.

pub mod endpoint;
mod timers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use walle_pipeline::{
    Event, EventError, EventQuery, EventStore, Firing, StoreError, StoreStats, TaskPipeline,
    TaskRun,
};
use walle_proto::manifest::TaskManifest;
use walle_proto::v1::{TaskEvent, task_event};

use crate::AgentError;
use crate::clock::now_ms;
use crate::install::{ActiveTasks, Triggers};
use crate::locks::lock;
use crate::runner::RunQueue;
use crate::uplink::Outgoing;

pub(crate) use timers::run as run_timers;

/// Most stored events replayed into the feature windows at start.
const MAX_WARM_UP_EVENTS: usize = 200_000;

/// How often buffered events are written and the triggers' clock follows the wall clock, and
/// how often the retention is applied.
const EVENT_FLUSH_EVERY: Duration = Duration::from_secs(1);
const EVENT_RETENTION_EVERY: Duration = Duration::from_secs(60);

/// How recent the newest event must be for the triggers' clock to follow the wall clock.
const LIVE_STREAM: Duration = Duration::from_secs(60);

/// Monotonic counts of what came in.
#[derive(Debug, Default)]
pub(crate) struct IntakeCounters {
    pub events_accepted: AtomicU64,
    pub events_rejected: AtomicU64,
    /// Rejected events by the rule they broke (`EventError::reason`).
    pub events_rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    pub triggers_fired: AtomicU64,
    pub runs_dropped: AtomicU64,
}

/// Events in, run requests out.
pub(crate) struct Intake {
    events: Mutex<EventStore>,
    pipeline: Mutex<TaskPipeline>,
    active: ActiveTasks,
    queue: Arc<RunQueue>,
    outgoing: Arc<Outgoing>,
    counters: IntakeCounters,
    /// Runs dropped per task since the last report of them.
    dropped_runs: Mutex<HashMap<String, u64>>,
}

impl Intake {
    pub(crate) fn new(
        events: EventStore,
        active: ActiveTasks,
        queue: Arc<RunQueue>,
        outgoing: Arc<Outgoing>,
    ) -> Intake {
        Intake {
            events: Mutex::new(events),
            pipeline: Mutex::new(TaskPipeline::new()),
            active,
            queue,
            outgoing,
            counters: IntakeCounters::default(),
            dropped_runs: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn counters(&self) -> &IntakeCounters {
        &self.counters
    }

    /// What the event store holds and has deleted.
    pub(crate) fn store_stats(&self) -> StoreStats {
        lock(&self.events).stats()
    }

    /// Stored events matching `query`, oldest first (events still buffered are written first).
    pub(crate) fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        lock(&self.events).query(query)
    }

    /// Validates an event, matches it against installed triggers and queues the resulting runs.
    pub(crate) fn track(&self, event: Event) -> Result<usize, AgentError> {
        if let Err(e) = event.validate() {
            return Err(self.reject(e));
        }
        if let Err(e) = lock(&self.events).append(&event) {
            return Err(self.refuse_unstored(e));
        }
        self.counters
            .events_accepted
            .fetch_add(1, Ordering::Relaxed);
        let firings = lock(&self.pipeline).on_event(&event);
        Ok(self.submit_runs(firings))
    }

    /// Parses one JSON event and tracks it.
    pub(crate) fn track_json(&self, line: &str) -> Result<usize, AgentError> {
        match Event::from_json(line) {
            Ok(event) => self.track(event),
            Err(e) => Err(self.reject(e)),
        }
    }

    /// Parses one event in protobuf form and tracks it.
    pub(crate) fn track_proto(&self, event: walle_proto::v1::Event) -> Result<usize, AgentError> {
        match walle_proto::event::from_proto(event) {
            Ok(event) => self.track(event),
            Err(e) => Err(self.reject(e)),
        }
    }

    /// Moves the triggers' clock to `now_ms` if the event stream is live (its newest event is
    /// at most [`LIVE_STREAM`] old): matches waiting only for time (a trailing "not followed
    /// by", a trailing repetition) fire when their window ends even if no later event comes. A
    /// replayed stream of old events keeps its own time.
    pub(crate) fn advance_clock(&self, now_ms: i64) -> usize {
        let mut pipeline = lock(&self.pipeline);
        let live = pipeline
            .clock()
            .is_some_and(|clock| now_ms.saturating_sub(clock) <= LIVE_STREAM.as_millis() as i64);
        if !live {
            return 0;
        }
        let firings = pipeline.advance_to(now_ms);
        drop(pipeline);
        self.submit_runs(firings)
    }

    /// Queues runs for timer firings, with their tasks' features as of now.
    fn submit_timer_runs(&self, firings: Vec<Firing>) -> usize {
        let runs = lock(&self.pipeline).runs_for(firings);
        self.submit_runs(runs)
    }

    /// Submits a run per firing to the run queue, counting those it has no room for.
    fn submit_runs(&self, runs: Vec<TaskRun>) -> usize {
        let fired = runs.len();
        for run in runs {
            self.counters.triggers_fired.fetch_add(1, Ordering::Relaxed);
            let Some(active) = self.active.get(&run.firing.task) else {
                continue;
            };
            if self.queue.submit(&active, run.context()).is_err() {
                self.counters.runs_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(task = %run.firing.task, "run queue full: a task run was dropped");
                *lock(&self.dropped_runs).entry(run.firing.task).or_default() += 1;
            }
        }
        fired
    }

    /// Reports the runs dropped since the last report (the run queue was full), one event per
    /// task rather than one per run, since dropping happens when the device is overloaded.
    fn report_dropped_runs(&self) {
        let dropped: Vec<(String, u64)> = lock(&self.dropped_runs).drain().collect();
        for (task, count) in dropped {
            let Some(active) = self.active.get(&task) else {
                continue;
            };
            self.outgoing.queue_report(TaskEvent {
                id: self.outgoing.next_id(),
                kind: task_event::Kind::RunDropped as i32,
                task,
                version: active.version(),
                release_id: active.release_id.clone(),
                at_ms: now_ms(),
                detail: format!("{count} runs dropped: the run queue was full"),
                count,
                ..TaskEvent::default()
            });
        }
    }

    /// Counts a rejected event by its reason.
    fn reject(&self, error: EventError) -> AgentError {
        self.count_rejected(error.reason());
        AgentError::BadEvent(error)
    }

    /// Counts a valid event the store could not take (`storage_full` or `store_failed`).
    fn refuse_unstored(&self, error: StoreError) -> AgentError {
        if error.is_storage_full() {
            self.count_rejected("storage_full");
            AgentError::StorageFull(error)
        } else {
            self.count_rejected("store_failed");
            AgentError::EventStore(error)
        }
    }

    fn count_rejected(&self, reason: &'static str) {
        self.counters
            .events_rejected
            .fetch_add(1, Ordering::Relaxed);
        *lock(&self.counters.events_rejected_by_reason)
            .entry(reason)
            .or_default() += 1;
    }

    /// Rebuilds the restored tasks' feature windows from the stored events they span (windows
    /// live in memory), before any new event arrives.
    pub(crate) fn warm_up_features(&self) {
        let Some(span) = lock(&self.pipeline).warm_up_ms() else {
            return;
        };
        let query = EventQuery {
            from_ts: Some(now_ms().saturating_sub(i64::try_from(span).unwrap_or(i64::MAX))),
            limit: Some(MAX_WARM_UP_EVENTS),
            newest: true,
            ..EventQuery::default()
        };
        match lock(&self.events).query(&query) {
            Ok(events) => {
                lock(&self.pipeline).warm_up(&events);
                tracing::info!(
                    events = events.len(),
                    span_ms = span,
                    "feature windows rebuilt from stored events"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read stored events; feature windows start empty")
            }
        }
    }
}

#[cfg(test)]
impl Intake {
    /// Installs a task's triggers directly, for tests without a bundle.
    pub(crate) fn install_patterns(&self, task: &str, patterns: &[walle_pipeline::PatternSpec]) {
        let installed = lock(&self.pipeline).install(task, patterns, &[]);
        assert!(installed.is_ok(), "{installed:?}");
    }
}

impl Triggers for Intake {
    fn install(&self, task: &TaskManifest) -> Result<(), walle_pipeline::tasks::InstallError> {
        lock(&self.pipeline).install(&task.name, &task.triggers, &task.features)
    }

    fn remove(&self, task: &str) {
        lock(&self.pipeline).remove(task);
    }
}

/// Every second writes buffered events, moves the triggers' clock and reports dropped runs;
/// applies the retention every minute; until stopped (then writes what is left).
pub(crate) async fn keep_events(intake: Arc<Intake>, mut stopped: watch::Receiver<bool>) {
    let mut flush = tokio::time::interval(EVENT_FLUSH_EVERY);
    let mut retention = tokio::time::interval(EVENT_RETENTION_EVERY);
    loop {
        let result = tokio::select! {
            _ = flush.tick() => {
                intake.advance_clock(now_ms());
                intake.report_dropped_runs();
                lock(&intake.events).flush().map(drop)
            }
            _ = retention.tick() => lock(&intake.events).enforce_retention(now_ms()),
            _ = stopped.changed() => break,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "event store");
        }
    }
    if let Err(e) = lock(&intake.events).flush() {
        tracing::error!(error = %e, "event store: writing the last events at shutdown");
    }
}
