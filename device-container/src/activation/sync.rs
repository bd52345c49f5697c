//! A sync: the cloud's desired task set, applied. Each version to install is verified against
//! the trusted publisher keys, checked against what is active and what was refused, given room
//! in the bundle cache, downloaded, unpacked and made active through `install`; each task to
//! remove is taken out of service. Refusals and installs are reported to the cloud.

use futures::StreamExt;
use walle_proto::manifest::ReleaseManifest;
use walle_proto::v1::{
    DesiredTask, InstalledTask as InstalledProto, SyncRequest, desired_task, task_event,
};

use super::{Activation, download};
use crate::AgentError;
use crate::cloud::{self, Client};
use crate::install::{InstallError, SwitchError};
use crate::locks::lock;

impl Activation {
    /// Pulls the desired task set and converges to it.
    pub(super) async fn sync_and_apply(&self, client: &mut Client) -> Result<(), AgentError> {
        let installed: Vec<InstalledProto> = self
            .versions
            .active()
            .all()
            .iter()
            .map(|t| InstalledProto {
                task: t.task().to_owned(),
                version: t.version(),
                bundle_digest: t.manifest.bundle_digest.clone(),
            })
            .collect();
        let response = client
            .sync(SyncRequest {
                profile: Some(cloud::profile(&self.config, &self.device_id)),
                installed,
            })
            .await
            .map_err(|s| AgentError::Rpc("sync", s))?
            .into_inner();
        let mut installs = Vec::new();
        for desired in response.desired {
            match desired_task::Action::try_from(desired.action) {
                Ok(desired_task::Action::Install) => installs.push(desired),
                Ok(desired_task::Action::Remove) => self.apply_remove(&desired.task),
                _ => {
                    tracing::warn!(task = %desired.task, action = desired.action, "ignoring unknown sync action")
                }
            }
        }
        // Several at once, one per VM worker: a version whose module-level code runs to its
        // deadline holds up only its own install.
        let results: Vec<Result<(), AgentError>> = futures::stream::iter(installs)
            .map(|desired| {
                let mut client = client.clone();
                async move { self.apply_install(&mut client, desired).await }
            })
            .buffer_unordered(self.versions.loads_at_once())
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Installs one desired version, unless it is active already or was refused; a refusal
    /// is reported, a failed download only retried later.
    async fn apply_install(
        &self,
        client: &mut Client,
        desired: DesiredTask,
    ) -> Result<(), AgentError> {
        let Some(manifest) = self.verified_manifest(&desired) else {
            return Ok(());
        };
        if !self.wants(&desired.task, &manifest) {
            return Ok(());
        }
        let version = manifest.task.version.to_string();
        if let Err(no_room) = self.make_cache_room(manifest.bundle_size) {
            // Not refused for good: a restart with a larger budget tries again.
            lock(&self.failed_digests).insert(manifest.bundle_digest.clone());
            self.refuse(&desired, &version, no_room.to_string());
            return Ok(());
        }
        let downloads = self.config.data_dir.join("downloads");
        let bytes = match download::fetch_bundle(client, &manifest, &downloads).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not reported as an install failure: it is retried at the next notice or sync.
                tracing::warn!(device = %self.device_id, task = %desired.task, error = %e, "bundle download failed");
                self.note_failure(format!("{}@{version}: {e}", desired.task));
                return Ok(());
            }
        };
        let installed = self.install(&manifest, &desired.release_id, bytes).await?;
        // Installed or refused for good: either way the partial download has served.
        download::discard(&downloads, &manifest);
        match installed {
            Ok(()) => {
                tracing::info!(device = %self.device_id, task = %desired.task, %version, "task installed");
                let _ = self.make_cache_room(0);
                self.outgoing.report(
                    task_event::Kind::Installed,
                    &desired.task,
                    &version,
                    &desired.release_id,
                    "",
                    0,
                );
            }
            Err(refused) => {
                let reason = refused.to_string();
                self.refuse_bundle(&manifest.bundle_digest, &desired.task, &version, &reason);
                self.refuse(&desired, &version, reason);
            }
        }
        Ok(())
    }

    /// The desired version's manifest if its signature verifies and it is for the task it is
    /// offered as; otherwise refuses it (a bad signature once per exact manifest).
    fn verified_manifest(&self, desired: &DesiredTask) -> Option<ReleaseManifest> {
        let Some(signed) = desired.manifest.as_ref() else {
            self.refuse(
                desired,
                UNKNOWN_VERSION,
                "sync answer has no manifest".into(),
            );
            return None;
        };
        match self.installer().verify_manifest(signed) {
            Ok(m) if m.task.name == desired.task => Some(m),
            Ok(m) => {
                let reason = format!("signed manifest is for task {:?}", m.task.name);
                self.refuse(desired, &m.task.version.to_string(), reason);
                None
            }
            Err(e) => {
                // Remember the exact signed bytes so a bad manifest is not retried at every sync.
                let fingerprint = walle_proto::bundle::digest_hex(&signed.manifest_json);
                if lock(&self.failed_digests).insert(fingerprint) {
                    self.refuse(
                        desired,
                        &claimed_version(&signed.manifest_json),
                        e.to_string(),
                    );
                }
                None
            }
        }
    }

    /// Whether a verified version is neither active already nor refused on this device.
    fn wants(&self, task: &str, manifest: &ReleaseManifest) -> bool {
        let already = self
            .versions
            .active()
            .get(task)
            .is_some_and(|t| t.manifest.bundle_digest == manifest.bundle_digest);
        !already && !lock(&self.failed_digests).contains(&manifest.bundle_digest)
    }

    /// Checks and unpacks downloaded bundle bytes (on a blocking worker), then makes the
    /// version active. The inner error is why the bundle is refused for good.
    async fn install(
        &self,
        manifest: &ReleaseManifest,
        release_id: &str,
        bytes: Vec<u8>,
    ) -> Result<Result<(), Refused>, AgentError> {
        let installer = self.installer();
        let unpacked = {
            let (installer, manifest, release_id) =
                (installer.clone(), manifest.clone(), release_id.to_owned());
            tokio::task::spawn_blocking(move || installer.unpack(&manifest, &release_id, &bytes))
                .await
                .map_err(|source| AgentError::Worker {
                    what: "install worker",
                    source,
                })?
        };
        Ok(match unpacked {
            Ok(installed) => self
                .versions
                .activate(&installer, installed)
                .await
                .map_err(Refused::Switch),
            Err(e) => Err(Refused::Unpack(e)),
        })
    }

    /// Reports a refused install and remembers it for status.
    fn refuse(&self, desired: &DesiredTask, version: &str, reason: String) {
        tracing::warn!(device = %self.device_id, task = %desired.task, version, %reason, "install refused");
        self.note_failure(format!("{}@{version}: {reason}", desired.task));
        self.outgoing.report(
            task_event::Kind::InstallFailed,
            &desired.task,
            version,
            &desired.release_id,
            &reason,
            0,
        );
    }

    /// Takes a task the cloud no longer wants out of service and reports it.
    fn apply_remove(&self, task: &str) {
        let Some(previous) = self.versions.remove(&self.installer(), task) else {
            return;
        };
        self.outgoing.report(
            task_event::Kind::Removed,
            task,
            &previous.version(),
            &previous.release_id,
            "",
            0,
        );
    }
}

/// Why a downloaded bundle is refused for good.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Unpack(InstallError),
    #[error(transparent)]
    Switch(SwitchError),
}

/// Version label for refusals where no version can be trusted or read.
const UNKNOWN_VERSION: &str = "unknown";

/// The version an unverified manifest claims, for labelling its refusal only (never trusted).
fn claimed_version(manifest_json: &[u8]) -> String {
    serde_json::from_slice::<ReleaseManifest>(manifest_json)
        .map(|m| m.task.version.to_string())
        .unwrap_or_else(|_| UNKNOWN_VERSION.to_owned())
}
