//! `/v1/tasks` and `/v1/tasks/{name}/versions`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use walle_proto::manifest::is_valid_task_name;

use super::{ErrorBody, bad_json};
use crate::store::releases::{ReleaseFilter, ReleaseRow};
use crate::store::tasks::{TaskRow, VersionRow};
use crate::{AppState, CloudError, catalog};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    // Uploads are streamed to disk with their own size check (see `catalog::spool`), so
    // axum's in-memory body limit does not apply to them.
    let (schemas, paths, versions) = routes!(list_versions, upload_version);
    OpenApiRouter::new()
        .routes(routes!(list_tasks, create_task))
        .routes(routes!(version_detail))
        .routes((schemas, paths, versions.layer(DefaultBodyLimit::disable())))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTask {
    #[schema(pattern = "^[a-z][a-z0-9-]{0,63}$")]
    name: String,
    #[serde(default)]
    description: String,
}

/// Creates a task (a name versions are uploaded under).
#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = NewTask, responses(
    (status = 201, body = TaskRow),
    (status = 400, body = ErrorBody, description = "invalid name or body"),
    (status = 409, body = ErrorBody, description = "the task exists"),
))]
async fn create_task(
    State(state): State<AppState>,
    body: Result<Json<NewTask>, JsonRejection>,
) -> Result<(StatusCode, Json<TaskRow>), CloudError> {
    let Json(task) = body.map_err(bad_json)?;
    if !is_valid_task_name(&task.name) {
        return Err(CloudError::Invalid(format!(
            "`name` {:?} is not a valid task name (1-64 chars of a-z, 0-9 and '-', starting with a letter)",
            task.name
        )));
    }
    let row = state.db.create_task(&task.name, &task.description).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Lists tasks.
#[utoipa::path(get, path = "/tasks", tag = "tasks", responses((status = 200, body = Vec<TaskRow>)))]
async fn list_tasks(State(state): State<AppState>) -> Result<Json<Vec<TaskRow>>, CloudError> {
    Ok(Json(state.db.list_tasks().await?))
}

/// Lists a task's versions, newest first.
#[utoipa::path(get, path = "/tasks/{name}/versions", tag = "tasks",
    params(("name" = String, Path, description = "task name")),
    responses(
        (status = 200, body = Vec<VersionRow>),
        (status = 404, body = ErrorBody, description = "no such task"),
    ))]
async fn list_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionRow>>, CloudError> {
    if !state.db.task_exists(&name).await? {
        return Err(CloudError::NotFound(format!(
            "task {name:?} does not exist"
        )));
    }
    Ok(Json(state.db.list_versions(&name).await?))
}

/// Uploads a bundle (the `walle task pack` file) as a new version; its manifest is checked and
/// signed.
#[utoipa::path(post, path = "/tasks/{name}/versions", tag = "tasks",
    params(("name" = String, Path, description = "task name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the bundle file"),
    responses(
        (status = 201, body = VersionRow),
        (status = 400, body = ErrorBody, description = "not a valid bundle, or for another task"),
        (status = 404, body = ErrorBody, description = "no such task"),
        (status = 409, body = ErrorBody, description = "the version exists"),
        (status = 413, body = ErrorBody, description = "larger than the configured limit"),
    ))]
async fn upload_version(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<VersionRow>), CloudError> {
    let limit = state.config.max_bundle_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(catalog::refuse_oversized(body.into_data_stream(), limit));
    }
    let spooled = catalog::spool(&state.config.data_dir, body.into_data_stream(), limit).await?;
    let row = catalog::publish_version(&state, &name, spooled).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// A version with its manifest and the releases of it.
#[derive(Serialize, utoipa::ToSchema)]
struct VersionDetail {
    #[serde(flatten)]
    version: VersionRow,
    /// The signed release manifest devices receive: runtime, entry, triggers, features,
    /// limits, models with their digests.
    #[schema(value_type = Object)]
    manifest: serde_json::Value,
    /// Releases of this version, newest first (at most 100).
    releases: Vec<ReleaseRow>,
}

/// One version: its bundle, its manifest, and which releases use it.
#[utoipa::path(get, path = "/tasks/{name}/versions/{version}", tag = "tasks",
    params(
        ("name" = String, Path, description = "task name"),
        ("version" = String, Path, description = "version"),
    ),
    responses(
        (status = 200, body = VersionDetail),
        (status = 404, body = ErrorBody, description = "no such task version"),
    ))]
async fn version_detail(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionDetail>, CloudError> {
    let row = state
        .db
        .get_version(&name, &version)
        .await?
        .ok_or_else(|| CloudError::NotFound(format!("task {name:?} has no version {version:?}")))?;
    let manifest =
        serde_json::from_str(&row.manifest_json).map_err(|source| CloudError::CorruptRecord {
            what: format!("stored manifest of {name} {version} is not JSON"),
            source,
        })?;
    let filter = ReleaseFilter {
        task: Some(name),
        version: Some(version),
        ..ReleaseFilter::default()
    };
    Ok(Json(VersionDetail {
        releases: state.db.list_releases(&filter).await?,
        manifest,
        version: row,
    }))
}
