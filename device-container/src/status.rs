//! What the agent reports about itself (`Agent::status`, `GET /v1/status`, `walle-device
//! status`): plain data, assembled by the agent from each component's part.

use std::collections::BTreeMap;

use serde::Serialize;
use walle_pipeline::StoreStats;

use crate::clock::now_ms;
use crate::install::cache::CacheStatus;
pub use crate::uplink::OutboxStatus;

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
