//! The release controller: binding task versions to parts of the fleet under a policy, moving
//! them through their stages, and telling devices when what they should run has changed.
//!
//! - [`target`]: predicates over the device profile;
//! - [`policy`]: stages over sticky buckets, health gate, abort rule, priority, validation;
//! - [`select`]: the one rule that decides which release each device follows;
//! - [`controller`]: the loop that advances and aborts releases by their health;
//! - [`stats`]: a release's progress, in total and per stage;
//! - [`fleet`]: the fleet in memory, kept up to date from the database, that they walk.

pub mod controller;
pub mod fleet;
pub mod policy;
pub mod select;
pub mod stats;
pub mod target;

pub use stats::{ReleaseStats, StageStats, stats};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use walle_proto::v1::{Notice, notice};

use crate::store::releases::ReleaseRow;
use crate::{AppState, CloudError, secrets};
use policy::ReleasePolicy;
use select::{LiveRelease, ReleaseState, choose_for_task_sharing_buckets};

/// The notice that what devices should run for `release`'s task may have changed.
fn change_notice(state: &AppState, release: &LiveRelease) -> Notice {
    Notice {
        kind: notice::Kind::TaskChanged as i32,
        task: release.task.clone(),
        release_id: release.id.clone(),
        pace_window_ms: release
            .policy
            .pace_window_ms
            .unwrap_or(state.config.pace_window_ms),
    }
}

/// Tells every subscribed device, on every replica, that `release` changed: called once the
/// change (which stamped the release's `changed_at_ms`) has committed. On PostgreSQL the commit
/// itself carried the notice to every replica ([`crate::notify::committed`]).
pub(crate) async fn notify_change(state: &AppState, release: &LiveRelease) {
    crate::notify::committed(&state.db, &state.hub, change_notice(state, release)).await;
}

/// Tells every subscribed device, on every replica, that who `release` targets changed without
/// the release itself changing (a group it names gained or lost members).
pub(crate) async fn notify_targets_changed(state: &AppState, release: &LiveRelease) {
    crate::notify::publish(&state.db, &state.hub, change_notice(state, release)).await;
}

/// Creates a release of `task@version` under `policy` and notifies devices. `salt` places
/// devices in the stages' sticky buckets: pass the one a [`preview`] chose, and the release takes
/// exactly the devices the preview showed; without one, the release's id is the salt.
pub async fn create_release(
    state: &AppState,
    task: &str,
    version: &str,
    policy: ReleasePolicy,
    salt: Option<String>,
) -> Result<ReleaseRow, CloudError> {
    check_policy(state, &policy).await?;
    let salt = salt.map(checked_salt).transpose()?;
    if state.db.get_version(task, version).await?.is_none() {
        return Err(CloudError::NotFound(format!(
            "task {task:?} has no version {version:?}"
        )));
    }
    let id = format!("rel_{}", hex::encode(secrets::random_bytes::<8>()?));
    // Without a previewed salt the release's own id places its devices.
    let salt = salt.unwrap_or_else(|| id.clone());
    let release = state
        .db
        .create_release(&id, task, version, &policy, &salt)
        .await?;
    supersede_if_full(state, &release).await?;
    notify_change(state, &release.live()?).await;
    tracing::info!(release = %id, task, version, "release created");
    Ok(release)
}

/// A fresh bucket salt: 16 hex digits.
fn new_salt() -> Result<String, CloudError> {
    Ok(hex::encode(secrets::random_bytes::<8>()?))
}

/// A salt given by a caller (from a preview) must look like one the cloud draws.
fn checked_salt(salt: String) -> Result<String, CloudError> {
    let valid = (8..=64).contains(&salt.len()) && salt.bytes().all(|b| b.is_ascii_hexdigit());
    if valid {
        Ok(salt)
    } else {
        Err(CloudError::Invalid(format!(
            "salt: {salt:?} is not a bucket salt (8-64 hex digits, as `POST /v1/releases/preview` returns)"
        )))
    }
}

/// Validates a policy, including that every group it names exists.
pub async fn check_policy(state: &AppState, policy: &ReleasePolicy) -> Result<(), CloudError> {
    policy
        .validate()
        .map_err(|e| CloudError::Invalid(e.to_string()))?;
    for group in policy.target.groups() {
        if !state.db.group_exists(group).await? {
            return Err(CloudError::Invalid(format!(
                "policy.target: no device group named {group:?} (create it with POST /v1/groups)"
            )));
        }
    }
    Ok(())
}

/// A release at its last stage of 100 % for everyone makes older releases it outranks moot.
async fn supersede_if_full(state: &AppState, release: &ReleaseRow) -> Result<(), CloudError> {
    let live = release.live()?;
    let full = live.policy.target.is_everyone()
        && live.stage == live.policy.last_stage()
        && live.policy.stage_buckets(live.stage) == policy::BUCKETS;
    if full && live.state == ReleaseState::Active {
        state
            .db
            .supersede_covered(&live.id, &live.task, live.seq, live.policy.priority)
            .await?;
    }
    Ok(())
}

/// What an operator can do to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(rename_all = "lowercase")]
pub enum Action {
    Pause,
    Resume,
    Advance,
    Abort,
    Rollback,
}

impl Action {
    /// Parses the action name used in `POST /v1/releases/{id}/{action}`.
    pub fn parse(name: &str) -> Option<Action> {
        match name {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "advance" => Some(Action::Advance),
            "abort" => Some(Action::Abort),
            "rollback" => Some(Action::Rollback),
            _ => None,
        }
    }
}

/// The actions a release's state allows now: the one rule the API, the console and the CLI follow.
pub fn allowed_actions(release: &LiveRelease) -> Vec<Action> {
    match release.state {
        ReleaseState::Active if release.stage < release.policy.last_stage() => vec![
            Action::Advance,
            Action::Pause,
            Action::Abort,
            Action::Rollback,
        ],
        ReleaseState::Active => vec![Action::Pause, Action::Abort, Action::Rollback],
        ReleaseState::Paused => vec![Action::Resume, Action::Abort, Action::Rollback],
        ReleaseState::Aborted | ReleaseState::Superseded => Vec::new(),
    }
}

/// What an action would do now, in words and in devices, for the operator's confirmation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionEffect {
    pub action: Action,
    /// What happens to which devices, with the figures.
    pub effect: String,
    /// The devices whose version changes (or, for pause, stays as it is instead of changing).
    pub devices: usize,
}

/// A release with its statistics and what an operator may do to it now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReleaseStatus {
    #[serde(flatten)]
    pub release: ReleaseRow,
    pub stats: ReleaseStats,
    /// Exactly the actions the release's state allows, each with its effect.
    pub actions: Vec<ActionEffect>,
}

/// A release's status: statistics and the allowed actions with their effects. On a fleet so
/// large that computing it is slow, viewers share one computation for a while (see
/// [`StatusCache`]); a change of the release's state or stage is always seen at once.
pub async fn status(state: &AppState, release: ReleaseRow) -> Result<ReleaseStatus, CloudError> {
    let key = StatusKey::of(&release);
    if let Some(status) = state.status_cache.fresh(&release.id, &key) {
        return Ok(status);
    }
    let started = Instant::now();
    let live = release.live()?;
    let selection = stats::selection(state, &live, true).await?;
    let stats = stats(state, &release, &selection).await?;
    let actions = allowed_actions(&live)
        .into_iter()
        .map(|action| effect(&live, &stats, &selection, action))
        .collect();
    let status = ReleaseStatus {
        release,
        stats,
        actions,
    };
    state
        .status_cache
        .store(key, status.clone(), started.elapsed());
    Ok(status)
}

/// What must be unchanged for a cached status to stand for the release.
#[derive(Debug, Clone, PartialEq)]
struct StatusKey {
    state: String,
    state_reason: String,
    stage: i64,
    stage_started_at_ms: i64,
}

impl StatusKey {
    fn of(release: &ReleaseRow) -> StatusKey {
        StatusKey {
            state: release.state.clone(),
            state_reason: release.state_reason.clone(),
            stage: release.stage,
            stage_started_at_ms: release.stage_started_at_ms,
        }
    }
}

/// Statuses that took longer than [`SLOW_STATUS`] to compute, reused for
/// [`STATUS_REUSE_FACTOR`] times as long while the release's state and stage stay as they were:
/// many operators watching one release of a million devices cost one computation, not one each.
#[derive(Clone, Default)]
pub struct StatusCache {
    by_release: Arc<Mutex<HashMap<String, CachedStatus>>>,
}

struct CachedStatus {
    key: StatusKey,
    status: ReleaseStatus,
    at: Instant,
    cost: Duration,
}

impl StatusCache {
    fn fresh(&self, id: &str, key: &StatusKey) -> Option<ReleaseStatus> {
        let cache = self.by_release.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(id)
            .filter(|c| &c.key == key && c.at.elapsed() < c.cost * STATUS_REUSE_FACTOR)
            .map(|c| c.status.clone())
    }

    fn store(&self, key: StatusKey, status: ReleaseStatus, cost: Duration) {
        let mut cache = self.by_release.lock().unwrap_or_else(|p| p.into_inner());
        if cost <= SLOW_STATUS {
            cache.remove(&status.release.id);
            return;
        }
        cache.insert(
            status.release.id.clone(),
            CachedStatus {
                key,
                status,
                at: Instant::now(),
                cost,
            },
        );
    }
}

fn effect(
    live: &LiveRelease,
    stats: &ReleaseStats,
    selection: &stats::Selection,
    action: Action,
) -> ActionEffect {
    let version = &live.version;
    let (targeted, installed) = (stats.targeted, stats.installed);
    let running = installed + stats.still_running;
    let stage_label = |stage: usize| {
        format!(
            "stage {} of {} ({}%)",
            stage + 1,
            live.policy.stages.len(),
            live.policy.stages.get(stage).copied().unwrap_or(100.0)
        )
    };
    let (effect, devices) = match action {
        Action::Advance => {
            let next = selection.next_stage.unwrap_or(targeted);
            let more = next.saturating_sub(targeted);
            (
                format!(
                    "Moves to {}: {more} more devices are offered {version} ({targeted} → {next} targeted).",
                    stage_label(live.stage + 1)
                ),
                more,
            )
        }
        Action::Pause => {
            let waiting = targeted - installed;
            (
                format!(
                    "No device gets {version} any more: the {installed} devices running it keep it; \
                     the {waiting} targeted devices that have not installed it keep what they run."
                ),
                waiting,
            )
        }
        Action::Resume => {
            let again = selection.if_resumed.unwrap_or(targeted);
            let new = again.saturating_sub(installed);
            (
                format!(
                    "{version} goes out again at {}: {again} devices targeted, {new} of them do not run it yet.",
                    stage_label(live.stage)
                ),
                new,
            )
        }
        Action::Abort | Action::Rollback => (
            format!(
                "The release stops for good. The {running} devices running {version} go back to \
                 the version they had before (or drop the task if they had none), at their next sync."
            ),
            running,
        ),
    };
    ActionEffect {
        action,
        effect,
        devices,
    }
}

/// Applies an operator action; `Conflict` when the release's state does not allow it.
pub async fn act(state: &AppState, id: &str, action: Action) -> Result<ReleaseRow, CloudError> {
    let release = state
        .db
        .get_release(id)
        .await?
        .ok_or_else(|| CloudError::NotFound(format!("no release {id:?}")))?;
    use ReleaseState::*;
    let live = release.live()?;
    let moved = allowed_actions(&live).contains(&action)
        && match action {
            Action::Pause => {
                state
                    .db
                    .transition_release(id, &[Active], Paused, "paused by operator")
                    .await?
            }
            Action::Resume => {
                state
                    .db
                    .transition_release(id, &[Paused], Active, "")
                    .await?
            }
            Action::Abort => {
                state
                    .db
                    .transition_release(id, &[Active, Paused], Aborted, "aborted by operator")
                    .await?
            }
            Action::Rollback => {
                state
                    .db
                    .transition_release(id, &[Active, Paused], Aborted, "rolled back by operator")
                    .await?
            }
            Action::Advance => state.db.advance_stage(id, release.stage).await?,
        };
    if !moved {
        return Err(CloudError::Conflict(format!(
            "release {id} is {} at stage {} of {}; cannot {action:?}",
            release.state,
            release.stage + 1,
            live.policy.stages.len()
        )));
    }
    // A paused or aborted release has handed its devices back to the releases it superseded
    // (`transition_release`); a resumed one supersedes them again here.
    let updated = state
        .db
        .get_release(id)
        .await?
        .ok_or_else(|| CloudError::NotFound(format!("no release {id:?}")))?;
    supersede_if_full(state, &updated).await?;
    notify_change(state, &updated.live()?).await;
    tracing::info!(release = %id, ?action, state = %updated.state, stage = updated.stage, "release changed by operator");
    Ok(updated)
}

/// A status that took longer than this to compute is shared by viewers for a while.
const SLOW_STATUS: Duration = Duration::from_millis(100);
/// A slow status is reused for this many times as long as it took.
const STATUS_REUSE_FACTOR: u32 = 4;

/// Every registered device, brought up to date with the database (see [`fleet::FleetIndex`]).
pub(crate) async fn fleet(state: &AppState) -> Result<fleet::Fleet, CloudError> {
    state.fleet.current(&state.db).await
}

/// "If I start this release now": the bucket salt the preview used (pass it to create, and the
/// release takes exactly these devices) and, per stage, who runs which version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub salt: String,
    pub stages: Vec<PreviewStage>,
    /// Registered devices, and how many of them the policy's target does not match (they never
    /// get the version, at any stage): why a stage may give it to fewer devices than expected.
    pub devices: usize,
    pub outside_target: usize,
}

/// How many devices one stage of a previewed release gives each version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewStage {
    pub stage: usize,
    pub percent: f64,
    /// Version → number of registered devices that would run it ("none": not installed).
    pub versions: HashMap<String, usize>,
}

/// The active and paused releases of one task: what competes for its devices.
pub(crate) async fn served_releases_of(
    state: &AppState,
    task: &str,
) -> Result<Vec<LiveRelease>, CloudError> {
    Ok(state
        .db
        .served_releases()
        .await?
        .into_iter()
        .map(|s| s.release)
        .filter(|r| r.task == task)
        .collect())
}

/// "If I start this release now": per stage, how many registered devices get which version.
pub async fn preview(
    state: &AppState,
    task: &str,
    version: &str,
    policy: ReleasePolicy,
    salt: Option<String>,
) -> Result<Preview, CloudError> {
    policy
        .validate()
        .map_err(|e| CloudError::Invalid(e.to_string()))?;
    let salt = match salt {
        Some(salt) => checked_salt(salt)?,
        None => new_salt()?,
    };
    let mut releases = served_releases_of(state, task).await?;
    let candidate_seq = releases.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
    releases.push(LiveRelease {
        id: "preview".into(),
        seq: candidate_seq,
        task: task.to_owned(),
        version: version.to_owned(),
        state: ReleaseState::Active,
        stage: 0,
        salt: salt.clone(),
        policy,
    });
    // One release set per stage of the candidate; they share each device's buckets.
    let at_stage: Vec<Vec<LiveRelease>> = (0..releases.last().map_or(0, |c| c.policy.stages.len()))
        .map(|stage| {
            let mut set = releases.clone();
            if let Some(candidate) = set.last_mut() {
                candidate.stage = stage;
            }
            set
        })
        .collect();
    let mut counts: Vec<HashMap<String, usize>> = vec![HashMap::new(); at_stage.len()];
    let mut buckets = vec![None; releases.len()];
    let devices = fleet(state).await?;
    let outside_target = match releases.last() {
        Some(candidate) => devices
            .iter()
            .filter(|d| !candidate.policy.target.matches(&d.profile))
            .count(),
        None => 0,
    };
    for device in devices.iter() {
        buckets.fill(None);
        for (set, versions) in at_stage.iter().zip(&mut counts) {
            let chosen = choose_for_task_sharing_buckets(
                set,
                task,
                &device.profile,
                &device.running,
                &mut buckets,
            );
            let label = chosen.map_or("none", |r| r.version.as_str());
            match versions.get_mut(label) {
                Some(n) => *n += 1,
                None => {
                    versions.insert(label.to_owned(), 1);
                }
            }
        }
    }
    let out = at_stage
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(stage, (set, versions))| PreviewStage {
            stage,
            percent: set
                .last()
                .and_then(|c| c.policy.stages.get(stage))
                .copied()
                .unwrap_or(100.0),
            versions,
        })
        .collect();
    Ok(Preview {
        salt,
        stages: out,
        devices: devices.len(),
        outside_target,
    })
}

/// The task-event kinds a policy's abort rule counts as failures.
pub fn failure_kinds(policy: &ReleasePolicy) -> Vec<&'static str> {
    let kinds = policy
        .abort
        .as_ref()
        .map(|a| a.kinds.clone())
        .unwrap_or_else(|| vec![policy::FailureKind::Install, policy::FailureKind::Run]);
    kinds
        .into_iter()
        .flat_map(|k| match k {
            policy::FailureKind::Install => ["install_failed"].as_slice(),
            // A device that rolled the version back did so because its runs kept failing.
            policy::FailureKind::Run => ["run_failed", "rolled_back"].as_slice(),
        })
        .copied()
        .collect()
}
