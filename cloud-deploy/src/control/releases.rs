//! `/v1/releases`: create under a policy, preview, list, status, and operator actions.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::bad_json;
use crate::release::policy::ReleasePolicy;
use crate::release::{self, Action, PreviewStage, ReleaseStats};
use crate::store::releases::ReleaseRow;
use crate::store::stats::CoverageSample;
use crate::{AppState, CloudError};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/releases", get(list_releases).post(create_release))
        .route("/releases/preview", post(preview))
        .route("/releases/{id}", get(release_status))
        .route("/releases/{id}/coverage", get(coverage))
        .route("/releases/{id}/{action}", post(act))
}

/// Body of `POST /v1/releases` and `POST /v1/releases/preview`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRelease {
    task: String,
    version: String,
    #[serde(default)]
    policy: ReleasePolicy,
}

#[derive(Serialize)]
struct ReleaseStatus {
    #[serde(flatten)]
    release: ReleaseRow,
    stats: ReleaseStats,
}

fn checked(body: Result<Json<NewRelease>, JsonRejection>) -> Result<NewRelease, CloudError> {
    let Json(new) = body.map_err(bad_json)?;
    if semver::Version::parse(&new.version).is_err() {
        return Err(CloudError::Invalid(format!(
            "version: {:?} is not semver",
            new.version
        )));
    }
    Ok(new)
}

async fn create_release(
    State(state): State<AppState>,
    body: Result<Json<NewRelease>, JsonRejection>,
) -> Result<(StatusCode, Json<ReleaseRow>), CloudError> {
    let new = checked(body)?;
    let row = release::create_release(&state, &new.task, &new.version, new.policy).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

async fn preview(
    State(state): State<AppState>,
    body: Result<Json<NewRelease>, JsonRejection>,
) -> Result<Json<Vec<PreviewStage>>, CloudError> {
    let new = checked(body)?;
    release::check_policy(&state, &new.policy).await?;
    if state
        .db
        .get_version(&new.task, &new.version)
        .await?
        .is_none()
    {
        return Err(CloudError::NotFound(format!(
            "task {:?} has no version {:?}",
            new.task, new.version
        )));
    }
    Ok(Json(
        release::preview(&state, &new.task, &new.version, new.policy).await?,
    ))
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
    let stats = release::stats(&state, &release).await?;
    Ok(Json(ReleaseStatus { release, stats }))
}

async fn coverage(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<CoverageSample>>, CloudError> {
    if state.db.get_release(&id).await?.is_none() {
        return Err(CloudError::NotFound(format!("no release {id:?}")));
    }
    Ok(Json(state.db.samples(&id).await?))
}

async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<ReleaseRow>, CloudError> {
    let action = Action::parse(&action).ok_or_else(|| {
        CloudError::NotFound(format!(
            "no release action {action:?} (pause, resume, advance, abort, rollback)"
        ))
    })?;
    Ok(Json(release::act(&state, &id, action).await?))
}
