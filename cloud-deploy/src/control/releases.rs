//! `/v1/releases`: create under a policy, preview, list, status (also as a live stream),
//! failures, and operator actions.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ErrorBody, bad_json};
use crate::release::policy::ReleasePolicy;
use crate::release::select::ReleaseState;
use crate::release::{self, Action, Preview, ReleaseStatus};
use crate::store::events::{FAILURE_KINDS, FailureQuery, FailureRow};
use crate::store::releases::{ReleaseFilter, ReleaseRow};
use crate::store::stats::CoverageSample;
use crate::{AppState, CloudError};

/// How often a live stream looks for a change in the release it follows, at most.
const LIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A live stream waits at least this many times as long as its last look took.
const LIVE_COST_FACTOR: u32 = 4;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_releases, create_release))
        .routes(routes!(preview))
        .routes(routes!(release_status))
        .routes(routes!(live_status))
        .routes(routes!(coverage))
        .routes(routes!(release_failures))
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
    /// Bucket salt from a preview, so the release takes exactly the previewed devices; the
    /// release's id when absent (and a fresh one for a preview).
    #[serde(default)]
    salt: Option<String>,
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
    let row =
        release::create_release(&state, &new.task, &new.version, new.policy, new.salt).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// "If I start this release now": per stage, how many registered devices run which version, and
/// the bucket salt to pass to `POST /v1/releases` so the release takes exactly those devices.
#[utoipa::path(post, path = "/releases/preview", tag = "releases", request_body = NewRelease, responses(
    (status = 200, body = Preview),
    (status = 400, body = ErrorBody, description = "invalid policy; the message names the field"),
    (status = 404, body = ErrorBody, description = "no such task version"),
))]
async fn preview(
    State(state): State<AppState>,
    body: Result<Json<NewRelease>, JsonRejection>,
) -> Result<Json<Preview>, CloudError> {
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
        release::preview(&state, &new.task, &new.version, new.policy, new.salt).await?,
    ))
}

/// Lists releases, newest first, a page at a time.
#[utoipa::path(get, path = "/releases", tag = "releases", params(ReleaseFilter), responses(
    (status = 200, body = Vec<ReleaseRow>),
    (status = 400, body = ErrorBody, description = "bad query"),
))]
async fn list_releases(
    State(state): State<AppState>,
    filter: Result<Query<ReleaseFilter>, QueryRejection>,
) -> Result<Json<Vec<ReleaseRow>>, CloudError> {
    let Query(filter) = filter.map_err(|e| CloudError::Invalid(e.body_text()))?;
    if let Some(name) = &filter.state
        && ReleaseState::parse(name).is_none()
    {
        return Err(CloudError::Invalid(format!(
            "state: {name:?} is not a release state (active, paused, aborted, superseded)"
        )));
    }
    Ok(Json(state.db.list_releases(&filter).await?))
}

async fn release_or_404(state: &AppState, id: &str) -> Result<ReleaseRow, CloudError> {
    state
        .db
        .get_release(id)
        .await?
        .ok_or_else(|| CloudError::NotFound(format!("no release {id:?}")))
}

/// A release with its statistics, in total and per stage, and the actions its state allows
/// with what each would do.
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
    let release = release_or_404(&state, &id).await?;
    Ok(Json(release::status(&state, release).await?))
}

/// What the live stream sends: the status and the coverage series.
#[derive(Serialize, utoipa::ToSchema)]
struct LiveStatus {
    #[serde(flatten)]
    status: ReleaseStatus,
    coverage: Vec<CoverageSample>,
}

async fn live_json(state: &AppState, id: &str) -> Result<String, CloudError> {
    let release = release_or_404(state, id).await?;
    let live = LiveStatus {
        status: release::status(state, release).await?,
        coverage: state.db.samples(id).await?,
    };
    serde_json::to_string(&live).map_err(|source| CloudError::Encoding {
        what: "release status",
        source,
    })
}

/// The release's status pushed as Server-Sent Events: an `event: status` whose data is the
/// status (as `GET /v1/releases/{id}`) with its `coverage` series, sent at once and again
/// whenever it changes (checked every second, or less often on a fleet so large that computing
/// the status takes more than a quarter of that); an `event: error` with `{"error"}` when it
/// cannot be read. Comment lines keep the connection alive. Ends when the cloud stops.
#[utoipa::path(get, path = "/releases/{id}/live", tag = "releases",
    params(("id" = String, Path, description = "release id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = LiveStatus,
            description = "a stream of `status` events"),
        (status = 404, body = ErrorBody, description = "no such release"),
    ))]
async fn live_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, CloudError> {
    let first = live_json(&state, &id).await?;
    let feed = LiveFeed {
        state,
        id,
        pending: Some(first),
        last: String::new(),
        cost: Duration::ZERO,
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One viewer's live stream: what it sent last, so only changes go out.
struct LiveFeed {
    state: AppState,
    id: String,
    pending: Option<String>,
    last: String,
    /// How long the last status took to compute: on a large fleet a status walks every device,
    /// so the stream waits several times that long between looks and one viewer cannot keep
    /// the database busy.
    cost: Duration,
}

impl LiveFeed {
    /// The next event to send, waiting for a change; `None` once the cloud stops.
    async fn next(&mut self) -> Option<Event> {
        loop {
            let (kind, data) = match self.pending.take() {
                Some(json) => ("status", json),
                None => {
                    let mut stopping = self.state.stopping.clone();
                    let pause = LIVE_INTERVAL.max(self.cost * LIVE_COST_FACTOR);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopping.wait_for(|stop| *stop) => return None,
                    }
                    let started = std::time::Instant::now();
                    let status = live_json(&self.state, &self.id).await;
                    self.cost = started.elapsed();
                    match status {
                        Ok(json) => ("status", json),
                        Err(e) => (
                            "error",
                            serde_json::json!({ "error": e.to_string() }).to_string(),
                        ),
                    }
                }
            };
            if data != self.last {
                self.last.clone_from(&data);
                return Some(Event::default().event(kind).data(data));
            }
        }
    }
}

/// Which failures of a release to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FailureFilter {
    /// `install_failed`, `run_failed` or `rolled_back`; all three when absent.
    kind: Option<String>,
    /// Only devices of this stage's cohort (0-based, as in the release's `stats.stages`).
    stage: Option<usize>,
    /// At most this many (default 50, at most 1000).
    limit: Option<i64>,
    /// Skip this many (the next page).
    offset: Option<i64>,
}

/// A failure with the stage whose cohort its device belongs to.
#[derive(Serialize, utoipa::ToSchema)]
struct StagedFailure {
    #[serde(flatten)]
    failure: FailureRow,
    /// The device's cohort (0-based); absent when no stage covers it.
    stage: Option<usize>,
}

/// Checks a failure kind from a query.
pub(super) fn failure_kind(kind: Option<&str>) -> Result<Option<&str>, CloudError> {
    match kind {
        Some(kind) if !FAILURE_KINDS.contains(&kind) => Err(CloudError::Invalid(format!(
            "kind: {kind:?} is not a failure kind ({})",
            FAILURE_KINDS.join(", ")
        ))),
        kind => Ok(kind),
    }
}

/// The failures devices reported about a release, newest first, with each device's message
/// (a traceback, why it rolled back): what is behind a failure count.
#[utoipa::path(get, path = "/releases/{id}/failures", tag = "releases",
    params(("id" = String, Path, description = "release id"), FailureFilter),
    responses(
        (status = 200, body = Vec<StagedFailure>),
        (status = 400, body = ErrorBody, description = "bad query"),
        (status = 404, body = ErrorBody, description = "no such release"),
    ))]
async fn release_failures(
    State(state): State<AppState>,
    Path(id): Path<String>,
    filter: Result<Query<FailureFilter>, QueryRejection>,
) -> Result<Json<Vec<StagedFailure>>, CloudError> {
    let Query(filter) = filter.map_err(|e| CloudError::Invalid(e.body_text()))?;
    let live = release_or_404(&state, &id).await?.live()?;
    let kind = failure_kind(filter.kind.as_deref())?;
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
    let offset = filter.offset.unwrap_or(0).max(0);
    let staged = |failure: FailureRow| StagedFailure {
        stage: release::stats::cohort(&live.policy, &live.salt, &failure.device_id),
        failure,
    };
    let Some(stage) = filter.stage else {
        let query = FailureQuery {
            release_id: Some(&id),
            kind,
            limit,
            offset,
            ..FailureQuery::default()
        };
        let rows = state.db.failures(&query).await?;
        return Ok(Json(rows.into_iter().map(staged).collect()));
    };
    // A cohort is a hash of the device id, so the stage is picked out here, not in SQL.
    let query = FailureQuery {
        release_id: Some(&id),
        kind,
        limit: 1000,
        ..FailureQuery::default()
    };
    let rows = state.db.failures(&query).await?;
    Ok(Json(
        rows.into_iter()
            .map(staged)
            .filter(|f| f.stage == Some(stage))
            .skip(offset as usize)
            .take(limit as usize)
            .collect(),
    ))
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
    release_or_404(&state, &id).await?;
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
