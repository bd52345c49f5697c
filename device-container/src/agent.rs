//! The agent: what a host app embeds (`Agent::start`, `agent.track(event)`) and what the
//! `walle-device` binary runs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use prost::Message;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use walle_pipeline::{
    Change, Event, EventError, EventQuery, EventStore, NewItem, Outbox, OutboxConfig, QueueStats,
    StoreConfig, StoreStats, TaskPipeline, TaskRun,
};
use walle_proto::v1::{TaskEvent, task_event};
use walle_vm::VmPool;

use crate::cache::CacheStatus;
use crate::connection::Client;
use crate::db::DeviceDb;
use crate::install::{InstalledTask, Installer};
use crate::scheduler::{PendingRun, Scheduler};
use crate::{AgentError, DeviceConfig, connection, credential, ingest, runner, uplink};

/// Outbox queue of task output records (tunnel records).
pub(crate) const RECORDS: &str = "records";
/// Outbox queue of task events for `Report` (payload: an encoded `TaskEvent`).
pub(crate) const REPORTS: &str = "reports";
/// Outbox queue of task runs not yet committed (payload: the run's context as JSON); never
/// sent anywhere, it lets a restarted agent run again what a crash interrupted (`runner`).
pub(crate) const RUNS: &str = "runs";

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
    /// Runs interrupted by the previous process and queued again at start.
    pub runs_recovered: AtomicU64,
    /// Runs of quarantined task versions, dropped (see `health`).
    pub runs_refused: AtomicU64,
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
    /// Runs waiting for, and holding, VM workers.
    pub scheduler: Mutex<Scheduler>,
    pub wake_runner: Notify,
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
    /// What the bundle cache holds and evicted.
    pub cache: Mutex<CacheStatus>,
    /// Task versions (VM keys) the VM quarantined, with why (also in the database).
    pub quarantined: Mutex<HashMap<String, String>>,
    /// Why the agent asks to be restarted, once it does (see `health`).
    pub restart: watch::Sender<Option<String>>,
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
        let event = self.task_event(kind, task, version, release_id, detail);
        self.queue_report(TaskEvent {
            duration_ms,
            ..event
        });
    }

    /// A new task event, at now, with its detail cut to 4,000 characters (in the middle: a
    /// traceback keeps its exception line).
    pub fn task_event(
        &self,
        kind: task_event::Kind,
        task: &str,
        version: &str,
        release_id: &str,
        detail: &str,
    ) -> TaskEvent {
        let detail = walle_proto::report::cut_middle(detail, 4000);
        TaskEvent {
            id: self.next_id(),
            kind: kind as i32,
            task: task.to_owned(),
            version: version.to_owned(),
            release_id: release_id.to_owned(),
            at_ms: now_ms(),
            detail,
            ..TaskEvent::default()
        }
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

    pub(crate) fn queue_report(&self, event: TaskEvent) {
        let payload = event.encode_to_vec();
        let change = Change {
            push: vec![(REPORTS, runner::report_item(&event, &payload))],
            remove: Vec::new(),
        };
        self.commit(&change, |_| Ok(()));
    }

    /// Makes an outbox change (with what `also` writes) and wakes the uplink; a failure (e.g.
    /// a full disk) is logged and counted, since what produced the change has happened.
    pub fn commit(
        &self,
        change: &Change,
        also: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<()>,
    ) {
        if let Err(e) = lock(&self.outbox).commit(change, also) {
            self.counters
                .outbox_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot write to the outbox");
        }
        self.wake_uplink.notify_one();
    }

    /// Keeps the bundle cache within its budget with room for a bundle of `bundle` bytes.
    pub fn make_cache_room(&self, bundle: u64) -> Result<(), crate::cache::NoRoom> {
        let downloads = self.config.data_dir.join("downloads");
        let budget = self.config.bundle_cache_max_bytes;
        let installer = self.installer();
        crate::cache::make_room(
            &installer,
            &downloads,
            budget,
            bundle,
            &mut lock(&self.cache),
        )
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

    /// Keeps a task's latest output records for `Agent::outputs`.
    pub fn remember_outputs(&self, task: &str, records: &[serde_json::Value]) {
        let mut recent = lock(&self.recent_outputs);
        let queue = recent.entry(task.to_owned()).or_default();
        for record in records {
            if queue.len() >= RECENT_OUTPUTS_PER_TASK {
                queue.pop_front();
            }
            queue.push_back(record.clone());
        }
    }

    /// Validates an event, matches it against installed triggers and queues the resulting runs.
    pub fn track(&self, event: Event) -> Result<usize, AgentError> {
        if let Err(e) = event.validate() {
            return Err(self.reject(e));
        }
        if let Err(e) = lock(&self.events).append(&event) {
            return Err(self.refuse_unstored(&e));
        }
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

    /// Queues a run per firing, each written to the outbox's [`RUNS`] queue first (dropping
    /// and counting those the scheduler has no room for).
    fn queue_runs(&self, runs: Vec<TaskRun>) -> usize {
        let fired = runs.len();
        for run in runs {
            self.counters.triggers_fired.fetch_add(1, Ordering::Relaxed);
            let task = run.firing.task.clone();
            let Some(active) = lock(&self.active).get(&task).cloned() else {
                continue;
            };
            let limit = self.task_queue_limit(&active);
            let mut scheduler = lock(&self.scheduler);
            if !scheduler.has_room(&task, limit) {
                drop(scheduler);
                self.counters.runs_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%task, "run queue full: a task run was dropped");
                *lock(&self.dropped_runs).entry(task).or_default() += 1;
                continue;
            }
            let context = run.context();
            let journal_seq = self.journal_run(&active, &context);
            scheduler.push(PendingRun {
                journal_seq,
                task,
                context,
                queued_at: Instant::now(),
            });
        }
        self.wake_runner.notify_one();
        fired
    }

    /// How many runs of `task` may wait: the device's per-task limit, lowered by the task's.
    fn task_queue_limit(&self, task: &InstalledTask) -> usize {
        let device = self.config.run_queue_per_task.max(1);
        match task.manifest.task.limits.max_queued_runs {
            Some(own) => device.min(own as usize),
            None => device,
        }
    }

    /// Writes a run to the outbox's [`RUNS`] queue; `None` (logged and counted) if it cannot.
    fn journal_run(&self, task: &InstalledTask, context: &serde_json::Value) -> Option<i64> {
        let (id, payload) = (self.next_id(), context.to_string());
        let item = NewItem {
            id: &id,
            task: task.task(),
            version: &task.version(),
            created_at_ms: now_ms(),
            payload: payload.as_bytes(),
        };
        match lock(&self.outbox).push(RUNS, &item) {
            Ok(seq) => Some(seq),
            Err(e) => {
                self.counters
                    .outbox_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(task = task.task(), error = %e, "cannot keep a run for crash recovery; it runs unprotected");
                None
            }
        }
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
        self.count_rejected(error.reason());
        AgentError::BadEvent(error)
    }

    /// Counts a valid event the store could not take (`storage_full` or `store_failed`).
    fn refuse_unstored(&self, error: &walle_pipeline::StoreError) -> AgentError {
        if error.is_storage_full() {
            self.count_rejected("storage_full");
            AgentError::StorageFull(error.to_string())
        } else {
            self.count_rejected("store_failed");
            AgentError::State(error.to_string())
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
                    queued_runs: lock(&self.scheduler).waiting_for(t.task()),
                    memory_bytes: self.vm.task_memory(&key).unwrap_or(0),
                }
            })
            .collect();
        installed.sort_by(|a, b| a.task.cmp(&b.task));
        let (queued, in_flight) = lock(&self.scheduler).depth();
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
            runs_pending: queued + in_flight,
            runs_recovered: c.runs_recovered.load(Ordering::Relaxed),
            outbox: OutboxStatus::of(&lock(&self.outbox)),
            records_uploaded: c.records_uploaded.load(Ordering::Relaxed),
            outbox_failures: c.outbox_failures.load(Ordering::Relaxed),
            recent_install_failures: lock(&self.recent_failures).iter().cloned().collect(),
            bundle_cache: *lock(&self.cache),
            vm: self.vm_status(),
        }
    }

    fn vm_status(&self) -> VmStatus {
        let health = self.vm.health();
        VmStatus {
            lost_threads: health.lost_threads,
            lost_bytes: health.lost_bytes,
            workers_abandoned: health.abandoned_total,
            quarantined: lock(&self.quarantined)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            runs_refused: self.counters.runs_refused.load(Ordering::Relaxed),
            restart_requested: self.restart.borrow().clone(),
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
    /// Runs waiting for a VM worker.
    pub queued_runs: usize,
}

/// Runs of one task version, as status shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TaskRuns {
    pub ok: u64,
    pub failed: u64,
    /// When the last run ended (Unix ms), how long it executed, how long it waited for a VM
    /// worker before, and its error if it failed.
    pub last_at_ms: Option<i64>,
    pub last_duration_ms: Option<u64>,
    pub last_queued_ms: Option<u64>,
    pub last_error: Option<String>,
}

impl TaskRuns {
    /// Counts a finished run.
    pub fn record(&mut self, duration_ms: u64, queued_ms: u64, error: Option<&str>) {
        match error {
            Some(_) => self.failed += 1,
            None => self.ok += 1,
        }
        self.last_at_ms = Some(now_ms());
        self.last_duration_ms = Some(duration_ms);
        self.last_queued_ms = Some(queued_ms);
        self.last_error = error.map(|e| walle_proto::report::cut_middle(e, 500));
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
    /// Runs waiting or running.
    pub runs_pending: usize,
    /// Runs a crash interrupted, run again at this start.
    pub runs_recovered: u64,
    /// What waits for the cloud's acknowledgement.
    pub outbox: OutboxStatus,
    pub records_uploaded: u64,
    pub outbox_failures: u64,
    pub recent_install_failures: Vec<String>,
    /// Unpacked versions and partial downloads on disk, against their budget.
    pub bundle_cache: CacheStatus,
    /// What the task VM lost to stuck native code, whom it refuses, and whether the agent asks
    /// to be restarted.
    pub vm: VmStatus,
}

/// The task VM's health as status shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmStatus {
    /// Abandoned worker threads still running (or parked), and the heap their tasks hold.
    pub lost_threads: usize,
    pub lost_bytes: u64,
    /// Workers abandoned since the agent started.
    pub workers_abandoned: u64,
    /// Quarantined task versions (`task@version`) and why; their runs are refused.
    pub quarantined: BTreeMap<String, String>,
    /// Runs of quarantined versions dropped since the agent started.
    pub runs_refused: u64,
    /// Why the agent asks to be restarted, if it does.
    pub restart_requested: Option<String>,
}

/// The outbox's queues as status shows them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Task output records (the tunnel).
    pub records: QueueStats,
    /// Task events for the cloud's release health.
    pub reports: QueueStats,
    /// Task runs not yet committed (kept for crash recovery, not sent).
    pub runs: QueueStats,
}

impl OutboxStatus {
    fn of(outbox: &Outbox) -> OutboxStatus {
        OutboxStatus {
            records: outbox.stats(RECORDS),
            reports: outbox.stats(REPORTS),
            runs: outbox.stats(RUNS),
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
    /// Starts the agent: checks the profile, restores installed tasks from disk, then connects to the cloud (forever,
    /// with backoff) and serves the local ingest endpoint if configured.
    pub async fn start(config: DeviceConfig) -> Result<Agent, AgentError> {
        config.profile.check().map_err(AgentError::Profile)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            AgentError::State(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let device_id = credential::device_id(&config.data_dir, &config.profile.device_id)?;
        let trusted = credential::load(&config.data_dir)?
            .map(|c| c.trusted_keys())
            .unwrap_or_default();
        let installer = Installer::new(config.data_dir.join("tasks"), trusted);
        let db = DeviceDb::open(&config.data_dir, config.db_max_bytes)
            .map_err(|e| AgentError::State(e.to_string()))?;
        let events = EventStore::open(
            db.path(),
            StoreConfig {
                retention: config.event_retention(),
                max_db_bytes: config.db_max_bytes,
                ..StoreConfig::default()
            },
        )
        .map_err(|e| AgentError::State(e.to_string()))?;
        let outbox = Outbox::open(
            db.path(),
            OutboxConfig {
                max_bytes: config.outbox_max_bytes,
                max_db_bytes: config.db_max_bytes,
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
        let scheduler = Scheduler::new(config.run_queue, vm.threads());
        let shared = Arc::new(Shared {
            device_id,
            installer: RwLock::new(installer),
            vm,
            pipeline: Mutex::new(TaskPipeline::new()),
            events: Mutex::new(events),
            active: Mutex::new(HashMap::new()),
            scheduler: Mutex::new(scheduler),
            wake_runner: Notify::new(),
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
            cache: Mutex::new(CacheStatus::default()),
            quarantined: Mutex::new(HashMap::new()),
            restart: watch::channel(None).0,
            id_prefix: hex::encode(crate::random::bytes::<8>()),
            id_seq: AtomicU64::new(0),
            config,
        });
        crate::health::restore(&shared);
        connection::restore_installed(&shared).await;
        if let Err(e) = shared.make_cache_room(0) {
            tracing::warn!(error = %e, "the active versions alone exceed the bundle cache budget");
        }
        runner::recover(&shared);
        warm_up_features(&shared);
        let (stop, stopped) = watch::channel(false);
        let mut background = vec![
            tokio::spawn(connection::run(shared.clone(), stopped.clone())),
            tokio::spawn(runner::run(shared.clone(), stopped.clone())),
            tokio::spawn(uplink::run(shared.clone(), stopped.clone())),
            tokio::spawn(keep_events(shared.clone(), stopped.clone())),
            tokio::spawn(crate::timers::run(shared.clone(), stopped.clone())),
        ];
        let (ingest_addr, servers) = ingest::start(&shared, stopped).await?;
        background.extend(servers);
        tracing::info!(device = %shared.device_id, "walle-device agent started");
        Ok(Agent {
            shared,
            stop,
            background,
            ingest_addr,
        })
    }

    /// Why the agent asks to be restarted, if it does: its task VM lost worker threads (or
    /// memory) past the configured threshold to native code nothing could stop. Shut the agent
    /// down and start it again (the run journal makes that safe); the `walle-device` binary does
    /// so by itself.
    pub fn restart_requested(&self) -> Option<String> {
        self.shared.restart.borrow().clone()
    }

    /// Waits until the agent asks to be restarted; returns why.
    pub async fn wait_restart_requested(&self) -> String {
        let mut requests = self.shared.restart.subscribe();
        loop {
            if let Some(reason) = requests.borrow_and_update().clone() {
                return reason;
            }
            if requests.changed().await.is_err() {
                // The agent is gone: nothing will ever ask.
                std::future::pending::<()>().await;
            }
        }
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
        newest: true,
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
        offline_agent_with(dir, None).await
    }

    async fn offline_agent_with(dir: &std::path::Path, db_max_bytes: Option<u64>) -> Agent {
        let agent = Agent::start(DeviceConfig {
            cloud_url: "http://127.0.0.1:9".into(),
            data_dir: dir.to_owned(),
            ingest_addr: None,
            vm_threads: 1,
            db_max_bytes,
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
    async fn a_full_disk_refuses_events_with_a_reason_and_loses_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent_with(dir.path(), Some(512 << 10)).await;
        agent
            .shared
            .report(task_event::Kind::RunOk, "t", "1.0.0", "rel", "before", 3);
        let refusal = (0..200_000)
            .find_map(|i| {
                let mut event = enter(&format!("e{i:06}-{}", "x".repeat(200)), i);
                event.session = format!("s{i}");
                agent.track(event).err()
            })
            .expect("the size limit was never reached");
        assert!(matches!(refusal, AgentError::StorageFull(_)), "{refusal}");
        assert!(refusal.to_string().contains("storage is full"), "{refusal}");
        // Outputs and reports that cannot be queued are counted (the last free pages of the
        // file may take a few first).
        let detail = "d".repeat(4000);
        for _ in 0..100 {
            if agent.status().outbox_failures > 0 {
                break;
            }
            agent
                .shared
                .report(task_event::Kind::RunOk, "t", "1.0.0", "rel", &detail, 3);
        }
        let status = agent.status();
        assert!(
            status.events_rejected_by_reason["storage_full"] >= 1,
            "{status:?}"
        );
        assert!(status.events.write_failures >= 1, "{status:?}");
        assert_eq!(status.outbox_failures, 1, "{status:?}");
        let reports = status.outbox.reports.items;
        let stored = status.events.events;
        assert!(stored > 500, "{status:?}");
        agent.shutdown().await;
        // With room again, everything stored before is there, and events are taken.
        let agent = offline_agent_with(dir.path(), None).await;
        let status = agent.status();
        assert_eq!(status.events.events, stored);
        assert_eq!(status.outbox.reports.items, reports);
        assert_eq!(
            agent.events(&EventQuery::default()).unwrap().len() as u64,
            stored
        );
        agent.track(enter("after", 1)).unwrap();
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
