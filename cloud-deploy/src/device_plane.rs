//! The device plane: the gRPC service devices talk to (`walle.device.v1.DevicePlane`).
//!
//! Every input is validated here, at the boundary, and rejected with `INVALID_ARGUMENT` naming
//! the field; nothing from a rejected request is stored.

use std::collections::HashMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use walle_proto::v1::device_plane_server::DevicePlane;
use walle_proto::v1::{
    BundleChunk, DesiredTask, DeviceProfile, FetchBundleRequest, Notice, RegisterRequest,
    RegisterResponse, Rejected, ReportRequest, ReportResponse, SignedManifest, SubscribeRequest,
    SyncRequest, SyncResponse, TaskEvent, TunnelRecord, UploadRequest, UploadResponse,
    desired_task, notice, task_event,
};

use crate::release::select::{LiveRelease, choose};
use crate::release::target::Profile;
use crate::store::events::{NewRecord, TaskEventRow};
use crate::store::now_ms;
use crate::{AppState, CloudError, secrets};

/// Largest bundle chunk sent in one message.
const CHUNK_BYTES: usize = 64 * 1024;
/// Most events or records accepted in one Report or Upload call.
const MAX_BATCH: usize = 1000;
/// Largest accepted tunnel record payload (what a task may declare as its output cap).
const MAX_RECORD_BYTES: usize = walle_proto::manifest::MAX_OUTPUT_CAP as usize;
/// Largest accepted identifier (device id, event id, record id, task name, version).
const MAX_ID_CHARS: usize = 128;
/// `last_seen` is refreshed at most this often by Syncs that change nothing else.
const LAST_SEEN_RESOLUTION_MS: i64 = 60_000;
/// Largest accepted free-text field (profile fields, failure details).
const MAX_TEXT_CHARS: usize = 4096;

/// The gRPC service implementation.
pub struct DevicePlaneService {
    state: AppState,
    served: crate::served_cache::ServedCache,
}

impl DevicePlaneService {
    /// A service over the shared cloud state.
    pub fn new(state: AppState) -> Self {
        DevicePlaneService {
            state,
            served: crate::served_cache::ServedCache::default(),
        }
    }

    async fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <device token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("`authorization` metadata must be `Bearer <device token>`")
            })?;
        self.state
            .db
            .device_by_token_hash(&secrets::token_hash(token))
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::unauthenticated("unknown device token; register again"))
    }
}

fn internal(e: CloudError) -> Status {
    tracing::error!(error = %e, "device plane call failed");
    match e {
        CloudError::NotFound(m) => Status::not_found(m),
        CloudError::Invalid(m) => Status::invalid_argument(m),
        other => Status::internal(other.to_string()),
    }
}

fn check_id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("`{field}` is empty")));
    }
    if value.chars().count() > MAX_ID_CHARS || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "`{field}` must be at most {MAX_ID_CHARS} printable characters"
        )));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), Status> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(Status::invalid_argument(format!(
            "`{field}` is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

fn check_profile(profile: Option<&DeviceProfile>) -> Result<&DeviceProfile, Status> {
    let p = profile.ok_or_else(|| Status::invalid_argument("`profile` is required"))?;
    check_id("profile.device_id", &p.device_id)?;
    check_id("profile.app_id", &p.app_id)?;
    for (field, value) in [
        ("profile.app_version", &p.app_version),
        ("profile.os", &p.os),
        ("profile.os_version", &p.os_version),
        ("profile.model", &p.model),
        ("profile.hardware_tier", &p.hardware_tier),
        ("profile.region", &p.region),
    ] {
        check_text(field, value)?;
    }
    if p.tags.len() > 64 {
        return Err(Status::invalid_argument(
            "`profile.tags` has more than 64 tags",
        ));
    }
    for tag in &p.tags {
        check_id("profile.tags[]", tag)?;
    }
    Ok(p)
}

fn profile_of(p: &DeviceProfile) -> Profile {
    Profile {
        device_id: p.device_id.clone(),
        app_id: p.app_id.clone(),
        app_version: p.app_version.clone(),
        os: p.os.clone(),
        os_version: p.os_version.clone(),
        model: p.model.clone(),
        hardware_tier: p.hardware_tier.clone(),
        region: p.region.clone(),
        tags: p.tags.clone(),
        groups: Vec::new(),
    }
}

fn profile_json(p: &DeviceProfile) -> String {
    serde_json::to_string(&profile_of(p)).unwrap_or_default()
}

fn event_kind_name(kind: i32) -> Option<&'static str> {
    match task_event::Kind::try_from(kind).ok()? {
        task_event::Kind::Installed => Some("installed"),
        task_event::Kind::InstallFailed => Some("install_failed"),
        task_event::Kind::RunOk => Some("run_ok"),
        task_event::Kind::RunFailed => Some("run_failed"),
        task_event::Kind::RolledBack => Some("rolled_back"),
        task_event::Kind::Removed => Some("removed"),
        task_event::Kind::RunDropped => Some("run_dropped"),
        task_event::Kind::Unspecified => None,
    }
}

fn check_record(i: usize, r: TunnelRecord) -> Result<NewRecord, Status> {
    check_id(&format!("records[{i}].id"), &r.id)?;
    check_id(&format!("records[{i}].task"), &r.task)?;
    check_id(&format!("records[{i}].version"), &r.version)?;
    if r.payload.len() > MAX_RECORD_BYTES {
        return Err(Status::invalid_argument(format!(
            "`records[{i}].payload` is {} bytes, more than {MAX_RECORD_BYTES}",
            r.payload.len()
        )));
    }
    let payload = String::from_utf8(r.payload)
        .ok()
        .filter(|text| serde_json::from_str::<serde_json::Value>(text).is_ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!("`records[{i}].payload` is not UTF-8 JSON"))
        })?;
    Ok(NewRecord {
        id: r.id,
        task: r.task,
        version: r.version,
        seq: r.seq,
        created_at_ms: r.created_at_ms,
        payload,
    })
}

/// The records of an upload: the plain list or the compressed batch, never both.
fn upload_records(request: UploadRequest) -> Result<Vec<TunnelRecord>, Status> {
    match (request.records.is_empty(), request.zstd_batch.is_empty()) {
        (_, true) => Ok(request.records),
        (true, false) => walle_proto::tunnel::decompress(&request.zstd_batch)
            .map_err(|e| Status::invalid_argument(format!("`zstd_batch`: {e}"))),
        (false, false) => Err(Status::invalid_argument(
            "an upload carries `records` or `zstd_batch`, not both",
        )),
    }
}

/// The answer about one refused batch entry.
fn rejection(index: usize, id: &str, status: &Status) -> Rejected {
    tracing::warn!(
        index,
        id,
        reason = status.message(),
        "refusing a batch entry"
    );
    Rejected {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        id: id.chars().take(128).collect(),
        reason: status.message().to_owned(),
    }
}

fn check_event(index: usize, e: &TaskEvent) -> Result<TaskEventRow, Status> {
    let at = |field: &str| format!("events[{index}].{field}");
    check_id(&at("id"), &e.id)?;
    check_id(&at("task"), &e.task)?;
    check_id(&at("version"), &e.version)?;
    if !e.release_id.is_empty() {
        check_id(&at("release_id"), &e.release_id)?;
    }
    check_text(&at("detail"), &e.detail)?;
    let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if e.failure.len() > 64 || !e.failure.chars().all(label) {
        return Err(Status::invalid_argument(format!(
            "`{}` must be a label of at most 64 characters of a-z, 0-9 and _",
            at("failure")
        )));
    }
    let kind = event_kind_name(e.kind).ok_or_else(|| {
        Status::invalid_argument(format!(
            "`{}` {} is not a known event kind",
            at("kind"),
            e.kind
        ))
    })?;
    Ok(TaskEventRow {
        id: e.id.clone(),
        kind,
        task: e.task.clone(),
        version: e.version.clone(),
        release_id: e.release_id.clone(),
        at_ms: e.at_ms,
        detail: e.detail.clone(),
        duration_ms: e.duration_ms.min(i64::MAX as u64) as i64,
        queued_ms: e.queued_ms.min(i64::MAX as u64) as i64,
        failure: e.failure.clone(),
        count: e.count.min(i64::MAX as u64) as i64,
    })
}

/// Metadata key of the come-back hint on a refused transfer, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// `RESOURCE_EXHAUSTED` telling the device when to come back: `base_ms` plus up to `base_ms` of
/// jitter.
fn busy(base_ms: u32) -> Status {
    let jitter =
        u32::from_le_bytes(secrets::random_bytes::<4>().unwrap_or_default()) % base_ms.max(1);
    let retry_ms = base_ms.saturating_add(jitter);
    let mut status = Status::resource_exhausted(format!(
        "too many bundle transfers in progress; come back in {retry_ms} ms"
    ));
    if let Ok(value) = retry_ms.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_MS, value);
    }
    status
}

type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DevicePlane for DevicePlaneService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        let profile = check_profile(request.profile.as_ref())?;
        match self
            .state
            .db
            .app_secret_hash(&profile.app_id)
            .await
            .map_err(internal)?
        {
            Some(hash) if hash != secrets::token_hash(&request.enrollment_secret) => {
                return Err(Status::permission_denied(format!(
                    "wrong enrollment secret for app {:?}",
                    profile.app_id
                )));
            }
            Some(_) => {}
            None if !self.state.config.open_enrollment => {
                return Err(Status::permission_denied(format!(
                    "app {:?} is not registered for enrollment",
                    profile.app_id
                )));
            }
            None => {}
        }
        let token = secrets::new_token("wld").map_err(internal)?;
        // A device id belongs to the app it first enrolled for: another app's secret (or open
        // enrollment) cannot take it over.
        if let Some(existing) = self
            .state
            .db
            .device_seen(&profile.device_id)
            .await
            .map_err(internal)?
            && !existing.app_id.is_empty()
            && existing.app_id != profile.app_id
        {
            return Err(Status::permission_denied(format!(
                "device {:?} is enrolled for another app",
                profile.device_id
            )));
        }
        self.state
            .db
            .upsert_device(
                &profile.device_id,
                &profile.app_id,
                &secrets::token_hash(&token),
                &profile_json(profile),
            )
            .await
            .map_err(internal)?;
        tracing::info!(device = %profile.device_id, "device registered");
        Ok(Response::new(RegisterResponse {
            device_token: token,
            publisher_keys: vec![self.state.publisher.public_key()],
            sync_interval_secs: self.state.config.sync_interval_secs,
        }))
    }

    type SubscribeStream = ReceiverStream<Result<Notice, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let device = self.authenticate(&request).await?;
        let receiver = self.state.hub.subscribe(&device);
        // The device syncs on HELLO, which covers anything it missed while disconnected.
        self.state.hub.notify_one_fresh(
            &device,
            Notice {
                kind: notice::Kind::Hello as i32,
                task: String::new(),
                release_id: String::new(),
                pace_window_ms: 0,
            },
        );
        tracing::debug!(%device, "device subscribed");
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        let device = self.authenticate(&request).await?;
        let request = request.into_inner();
        let profile = request
            .profile
            .as_ref()
            .map(|p| check_profile(Some(p)))
            .transpose()?;
        if let Some(p) = profile
            && p.device_id != device
        {
            return Err(Status::invalid_argument(
                "`profile.device_id` does not match the device token",
            ));
        }
        if request.installed.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "`installed` has more than {MAX_BATCH} entries"
            )));
        }
        for (i, t) in request.installed.iter().enumerate() {
            check_id(&format!("installed[{i}].task"), &t.task)?;
            check_id(&format!("installed[{i}].version"), &t.version)?;
        }
        let db = &self.state.db;
        // A steady-state Sync only reads: the device row and its task rows are written only when
        // something changed (or last_seen is stale), so a fleet polling in place costs no writes.
        let seen = db.device_seen(&device).await.map_err(internal)?;
        if let (Some(p), Some(seen)) = (profile, &seen)
            && !seen.app_id.is_empty()
            && p.app_id != seen.app_id
        {
            return Err(Status::invalid_argument(format!(
                "`profile.app_id` {:?} differs from the app this device enrolled for",
                p.app_id
            )));
        }
        let new_profile_json = profile.map(profile_json);
        let profile_changed = new_profile_json
            .as_ref()
            .is_some_and(|json| seen.as_ref().is_none_or(|s| &s.profile_json != json));
        let stale = seen
            .as_ref()
            .is_none_or(|s| now_ms() - s.last_seen_ms >= LAST_SEEN_RESOLUTION_MS);
        if profile_changed || stale {
            db.touch_device(
                &device,
                new_profile_json.as_deref().filter(|_| profile_changed),
            )
            .await
            .map_err(internal)?;
        }
        let recorded = db.device_task_versions(&device).await.map_err(internal)?;
        for t in &request.installed {
            let changed =
                recorded.get(&t.task) != Some(&(t.version.clone(), "installed".to_owned()));
            // Rows only for tasks that exist: a device cannot fill the table with made-up names.
            if changed && db.task_exists(&t.task).await.map_err(internal)? {
                db.set_device_task(&device, &t.task, &t.version, "installed", "")
                    .await
                    .map_err(internal)?;
            }
        }
        let mut profile = match (profile, seen) {
            (Some(p), _) => profile_of(p),
            (None, Some(seen)) => serde_json::from_str(&seen.profile_json).unwrap_or_default(),
            (None, None) => Profile::default(),
        };
        let running: HashMap<String, String> = request
            .installed
            .iter()
            .map(|t| (t.task.clone(), t.version.clone()))
            .collect();
        let served = self
            .served
            .get(db, &self.state.hub)
            .await
            .map_err(internal)?;
        let releases: Vec<LiveRelease> = served.iter().map(|s| s.release.clone()).collect();
        // Group membership costs a query, so it is read only when some release targets a group.
        if releases.iter().any(|r| r.policy.target.uses_groups()) {
            profile.groups = db.groups_of(&device).await.map_err(internal)?;
        }
        let chosen = choose(&releases, &profile, &running);
        let mut desired = Vec::with_capacity(chosen.len());
        for served in served.iter().filter(|s| {
            chosen
                .get(&s.release.task)
                .is_some_and(|c| c.id == s.release.id)
        }) {
            let pulling = running.get(&served.release.task) != Some(&served.release.version);
            if pulling {
                db.record_sync(&served.release.id, &device)
                    .await
                    .map_err(internal)?;
            }
            let Ok(signature) = hex::decode(&served.signature_hex) else {
                tracing::error!(release = %served.release.id, "stored signature is not hex; not serving it");
                continue;
            };
            desired.push(DesiredTask {
                task: served.release.task.clone(),
                action: desired_task::Action::Install as i32,
                manifest: Some(SignedManifest {
                    manifest_json: served.manifest_json.clone().into_bytes(),
                    signature,
                    key_id: served.key_id.clone(),
                }),
                release_id: served.release.id.clone(),
            });
        }
        for t in &request.installed {
            if !chosen.contains_key(&t.task) {
                desired.push(DesiredTask {
                    task: t.task.clone(),
                    action: desired_task::Action::Remove as i32,
                    manifest: None,
                    release_id: String::new(),
                });
            }
        }
        Ok(Response::new(SyncResponse {
            desired,
            next_sync_secs: self.state.config.sync_interval_secs,
        }))
    }

    type FetchBundleStream = BoxedStream<BundleChunk>;

    async fn fetch_bundle(
        &self,
        request: Request<FetchBundleRequest>,
    ) -> Result<Response<Self::FetchBundleStream>, Status> {
        let device = self.authenticate(&request).await?;
        let FetchBundleRequest { digest, offset } = request.into_inner();
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Status::invalid_argument(
                "`digest` must be 64 lowercase hex characters (sha256)",
            ));
        }
        let size = self
            .state
            .db
            .bundle_is_known(&digest)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no bundle with digest {digest}")))?
            as u64;
        // Only bundles of releases this device was handed (no browsing other apps' bundles).
        if !self
            .state
            .db
            .device_may_fetch(&device, &digest)
            .await
            .map_err(internal)?
        {
            return Err(Status::not_found(format!(
                "no bundle with digest {digest} for this device"
            )));
        }
        if offset > size {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the bundle's {size} bytes"
            )));
        }
        let Ok(permit) = self.state.transfers.clone().try_acquire_owned() else {
            return Err(busy(self.state.config.transfer_retry_ms));
        };
        let (tx, rx) = mpsc::channel(4);
        if offset == size {
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let mut source = self
            .state
            .bundles
            .read_from(&digest, offset)
            .await
            .map_err(internal)?;
        tokio::spawn(async move {
            // Held until the transfer ends or the device goes away.
            let _permit = permit;
            let mut position = offset;
            while let Some(next) = source.next().await {
                let bytes = match next {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                for piece in bytes.chunks(CHUNK_BYTES) {
                    let chunk = BundleChunk {
                        offset: position,
                        data: piece.to_vec(),
                        total_size: size,
                    };
                    position += piece.len() as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let device = self.authenticate(&request).await?;
        let events = request.into_inner().events;
        if events.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "`events` has more than {MAX_BATCH} entries"
            )));
        }
        // An invalid event is refused on its own (with why); the valid rest of the batch counts.
        let mut rows = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (i, e) in events.iter().enumerate() {
            match check_event(i, e) {
                Ok(row) => rows.push(row),
                Err(status) => rejected.push(rejection(i, &e.id, &status)),
            }
        }
        let db = &self.state.db;
        // Release health and install counts drive automatic advance and abort, so only events
        // about a release this device was actually handed, for its task and version, count.
        // Others are dropped (and logged), not stored: one stray event must not fail the batch.
        let mut trusted = Vec::with_capacity(rows.len());
        for row in rows {
            if row.release_id.is_empty() {
                trusted.push(row);
                continue;
            }
            let pulled = db
                .pulled_release(&row.release_id, &device)
                .await
                .map_err(internal)?;
            if pulled.as_ref() == Some(&(row.task.clone(), row.version.clone())) {
                trusted.push(row);
            } else {
                tracing::warn!(%device, release = %row.release_id, task = %row.task, version = %row.version,
                    "dropping a report about a release this device was not handed");
            }
        }
        let rows = trusted;
        let accepted = db
            .insert_task_events(&device, &rows)
            .await
            .map_err(internal)?;
        for row in rows.iter().filter(|r| !r.release_id.is_empty()) {
            let state = match row.kind {
                "installed" => "installed",
                // The device abandoned this version locally (it reports the version it went
                // back to as installed next).
                "rolled_back" => "rolled_back",
                "removed" => "removed",
                _ => continue,
            };
            db.set_device_task(&device, &row.task, &row.version, state, &row.detail)
                .await
                .map_err(internal)?;
        }
        Ok(Response::new(ReportResponse { accepted, rejected }))
    }

    async fn upload(
        &self,
        request: Request<UploadRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        let device = self.authenticate(&request).await?;
        let records = upload_records(request.into_inner())?;
        if records.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "`records` has more than {MAX_BATCH} entries"
            )));
        }
        let mut rows = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        for (i, r) in records.into_iter().enumerate() {
            let id = r.id.clone();
            match check_record(i, r) {
                Ok(row) => rows.push(row),
                Err(status) => rejected.push(rejection(i, &id, &status)),
            }
        }
        let (stored, duplicates) = self
            .state
            .db
            .insert_records(&device, &rows)
            .await
            .map_err(internal)?;
        walle_proto::crash::crash_point("cloud-upload-committed");
        Ok(Response::new(UploadResponse {
            stored,
            duplicates,
            rejected,
        }))
    }
}
