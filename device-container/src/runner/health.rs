//! What the agent does about the task VM's health (see `walle_vm::VmPool::health`).
//!
//! The VM bounds what task code can do, and when a worker is lost anyway (stuck in native code
//! nothing could stop, or parked at a task's hard memory cap) it replaces it and quarantines a
//! task that does it again. Here, after every run:
//!
//! * a task version the VM quarantined is written to the device database, so that a restart
//!   keeps refusing it, and reported to the cloud once, as a failed run of kind `quarantined`
//!   with the VM's reason (the release's health counts it); its later runs are dropped and
//!   counted (`runs_refused`). A new version of the task starts with a clean slate.
//! * when lost threads still running reach `restart_after_lost_threads`, or their tasks hold
//!   `restart_after_lost_bytes`, the agent asks to be restarted (`restart_requested`): a device
//!   must not stay a core or a budget down. The run journal makes a restart safe; the
//!   `walle-device` binary restarts itself, an embedding app decides.
//!
//! At start, [`Runner::restore_quarantines`] hands the quarantined versions back to the VM before any task loads.

use std::sync::atomic::Ordering;

use walle_proto::v1::{TaskEvent, task_event};

use super::Runner;
use crate::clock::now_ms;
use crate::locks::lock;

impl Runner {
    /// Quarantines the task versions the database says were quarantined before.
    pub(super) fn restore_quarantines(&self) {
        match self.db.quarantined() {
            Ok(quarantined) => {
                for (key, reason) in quarantined {
                    self.vm.quarantine(&key, &reason);
                    lock(&self.quarantined).insert(key, reason);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the quarantined tasks"),
        }
    }

    /// Records and reports new quarantines, and asks for a restart when too much is lost.
    pub(super) fn check_health(&self) {
        let health = self.vm.health();
        for (key, reason) in &health.quarantined {
            let new = lock(&self.quarantined)
                .insert(key.clone(), reason.clone())
                .is_none();
            if new {
                self.note_quarantine(key, reason);
            }
        }
        let limits = &self.thresholds;
        let too_many_threads = limits.restart_after_lost_threads > 0
            && health.lost_threads >= limits.restart_after_lost_threads;
        let too_many_bytes = limits.restart_after_lost_bytes > 0
            && health.lost_bytes >= limits.restart_after_lost_bytes;
        if too_many_threads || too_many_bytes {
            let reason = format!(
                "the task VM lost {} worker thread(s) to stuck native code, holding {} bytes (restart at {} threads or {} bytes)",
                health.lost_threads,
                health.lost_bytes,
                limits.restart_after_lost_threads,
                limits.restart_after_lost_bytes
            );
            self.restart.send_if_modified(|requested| {
                if requested.is_some() {
                    return false;
                }
                tracing::error!(%reason, "asking for a restart");
                *requested = Some(reason.clone());
                true
            });
        }
    }

    /// Persists a quarantine and reports it to the cloud as a failed run of kind `quarantined`.
    fn note_quarantine(&self, key: &str, reason: &str) {
        tracing::error!(task = key, %reason, "task quarantined by the VM");
        if let Err(e) = self.db.quarantine(key, reason, now_ms()) {
            tracing::error!(task = key, error = %e, "cannot remember a quarantined task");
        }
        let (task, version) = key.split_once('@').unwrap_or((key, ""));
        let release_id = self
            .active
            .get(task)
            .filter(|active| active.vm_key() == key)
            .map(|active| active.release_id)
            .unwrap_or_default();
        let event = self.outgoing.task_event(
            task_event::Kind::RunFailed,
            task,
            version,
            &release_id,
            &format!("quarantined: {reason}"),
        );
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.outgoing.queue_report(TaskEvent {
            failure: "quarantined".into(),
            ..event
        });
    }
}
