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
//! At start, [`restore`] hands the quarantined versions back to the VM before any task loads.

use std::sync::atomic::Ordering;

use walle_proto::v1::{TaskEvent, task_event};

use crate::agent::{Shared, lock, now_ms};

/// Quarantines the task versions the database says were quarantined before.
pub(crate) fn restore(shared: &Shared) {
    match shared.db.quarantined() {
        Ok(quarantined) => {
            for (key, reason) in quarantined {
                shared.vm.quarantine(&key, &reason);
                lock(&shared.quarantined).insert(key, reason);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the quarantined tasks"),
    }
}

/// Records and reports new quarantines, and asks for a restart when too much is lost.
pub(crate) fn check(shared: &Shared) {
    let health = shared.vm.health();
    for (key, reason) in &health.quarantined {
        let new = lock(&shared.quarantined)
            .insert(key.clone(), reason.clone())
            .is_none();
        if new {
            note_quarantine(shared, key, reason);
        }
    }
    let config = &shared.config;
    let too_many_threads = config.restart_after_lost_threads > 0
        && health.lost_threads >= config.restart_after_lost_threads;
    let too_many_bytes =
        config.restart_after_lost_bytes > 0 && health.lost_bytes >= config.restart_after_lost_bytes;
    if too_many_threads || too_many_bytes {
        let reason = format!(
            "the task VM lost {} worker thread(s) to stuck native code, holding {} bytes (restart at {} threads or {} bytes)",
            health.lost_threads,
            health.lost_bytes,
            config.restart_after_lost_threads,
            config.restart_after_lost_bytes
        );
        shared.restart.send_if_modified(|requested| {
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
fn note_quarantine(shared: &Shared, key: &str, reason: &str) {
    tracing::error!(task = key, %reason, "task quarantined by the VM");
    if let Err(e) = shared.db.quarantine(key, reason, now_ms()) {
        tracing::error!(task = key, error = %e, "cannot remember a quarantined task");
    }
    let (task, version) = key.split_once('@').unwrap_or((key, ""));
    let release_id = lock(&shared.active)
        .get(task)
        .filter(|active| active.vm_key() == key)
        .map(|active| active.release_id.clone())
        .unwrap_or_default();
    let event = shared.task_event(
        task_event::Kind::RunFailed,
        task,
        version,
        &release_id,
        &format!("quarantined: {reason}"),
    );
    shared.counters.runs_failed.fetch_add(1, Ordering::Relaxed);
    shared.queue_report(TaskEvent {
        failure: "quarantined".into(),
        ..event
    });
}
