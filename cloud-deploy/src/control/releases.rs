//! `/v1/releases`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::bad_json;
use crate::store::releases::{ReleaseRow, ReleaseStats};
use crate::{AppState, CloudError, release};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/releases", get(list_releases).post(create_release))
        .route("/releases/{id}", get(release_status))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRelease {
    task: String,
    version: String,
}

#[derive(Serialize)]
struct ReleaseStatus {
    #[serde(flatten)]
    release: ReleaseRow,
    stats: ReleaseStats,
}

async fn create_release(
    State(state): State<AppState>,
    body: Result<Json<NewRelease>, JsonRejection>,
) -> Result<(StatusCode, Json<ReleaseRow>), CloudError> {
    let Json(new) = body.map_err(bad_json)?;
    if semver::Version::parse(&new.version).is_err() {
        return Err(CloudError::Invalid(format!(
            "`version` {:?} is not semver",
            new.version
        )));
    }
    let row = release::create_release(&state, &new.task, &new.version).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

async fn list_releases(State(state): State<AppState>) -> Result<Json<Vec<ReleaseRow>>, CloudError> {
    Ok(Json(state.db.list_releases().await?))
}

async fn release_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReleaseStatus>, CloudError> {
    let release = state
        .db
        .get_release(&id)
        .await?
        .ok_or_else(|| CloudError::NotFound(format!("no release {id:?}")))?;
    let stats = state.db.release_stats(&release).await?;
    Ok(Json(ReleaseStatus { release, stats }))
}
