//! `/v1/groups`: named device groups that release targeting can name (`{"group": "qa"}`).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use walle_proto::manifest::is_valid_task_name;

use super::{ErrorBody, bad_json};
use crate::release::select::LiveRelease;
use crate::store::groups::GroupRow;
use crate::store::releases::ReleaseRow;
use crate::{AppState, CloudError, release};

/// Most members added or removed in one call.
const MAX_MEMBER_CHANGES: usize = 10_000;
/// Longest device id accepted (as the device plane).
const MAX_DEVICE_ID_LEN: usize = 128;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups, create_group))
        .routes(routes!(group_detail, delete_group))
        .routes(routes!(change_members))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    #[schema(pattern = "^[a-z][a-z0-9-]{0,63}$")]
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MemberChange {
    /// Device ids to add (1-128 bytes each; devices not registered yet may be listed).
    #[serde(default)]
    add: Vec<String>,
    /// Device ids to remove.
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct GroupDetail {
    #[serde(flatten)]
    group: GroupRow,
    devices: Vec<String>,
    /// Active and paused releases whose targeting names the group, newest first.
    releases: Vec<ReleaseRow>,
}

/// Creates an empty device group.
#[utoipa::path(post, path = "/groups", tag = "groups", request_body = NewGroup, responses(
    (status = 201, body = GroupRow),
    (status = 400, body = ErrorBody, description = "invalid name or body"),
    (status = 409, body = ErrorBody, description = "the group exists"),
))]
async fn create_group(
    State(state): State<AppState>,
    body: Result<Json<NewGroup>, JsonRejection>,
) -> Result<(StatusCode, Json<GroupRow>), CloudError> {
    let Json(group) = body.map_err(bad_json)?;
    if !is_valid_task_name(&group.name) {
        return Err(CloudError::Invalid(format!(
            "`name` {:?} is not a valid group name (1-64 chars of a-z, 0-9 and '-', starting with a letter)",
            group.name
        )));
    }
    let row = state
        .db
        .create_group(&group.name, &group.description)
        .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Lists device groups with their sizes.
#[utoipa::path(get, path = "/groups", tag = "groups", responses((status = 200, body = Vec<GroupRow>)))]
async fn list_groups(State(state): State<AppState>) -> Result<Json<Vec<GroupRow>>, CloudError> {
    Ok(Json(state.db.list_groups().await?))
}

async fn detail(state: &AppState, name: &str) -> Result<GroupDetail, CloudError> {
    let group = state
        .db
        .get_group(name)
        .await?
        .ok_or_else(|| CloudError::NotFound(format!("no device group {name:?}")))?;
    let devices = state.db.group_members(name).await?;
    let mut releases = Vec::new();
    for row in state.db.live_releases().await? {
        if row.live()?.policy.target.groups().contains(&name) {
            releases.push(row);
        }
    }
    Ok(GroupDetail {
        group,
        devices,
        releases,
    })
}

/// A device group with its members.
#[utoipa::path(get, path = "/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses(
        (status = 200, body = GroupDetail),
        (status = 404, body = ErrorBody, description = "no such group"),
    ))]
async fn group_detail(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GroupDetail>, CloudError> {
    Ok(Json(detail(&state, &name).await?))
}

fn check_device_ids(field: &str, ids: &[String]) -> Result<(), CloudError> {
    if let Some((i, bad)) = ids
        .iter()
        .enumerate()
        .find(|(_, id)| id.trim().is_empty() || id.len() > MAX_DEVICE_ID_LEN)
    {
        return Err(CloudError::Invalid(format!(
            "`{field}[{i}]` {bad:?} is not a device id (1-{MAX_DEVICE_ID_LEN} characters)"
        )));
    }
    Ok(())
}

/// Adds and removes members; devices of releases that target the group hear about it at once.
#[utoipa::path(post, path = "/groups/{name}/members", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    request_body = MemberChange,
    responses(
        (status = 200, body = GroupDetail),
        (status = 400, body = ErrorBody, description = "invalid device ids or body"),
        (status = 404, body = ErrorBody, description = "no such group"),
    ))]
async fn change_members(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<MemberChange>, JsonRejection>,
) -> Result<Json<GroupDetail>, CloudError> {
    let Json(change) = body.map_err(bad_json)?;
    if change.add.len() + change.remove.len() > MAX_MEMBER_CHANGES {
        return Err(CloudError::Invalid(format!(
            "at most {MAX_MEMBER_CHANGES} members can be added and removed in one call"
        )));
    }
    check_device_ids("add", &change.add)?;
    check_device_ids("remove", &change.remove)?;
    if !state.db.group_exists(&name).await? {
        return Err(CloudError::NotFound(format!("no device group {name:?}")));
    }
    state
        .db
        .change_group_members(&name, &change.add, &change.remove)
        .await?;
    for live in releases_targeting(&state, &name).await? {
        release::notify_targets_changed(&state, &live).await;
    }
    Ok(Json(detail(&state, &name).await?))
}

/// The active and paused releases whose targeting names the group.
async fn releases_targeting(state: &AppState, name: &str) -> Result<Vec<LiveRelease>, CloudError> {
    Ok(state
        .db
        .served_releases()
        .await?
        .into_iter()
        .map(|s| s.release)
        .filter(|r| r.policy.target.groups().contains(&name))
        .collect())
}

/// Deletes a group no active or paused release targets.
#[utoipa::path(delete, path = "/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = ErrorBody, description = "no such group"),
        (status = 409, body = ErrorBody, description = "a release targets it"),
    ))]
async fn delete_group(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, CloudError> {
    if !state.db.group_exists(&name).await? {
        return Err(CloudError::NotFound(format!("no device group {name:?}")));
    }
    let users: Vec<String> = releases_targeting(&state, &name)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    if !users.is_empty() {
        return Err(CloudError::Conflict(format!(
            "device group {name:?} is targeted by releases {users:?}; abort or roll them back first"
        )));
    }
    state.db.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
