//! The connection to the cloud: register, subscribe to notices, sync, fetch, verify and install.
//!
//! The loop never gives up: any failure ends the session and a new one starts after an
//! exponential backoff with jitter. A notice is answered by a sync at a random time inside its
//! pace window; a periodic sync covers missed notices.

use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use walle_proto::manifest::ReleaseManifest;
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::{
    DesiredTask, DeviceProfile, InstalledTask as InstalledProto, RegisterRequest, SubscribeRequest,
    SyncRequest, desired_task, task_event,
};

use crate::agent::{Shared, lock};
use crate::backoff::Backoff;
use crate::credential::{self, Credential};
use crate::install::InstalledTask;
use crate::{AgentError, download, random};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Adds the device token to every call.
#[derive(Clone)]
pub struct Auth(AsciiMetadataValue);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// An authenticated device-plane client.
pub type Client = DevicePlaneClient<InterceptedService<Channel, Auth>>;

/// Runs sessions until stopped.
pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let outcome = tokio::select! {
            outcome = session(&shared) => outcome,
            _ = stop.wait_for(|s| *s) => return,
        };
        let was_connected = shared.connected.swap(false, Ordering::SeqCst);
        *lock(&shared.client) = None;
        if let Err(e) = outcome {
            tracing::warn!(device = %shared.device_id, error = %e, "cloud session ended");
        }
        if was_connected {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn endpoint(config: &crate::DeviceConfig) -> Result<Endpoint, AgentError> {
    let endpoint = Endpoint::from_shared(config.cloud_url.clone())
        .map_err(|e| AgentError::Config(format!("cloud_url {:?}: {e}", config.cloud_url)))?;
    let Some(ca) = &config.cloud_ca_cert else {
        return Ok(endpoint);
    };
    let pem = std::fs::read(ca)
        .map_err(|e| AgentError::Config(format!("cloud_ca_cert {}: {e}", ca.display())))?;
    endpoint
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .map_err(|e| AgentError::Config(format!("TLS with cloud_ca_cert {}: {e}", ca.display())))
}

async fn session(shared: &Arc<Shared>) -> Result<(), AgentError> {
    let channel = endpoint(&shared.config)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| {
            AgentError::Transport(format!("connecting to {}: {e}", shared.config.cloud_url))
        })?;
    let credential = ensure_registered(shared, channel.clone()).await?;
    let token = AsciiMetadataValue::try_from(format!("Bearer {}", credential.device_token))
        .map_err(|_| AgentError::State("stored device token is not ASCII".into()))?;
    let mut client = DevicePlaneClient::with_interceptor(channel, Auth(token));
    let mut notices = match client.subscribe(SubscribeRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unauthenticated => {
            // The cloud forgot us (or the token was revoked): register again next session, but
            // keep trusting the publisher keys we have (see `ensure_registered`).
            credential::store(
                &shared.config.data_dir,
                &Credential {
                    device_token: String::new(),
                    ..credential
                },
            )?;
            return Err(AgentError::Rpc("subscribe", status));
        }
        Err(status) => return Err(AgentError::Rpc("subscribe", status)),
    };
    *lock(&shared.client) = Some(client.clone());
    // `connected` (which also resets the reconnect backoff) waits for the first good sync, so a
    // cloud that accepts streams but fails syncs does not get a reconnect storm.
    sync_and_apply(shared, &mut client).await?;
    shared.connected.store(true, Ordering::SeqCst);
    shared.wake_uplink.notify_one();
    let interval = Duration::from_secs(u64::from(credential.sync_interval_secs.max(1)));
    loop {
        tokio::select! {
            message = notices.message() => {
                let notice = message
                    .map_err(|s| AgentError::Rpc("subscribe stream", s))?
                    .ok_or_else(|| AgentError::Transport("cloud closed the notice stream".into()))?;
                tokio::time::sleep(random::jitter(u64::from(notice.pace_window_ms))).await;
                sync_and_apply(shared, &mut client).await?;
            }
            _ = tokio::time::sleep(interval) => sync_and_apply(shared, &mut client).await?,
        }
    }
}

fn profile(shared: &Shared) -> DeviceProfile {
    let p = &shared.config.profile;
    DeviceProfile {
        device_id: shared.device_id.clone(),
        app_id: p.app_id.clone(),
        app_version: p.app_version.clone(),
        os: p.os.clone(),
        os_version: p.os_version.clone(),
        model: p.model.clone(),
        hardware_tier: p.hardware_tier.clone(),
        region: p.region.clone(),
        tags: p.tags.clone(),
    }
}

async fn ensure_registered(shared: &Shared, channel: Channel) -> Result<Credential, AgentError> {
    let data_dir = &shared.config.data_dir;
    let stored = credential::load(data_dir)?;
    if let Some(stored) = &stored
        && !stored.device_token.is_empty()
    {
        shared.installer_mut().set_trusted(stored.trusted_keys());
        return Ok(stored.clone());
    }
    let response = DevicePlaneClient::new(channel)
        .register(RegisterRequest {
            profile: Some(profile(shared)),
            enrollment_secret: shared.config.enrollment_secret.clone(),
        })
        .await
        .map_err(|s| AgentError::Rpc("register", s))?
        .into_inner();
    // Trust on first registration only: a re-registration (after the cloud rejected our token)
    // keeps the keys we already trust, so whoever answers it cannot make us run their code.
    let publisher_keys = match stored.filter(|s| !s.publisher_keys.is_empty()) {
        Some(previous) => previous.publisher_keys,
        None => response
            .publisher_keys
            .iter()
            .map(|k| (k.key_id.clone(), hex::encode(&k.public_key)))
            .collect(),
    };
    let credential = Credential {
        device_token: response.device_token,
        publisher_keys,
        sync_interval_secs: response.sync_interval_secs,
    };
    credential::store(data_dir, &credential)?;
    shared
        .installer_mut()
        .set_trusted(credential.trusted_keys());
    tracing::info!(device = %shared.device_id, "registered with the cloud");
    Ok(credential)
}

impl Shared {
    fn installer_mut(&self) -> std::sync::RwLockWriteGuard<'_, crate::install::Installer> {
        self.installer.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn installer(&self) -> crate::install::Installer {
        self.installer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Pulls the desired task set and converges to it.
async fn sync_and_apply(shared: &Arc<Shared>, client: &mut Client) -> Result<(), AgentError> {
    let installed: Vec<InstalledProto> = lock(&shared.active)
        .values()
        .map(|t| InstalledProto {
            task: t.task().to_owned(),
            version: t.version(),
            bundle_digest: t.manifest.bundle_digest.clone(),
        })
        .collect();
    let response = client
        .sync(SyncRequest {
            profile: Some(profile(shared)),
            installed,
        })
        .await
        .map_err(|s| AgentError::Rpc("sync", s))?
        .into_inner();
    let mut installs = Vec::new();
    for desired in response.desired {
        match desired_task::Action::try_from(desired.action) {
            Ok(desired_task::Action::Install) => installs.push(desired),
            Ok(desired_task::Action::Remove) => apply_remove(shared, &desired.task).await,
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
            async move { apply_install(shared, &mut client, desired).await }
        })
        .buffer_unordered(shared.vm.threads())
        .collect()
        .await;
    results.into_iter().collect()
}

async fn apply_install(
    shared: &Arc<Shared>,
    client: &mut Client,
    desired: DesiredTask,
) -> Result<(), AgentError> {
    let installer = shared.installer();
    let refuse = |version: &str, reason: String| {
        tracing::warn!(device = %shared.device_id, task = %desired.task, version, %reason, "install refused");
        shared.note_failure(format!("{}@{version}: {reason}", desired.task));
        shared.report(
            task_event::Kind::InstallFailed,
            &desired.task,
            version,
            &desired.release_id,
            &reason,
            0,
        );
    };
    let Some(signed) = desired.manifest.as_ref() else {
        refuse(UNKNOWN_VERSION, "sync answer has no manifest".into());
        return Ok(());
    };
    let manifest = match installer.verify_manifest(signed) {
        Ok(m) if m.task.name == desired.task => m,
        Ok(m) => {
            refuse(
                &m.task.version.to_string(),
                format!("signed manifest is for task {:?}", m.task.name),
            );
            return Ok(());
        }
        Err(e) => {
            // Remember the exact signed bytes so a bad manifest is not retried at every sync.
            let fingerprint = walle_proto::bundle::digest_hex(&signed.manifest_json);
            if lock(&shared.failed_digests).insert(fingerprint) {
                refuse(&claimed_version(&signed.manifest_json), e.to_string());
            }
            return Ok(());
        }
    };
    let version = manifest.task.version.to_string();
    let already = lock(&shared.active)
        .get(&desired.task)
        .is_some_and(|t| t.manifest.bundle_digest == manifest.bundle_digest);
    if already || lock(&shared.failed_digests).contains(&manifest.bundle_digest) {
        return Ok(());
    }
    let downloads = shared.config.data_dir.join("downloads");
    if let Err(no_room) = shared.make_cache_room(manifest.bundle_size) {
        // Not refused for good: a restart with a larger budget tries again.
        lock(&shared.failed_digests).insert(manifest.bundle_digest.clone());
        refuse(&version, no_room.to_string());
        return Ok(());
    }
    let bytes = match download::fetch_bundle(client, &manifest, &downloads).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // Not reported as an install failure: it is retried at the next notice or sync.
            tracing::warn!(device = %shared.device_id, task = %desired.task, error = %e, "bundle download failed");
            shared.note_failure(format!("{}@{version}: {e}", desired.task));
            return Ok(());
        }
    };
    let unpacked = {
        let (manifest, release_id) = (manifest.clone(), desired.release_id.clone());
        tokio::task::spawn_blocking(move || installer.unpack(&manifest, &release_id, &bytes))
            .await
            .map_err(|e| AgentError::State(format!("install worker failed: {e}")))?
    };
    let result = match unpacked {
        Ok(installed) => activate(shared, installed).await,
        Err(e) => Err(e.to_string()),
    };
    // Installed or refused for good: either way the partial download has served.
    download::discard(&downloads, &manifest);
    match result {
        Ok(()) => {
            tracing::info!(device = %shared.device_id, task = %desired.task, %version, "task installed");
            let _ = shared.make_cache_room(0);
            shared.report(
                task_event::Kind::Installed,
                &desired.task,
                &version,
                &desired.release_id,
                "",
                0,
            );
        }
        Err(reason) => {
            shared.refuse_bundle(&manifest.bundle_digest, &desired.task, &version, &reason);
            refuse(&version, reason);
        }
    }
    Ok(())
}

/// Version label for refusals where no version can be trusted or read.
const UNKNOWN_VERSION: &str = "unknown";

/// The version an unverified manifest claims, for labelling its refusal only (never trusted).
fn claimed_version(manifest_json: &[u8]) -> String {
    serde_json::from_slice::<ReleaseManifest>(manifest_json)
        .map(|m| m.task.version.to_string())
        .unwrap_or_else(|_| UNKNOWN_VERSION.to_owned())
}

/// Loads a version into the VM, then switches the active pointer, triggers and runs to it. If
/// loading fails, nothing changes: the previous version stays active.
async fn activate(shared: &Arc<Shared>, installed: InstalledTask) -> Result<(), String> {
    switch_to(shared, installed, |installer, installed| {
        installer.activate(installed)
    })
    .await
}

/// Loads `installed` into the VM, runs `switch_pointer` (which makes it the active version on
/// disk), then moves triggers and runs to it and unloads the version it replaces. If loading or
/// the switch fails, nothing changes.
pub(crate) async fn switch_to(
    shared: &Arc<Shared>,
    installed: InstalledTask,
    switch_pointer: impl FnOnce(
        &crate::install::Installer,
        &InstalledTask,
    ) -> Result<(), crate::install::InstallError>,
) -> Result<(), String> {
    load_into_vm(shared, &installed).await?;
    let manifest = &installed.manifest.task;
    let installed_pipeline =
        lock(&shared.pipeline).install(&manifest.name, &manifest.triggers, &manifest.features);
    let switched = installed_pipeline
        .map_err(|e| e.to_string())
        .and_then(|()| switch_pointer(&shared.installer(), &installed).map_err(|e| e.to_string()));
    if let Err(e) = switched {
        shared.vm.unload(&installed.vm_key());
        // Back to the triggers and features of the version that stays active, if any.
        match lock(&shared.active).get(&manifest.name) {
            Some(active) => {
                let kept = &active.manifest.task;
                let _ = lock(&shared.pipeline).install(&kept.name, &kept.triggers, &kept.features);
            }
            None => lock(&shared.pipeline).remove(&manifest.name),
        }
        return Err(e);
    }
    let task = installed.task().to_owned();
    let previous = lock(&shared.active).insert(task, installed.clone());
    if let Some(previous) = previous
        && previous.vm_key() != installed.vm_key()
    {
        shared.vm.unload(&previous.vm_key());
    }
    Ok(())
}

pub(crate) async fn load_into_vm(
    shared: &Arc<Shared>,
    installed: &InstalledTask,
) -> Result<(), String> {
    let read = |path: &str| {
        let file = installed.dir.join(path);
        std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))
    };
    let files = python_files(&installed.dir)?;
    let code = crate::code::task_code(installed.vm_key(), &installed.manifest.task, read, &files)?;
    let vm = shared.vm.clone();
    tokio::task::spawn_blocking(move || vm.load(code))
        .await
        .map_err(|e| format!("VM load worker failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// The `.py` files of an unpacked bundle, as (path relative to `dir` with `/`, content).
fn python_files(dir: &std::path::Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = pending.pop() {
        let entries =
            std::fs::read_dir(&path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            let kind = entry
                .file_type()
                .map_err(|e| format!("cannot stat {rel}: {e}"))?;
            if kind.is_dir() {
                pending.push((entry.path(), format!("{rel}/")));
            } else if kind.is_file() && name.ends_with(".py") {
                let bytes =
                    std::fs::read(entry.path()).map_err(|e| format!("cannot read {rel}: {e}"))?;
                files.push((rel, bytes));
            }
        }
    }
    Ok(files)
}

async fn apply_remove(shared: &Arc<Shared>, task: &str) {
    let Some(previous) = lock(&shared.active).remove(task) else {
        return;
    };
    lock(&shared.pipeline).remove(task);
    shared.vm.unload(&previous.vm_key());
    if let Err(e) = shared.installer().remove(task) {
        tracing::warn!(task, error = %e, "removing task files failed");
    }
    shared.report(
        task_event::Kind::Removed,
        task,
        &previous.version(),
        &previous.release_id,
        "",
        0,
    );
}

/// Reloads the tasks that were active before a restart.
pub(crate) async fn restore_installed(shared: &Arc<Shared>) {
    let installed = match shared.installer().all_current() {
        Ok(list) => list,
        Err(e) => {
            tracing::error!(error = %e, "cannot read installed tasks");
            return;
        }
    };
    // Loaded several at once, one per VM worker, as installs are (see `sync_and_apply`).
    let loaded: Vec<(InstalledTask, Result<(), String>)> = futures::stream::iter(installed)
        .map(|task| async move {
            let result = load_into_vm(shared, &task).await;
            (task, result)
        })
        .buffer_unordered(shared.vm.threads())
        .collect()
        .await;
    for (task, result) in loaded {
        match result {
            Ok(()) => {
                let manifest = &task.manifest.task;
                let installed = lock(&shared.pipeline).install(
                    &manifest.name,
                    &manifest.triggers,
                    &manifest.features,
                );
                match installed {
                    Ok(()) => {
                        lock(&shared.active).insert(task.task().to_owned(), task);
                    }
                    Err(e) => {
                        shared.vm.unload(&task.vm_key());
                        tracing::error!(task = %task.vm_key(), error = %e, "installed task's triggers or features refused");
                    }
                }
            }
            Err(e) => {
                tracing::error!(task = %task.vm_key(), error = %e, "installed task failed to load")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_files_are_found_in_subdirectories_with_bundle_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("main.py"), "x = 1").unwrap();
        std::fs::write(dir.path().join("pkg/util.py"), "y = 2").unwrap();
        std::fs::write(dir.path().join("walle.toml"), "").unwrap();
        let mut files = python_files(dir.path()).unwrap();
        files.sort();
        assert_eq!(
            files,
            vec![
                ("main.py".to_owned(), b"x = 1".to_vec()),
                ("pkg/util.py".to_owned(), b"y = 2".to_vec()),
            ]
        );
    }
}
