//! `/v1/devices`: search the fleet a page at a time, and one device's profile, tasks, groups,
//! reports and failures.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ErrorBody;
use crate::store::devices::{DeviceSearch, DeviceSummary, DeviceTaskRow};
use crate::store::events::{FailureQuery, FailureRow, ReportRow};
use crate::{AppState, CloudError};

/// Reports and failures a device page shows.
const RECENT: i64 = 50;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search_devices))
        .routes(routes!(device_detail))
}

/// A device in a search result.
#[derive(Serialize, utoipa::ToSchema)]
struct FoundDevice {
    #[serde(flatten)]
    device: DeviceSummary,
    /// Whether the device has its push stream open to this replica now.
    online: bool,
}

/// One page of a device search.
#[derive(Serialize, utoipa::ToSchema)]
struct DevicePage {
    devices: Vec<FoundDevice>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

/// Searches registered devices by id prefix, app, profile fields and group; a page at a time,
/// ordered by id.
#[utoipa::path(get, path = "/devices", tag = "devices", params(DeviceSearch), responses(
    (status = 200, body = DevicePage),
    (status = 400, body = ErrorBody, description = "bad query"),
))]
async fn search_devices(
    State(state): State<AppState>,
    search: Result<Query<DeviceSearch>, QueryRejection>,
) -> Result<Json<DevicePage>, CloudError> {
    let Query(search) = search.map_err(|e| CloudError::Invalid(e.body_text()))?;
    let limit = search.limit.unwrap_or(50).clamp(1, 1000) as usize;
    // One more than the page, to know whether another page follows.
    let probe = DeviceSearch {
        limit: Some(limit as i64 + 1),
        ..search
    };
    let mut found = state.db.search_devices(&probe).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = more.then(|| found.last().map(|d| d.id.clone())).flatten();
    let devices = found
        .into_iter()
        .map(|device| FoundDevice {
            online: state.hub.is_connected(&device.id),
            device,
        })
        .collect();
    Ok(Json(DevicePage { devices, next }))
}

/// Everything about one device.
#[derive(Serialize, utoipa::ToSchema)]
struct DeviceDetail {
    #[serde(flatten)]
    device: DeviceSummary,
    /// Whether the device has its push stream open to this replica now.
    online: bool,
    /// What it runs (or failed to install), per task.
    tasks: Vec<DeviceTaskRow>,
    /// Device groups it is a member of.
    groups: Vec<String>,
    /// Its most recent reports, newest first.
    events: Vec<ReportRow>,
    /// Its most recent failures, newest first, with its messages.
    failures: Vec<FailureRow>,
}

/// One device: profile, online state, installed task versions, groups, recent reports and
/// failures.
#[utoipa::path(get, path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 200, body = DeviceDetail),
        (status = 404, body = ErrorBody, description = "no such device"),
    ))]
async fn device_detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, CloudError> {
    let device = state
        .db
        .get_device(&id)
        .await?
        .ok_or_else(|| CloudError::NotFound(format!("no device {id:?} is registered")))?;
    let failures = FailureQuery {
        device_id: Some(&id),
        limit: RECENT,
        ..FailureQuery::default()
    };
    Ok(Json(DeviceDetail {
        online: state.hub.is_connected(&id),
        tasks: state.db.device_tasks(&id).await?,
        groups: state.db.groups_of(&id).await?,
        events: state.db.device_reports(&id, RECENT).await?,
        failures: state.db.failures(&failures).await?,
        device,
    }))
}
