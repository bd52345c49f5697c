//! A release's progress across the fleet, in total and per stage.
//!
//! A device belongs to the stage whose percentage first covered its sticky bucket (its
//! *cohort*): with stages 1 → 10 → 100, stage 1's figures are about the devices that joined when
//! the release went from 1 % to 10 %. Operators compare cohorts to see whether a later wave
//! behaves like the first.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::fleet::{Fleet, FleetDevice};
use super::policy::{ReleasePolicy, bucket};
use super::select::{LiveRelease, ReleaseState, choose_for_task_sharing_buckets};
use super::{failure_kinds, fleet, served_releases_of};
use crate::store::events::RunMetrics;
use crate::store::releases::{ReleaseHealth, ReleaseRow};
use crate::{AppState, CloudError};

/// A release's progress across the fleet. Every figure counts devices unless it says runs or
/// notices, and `installed <= targeted` always holds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReleaseStats {
    /// Registered devices this release is selected for now (targeting, stage and priority).
    pub targeted: usize,
    /// Targeted devices whose active version of the task is this release's version.
    pub installed: usize,
    /// `installed / targeted` (0 when nothing is targeted).
    pub coverage: f64,
    /// Devices running this release's version that it does not target (any more): after an
    /// abort or a pause, until they have switched back; or devices another release gave it.
    pub still_running: usize,
    /// Push notices about this release delivered to device streams: every subscribed device of
    /// the task is told to pull, targeted or not, so this may exceed `targeted`.
    pub notified: i64,
    /// Devices that pulled this release (Sync handed them its version while they ran another).
    pub synced: i64,
    #[serde(flatten)]
    pub health: ReleaseHealth,
    /// Failed runs by kind and run durations.
    pub runs: RunMetrics,
    /// The same figures for each stage's cohort.
    pub stages: Vec<StageStats>,
}

/// Figures about one stage: its cohort of devices, and the notices sent while it was current.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StageStats {
    pub stage: usize,
    pub percent: f64,
    /// Devices of this cohort the release selects now.
    pub targeted: usize,
    /// Notices delivered while this stage was current.
    pub notified: i64,
    /// Devices of this cohort that pulled the release.
    pub synced: i64,
    /// Targeted devices of this cohort running the release's version.
    pub installed: i64,
    /// Devices of this cohort that failed to install it.
    pub install_failed: i64,
    /// Devices of this cohort that reported a failure of the counted kinds.
    pub failed_devices: i64,
    pub runs_ok: i64,
    pub runs_failed: i64,
    /// Devices of this cohort that rolled the version back locally after failed runs.
    pub rolled_back: i64,
}

/// The stage whose percentage first covers a device's bucket; `None` when no stage does.
pub fn cohort(policy: &ReleasePolicy, salt: &str, device_id: &str) -> Option<usize> {
    cohort_of_bucket(policy, bucket(device_id, salt))
}

/// The stage whose percentage first covers bucket `b`.
fn cohort_of_bucket(policy: &ReleasePolicy, b: u32) -> Option<usize> {
    (0..policy.stages.len()).find(|&stage| b < policy.stage_buckets(stage))
}

/// Which devices a release selects now, and how many it would select after each action that
/// changes that: the figures an operator's confirmation quotes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The fleet as it was read for this selection.
    pub fleet: Fleet,
    /// The devices the release is selected for now: positions in `fleet`, each with the
    /// device's bucket under the release's salt.
    pub targeted: Vec<(usize, u32)>,
    /// How many it would select at its next stage (when it has one and is active).
    pub next_stage: Option<usize>,
    /// How many it would select if resumed (when paused).
    pub if_resumed: Option<usize>,
}

/// Walks the fleet once: who the release takes now and, `with_what_ifs`, how many at its next
/// stage and if resumed.
pub async fn selection(
    state: &AppState,
    live: &LiveRelease,
    with_what_ifs: bool,
) -> Result<Selection, CloudError> {
    let fleet = fleet(state).await?;
    if matches!(live.state, ReleaseState::Aborted | ReleaseState::Superseded) {
        // Such a release includes no device and no action changes that: no walk.
        return Ok(Selection {
            fleet,
            ..Selection::default()
        });
    }
    let mut releases = served_releases_of(state, &live.task).await?;
    if !releases.iter().any(|r| r.id == live.id) {
        releases.push(live.clone());
    }
    let at = releases.iter().position(|r| r.id == live.id).unwrap_or(0);
    let variant = |change: &dyn Fn(&mut LiveRelease)| {
        let mut changed = releases.clone();
        if let Some(r) = changed.get_mut(at) {
            change(r);
        }
        changed
    };
    let can_advance = live.state == ReleaseState::Active && live.stage < live.policy.last_stage();
    let advanced = (with_what_ifs && can_advance).then(|| variant(&|r| r.stage += 1));
    let resumed = (with_what_ifs && live.state == ReleaseState::Paused)
        .then(|| variant(&|r| r.state = ReleaseState::Active));
    let mut out = Selection {
        next_stage: advanced.as_ref().map(|_| 0),
        if_resumed: resumed.as_ref().map(|_| 0),
        ..Selection::default()
    };
    // The variants differ only in the release's stage or state: they share each device's buckets.
    let mut buckets = vec![None; releases.len()];
    for (position, device) in fleet.iter().enumerate() {
        buckets.fill(None);
        let mut picks = |set: &[LiveRelease]| {
            choose_for_task_sharing_buckets(
                set,
                &live.task,
                &device.profile,
                &device.running,
                &mut buckets,
            )
            .is_some_and(|r| r.id == live.id)
        };
        if let (Some(set), Some(n)) = (&advanced, out.next_stage.as_mut()) {
            *n += usize::from(picks(set));
        }
        if let (Some(set), Some(n)) = (&resumed, out.if_resumed.as_mut()) {
            *n += usize::from(picks(set));
        }
        if picks(&releases) {
            // Choosing the release computed its bucket.
            let b = buckets[at].unwrap_or_else(|| bucket(&device.profile.device_id, &live.salt));
            out.targeted.push((position, b));
        }
    }
    out.fleet = fleet;
    Ok(out)
}

/// Statistics of one release, from a [`selection`] of it.
pub async fn stats(
    state: &AppState,
    release: &ReleaseRow,
    selection: &Selection,
) -> Result<ReleaseStats, CloudError> {
    let live = release.live()?;
    let runs_it = |device: &FleetDevice| device.running.get(&live.task) == Some(&live.version);
    let fleet = &selection.fleet;
    let running = fleet.iter().filter(|device| runs_it(device)).count();
    let targeted = selection.targeted.len();
    let installed = selection
        .targeted
        .iter()
        .filter(|(position, _)| fleet.get(*position).is_some_and(|d| runs_it(d)))
        .count();
    let kinds = failure_kinds(&live.policy);
    let health = state.db.release_health(&live.id, &kinds).await?;
    let (notified, synced) = state.db.notified_and_synced(&live.id).await?;
    let stages = stage_stats(state, &live, selection, &runs_it, &kinds).await?;
    Ok(ReleaseStats {
        targeted,
        installed,
        still_running: running - installed,
        notified,
        synced,
        coverage: if targeted == 0 {
            0.0
        } else {
            installed as f64 / targeted as f64
        },
        health,
        runs: state.db.run_metrics(&live.id).await?,
        stages,
    })
}

async fn stage_stats(
    state: &AppState,
    live: &LiveRelease,
    selection: &Selection,
    runs_it: &(dyn Fn(&FleetDevice) -> bool + Sync),
    failure_kinds: &[&str],
) -> Result<Vec<StageStats>, CloudError> {
    let policy = &live.policy;
    let mut stages: Vec<StageStats> = policy
        .stages
        .iter()
        .enumerate()
        .map(|(stage, &percent)| StageStats {
            stage,
            percent,
            ..StageStats::default()
        })
        .collect();
    let of = |device: &str| cohort(policy, &live.salt, device);
    for &(position, b) in &selection.targeted {
        let Some(device) = selection.fleet.get(position) else {
            continue;
        };
        if let Some(s) = cohort_of_bucket(policy, b).and_then(|c| stages.get_mut(c)) {
            s.targeted += 1;
            s.installed += i64::from(runs_it(device));
        }
    }
    for device in state.db.synced_devices(&live.id).await? {
        if let Some(s) = of(&device).and_then(|c| stages.get_mut(c)) {
            s.synced += 1;
        }
    }
    let mut failed: HashSet<String> = HashSet::new();
    for (device, kind, count) in state.db.release_event_counts(&live.id).await? {
        let counted_failure = failure_kinds.contains(&kind.as_str());
        let Some(s) = of(&device).and_then(|c| stages.get_mut(c)) else {
            continue;
        };
        match kind.as_str() {
            "install_failed" => s.install_failed += 1,
            "run_ok" => s.runs_ok += count,
            "run_failed" => s.runs_failed += count,
            "rolled_back" => s.rolled_back += 1,
            _ => {}
        }
        if counted_failure && failed.insert(device) {
            s.failed_devices += 1;
        }
    }
    let notices: HashMap<i64, i64> = state
        .db
        .stage_notices(&live.id)
        .await?
        .into_iter()
        .collect();
    for s in &mut stages {
        s.notified = notices.get(&(s.stage as i64)).copied().unwrap_or(0);
    }
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohorts_follow_the_stage_that_first_covers_the_bucket() {
        let policy = ReleasePolicy {
            stages: vec![10.0, 50.0, 100.0],
            ..ReleasePolicy::default()
        };
        let mut sizes = [0usize; 3];
        for i in 0..10_000 {
            let device = format!("device-{i}");
            let c = cohort(&policy, "salt", &device).unwrap();
            let b = bucket(&device, "salt");
            assert!(b < policy.stage_buckets(c));
            assert!(c == 0 || b >= policy.stage_buckets(c - 1));
            sizes[c] += 1;
        }
        assert!((800..1200).contains(&sizes[0]), "{sizes:?}");
        assert!((3600..4400).contains(&sizes[1]), "{sizes:?}");
        let partial = ReleasePolicy {
            stages: vec![1.0],
            ..ReleasePolicy::default()
        };
        let outside = (0..1000)
            .filter(|i| cohort(&partial, "s", &format!("d{i}")).is_none())
            .count();
        assert!(outside > 900, "{outside}");
    }
}
