//! A release's progress across the fleet, in total and per stage.
//!
//! A device belongs to the stage whose percentage first covered its sticky bucket (its
//! *cohort*): with stages 1 → 10 → 100, stage 1's figures are about the devices that joined when
//! the release went from 1 % to 10 %. Operators compare cohorts to see whether a later wave
//! behaves like the first.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::policy::{ReleasePolicy, bucket};
use super::select::{LiveRelease, choose};
use super::{failure_kinds, fleet, served_releases_of};
use crate::store::events::RunMetrics;
use crate::store::releases::{ReleaseHealth, ReleaseRow};
use crate::{AppState, CloudError};

/// A release's progress across the fleet.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReleaseStats {
    /// Registered devices this release is selected for now (targeting, stage and priority).
    pub targeted: usize,
    /// Devices whose active version of the task is this release's version.
    pub installed: i64,
    /// Share of targeted devices that have it installed.
    pub coverage: f64,
    /// Notices about this release delivered to device streams.
    pub notified: i64,
    /// Devices that pulled this release.
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
    /// Devices of this cohort running the release's version.
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
fn cohort(policy: &ReleasePolicy, salt: &str, device_id: &str) -> Option<usize> {
    let b = bucket(device_id, salt);
    (0..policy.stages.len()).find(|&stage| b < policy.stage_buckets(stage))
}

/// Statistics of one release.
pub async fn stats(state: &AppState, release: &ReleaseRow) -> Result<ReleaseStats, CloudError> {
    let live = release.live()?;
    let mut releases = served_releases_of(state, &live.task).await?;
    if !releases.iter().any(|r| r.id == live.id) {
        releases.push(live.clone());
    }
    let targeted_devices: Vec<String> = fleet(state)
        .await?
        .into_iter()
        .filter(|(profile, running)| {
            choose(&releases, profile, running)
                .get(&live.task)
                .is_some_and(|r| r.id == live.id)
        })
        .map(|(profile, _)| profile.device_id)
        .collect();
    let targeted = targeted_devices.len();
    let installed = state.db.count_installed(&live.task, &live.version).await?;
    let kinds = failure_kinds(&live.policy);
    let health = state.db.release_health(&live.id, &kinds).await?;
    let (notified, synced) = state.db.notified_and_synced(&live.id).await?;
    let stages = stage_stats(state, &live, &targeted_devices, &kinds).await?;
    Ok(ReleaseStats {
        targeted,
        installed,
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
    targeted_devices: &[String],
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
    for device in targeted_devices {
        if let Some(s) = of(device).and_then(|c| stages.get_mut(c)) {
            s.targeted += 1;
        }
    }
    for device in state.db.synced_devices(&live.id).await? {
        if let Some(s) = of(&device).and_then(|c| stages.get_mut(c)) {
            s.synced += 1;
        }
    }
    for device in state
        .db
        .installed_devices(&live.task, &live.version)
        .await?
    {
        if let Some(s) = of(&device).and_then(|c| stages.get_mut(c)) {
            s.installed += 1;
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
