//! The checks every device-plane input passes before anything is stored: ids, free text, the
//! device profile, task events and tunnel records, each refused with `INVALID_ARGUMENT` naming
//! the field.

use tonic::Status;
use walle_proto::v1::{
    DeviceProfile, Rejected, TaskEvent, TunnelRecord, UploadRequest, task_event,
};

use crate::release::target::Profile;
use crate::store::events::{NewRecord, TaskEventRow};

/// Largest accepted tunnel record payload (what a task may declare as its output cap).
const MAX_RECORD_BYTES: usize = walle_proto::manifest::MAX_OUTPUT_CAP as usize;
/// Largest accepted identifier (device id, event id, record id, task name, version).
const MAX_ID_CHARS: usize = 128;
/// Largest accepted free-text field (profile fields, failure details).
const MAX_TEXT_CHARS: usize = 4096;

pub(super) fn check_id(field: &str, value: &str) -> Result<(), Status> {
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

pub(super) fn check_text(field: &str, value: &str) -> Result<(), Status> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(Status::invalid_argument(format!(
            "`{field}` is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

pub(super) fn check_profile(profile: Option<&DeviceProfile>) -> Result<&DeviceProfile, Status> {
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

pub(super) fn profile_of(p: &DeviceProfile) -> Profile {
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

pub(super) fn profile_json(p: &DeviceProfile) -> String {
    serde_json::to_string(&profile_of(p)).unwrap_or_default()
}

pub(super) fn event_kind_name(kind: i32) -> Option<&'static str> {
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

pub(super) fn check_record(i: usize, r: TunnelRecord) -> Result<NewRecord, Status> {
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
pub(super) fn upload_records(request: UploadRequest) -> Result<Vec<TunnelRecord>, Status> {
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
pub(super) fn rejection(index: usize, id: &str, status: &Status) -> Rejected {
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

pub(super) fn check_event(index: usize, e: &TaskEvent) -> Result<TaskEventRow, Status> {
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
