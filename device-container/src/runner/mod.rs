//! The runner: the run queue, the VM pool's runs, the run journal and the commit of what each
//! run produced; the VM's health (`health`); failure streaks, which become rollback requests.
//!
//! It owns the scheduler ([`RunQueue`]: the intake submits runs to it), each task version's run
//! counts and failure streak, the latest outputs per task, and the quarantined versions. It
//! reads the active versions ([`ActiveTasks`]), writes what runs produce to the outbox
//! ([`Outgoing`]), and sends a [`RollbackRequest`] to activation when a version fails
//! `rollback_after_failures` runs in a row.
//!
//! A run is crash-safe: it is written to the outbox's [`RUNS`] queue when it is queued, and a
//! finished run's output records, its report, its `walle.state` writes and the removal of the
//! run from [`RUNS`] are one transaction. A process killed mid-run therefore leaves the run in
//! [`RUNS`], with none of its effects, and the next start runs it again
//! ([`Runner::recover`]); a process killed after the commit does not run it again. A run that
//! was interrupted [`MAX_RUN_ATTEMPTS`] times (e.g. it makes the process crash) is given up and
//! reported as failed instead of crash-looping the device.

mod health;
mod queue;
mod scheduler;

pub(crate) use queue::RunQueue;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message;
use tokio::sync::{mpsc, watch};
use walle_pipeline::{Change, NewItem};
use walle_proto::v1::{TaskEvent, task_event};
use walle_vm::{RunOutput, RunTiming, TimedRun, VmError, VmPool};

use crate::DeviceConfig;
use crate::clock::now_ms;
use crate::db::{self, DeviceDb};
use crate::install::{ActiveTasks, InstalledTask};
use crate::locks::lock;
use crate::status::TaskRuns;
use crate::uplink::{Outgoing, RECORDS, REPORTS, RUNS, report_item};
use scheduler::PendingRun;

/// Times a run may be interrupted by the device stopping before it is given up.
pub(crate) const MAX_RUN_ATTEMPTS: u32 = 3;

/// Output records kept per task for `Agent::outputs` (the tunnel keeps its own queue).
const RECENT_OUTPUTS_PER_TASK: usize = 100;

/// A version that failed `rollback_after_failures` runs in a row: activation should put the
/// previous version back.
#[derive(Debug)]
pub(crate) struct RollbackRequest {
    pub bad: InstalledTask,
    pub reason: String,
}

/// When the runner gives up on a version or on itself (from the device configuration).
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    rollback_after_failures: u32,
    restart_after_lost_threads: usize,
    restart_after_lost_bytes: u64,
}

/// Monotonic counts of what the runner did.
#[derive(Debug, Default)]
pub(crate) struct RunCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Runs interrupted by the previous process and queued again at start.
    pub recovered: AtomicU64,
    /// Runs of quarantined task versions, dropped (see `health`).
    pub refused: AtomicU64,
}

/// Executes queued runs and keeps what they did.
pub(crate) struct Runner {
    queue: Arc<RunQueue>,
    vm: Arc<VmPool>,
    active: ActiveTasks,
    outgoing: Arc<Outgoing>,
    db: Arc<DeviceDb>,
    thresholds: Thresholds,
    counters: RunCounters,
    /// Runs per task version (VM key) since the agent started, for status.
    task_runs: Mutex<HashMap<String, TaskRuns>>,
    /// Consecutive failed runs per task version (VM key), for the local rollback.
    failure_streaks: Mutex<HashMap<String, u32>>,
    recent_outputs: Mutex<HashMap<String, VecDeque<serde_json::Value>>>,
    /// Task versions (VM keys) the VM quarantined, with why (also in the database).
    quarantined: Mutex<HashMap<String, String>>,
    /// Why the agent asks to be restarted, once it does (see `health`).
    restart: watch::Sender<Option<String>>,
    rollbacks: mpsc::UnboundedSender<RollbackRequest>,
}

/// What a runner needs from the rest of the agent.
pub(crate) struct RunnerParts {
    pub queue: Arc<RunQueue>,
    pub vm: Arc<VmPool>,
    pub active: ActiveTasks,
    pub outgoing: Arc<Outgoing>,
    pub db: Arc<DeviceDb>,
    pub rollbacks: mpsc::UnboundedSender<RollbackRequest>,
}

impl Runner {
    /// A runner with the quarantines of earlier runs of the agent handed back to the VM.
    pub(crate) fn new(parts: RunnerParts, config: &DeviceConfig) -> Runner {
        let runner = Runner {
            queue: parts.queue,
            vm: parts.vm,
            active: parts.active,
            outgoing: parts.outgoing,
            db: parts.db,
            thresholds: Thresholds {
                rollback_after_failures: config.rollback_after_failures,
                restart_after_lost_threads: config.restart_after_lost_threads,
                restart_after_lost_bytes: config.restart_after_lost_bytes,
            },
            counters: RunCounters::default(),
            task_runs: Mutex::new(HashMap::new()),
            failure_streaks: Mutex::new(HashMap::new()),
            recent_outputs: Mutex::new(HashMap::new()),
            quarantined: Mutex::new(HashMap::new()),
            restart: watch::channel(None).0,
            rollbacks: parts.rollbacks,
        };
        runner.restore_quarantines();
        runner
    }

    pub(crate) fn counters(&self) -> &RunCounters {
        &self.counters
    }

    /// This version's runs since the agent started.
    pub(crate) fn task_runs(&self, key: &str) -> TaskRuns {
        lock(&self.task_runs).get(key).cloned().unwrap_or_default()
    }

    /// Failed runs of this version in a row now.
    pub(crate) fn failure_streak(&self, key: &str) -> u32 {
        lock(&self.failure_streaks).get(key).copied().unwrap_or(0)
    }

    /// Forgets a version's failure streak (it was rolled back).
    pub(crate) fn forget_streak(&self, key: &str) {
        lock(&self.failure_streaks).remove(key);
    }

    /// A task's latest output records (up to 100), oldest first.
    pub(crate) fn recent_outputs(&self, task: &str) -> Vec<serde_json::Value> {
        lock(&self.recent_outputs)
            .get(task)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Quarantined task versions and why.
    pub(crate) fn quarantined(&self) -> Vec<(String, String)> {
        lock(&self.quarantined)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Why the agent asks to be restarted, as it changes.
    pub(crate) fn restart_requests(&self) -> watch::Receiver<Option<String>> {
        self.restart.subscribe()
    }

    /// Why the agent asks to be restarted, if it does.
    pub(crate) fn restart_requested(&self) -> Option<String> {
        self.restart.borrow().clone()
    }

    /// Puts the runs left in [`RUNS`] by the previous process back in the queue, oldest first
    /// (their tasks are restored by then). Runs started [`MAX_RUN_ATTEMPTS`] times already are
    /// given up and reported as failed.
    pub(crate) fn recover(&self) {
        let items = match self.outgoing.journalled_runs() {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the runs left by the previous process");
                return;
            }
        };
        for (item, attempts) in items {
            let context = serde_json::from_slice(&item.payload);
            match context {
                Ok(context) if attempts < MAX_RUN_ATTEMPTS => {
                    self.counters.recovered.fetch_add(1, Ordering::Relaxed);
                    self.queue.push_recovered(PendingRun {
                        journal_seq: Some(item.seq),
                        task: item.task,
                        context,
                        queued_at: Instant::now(),
                    });
                }
                Ok(_) => self.give_up(&item, attempts),
                Err(e) => {
                    tracing::error!(task = %item.task, error = %e, "a stored run is not JSON; dropped");
                    self.forget(Some(item.seq));
                }
            }
        }
    }

    /// Drops a run that was interrupted too often, reporting it as failed.
    fn give_up(&self, item: &walle_pipeline::Item, attempts: u32) {
        let error = format!("the device stopped during this run {attempts} times; given up");
        tracing::error!(task = %item.task, version = %item.version, "{error}");
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let release_id = self
            .active
            .get(&item.task)
            .map(|t| t.release_id)
            .unwrap_or_default();
        let report = self.outgoing.task_event(
            task_event::Kind::RunFailed,
            &item.task,
            &item.version,
            &release_id,
            &error,
        );
        let report = TaskEvent {
            failure: "interrupted".into(),
            ..report
        };
        let payload = report.encode_to_vec();
        let change = Change {
            push: vec![(REPORTS, report_item(&report, &payload))],
            remove: vec![(RUNS, item.seq)],
        };
        self.outgoing.commit(&change, |_| Ok(()));
    }

    /// Removes a run from [`RUNS`] without effects (its task is gone, or the run is unreadable).
    fn forget(&self, journal_seq: Option<i64>) {
        if let Some(seq) = journal_seq {
            let change = Change {
                push: Vec::new(),
                remove: vec![(RUNS, seq)],
            };
            self.outgoing.commit(&change, |_| Ok(()));
        }
    }

    async fn execute(&self, run: PendingRun) {
        let Some(task) = self.active.get(&run.task) else {
            // Removed between match and run: nothing to run.
            self.forget(run.journal_seq);
            return;
        };
        let vm = self.vm.clone();
        let key = task.vm_key();
        let context = run.context;
        let waited_here = run.queued_at.elapsed();
        let ran = tokio::task::spawn_blocking(move || vm.run_staged(&key, context))
            .await
            .unwrap_or_else(|e| TimedRun {
                result: Err(VmError::Pool(format!("run worker failed: {e}"))),
                timing: RunTiming::default(),
            });
        let TimedRun { result, timing } = ran;
        // Its own time only: waiting in the agent's queue and in the VM worker's is apart.
        let duration_ms = timing.executed.as_millis() as u64;
        let queued_ms = (waited_here + timing.queued).as_millis() as u64;
        walle_proto::crash::crash_point("device-mid-run");
        if let Err(VmError::Quarantined { .. }) = &result {
            // Reported once, when it was quarantined (`health`); its runs are refused quietly.
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.forget(run.journal_seq);
            return;
        }
        let error = result.as_ref().err().map(ToString::to_string);
        lock(&self.task_runs)
            .entry(task.vm_key())
            .or_default()
            .record(duration_ms, queued_ms, error.as_deref());
        let timing = RunTimes {
            duration_ms,
            queued_ms,
        };
        self.commit_run(&task, run.journal_seq, &result, timing);
        // Counted once committed: a status that shows the run also shows its records in the outbox.
        let counter = match &result {
            Ok(_) => &self.counters.ok,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        walle_proto::crash::crash_point("device-run-committed");
        self.note_streak(&task, error.as_deref());
        if let Ok(output) = &result {
            if !output.logs.is_empty() {
                tracing::info!(task = %task.vm_key(), logs = %output.logs, "task printed");
            }
            self.remember_outputs(task.task(), &output.records);
        }
        self.check_health();
    }

    /// Commits a finished run in one transaction: its records and report into the outbox, its
    /// state writes, and its removal from [`RUNS`].
    fn commit_run(
        &self,
        task: &InstalledTask,
        journal_seq: Option<i64>,
        result: &Result<RunOutput, VmError>,
        timing: RunTimes,
    ) {
        let version = task.version();
        let report = self.run_report(task, result, timing);
        let report_payload = report.encode_to_vec();
        let (records, state): (Vec<(String, Vec<u8>)>, &[walle_vm::StateWrite]) = match result {
            Ok(output) => (
                output
                    .records
                    .iter()
                    .map(|record| (self.outgoing.next_id(), record.to_string().into_bytes()))
                    .collect(),
                &output.state,
            ),
            Err(_) => (Vec::new(), &[]),
        };
        let produced_at = now_ms();
        let mut push: Vec<(&str, NewItem)> = records
            .iter()
            .map(|(id, payload)| {
                let item = NewItem {
                    id,
                    task: task.task(),
                    version: &version,
                    created_at_ms: produced_at,
                    payload,
                };
                (RECORDS, item)
            })
            .collect();
        push.push((REPORTS, report_item(&report, &report_payload)));
        let change = Change {
            push,
            remove: journal_seq.map(|seq| (RUNS, seq)).into_iter().collect(),
        };
        self.outgoing.commit(&change, |transaction| {
            db::write_state(transaction, task.task(), state)
        });
    }

    /// The report of a finished run.
    fn run_report(
        &self,
        task: &InstalledTask,
        result: &Result<RunOutput, VmError>,
        timing: RunTimes,
    ) -> TaskEvent {
        let (kind, detail, failure) = match result {
            Ok(_) => (task_event::Kind::RunOk, String::new(), ""),
            Err(e) => {
                tracing::warn!(task = %task.vm_key(), error = %e, "task run failed");
                (task_event::Kind::RunFailed, e.to_string(), e.kind())
            }
        };
        let event = self.outgoing.task_event(
            kind,
            task.task(),
            &task.version(),
            &task.release_id,
            &detail,
        );
        TaskEvent {
            duration_ms: timing.duration_ms,
            queued_ms: timing.queued_ms,
            failure: failure.to_owned(),
            ..event
        }
    }

    /// Counts a run of `task`: a success ends its failure streak; a failure extends it and,
    /// when the streak reaches `rollback_after_failures`, asks activation for a rollback.
    fn note_streak(&self, task: &InstalledTask, failure: Option<&str>) {
        let threshold = self.thresholds.rollback_after_failures;
        let key = task.vm_key();
        let Some(error) = failure else {
            lock(&self.failure_streaks).remove(&key);
            return;
        };
        if threshold == 0 {
            return;
        }
        let streak = {
            let mut streaks = lock(&self.failure_streaks);
            let streak = streaks.entry(key).or_default();
            *streak += 1;
            *streak
        };
        // Exactly at the threshold, so runs failing in parallel ask once, not several times.
        if streak == threshold {
            let reason = format!("{streak} consecutive failed runs; the last: {error}");
            let request = RollbackRequest {
                bad: task.clone(),
                reason,
            };
            if self.rollbacks.send(request).is_err() {
                tracing::warn!(task = %task.vm_key(), "the agent is stopping; no rollback");
            }
        }
    }

    /// Keeps a task's latest output records for `Agent::outputs`.
    fn remember_outputs(&self, task: &str, records: &[serde_json::Value]) {
        let mut recent = lock(&self.recent_outputs);
        let queue = recent.entry(task.to_owned()).or_default();
        for record in records {
            if queue.len() >= RECENT_OUTPUTS_PER_TASK {
                queue.pop_front();
            }
            queue.push_back(record.clone());
        }
    }
}

/// Starts runs as the queue allows until stopped.
pub(crate) async fn run(runner: Arc<Runner>, mut stop: watch::Receiver<bool>) {
    loop {
        while let Some(pending) = runner.queue.next() {
            let runner = runner.clone();
            tokio::spawn(async move {
                let task = pending.task.clone();
                runner.execute(pending).await;
                runner.queue.finished(&task);
            });
        }
        tokio::select! {
            _ = runner.queue.ready() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A run's execution time and the time it waited before, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct RunTimes {
    duration_ms: u64,
    queued_ms: u64,
}
