//! Local rollback: a task version that fails `rollback_after_failures` runs in a row (the
//! runner counts, and sends a [`RollbackRequest`]) is replaced by the version that was active
//! before it, the bad bundle is never installed again on this device (also after a restart),
//! and the cloud is told why, so release health sees it.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use walle_proto::v1::task_event;

use super::Activation;
use crate::install::InstalledTask;
use crate::runner::RollbackRequest;

/// Handles the runner's rollback requests until stopped; each in its own task, as they come.
pub(crate) async fn run(
    activation: Arc<Activation>,
    mut requests: mpsc::UnboundedReceiver<RollbackRequest>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let request = tokio::select! {
            request = requests.recv() => request,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(RollbackRequest { bad, reason }) = request else {
            return;
        };
        let activation = activation.clone();
        tokio::spawn(async move { activation.roll_back(bad, reason).await });
    }
}

impl Activation {
    /// Replaces the failing `bad` version by the previous one, if there is one on disk.
    async fn roll_back(&self, bad: InstalledTask, reason: String) {
        let still_active = self
            .versions
            .active()
            .get(bad.task())
            .is_some_and(|active| active.vm_key() == bad.vm_key());
        if !still_active {
            return;
        }
        let installer = self.installer();
        let previous = match installer.previous(bad.task()) {
            Ok(Some(previous)) => previous,
            Ok(None) => {
                tracing::error!(task = %bad.vm_key(), %reason, "failing task has no previous version to roll back to");
                self.note_failure(format!("{}: {reason}; no previous version", bad.vm_key()));
                return;
            }
            Err(e) => {
                tracing::error!(task = %bad.vm_key(), error = %e, "cannot read the previous version");
                return;
            }
        };
        let version = bad.version();
        // The bad bundle is refused and the reason noted once the pointer is back on the
        // previous version, before that version becomes the active one: whoever sees the switch
        // (status, a restart) also sees why, and the bundle is not offered again.
        let switched = self
            .versions
            .switch_to(&installer, previous.clone(), |installer, _| {
                installer.roll_back(bad.task())?;
                self.refuse_bundle(&bad.manifest.bundle_digest, bad.task(), &version, &reason);
                self.runner.forget_streak(&bad.vm_key());
                self.note_failure(format!(
                    "{}: rolled back to {}: {reason}",
                    bad.vm_key(),
                    previous.version()
                ));
                Ok(())
            })
            .await;
        if let Err(e) = switched {
            tracing::error!(task = %bad.vm_key(), error = %e, "rollback to {} failed", previous.version());
            self.note_failure(format!("{}: rollback failed: {e}", bad.vm_key()));
            return;
        }
        tracing::warn!(task = %bad.task(), from = %version, to = %previous.version(), %reason, "rolled back");
        let detail = format!("rolled back to {}: {reason}", previous.version());
        self.outgoing.report(
            task_event::Kind::RolledBack,
            bad.task(),
            &version,
            &bad.release_id,
            &detail,
            0,
        );
        self.outgoing.report(
            task_event::Kind::Installed,
            previous.task(),
            &previous.version(),
            &previous.release_id,
            "local rollback",
            0,
        );
    }
}
