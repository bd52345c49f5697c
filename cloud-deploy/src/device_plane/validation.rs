//! The checks every device-plane input passes before anything is stored: ids, free text, the
//! device profile, task events and tunnel records, each refused with `INVALID_ARGUMENT` naming
//! the field.

use tonic::Status;
use walle_proto::profile::{
    self, MAX_ID_CHARS, MAX_TAGS, MAX_TEXT_CHARS, ProfileError, ProfileValueError,
};
use walle_proto::v1::{
    DeviceProfile, Rejected, TaskEvent, TunnelRecord, UploadRequest, task_event,
};

use crate::store::events::{NewRecord, TaskEventRow};

/// Largest accepted tunnel record payload (what a task may declare as its output cap).
const MAX_RECORD_BYTES: usize = walle_proto::manifest::MAX_OUTPUT_CAP as usize;

/// An identifier (device id, event id, record id, task name, version): the profile's id rule.
pub(super) fn check_id(field: &str, value: &str) -> Result<(), Status> {
    profile::check_id(value).map_err(|problem| id_status(field, &problem))
}

/// Free text (profile values, failure details): the profile's text rule.
pub(super) fn check_text(field: &str, value: &str) -> Result<(), Status> {
    profile::check_text(value).map_err(|_| text_status(field))
}

fn id_status(field: &str, problem: &ProfileValueError) -> Status {
    match problem {
        ProfileValueError::Empty => Status::invalid_argument(format!("`{field}` is empty")),
        _ => Status::invalid_argument(format!(
            "`{field}` must be at most {MAX_ID_CHARS} printable characters"
        )),
    }
}

fn text_status(field: &str) -> Status {
    Status::invalid_argument(format!(
        "`{field}` is longer than {MAX_TEXT_CHARS} characters"
    ))
}

/// The profile of a Register or Sync, within the cloud's limits
/// ([`DeviceProfile::check_limits`]).
pub(super) fn check_profile(profile: Option<&DeviceProfile>) -> Result<&DeviceProfile, Status> {
    let p = profile.ok_or_else(|| Status::invalid_argument("`profile` is required"))?;
    p.check_limits().map_err(|e| profile_status(&e))?;
    Ok(p)
}

/// A profile's fault in the device plane's words.
fn profile_status(e: &ProfileError) -> Status {
    match (e.field, &e.problem) {
        (_, ProfileValueError::TooManyTags(_)) => {
            Status::invalid_argument(format!("`profile.tags` has more than {MAX_TAGS} tags"))
        }
        ("tags", problem) => id_status("profile.tags[]", problem),
        (field @ ("device_id" | "app_id"), problem) => {
            id_status(&format!("profile.{field}"), problem)
        }
        (field, _) => text_status(&format!("profile.{field}")),
    }
}

/// What the cloud stores of a profile (`devices.profile_json`).
pub(super) fn profile_json(p: &DeviceProfile) -> String {
    serde_json::to_string(p).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn phone() -> DeviceProfile {
        DeviceProfile {
            device_id: "d1".into(),
            app_id: "com.example.shop".into(),
            app_version: "latest".into(),
            tags: vec!["beta".into()],
            ..DeviceProfile::default()
        }
    }

    fn refusal(edit: fn(&mut DeviceProfile)) -> String {
        let mut profile = phone();
        edit(&mut profile);
        match check_profile(Some(&profile)) {
            Ok(_) => String::new(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                status.message().to_owned()
            }
        }
    }

    #[test]
    fn a_profile_is_refused_in_the_device_planes_words() {
        // Any app version text is accepted: only the device insists on a comparable one.
        assert_eq!(refusal(|_| {}), "");
        assert_eq!(
            check_profile(None).unwrap_err().message(),
            "`profile` is required"
        );
        for (edit, message) in [
            (
                (|p| p.device_id.clear()) as fn(&mut DeviceProfile),
                "`profile.device_id` is empty",
            ),
            (
                |p| p.app_id = "a\nb".into(),
                "`profile.app_id` must be at most 128 printable characters",
            ),
            (
                |p| p.device_id = "d".repeat(129),
                "`profile.device_id` must be at most 128 printable characters",
            ),
            (
                |p| p.region = "r".repeat(4097),
                "`profile.region` is longer than 4096 characters",
            ),
            (
                |p| p.app_version = "5".repeat(4097),
                "`profile.app_version` is longer than 4096 characters",
            ),
            (
                |p| p.tags = vec!["t".into(); 65],
                "`profile.tags` has more than 64 tags",
            ),
            (|p| p.tags.push(String::new()), "`profile.tags[]` is empty"),
        ] {
            assert_eq!(refusal(edit), message);
        }
    }
}
