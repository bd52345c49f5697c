//! One simulated device: the real device-plane conversation, with task execution stubbed.
//!
//! As the agent does: register once (again if the cloud forgets the token), subscribe, sync as
//! the stream opens, and answer each "task changed" notice with a sync at a uniformly random
//! moment inside the notice's pace window. Each desired version is checked as the agent checks
//! it — the manifest's ed25519 signature against the keys Register gave, then the downloaded
//! bundle's size and sha256 against the signed manifest — and reported installed or failed. A
//! refused bundle is reported once and not fetched again. A lost session is followed by the
//! agent's own reconnect policy (`walle_device::backoff`): the first attempt at a random moment
//! inside the pace window HELLO gave, later ones with exponential backoff; after two failures
//! in a row on one replica the device tries the next.
//!
//! What a device is like comes from [`Traits`]: whether its installs fail, its disk is full,
//! its network is slow, its clock is off.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::time::sleep;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use walle_device::backoff::{Backoff, retry_hint};
use walle_proto::manifest::ReleaseManifest;
use walle_proto::v1::desired_task::Action;
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::notice::Kind as NoticeKind;
use walle_proto::v1::task_event::Kind as EventKind;
use walle_proto::v1::{
    DesiredTask, DeviceProfile, FetchBundleRequest, InstalledTask, PublisherKey, RegisterRequest,
    ReportRequest, SubscribeRequest, SyncRequest, TaskEvent, TunnelRecord, UploadRequest,
};

use super::Fleet;
use super::progress::Counters;

/// What sets one simulated device apart.
#[derive(Debug, Clone, Default)]
pub struct Traits {
    /// Its installs fail (as a device whose VM cannot load the task would report).
    pub fails_install: bool,
    /// Its disk is full: installs fail with the storage error the agent reports.
    pub full_disk: bool,
    /// Extra latency on every call and every received chunk (a slow network).
    pub latency: Option<Duration>,
    /// How far its clock is from the true time, in milliseconds (timestamps it reports).
    pub clock_offset_ms: i64,
}

/// What a device has installed of one task.
struct Installed {
    version: String,
    digest: String,
}

/// Why a session ended.
enum Ended {
    /// Churn: the device goes offline for this long.
    Offline(Duration),
    /// The stream or a call failed.
    Lost(String),
}

/// Most come-back hints obeyed for one download.
const MAX_BUSY_RETRIES: usize = 30;
/// Attempts, each resuming where the last stopped, before a download is given up until the
/// next sync.
const FETCH_ATTEMPTS: usize = 4;

/// One simulated device and its state.
pub struct Device {
    index: usize,
    profile: DeviceProfile,
    traits: Traits,
    token: Option<AsciiMetadataValue>,
    keys: Vec<PublisherKey>,
    installed: BTreeMap<String, Installed>,
    refused: HashSet<String>,
    replica: usize,
    /// Whether the current session got its notice stream (so losing it is a loss, not a
    /// failed attempt).
    streaming: bool,
    events_sent: u64,
    records_sent: i64,
}

impl Device {
    /// Device `index` with `profile`, first connecting to `replica`.
    pub fn new(index: usize, profile: DeviceProfile, traits: Traits, replica: usize) -> Device {
        Device {
            index,
            profile,
            traits,
            token: None,
            keys: Vec::new(),
            installed: BTreeMap::new(),
            refused: HashSet::new(),
            replica,
            streaming: false,
            events_sent: 0,
            records_sent: 0,
        }
    }

    /// Runs sessions until the fleet stops.
    pub async fn run(mut self, fleet: Arc<Fleet>) {
        let mut stop = fleet.stop.clone();
        let mut backoff = Backoff::reconnect();
        let mut lost_at: Option<Instant> = None;
        let mut failures = 0u32;
        let mut pace_window = Duration::ZERO;
        loop {
            let channel = fleet.connector.channel(self.replica, self.index);
            let ended = tokio::select! {
                ended = self.session(&fleet, channel, &mut lost_at, &mut failures, &mut pace_window) => ended,
                _ = stop.wait_for(|s| *s) => return,
            };
            let pause = match ended {
                Ended::Offline(pause) => {
                    self.streaming = false;
                    Counters::bump(&fleet.counters.went_offline);
                    lost_at = None;
                    backoff.reset();
                    pause
                }
                Ended::Lost(reason) => {
                    tracing::debug!(device = %self.profile.device_id, %reason, "session lost");
                    fleet.counters.failed(reason);
                    let was_connected = std::mem::take(&mut self.streaming);
                    lost_at.get_or_insert_with(Instant::now);
                    failures += 1;
                    if failures.is_multiple_of(2) && fleet.connector.replicas() > 1 {
                        self.replica = (self.replica + 1) % fleet.connector.replicas();
                        Counters::bump(&fleet.counters.moved_replica);
                    }
                    if was_connected {
                        backoff.reset();
                        walle_device::backoff::after_loss(pace_window)
                    } else {
                        backoff.next_delay()
                    }
                }
            };
            tokio::select! {
                _ = sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn session(
        &mut self,
        fleet: &Fleet,
        channel: Channel,
        lost_at: &mut Option<Instant>,
        failures: &mut u32,
        pace_window: &mut Duration,
    ) -> Ended {
        let mut client = DevicePlaneClient::new(channel);
        if self.token.is_none()
            && let Err(reason) = self.register(&mut client, fleet).await
        {
            return Ended::Lost(reason);
        }
        self.delay().await;
        let mut notices = match client.subscribe(self.authed(SubscribeRequest {})).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if status.code() == Code::Unauthenticated {
                    self.token = None;
                }
                return Ended::Lost(format!("subscribe: {}", describe(&status)));
            }
        };
        let _connected = Connected::new(&fleet.counters);
        self.streaming = true;
        if let Some(lost) = lost_at.take() {
            fleet.counters.reconnected(lost);
        }
        *failures = 0;
        let mut next_sync = Some(Instant::now());
        let mut next_run = fleet.next_run();
        let offline_at = fleet.next_offline();
        loop {
            tokio::select! {
                message = notices.message() => match message {
                    Ok(Some(notice)) => {
                        if notice.kind == NoticeKind::Hello as i32 {
                            *pace_window = Duration::from_millis(u64::from(notice.pace_window_ms));
                            continue;
                        }
                        fleet.counters.noticed(self.replica);
                        let at = Instant::now() + jitter(u64::from(notice.pace_window_ms));
                        next_sync = Some(next_sync.map_or(at, |s| s.min(at)));
                    }
                    Ok(None) => return Ended::Lost("notice stream ended".into()),
                    Err(status) => return Ended::Lost(format!("notice stream: {}", describe(&status))),
                },
                _ = sleep_until(next_sync) => {
                    next_sync = match self.sync(&mut client, fleet).await {
                        Ok(next) => Some(Instant::now() + next),
                        Err(reason) => {
                            tracing::debug!(device = %self.profile.device_id, %reason, "sync failed");
                            fleet.counters.failed(reason);
                            Some(Instant::now() + Duration::from_millis(500) + jitter(2_000))
                        }
                    };
                }
                _ = sleep_until(next_run) => {
                    if let Err(reason) = self.run_task(&mut client, fleet).await {
                        tracing::debug!(device = %self.profile.device_id, %reason, "run report failed");
                        fleet.counters.failed(reason);
                    }
                    next_run = fleet.next_run();
                }
                _ = sleep_until(offline_at.map(|(at, _)| at)) => {
                    return Ended::Offline(offline_at.map(|(_, pause)| pause).unwrap_or_default());
                }
            }
        }
    }

    async fn register(
        &mut self,
        client: &mut DevicePlaneClient<Channel>,
        fleet: &Fleet,
    ) -> Result<(), String> {
        self.delay().await;
        let response = client
            .register(RegisterRequest {
                profile: Some(self.profile.clone()),
                enrollment_secret: fleet.config.enrollment_secret.clone(),
            })
            .await
            .map_err(|status| format!("register: {}", describe(&status)))?
            .into_inner();
        let token = format!("Bearer {}", response.device_token)
            .parse()
            .map_err(|_| "register: the cloud's token is not ASCII".to_owned())?;
        self.token = Some(token);
        self.keys = response.publisher_keys;
        Counters::bump(&fleet.counters.registered);
        Ok(())
    }

    /// Syncs and applies the answer; returns when to sync next if no notice comes.
    async fn sync(
        &mut self,
        client: &mut DevicePlaneClient<Channel>,
        fleet: &Fleet,
    ) -> Result<Duration, String> {
        self.delay().await;
        let request = SyncRequest {
            profile: Some(self.profile.clone()),
            installed: self
                .installed
                .iter()
                .map(|(task, i)| InstalledTask {
                    task: task.clone(),
                    version: i.version.clone(),
                    bundle_digest: i.digest.clone(),
                })
                .collect(),
        };
        let response = client
            .sync(self.authed(request))
            .await
            .map_err(|status| format!("sync: {}", describe(&status)))?
            .into_inner();
        Counters::bump(&fleet.counters.syncs);
        for desired in response.desired {
            if desired.action == Action::Remove as i32 {
                if let Some(gone) = self.installed.remove(&desired.task) {
                    Counters::bump(&fleet.counters.removed);
                    let event = self.event(
                        EventKind::Removed,
                        &desired.task,
                        &gone.version,
                        &desired.release_id,
                        "",
                    );
                    self.report(client, vec![event]).await?;
                }
            } else if desired.action == Action::Install as i32 {
                self.install(client, fleet, desired).await?;
            }
        }
        Ok(Duration::from_secs(u64::from(
            response.next_sync_secs.max(1),
        )))
    }

    async fn install(
        &mut self,
        client: &mut DevicePlaneClient<Channel>,
        fleet: &Fleet,
        desired: DesiredTask,
    ) -> Result<(), String> {
        let Some(signed) = desired.manifest.as_ref() else {
            return self
                .refuse(
                    client,
                    fleet,
                    &desired,
                    "",
                    "",
                    "desired task has no manifest",
                )
                .await;
        };
        let manifest = match walle_proto::signing::verify(signed, &self.keys) {
            Ok(manifest) => manifest,
            Err(e) => {
                let digest = format!(
                    "unverified:{}",
                    hex::encode(Sha256::digest(&signed.manifest_json))
                );
                return self
                    .refuse(client, fleet, &desired, "", &digest, &e.to_string())
                    .await;
            }
        };
        let version = manifest.task.version.to_string();
        let digest = manifest.bundle_digest.clone();
        if self
            .installed
            .get(&desired.task)
            .is_some_and(|i| i.digest == digest)
            || self.refused.contains(&digest)
        {
            return Ok(());
        }
        let bundle = self.fetch(client, fleet, &manifest).await?;
        if let Err(reason) = check_bundle(&bundle, &manifest) {
            return self
                .refuse(client, fleet, &desired, &version, &digest, &reason)
                .await;
        }
        let failure = if self.traits.full_disk {
            Some("storage full: no space left on device (simulated full disk)")
        } else if self.traits.fails_install {
            Some("simulated install failure")
        } else {
            None
        };
        if let Some(detail) = failure {
            self.refused.insert(digest);
            Counters::bump(&fleet.counters.install_failed);
            let event = self.event(
                EventKind::InstallFailed,
                &desired.task,
                &version,
                &desired.release_id,
                detail,
            );
            return self.report(client, vec![event]).await;
        }
        self.installed.insert(
            desired.task.clone(),
            Installed {
                version: version.clone(),
                digest,
            },
        );
        Counters::bump(&fleet.counters.installed);
        if fleet.is_watched(&desired.task, &version) {
            fleet.counters.watched_installed();
        }
        let event = self.event(
            EventKind::Installed,
            &desired.task,
            &version,
            &desired.release_id,
            "",
        );
        self.report(client, vec![event]).await
    }

    /// Reports a refused version once and remembers not to fetch it again.
    async fn refuse(
        &mut self,
        client: &mut DevicePlaneClient<Channel>,
        fleet: &Fleet,
        desired: &DesiredTask,
        version: &str,
        digest: &str,
        reason: &str,
    ) -> Result<(), String> {
        if !digest.is_empty() && !self.refused.insert(digest.to_owned()) {
            return Ok(());
        }
        Counters::bump(&fleet.counters.install_failed);
        Counters::bump(&fleet.counters.refused);
        let event = self.event(
            EventKind::InstallFailed,
            &desired.task,
            version,
            &desired.release_id,
            reason,
        );
        self.report(client, vec![event]).await
    }

    /// Downloads a bundle, resuming after a cut and obeying the cloud's come-back hints.
    async fn fetch(
        &mut self,
        client: &mut DevicePlaneClient<Channel>,
        fleet: &Fleet,
        manifest: &ReleaseManifest,
    ) -> Result<Vec<u8>, String> {
        let size = manifest.bundle_size;
        let mut bundle = Vec::with_capacity(size.min(64 << 20) as usize);
        let (mut failures, mut busy) = (0, 0);
        let mut last = String::new();
        while failures < FETCH_ATTEMPTS && busy <= MAX_BUSY_RETRIES {
            self.delay().await;
            let request = FetchBundleRequest {
                digest: manifest.bundle_digest.clone(),
                offset: bundle.len() as u64,
            };
            let mut chunks = match client.fetch_bundle(self.authed(request)).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    if let Some(wait) = retry_hint(&status) {
                        busy += 1;
                        sleep(wait).await;
                    } else {
                        failures += 1;
                        last = describe(&status);
                    }
                    continue;
                }
            };
            loop {
                match chunks.message().await {
                    Ok(Some(chunk)) => {
                        if chunk.offset != bundle.len() as u64 {
                            return Err(format!(
                                "fetch: chunk at offset {} while {} bytes are here",
                                chunk.offset,
                                bundle.len()
                            ));
                        }
                        fleet.counters.bundle_bytes.fetch_add(
                            chunk.data.len() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        bundle.extend_from_slice(&chunk.data);
                        if bundle.len() as u64 > size {
                            // Oversized: stop reading; the size check refuses it.
                            return Ok(bundle);
                        }
                        self.delay().await;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        last = describe(&status);
                        break;
                    }
                }
            }
            if bundle.len() as u64 >= size {
                return Ok(bundle);
            }
            failures += 1;
        }
        Err(format!("fetch {}: {last}", manifest.bundle_digest))
    }

    /// A stubbed run of an installed task: reported ok or failed, with one output record.
    async fn run_task(
        &mut self,
        client: &mut DevicePlaneClient<Channel>,
        fleet: &Fleet,
    ) -> Result<(), String> {
        let Some((task, installed)) = self.installed.iter().next() else {
            return Ok(());
        };
        let (task, version) = (task.clone(), installed.version.clone());
        let failed = rand::random::<f64>() < fleet.config.run_failure_share;
        let kind = if failed {
            EventKind::RunFailed
        } else {
            EventKind::RunOk
        };
        let mut event = self.event(
            kind,
            &task,
            &version,
            "",
            if failed { "simulated run failure" } else { "" },
        );
        event.duration_ms = 5 + rand::random::<u64>() % 45;
        if failed {
            event.failure = "exception".into();
        }
        self.report(client, vec![event]).await?;
        if failed {
            Counters::bump(&fleet.counters.runs_failed);
            return Ok(());
        }
        Counters::bump(&fleet.counters.runs_ok);
        self.records_sent += 1;
        let record = TunnelRecord {
            id: format!("{}-{}-r{}", fleet.nonce, self.index, self.records_sent),
            task,
            version,
            created_at_ms: self.now_ms(),
            payload: serde_json::to_vec(
                &serde_json::json!({"simulated": true, "n": self.records_sent}),
            )
            .unwrap_or_default(),
            seq: self.records_sent,
        };
        self.delay().await;
        client
            .upload(self.authed(UploadRequest {
                records: vec![record],
                zstd_batch: Vec::new(),
            }))
            .await
            .map_err(|status| format!("upload: {}", describe(&status)))?;
        Counters::bump(&fleet.counters.records_uploaded);
        Ok(())
    }

    async fn report(
        &mut self,
        client: &mut DevicePlaneClient<Channel>,
        events: Vec<TaskEvent>,
    ) -> Result<(), String> {
        self.delay().await;
        client
            .report(self.authed(ReportRequest { events }))
            .await
            .map_err(|status| format!("report: {}", describe(&status)))?;
        Ok(())
    }

    fn event(
        &mut self,
        kind: EventKind,
        task: &str,
        version: &str,
        release: &str,
        detail: &str,
    ) -> TaskEvent {
        self.events_sent += 1;
        TaskEvent {
            id: format!("e{}-{}", self.events_sent, self.now_ms()),
            kind: kind as i32,
            task: task.to_owned(),
            version: version.to_owned(),
            release_id: release.to_owned(),
            at_ms: self.now_ms(),
            detail: detail.to_owned(),
            ..TaskEvent::default()
        }
    }

    /// The time by this device's clock, in Unix milliseconds.
    fn now_ms(&self) -> i64 {
        let true_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        true_ms + self.traits.clock_offset_ms
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// The slow network's latency, if this device has one.
    async fn delay(&self) {
        if let Some(latency) = self.traits.latency {
            sleep(latency).await;
        }
    }
}

/// Checks a downloaded bundle against its signed manifest, as the agent's installer does.
fn check_bundle(bundle: &[u8], manifest: &ReleaseManifest) -> Result<(), String> {
    if bundle.len() as u64 != manifest.bundle_size {
        return Err(format!(
            "bundle size mismatch: manifest says {} bytes, got {}",
            manifest.bundle_size,
            bundle.len()
        ));
    }
    let digest = hex::encode(Sha256::digest(bundle));
    if digest != manifest.bundle_digest {
        return Err(format!(
            "bundle digest mismatch: manifest says {}, got {digest}",
            manifest.bundle_digest
        ));
    }
    Ok(())
}

/// A failed call in a few words: its code and message (which names a transport failure's
/// cause).
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Counts a device as connected while it lives.
struct Connected<'a>(&'a Counters);

impl<'a> Connected<'a> {
    fn new(counters: &'a Counters) -> Connected<'a> {
        counters
            .connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Connected(counters)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A uniformly random duration below `max_ms` milliseconds.
pub fn jitter(max_ms: u64) -> Duration {
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random::<u64>() % max_ms)
}

/// Sleeps until `at`, or for ever when there is no such time.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walle_proto::manifest::TaskManifest;

    fn manifest_of(bundle: &[u8]) -> ReleaseManifest {
        ReleaseManifest {
            task: TaskManifest::parse(
                "name = \"t\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"m.py\"\n",
            )
            .unwrap(),
            bundle_digest: hex::encode(Sha256::digest(bundle)),
            bundle_size: bundle.len() as u64,
        }
    }

    #[test]
    fn a_bundle_must_match_its_signed_size_and_digest() {
        let manifest = manifest_of(b"bundle bytes");
        assert_eq!(check_bundle(b"bundle bytes", &manifest), Ok(()));
        let e = check_bundle(b"bundle bytez", &manifest).unwrap_err();
        assert!(e.starts_with("bundle digest mismatch"), "{e}");
        let e = check_bundle(b"bundle", &manifest).unwrap_err();
        assert!(e.starts_with("bundle size mismatch"), "{e}");
    }
}
