//! Local rollback: a task version that fails `rollback_after_failures` runs in a row is replaced
//! by the version that was active before it, the bad bundle is never installed again on this
//! device (also after a restart), and the cloud is told why, so release health sees it.

use std::sync::Arc;

use walle_proto::v1::task_event;

use crate::agent::{Shared, lock};
use crate::install::InstalledTask;

/// Counts a run of `task`: a success ends its failure streak; a failure extends it and, when the
/// streak reaches the configured length, starts a rollback.
pub(crate) fn note_run(shared: &Arc<Shared>, task: &InstalledTask, failure: Option<&str>) {
    let threshold = shared.config.rollback_after_failures;
    let key = task.vm_key();
    let Some(error) = failure else {
        lock(&shared.failure_streaks).remove(&key);
        return;
    };
    if threshold == 0 {
        return;
    }
    let streak = {
        let mut streaks = lock(&shared.failure_streaks);
        let streak = streaks.entry(key).or_default();
        *streak += 1;
        *streak
    };
    // Exactly at the threshold, so runs failing in parallel start one rollback, not several.
    if streak == threshold {
        let reason = format!("{streak} consecutive failed runs; the last: {error}");
        let (shared, task) = (shared.clone(), task.clone());
        tokio::spawn(async move { roll_back(&shared, task, reason).await });
    }
}

/// Replaces the failing `bad` version by the previous one, if there is one on disk.
async fn roll_back(shared: &Arc<Shared>, bad: InstalledTask, reason: String) {
    let still_active = lock(&shared.active)
        .get(bad.task())
        .is_some_and(|active| active.vm_key() == bad.vm_key());
    if !still_active {
        return;
    }
    let previous = match shared.installer().previous(bad.task()) {
        Ok(Some(previous)) => previous,
        Ok(None) => {
            tracing::error!(task = %bad.vm_key(), %reason, "failing task has no previous version to roll back to");
            shared.note_failure(format!("{}: {reason}; no previous version", bad.vm_key()));
            return;
        }
        Err(e) => {
            tracing::error!(task = %bad.vm_key(), error = %e, "cannot read the previous version");
            return;
        }
    };
    let version = bad.version();
    // The bad bundle is refused and the reason noted once the pointer is back on the previous
    // version, before that version becomes the active one: whoever sees the switch (status,
    // a restart) also sees why, and the bundle is not offered again.
    let switched = crate::connection::switch_to(shared, previous.clone(), |installer, _| {
        installer.roll_back(bad.task())?;
        shared.refuse_bundle(&bad.manifest.bundle_digest, bad.task(), &version, &reason);
        lock(&shared.failure_streaks).remove(&bad.vm_key());
        shared.note_failure(format!(
            "{}: rolled back to {}: {reason}",
            bad.vm_key(),
            previous.version()
        ));
        Ok(())
    })
    .await;
    if let Err(e) = switched {
        tracing::error!(task = %bad.vm_key(), error = %e, "rollback to {} failed", previous.version());
        shared.note_failure(format!("{}: rollback failed: {e}", bad.vm_key()));
        return;
    }
    tracing::warn!(task = %bad.task(), from = %version, to = %previous.version(), %reason, "rolled back");
    let detail = format!("rolled back to {}: {reason}", previous.version());
    shared.report(
        task_event::Kind::RolledBack,
        bad.task(),
        &version,
        &bad.release_id,
        &detail,
        0,
    );
    shared.report(
        task_event::Kind::Installed,
        previous.task(),
        &previous.version(),
        &previous.release_id,
        "local rollback",
        0,
    );
}
