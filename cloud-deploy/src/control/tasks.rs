//! `/v1/tasks` and `/v1/tasks/{name}/versions`.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use walle_proto::manifest::is_valid_task_name;

use super::bad_json;
use crate::store::tasks::{TaskRow, VersionRow};
use crate::{AppState, CloudError, catalog};

pub(super) fn routes() -> Router<AppState> {
    // Uploads are streamed to disk with their own size check (see `catalog::spool`), so
    // axum's in-memory body limit does not apply to them.
    Router::new()
        .route("/tasks", get(list_tasks).post(create_task))
        .route(
            "/tasks/{name}/versions",
            get(list_versions)
                .post(upload_version)
                .layer(DefaultBodyLimit::disable()),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTask {
    name: String,
    #[serde(default)]
    description: String,
}

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

async fn list_tasks(State(state): State<AppState>) -> Result<Json<Vec<TaskRow>>, CloudError> {
    Ok(Json(state.db.list_tasks().await?))
}

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
        return Err(catalog::too_large(limit));
    }
    let spooled = catalog::spool(&state.config.data_dir, body.into_data_stream(), limit).await?;
    let row = catalog::publish_version(&state, &name, spooled).await?;
    Ok((StatusCode::CREATED, Json(row)))
}
