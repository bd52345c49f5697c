//! `/v1/me` (who the token is and what it may do) and `/v1/overview` (the fleet at a glance).

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Operator, capabilities};
use crate::release::failure_kinds;
use crate::release::select::ReleaseState;
use crate::store::events::{FailureQuery, FailureRow};
use crate::store::now_ms;
use crate::{AppState, CloudError};

/// Failures the overview lists.
const RECENT_FAILURES: i64 = 20;
/// The window of the overview's record counts.
const RECORDS_WINDOW_MS: i64 = 3_600_000;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(overview))
}

/// The operator behind a token.
#[derive(Serialize, utoipa::ToSchema)]
struct Me {
    /// Token id, or `bootstrap-admin`.
    id: String,
    name: String,
    /// viewer, developer, release-manager or admin.
    role: String,
    /// What this token may do: upload_version, preview_release, create_release, act_release,
    /// manage_groups, admin (tokens, apps, audit log). Derived from the same rules the API
    /// enforces.
    may: Vec<&'static str>,
}

/// Who the token belongs to and what it may do, so a client offers only what will work.
#[utoipa::path(get, path = "/me", tag = "admin", responses((status = 200, body = Me)))]
async fn me(Extension(operator): Extension<Operator>) -> Json<Me> {
    Json(Me {
        may: capabilities(operator.role),
        role: operator.role.as_str().to_owned(),
        id: operator.id,
        name: operator.name,
    })
}

/// Devices registered, and those with a push stream open now.
#[derive(Serialize, utoipa::ToSchema)]
struct DeviceCounts {
    registered: i64,
    /// Devices with a push stream open to this replica now.
    online: usize,
}

/// Releases by state.
#[derive(Serialize, utoipa::ToSchema)]
struct ReleaseCounts {
    active: usize,
    paused: usize,
}

/// An active or paused release with its stage and health.
#[derive(Serialize, utoipa::ToSchema)]
struct LiveReleaseSummary {
    id: String,
    task: String,
    version: String,
    state: String,
    state_reason: String,
    /// Current stage, 0-based.
    stage: usize,
    /// Number of stages.
    stages: usize,
    /// The current stage's percentage.
    percent: f64,
    /// Targeted and installed devices at the controller's last coverage sample (0 before one).
    targeted: i64,
    installed: i64,
    /// Devices that reported an install outcome, and those with a counted failure.
    executed: i64,
    failed_devices: i64,
    /// `(executed - failed_devices) / executed`; absent before any device reported.
    success_rate: Option<f64>,
}

/// Tunnel records of one task received in the last hour.
#[derive(Serialize, utoipa::ToSchema)]
struct TaskRecords {
    task: String,
    records: i64,
}

/// The fleet at a glance.
#[derive(Serialize, utoipa::ToSchema)]
struct Overview {
    devices: DeviceCounts,
    releases: ReleaseCounts,
    /// Active and paused releases, newest first.
    active_releases: Vec<LiveReleaseSummary>,
    /// The newest failures devices reported, with their messages.
    recent_failures: Vec<FailureRow>,
    /// Records received per task over the last hour, most first.
    records_last_hour: Vec<TaskRecords>,
}

/// Devices registered and online, live releases with stage and health, recent failures, and
/// tunnel records per task over the last hour. Reads only counts and the controller's samples,
/// so it stays cheap on a large fleet.
#[utoipa::path(get, path = "/overview", tag = "releases", responses((status = 200, body = Overview)))]
async fn overview(State(state): State<AppState>) -> Result<Json<Overview>, CloudError> {
    let mut active_releases = Vec::new();
    for row in state.db.live_releases().await? {
        let live = row.live()?;
        let health = state
            .db
            .release_health(&live.id, &failure_kinds(&live.policy))
            .await?;
        let sample = state.db.latest_sample(&live.id).await?;
        active_releases.push(LiveReleaseSummary {
            stages: live.policy.stages.len(),
            percent: live.policy.stages.get(live.stage).copied().unwrap_or(100.0),
            stage: live.stage,
            targeted: sample.as_ref().map_or(0, |s| s.targeted),
            installed: sample.as_ref().map_or(0, |s| s.installed),
            executed: health.executed,
            failed_devices: health.failed_devices,
            success_rate: (health.executed > 0).then(|| {
                (health.executed - health.failed_devices).max(0) as f64 / health.executed as f64
            }),
            id: row.id,
            task: row.task,
            version: row.version,
            state: row.state,
            state_reason: row.state_reason,
        });
    }
    let count = |wanted: ReleaseState| {
        active_releases
            .iter()
            .filter(|r| r.state == wanted.as_str())
            .count()
    };
    let releases = ReleaseCounts {
        active: count(ReleaseState::Active),
        paused: count(ReleaseState::Paused),
    };
    let failures = FailureQuery {
        limit: RECENT_FAILURES,
        ..FailureQuery::default()
    };
    Ok(Json(Overview {
        devices: DeviceCounts {
            registered: state.db.count_devices().await?,
            online: state.hub.connected_devices(),
        },
        releases,
        active_releases,
        recent_failures: state.db.failures(&failures).await?,
        records_last_hour: state
            .db
            .records_per_task_since(now_ms() - RECORDS_WINDOW_MS)
            .await?
            .into_iter()
            .map(|(task, records)| TaskRecords { task, records })
            .collect(),
    }))
}
