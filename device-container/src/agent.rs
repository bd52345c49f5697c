//! The agent: what a host app embeds (`Agent::start`, `agent.track(event)`) and what the
//! `walle-device` binary runs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use prost::Message;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use walle_pipeline::{
    Event, EventError, EventQuery, EventStore, NewItem, Outbox, OutboxConfig, QueueStats,
    StoreConfig, StoreStats, TaskPipeline, TaskRun,
};
use walle_proto::v1::{TaskEvent, task_event};
use walle_vm::VmPool;

use crate::connection::Client;
use crate::db::DeviceDb;
use crate::install::{InstalledTask, Installer};
use crate::{AgentError, DeviceConfig, connection, credential, ingest, runner, uplink};

/// Outbox queue of task output records (tunnel records).
pub(crate) const RECORDS: &str = "records";
/// Outbox queue of task events for `Report` (payload: an encoded `TaskEvent`).
pub(crate) const REPORTS: &str = "reports";

/// Output records kept per task for `Agent::outputs` (the tunnel keeps its own queue).
const RECENT_OUTPUTS_PER_TASK: usize = 100;
/// Install failures kept for status.
const RECENT_FAILURES: usize = 20;

/// Monotonic counters of what the agent did.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub events_accepted: AtomicU64,
    pub events_rejected: AtomicU64,
    /// Rejected events by the rule they broke (`EventError::reason`).
    pub events_rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    pub triggers_fired: AtomicU64,
    pub runs_ok: AtomicU64,
    pub runs_failed: AtomicU64,
    pub runs_dropped: AtomicU64,
    pub records_uploaded: AtomicU64,
    /// Outputs and reports that could not be written to the outbox (e.g. a full disk).
    pub outbox_failures: AtomicU64,
    pub pending_runs: AtomicUsize,
}

/// State shared by the agent's background tasks and its API.
pub(crate) struct Shared {
    pub config: DeviceConfig,
    pub device_id: String,
    pub installer: RwLock<Installer>,
    pub vm: Arc<VmPool>,
    /// Installed tasks' triggers and feature windows.
    pub pipeline: Mutex<TaskPipeline>,
    /// Every accepted event, in the device database.
    pub events: Mutex<EventStore>,
    pub active: Mutex<HashMap<String, InstalledTask>>,
    pub runs: mpsc::Sender<TaskRun>,
    /// Task outputs and reports until the cloud acknowledges them, in the device database.
    pub outbox: Mutex<Outbox>,
    pub wake_uplink: Notify,
    pub client: Mutex<Option<Client>>,
    pub connected: AtomicBool,
    /// Bundle digests that failed to install or load or were rolled back (kept in the database),
    /// and fingerprints of manifests that failed verification (this run only): not tried again.
    pub failed_digests: Mutex<HashSet<String>>,
    pub db: Arc<DeviceDb>,
    /// Consecutive failed runs per task version (VM key), for the local rollback.
    pub failure_streaks: Mutex<HashMap<String, u32>>,
    /// Runs dropped per task since the last report of them.
    pub dropped_runs: Mutex<HashMap<String, u64>>,
    /// Runs per task version (VM key) since the agent started, for status.
    pub task_runs: Mutex<HashMap<String, TaskRuns>>,
    pub counters: Counters,
    pub recent_outputs: Mutex<HashMap<String, VecDeque<serde_json::Value>>>,
    pub recent_failures: Mutex<VecDeque<String>>,
    id_prefix: String,
    id_seq: AtomicU64,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    /// A new id unique on this device (random per start + counter).
    pub fn next_id(&self) -> String {
        format!(
            "{}-{}",
            self.id_prefix,
            self.id_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Queues a task event for the cloud.
    pub fn report(
        &self,
        kind: task_event::Kind,
        task: &str,
        version: &str,
        release_id: &str,
        detail: &str,
        duration_ms: u64,
    ) {
        self.report_failure(kind, task, version, release_id, detail, "", duration_ms);
    }

    /// Queues a task event with the kind of failure it reports (`VmError::kind` for runs).
    #[allow(clippy::too_many_arguments)]
    pub fn report_failure(
        &self,
        kind: task_event::Kind,
        task: &str,
        version: &str,
        release_id: &str,
        detail: &str,
        failure: &str,
        duration_ms: u64,
    ) {
        let mut detail = detail.to_owned();
        if detail.chars().count() > 4000 {
            detail = detail.chars().take(4000).collect::<String>() + "…";
        }
        let event = TaskEvent {
            id: self.next_id(),
            kind: kind as i32,
            task: task.to_owned(),
            version: version.to_owned(),
            release_id: release_id.to_owned(),
            at_ms: now_ms(),
            detail,
            duration_ms,
            failure: failure.to_owned(),
            count: 0,
        };
        self.queue_report(event);
    }

    /// Reports the runs dropped since the last report (the run queue was full), one event per
    /// task rather than one per run, since dropping happens when the device is overloaded.
    pub fn report_dropped_runs(&self) {
        let dropped: Vec<(String, u64)> = lock(&self.dropped_runs).drain().collect();
        for (task, count) in dropped {
            let Some(active) = lock(&self.active).get(&task).cloned() else {
                continue;
            };
            self.queue_report(TaskEvent {
                id: self.next_id(),
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

    fn queue_report(&self, event: TaskEvent) {
        let payload = event.encode_to_vec();
        self.queue_for_cloud(
            REPORTS,
            &NewItem {
                id: &event.id,
                task: &event.task,
                version: &event.version,
                created_at_ms: event.at_ms,
                payload: &payload,
            },
        );
    }

    /// Writes an item to the outbox and wakes the uplink; a failure (e.g. a full disk) is
    /// logged and counted, since the run that produced the item has already happened.
    fn queue_for_cloud(&self, queue: &str, item: &NewItem) {
        if let Err(e) = lock(&self.outbox).push(queue, item) {
            self.counters
                .outbox_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(queue, task = item.task, error = %e, "cannot queue an item for the cloud");
        }
        self.wake_uplink.notify_one();
    }

    /// Never installs the bundle with `digest` again (also after a restart).
    pub fn refuse_bundle(&self, digest: &str, task: &str, version: &str, reason: &str) {
        lock(&self.failed_digests).insert(digest.to_owned());
        if let Err(e) = self
            .db
            .refuse_bundle(digest, task, version, reason, now_ms())
        {
            tracing::error!(task, version, error = %e, "cannot record a refused bundle; it may be retried after a restart");
        }
    }

    /// Remembers an install failure for status.
    pub fn note_failure(&self, message: String) {
        let mut failures = lock(&self.recent_failures);
        if failures.len() >= RECENT_FAILURES {
            failures.pop_front();
        }
        failures.push_back(message);
    }

    /// Queues a task's output record for upload and keeps it for `Agent::outputs`.
    pub fn emit(&self, task: &InstalledTask, record: serde_json::Value) {
        {
            let mut recent = lock(&self.recent_outputs);
            let queue = recent.entry(task.task().to_owned()).or_default();
            if queue.len() >= RECENT_OUTPUTS_PER_TASK {
                queue.pop_front();
            }
            queue.push_back(record.clone());
        }
        let (id, version) = (self.next_id(), task.version());
        self.queue_for_cloud(
            RECORDS,
            &NewItem {
                id: &id,
                task: task.task(),
                version: &version,
                created_at_ms: now_ms(),
                payload: record.to_string().as_bytes(),
            },
        );
    }

    /// Validates an event, matches it against installed triggers and queues the resulting runs.
    pub fn track(&self, event: Event) -> Result<usize, AgentError> {
        if let Err(e) = event.validate() {
            return Err(self.reject(e));
        }
        lock(&self.events)
            .append(&event)
            .map_err(|e| AgentError::State(e.to_string()))?;
        self.counters
            .events_accepted
            .fetch_add(1, Ordering::Relaxed);
        let firings = lock(&self.pipeline).on_event(&event);
        Ok(self.queue_runs(firings))
    }

    /// Moves the triggers' clock to `now_ms` if the event stream is live (its newest event is at
    /// most [`LIVE_STREAM`] old): matches waiting only for time (a trailing "not followed by",
    /// a trailing repetition) fire when their window ends even if no later event comes. A replayed
    /// stream of old events keeps its own time.
    pub fn advance_clock(&self, now_ms: i64) -> usize {
        let mut pipeline = lock(&self.pipeline);
        let live = pipeline
            .clock()
            .is_some_and(|clock| now_ms.saturating_sub(clock) <= LIVE_STREAM.as_millis() as i64);
        if !live {
            return 0;
        }
        let firings = pipeline.advance_to(now_ms);
        drop(pipeline);
        self.queue_runs(firings)
    }

    /// Queues runs for timer firings, with their tasks' features as of now.
    pub fn queue_timer_runs(&self, firings: Vec<walle_pipeline::Firing>) -> usize {
        let runs = lock(&self.pipeline).runs_for(firings);
        self.queue_runs(runs)
    }

    /// Queues a run per firing (dropping and counting those the queue has no room for).
    fn queue_runs(&self, firings: Vec<TaskRun>) -> usize {
        let fired = firings.len();
        for firing in firings {
            self.counters.triggers_fired.fetch_add(1, Ordering::Relaxed);
            self.counters.pending_runs.fetch_add(1, Ordering::SeqCst);
            if let Err(full) = self.runs.try_send(firing) {
                let task = full.into_inner().firing.task;
                self.counters.pending_runs.fetch_sub(1, Ordering::SeqCst);
                self.counters.runs_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%task, "run queue full: a task run was dropped");
                *lock(&self.dropped_runs).entry(task).or_default() += 1;
            }
        }
        fired
    }

    /// Parses one JSON event and tracks it.
    pub fn track_json(&self, line: &str) -> Result<usize, AgentError> {
        match Event::from_json(line) {
            Ok(event) => self.track(event),
            Err(e) => Err(self.reject(e)),
        }
    }

    /// Parses one event in protobuf form and tracks it.
    pub fn track_proto(&self, event: walle_proto::v1::Event) -> Result<usize, AgentError> {
        match walle_proto::event::from_proto(event) {
            Ok(event) => self.track(event),
            Err(e) => Err(self.reject(e)),
        }
    }

    /// Counts a rejected event by its reason.
    fn reject(&self, error: EventError) -> AgentError {
        self.counters
            .events_rejected
            .fetch_add(1, Ordering::Relaxed);
        *lock(&self.counters.events_rejected_by_reason)
            .entry(error.reason())
            .or_default() += 1;
        AgentError::BadEvent(error)
    }

    pub fn status(&self) -> AgentStatus {
        let c = &self.counters;
        let mut installed: Vec<TaskStatus> = lock(&self.active)
            .values()
            .map(|t| {
                let key = t.vm_key();
                TaskStatus {
                    task: t.task().to_owned(),
                    version: t.version(),
                    release_id: t.release_id.clone(),
                    runs: lock(&self.task_runs).get(&key).cloned().unwrap_or_default(),
                    failure_streak: lock(&self.failure_streaks).get(&key).copied().unwrap_or(0),
                    memory_bytes: self.vm.task_memory(&key).unwrap_or(0),
                }
            })
            .collect();
        installed.sort_by(|a, b| a.task.cmp(&b.task));
        AgentStatus {
            device_id: self.device_id.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            installed,
            events: lock(&self.events).stats(),
            events_accepted: c.events_accepted.load(Ordering::Relaxed),
            events_rejected: c.events_rejected.load(Ordering::Relaxed),
            events_rejected_by_reason: lock(&c.events_rejected_by_reason)
                .iter()
                .map(|(reason, count)| (reason.to_string(), *count))
                .collect(),
            triggers_fired: c.triggers_fired.load(Ordering::Relaxed),
            runs_ok: c.runs_ok.load(Ordering::Relaxed),
            runs_failed: c.runs_failed.load(Ordering::Relaxed),
            runs_dropped: c.runs_dropped.load(Ordering::Relaxed),
            runs_pending: c.pending_runs.load(Ordering::SeqCst),
            outbox: OutboxStatus::of(&lock(&self.outbox)),
            records_uploaded: c.records_uploaded.load(Ordering::Relaxed),
            outbox_failures: c.outbox_failures.load(Ordering::Relaxed),
            recent_install_failures: lock(&self.recent_failures).iter().cloned().collect(),
        }
    }
}

/// One installed task as status shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskStatus {
    pub task: String,
    pub version: String,
    pub release_id: String,
    /// This version's runs since the agent started.
    pub runs: TaskRuns,
    /// Failed runs in a row now (a rollback comes at `rollback_after_failures`).
    pub failure_streak: u32,
    /// Heap charged to the task's interpreter.
    pub memory_bytes: u64,
}

/// Runs of one task version, as status shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TaskRuns {
    pub ok: u64,
    pub failed: u64,
    /// When the last run ended (Unix ms), how long it took, and its error if it failed.
    pub last_at_ms: Option<i64>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
}

impl TaskRuns {
    /// Counts a finished run.
    pub fn record(&mut self, duration_ms: u64, error: Option<&str>) {
        match error {
            Some(_) => self.failed += 1,
            None => self.ok += 1,
        }
        self.last_at_ms = Some(now_ms());
        self.last_duration_ms = Some(duration_ms);
        self.last_error = error.map(|e| e.chars().take(500).collect());
    }
}

/// A snapshot of what the agent is and did.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    pub device_id: String,
    pub connected: bool,
    pub installed: Vec<TaskStatus>,
    /// What the event store holds and has deleted.
    pub events: StoreStats,
    pub events_accepted: u64,
    pub events_rejected: u64,
    /// Rejected events by the rule they broke (e.g. `malformed`, `too_large`, `bad_arg`).
    pub events_rejected_by_reason: BTreeMap<String, u64>,
    pub triggers_fired: u64,
    pub runs_ok: u64,
    pub runs_failed: u64,
    pub runs_dropped: u64,
    pub runs_pending: usize,
    /// What waits for the cloud's acknowledgement.
    pub outbox: OutboxStatus,
    pub records_uploaded: u64,
    pub outbox_failures: u64,
    pub recent_install_failures: Vec<String>,
}

/// The outbox's queues as status shows them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Task output records (the tunnel).
    pub records: QueueStats,
    /// Task events for the cloud's release health.
    pub reports: QueueStats,
}

impl OutboxStatus {
    fn of(outbox: &Outbox) -> OutboxStatus {
        OutboxStatus {
            records: outbox.stats(RECORDS),
            reports: outbox.stats(REPORTS),
        }
    }
}

/// A running device agent.
pub struct Agent {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    ingest_addr: Option<SocketAddr>,
}

impl Agent {
    /// Starts the agent: restores installed tasks from disk, then connects to the cloud (forever,
    /// with backoff) and serves the local ingest endpoint if configured.
    pub async fn start(config: DeviceConfig) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            AgentError::State(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let device_id = credential::device_id(&config.data_dir, &config.profile.device_id)?;
        let trusted = credential::load(&config.data_dir)?
            .map(|c| c.trusted_keys())
            .unwrap_or_default();
        let installer = Installer::new(config.data_dir.join("tasks"), trusted);
        let db = DeviceDb::open(&config.data_dir).map_err(|e| AgentError::State(e.to_string()))?;
        let events = EventStore::open(
            db.path(),
            StoreConfig {
                retention: config.event_retention(),
                ..StoreConfig::default()
            },
        )
        .map_err(|e| AgentError::State(e.to_string()))?;
        let outbox = Outbox::open(
            db.path(),
            OutboxConfig {
                max_bytes: config.outbox_max_bytes,
            },
        )
        .map_err(|e| AgentError::State(e.to_string()))?;
        let db = Arc::new(db);
        let refused: HashSet<String> = db
            .refused_bundles()
            .map_err(|e| AgentError::State(e.to_string()))?
            .into_iter()
            .collect();
        let vm =
            Arc::new(VmPool::with_state(config.vm_threads, db.clone()).map_err(AgentError::Vm)?);
        let (runs, run_queue) = mpsc::channel(config.run_queue.max(1));
        let shared = Arc::new(Shared {
            device_id,
            installer: RwLock::new(installer),
            vm,
            pipeline: Mutex::new(TaskPipeline::new()),
            events: Mutex::new(events),
            active: Mutex::new(HashMap::new()),
            runs,
            outbox: Mutex::new(outbox),
            wake_uplink: Notify::new(),
            client: Mutex::new(None),
            connected: AtomicBool::new(false),
            failed_digests: Mutex::new(refused),
            db,
            failure_streaks: Mutex::new(HashMap::new()),
            task_runs: Mutex::new(HashMap::new()),
            dropped_runs: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            recent_outputs: Mutex::new(HashMap::new()),
            recent_failures: Mutex::new(VecDeque::new()),
            id_prefix: hex::encode(crate::random::bytes::<8>()),
            id_seq: AtomicU64::new(0),
            config,
        });
        connection::restore_installed(&shared).await;
        warm_up_features(&shared);
        let (stop, stopped) = watch::channel(false);
        let mut background = vec![
            tokio::spawn(connection::run(shared.clone(), stopped.clone())),
            tokio::spawn(runner::run(shared.clone(), run_queue, stopped.clone())),
            tokio::spawn(uplink::run(shared.clone(), stopped.clone())),
            tokio::spawn(keep_events(shared.clone(), stopped.clone())),
            tokio::spawn(crate::timers::run(shared.clone(), stopped.clone())),
        ];
        let ingest_addr = match shared.config.ingest_addr {
            Some(addr) => {
                let (bound, server) = ingest::serve(shared.clone(), addr, stopped).await?;
                background.push(server);
                Some(bound)
            }
            None => None,
        };
        tracing::info!(device = %shared.device_id, "walle-device agent started");
        Ok(Agent {
            shared,
            stop,
            background,
            ingest_addr,
        })
    }

    /// This device's id.
    pub fn device_id(&self) -> &str {
        &self.shared.device_id
    }

    /// Where the local ingest endpoint listens, if enabled.
    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest_addr
    }

    /// Feeds one user-behaviour event; returns how many task runs it triggered.
    pub fn track(&self, event: Event) -> Result<usize, AgentError> {
        self.shared.track(event)
    }

    /// Feeds one event given as JSON (one line of a JSONL stream).
    pub fn track_json(&self, line: &str) -> Result<usize, AgentError> {
        self.shared.track_json(line)
    }

    /// The most recent output records of a task (up to 100).
    pub fn outputs(&self, task: &str) -> Vec<serde_json::Value> {
        lock(&self.shared.recent_outputs)
            .get(task)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A snapshot of the agent's state and counters.
    pub fn status(&self) -> AgentStatus {
        self.shared.status()
    }

    /// Waits until `condition` holds for the status, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&AgentStatus) -> bool,
    ) -> Result<AgentStatus, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if condition(&status) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout(format!(
                    "condition not met within {timeout:?}; last status: {}",
                    serde_json::to_string(&status).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every queued run has finished and every output and report was acknowledged.
    pub async fn flush(&self, timeout: Duration) -> Result<AgentStatus, AgentError> {
        self.wait_for(timeout, |s| {
            s.runs_pending == 0 && s.outbox.records.items == 0 && s.outbox.reports.items == 0
        })
        .await
    }

    /// Stored events matching `query`, oldest first (events still buffered are written first).
    pub fn events(&self, query: &EventQuery) -> Result<Vec<Event>, AgentError> {
        lock(&self.shared.events)
            .query(query)
            .map_err(|e| AgentError::State(e.to_string()))
    }

    /// Stops background work and the ingest endpoint; buffered events are written.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.background {
            let _ = task.await;
        }
    }
}

/// Most stored events replayed into the feature windows at start.
const MAX_WARM_UP_EVENTS: usize = 200_000;

/// Rebuilds the restored tasks' feature windows from the stored events they span (windows live
/// in memory), before any new event arrives.
fn warm_up_features(shared: &Shared) {
    let Some(span) = lock(&shared.pipeline).warm_up_ms() else {
        return;
    };
    let query = EventQuery {
        from_ts: Some(now_ms().saturating_sub(i64::try_from(span).unwrap_or(i64::MAX))),
        limit: Some(MAX_WARM_UP_EVENTS),
        ..EventQuery::default()
    };
    match lock(&shared.events).query(&query) {
        Ok(events) => {
            lock(&shared.pipeline).warm_up(&events);
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

/// How often buffered events are written and the triggers' clock follows the wall clock, and
/// how often the retention is applied.
const EVENT_FLUSH_EVERY: Duration = Duration::from_secs(1);
const EVENT_RETENTION_EVERY: Duration = Duration::from_secs(60);

/// How recent the newest event must be for the triggers' clock to follow the wall clock.
const LIVE_STREAM: Duration = Duration::from_secs(60);

/// Every second writes buffered events and moves the triggers' clock; applies the retention
/// every minute; until stopped (then writes what is left).
async fn keep_events(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut flush = tokio::time::interval(EVENT_FLUSH_EVERY);
    let mut retention = tokio::time::interval(EVENT_RETENTION_EVERY);
    loop {
        let result = tokio::select! {
            _ = flush.tick() => {
                shared.advance_clock(now_ms());
                shared.report_dropped_runs();
                lock(&shared.events).flush().map(drop)
            }
            _ = retention.tick() => lock(&shared.events).enforce_retention(now_ms()),
            _ = stopped.changed() => break,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "event store");
        }
    }
    if let Err(e) = lock(&shared.events).flush() {
        tracing::error!(error = %e, "event store: writing the last events at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walle_pipeline::{EventKind, PatternSpec};

    /// An agent with no cloud to talk to (it keeps trying in the background) and an
    /// "entered, did not click within 1 s" trigger installed directly.
    async fn offline_agent(dir: &std::path::Path) -> Agent {
        let agent = Agent::start(DeviceConfig {
            cloud_url: "http://127.0.0.1:9".into(),
            data_dir: dir.to_owned(),
            ingest_addr: None,
            vm_threads: 1,
            ..DeviceConfig::default()
        })
        .await
        .unwrap();
        let pattern: PatternSpec = toml::from_str(
            r#"
            name = "bounce"
            partition_by = ["session"]
            within_ms = 1000
            steps = [{ event = "enter" }, { event = "click", not = true }]
            "#,
        )
        .unwrap();
        lock(&agent.shared.pipeline)
            .install("bounce-task", &[pattern], &[])
            .unwrap();
        agent
    }

    fn enter(id: &str, ts: i64) -> Event {
        Event {
            id: id.into(),
            ts,
            session: "s".into(),
            page: "home".into(),
            event: EventKind::Enter,
            item: String::new(),
            args: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_live_stream_fires_time_bound_triggers_on_the_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        let now = now_ms();
        agent.track(enter("e1", now)).unwrap();
        // Still inside the window: nothing yet.
        assert_eq!(agent.shared.advance_clock(now + 500), 0);
        // The window ended without a click.
        assert_eq!(agent.shared.advance_clock(now + 1001), 1);
        assert_eq!(agent.status().triggers_fired, 1);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_replayed_stream_of_old_events_keeps_its_own_time() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        let long_ago = now_ms() - 24 * 3600 * 1000;
        agent.track(enter("e1", long_ago)).unwrap();
        assert_eq!(agent.shared.advance_clock(now_ms()), 0);
        // Its own later events move its clock.
        agent.track(enter("e2", long_ago + 5000)).unwrap();
        assert_eq!(agent.status().triggers_fired, 1);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn tracked_events_are_stored_and_written_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        agent.track(enter("e1", 1)).unwrap();
        agent.track(enter("e2", 2)).unwrap();
        agent.shutdown().await;
        let agent = offline_agent(dir.path()).await;
        assert_eq!(agent.status().events.events, 2);
        let stored = agent.events(&EventQuery::default()).unwrap();
        assert_eq!(stored, vec![enter("e1", 1), enter("e2", 2)]);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn reports_wait_in_the_outbox_across_restarts_while_offline() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        for detail in ["first", "second"] {
            agent
                .shared
                .report(task_event::Kind::RunOk, "t", "1.0.0", "rel", detail, 3);
        }
        assert_eq!(agent.status().outbox.reports.items, 2);
        agent.shutdown().await;
        let agent = offline_agent(dir.path()).await;
        let status = agent.status();
        assert_eq!(status.outbox.reports.items, 2);
        assert_eq!(status.outbox.records.items, 0);
        let waiting = lock(&agent.shared.outbox)
            .peek(REPORTS, 10, 1 << 20)
            .unwrap();
        let details: Vec<String> = waiting
            .iter()
            .map(|item| TaskEvent::decode(item.payload.as_slice()).unwrap().detail)
            .collect();
        assert_eq!(details, ["first", "second"]);
        agent.shutdown().await;
    }
}
