//! `/v1/releases`: create under a policy, preview, list, status, and operator actions.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ErrorBody, bad_json};
use crate::release::policy::ReleasePolicy;
use crate::release::{self, Action, PreviewStage, ReleaseStats};
use crate::store::releases::ReleaseRow;
use crate::store::stats::CoverageSample;
use crate::{AppState, CloudError};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_releases, create_release))
        .routes(routes!(preview))
        .routes(routes!(release_status))
        .routes(routes!(coverage))
        .routes(routes!(act))
}

/// Body of `POST /v1/releases` and `POST /v1/releases/preview`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRelease {
    task: String,
    /// A semver version of the task, e.g. `1.2.0`.
    #[schema(example = "1.0.0")]
    version: String,
    #[serde(default)]
    policy: ReleasePolicy,
}

#[derive(Serialize, utoipa::ToSchema)]
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

/// Starts releasing a task version under a policy; devices are notified.
#[utoipa::path(post, path = "/releases", tag = "releases", request_body = NewRelease, responses(
    (status = 201, body = ReleaseRow),
    (status = 400, body = ErrorBody, description = "invalid policy; the message names the field"),
    (status = 404, body = ErrorBody, description = "no such task version"),
))]
async fn create_release(
    State(state): State<AppState>,
    body: Result<Json<NewRelease>, JsonRejection>,
) -> Result<(StatusCode, Json<ReleaseRow>), CloudError> {
    let new = checked(body)?;
    let row = release::create_release(&state, &new.task, &new.version, new.policy).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// "If I start this release now": per stage, how many registered devices run which version.
#[utoipa::path(post, path = "/releases/preview", tag = "releases", request_body = NewRelease, responses(
    (status = 200, body = Vec<PreviewStage>),
    (status = 400, body = ErrorBody, description = "invalid policy; the message names the field"),
    (status = 404, body = ErrorBody, description = "no such task version"),
))]
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

/// Lists releases, newest first.
#[utoipa::path(get, path = "/releases", tag = "releases", responses((status = 200, body = Vec<ReleaseRow>)))]
async fn list_releases(State(state): State<AppState>) -> Result<Json<Vec<ReleaseRow>>, CloudError> {
    Ok(Json(state.db.list_releases().await?))
}

/// A release with its statistics, in total and per stage.
#[utoipa::path(get, path = "/releases/{id}", tag = "releases",
    params(("id" = String, Path, description = "release id")),
    responses(
        (status = 200, body = ReleaseStatus),
        (status = 404, body = ErrorBody, description = "no such release"),
    ))]
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

/// A release's coverage series (targeted and installed devices over time), oldest first.
#[utoipa::path(get, path = "/releases/{id}/coverage", tag = "releases",
    params(("id" = String, Path, description = "release id")),
    responses(
        (status = 200, body = Vec<CoverageSample>),
        (status = 404, body = ErrorBody, description = "no such release"),
    ))]
async fn coverage(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<CoverageSample>>, CloudError> {
    if state.db.get_release(&id).await?.is_none() {
        return Err(CloudError::NotFound(format!("no release {id:?}")));
    }
    Ok(Json(state.db.samples(&id).await?))
}

/// Pauses, resumes, advances, aborts or rolls back a release.
#[utoipa::path(post, path = "/releases/{id}/{action}", tag = "releases",
    params(
        ("id" = String, Path, description = "release id"),
        ("action" = Action, Path, description = "what to do"),
    ),
    responses(
        (status = 200, body = ReleaseRow),
        (status = 404, body = ErrorBody, description = "no such release or action"),
        (status = 409, body = ErrorBody, description = "not possible in the release's state"),
    ))]
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
