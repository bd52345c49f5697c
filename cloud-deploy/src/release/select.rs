//! Which release of each task a device should run: the one rule, used by Sync, preview and
//! statistics alike.
//!
//! A release *includes* a device when it is active, its targeting matches the device's profile
//! and the device's sticky bucket is below the current stage's share; a paused release keeps only
//! the devices that already run its version; aborted and superseded releases include no one.
//! When several releases of a task include a device, the **highest priority wins, then the
//! newest**. A task no release includes is removed from the device; a device in an aborted
//! release therefore falls back to the release it had before, which is the rollback.

use std::collections::HashMap;

use super::policy::{ReleasePolicy, bucket};
use super::target::Profile;

/// Lifecycle of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseState {
    Active,
    Paused,
    Aborted,
    Superseded,
}

impl ReleaseState {
    /// Every state a release can be in.
    pub const ALL: [ReleaseState; 4] = [
        ReleaseState::Active,
        ReleaseState::Paused,
        ReleaseState::Aborted,
        ReleaseState::Superseded,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Active => "active",
            ReleaseState::Paused => "paused",
            ReleaseState::Aborted => "aborted",
            ReleaseState::Superseded => "superseded",
        }
    }

    /// Parses a stored state name.
    pub fn parse(text: &str) -> Option<ReleaseState> {
        ReleaseState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A release as the selection rule needs it.
#[derive(Debug, Clone)]
pub struct LiveRelease {
    pub id: String,
    pub seq: i64,
    pub task: String,
    pub version: String,
    pub state: ReleaseState,
    pub stage: usize,
    pub salt: String,
    pub policy: ReleasePolicy,
}

impl LiveRelease {
    /// Whether this release includes the device, given what the device runs now.
    pub fn includes(&self, profile: &Profile, running: Option<&str>) -> bool {
        self.includes_at(profile, running, || bucket(&profile.device_id, &self.salt))
    }

    /// [`LiveRelease::includes`], with the device's sticky bucket under this release's salt
    /// asked for only when the targeting matches.
    fn includes_at(
        &self,
        profile: &Profile,
        running: Option<&str>,
        bucket: impl FnOnce() -> u32,
    ) -> bool {
        let eligible = || {
            self.policy.target.matches(profile) && bucket() < self.policy.stage_buckets(self.stage)
        };
        match self.state {
            ReleaseState::Active => eligible(),
            ReleaseState::Paused => running == Some(self.version.as_str()) && eligible(),
            ReleaseState::Aborted | ReleaseState::Superseded => false,
        }
    }

    fn rank(&self) -> (i32, i64) {
        (self.policy.priority, self.seq)
    }
}

/// The release of `task` the device should follow: [`choose`] for one task, without building a
/// map per device (statistics and previews ask this of every device of the fleet, often for
/// several variants of one release set that differ only in stages and states: what-ifs, a
/// preview's stages). `buckets` holds the device's bucket for each release by position, filled
/// on first need and shared by the variants, so its hash is computed once per release, not once
/// per variant; pass it cleared (`None`s) for each new device.
pub fn choose_for_task_sharing_buckets<'a>(
    releases: &'a [LiveRelease],
    task: &str,
    profile: &Profile,
    running: &HashMap<String, String>,
    buckets: &mut [Option<u32>],
) -> Option<&'a LiveRelease> {
    choose_among(releases, task, profile, running, |at, release| {
        let compute = || bucket(&profile.device_id, &release.salt);
        match buckets.get_mut(at) {
            Some(slot) => *slot.get_or_insert_with(compute),
            None => compute(),
        }
    })
}

fn choose_among<'a>(
    releases: &'a [LiveRelease],
    task: &str,
    profile: &Profile,
    running: &HashMap<String, String>,
    mut bucket_of: impl FnMut(usize, &LiveRelease) -> u32,
) -> Option<&'a LiveRelease> {
    let running = running.get(task).map(String::as_str);
    let mut best: Option<&LiveRelease> = None;
    for (at, release) in releases.iter().enumerate() {
        let wins = release.task == task
            && best.is_none_or(|b| release.rank() > b.rank())
            && release.includes_at(profile, running, || bucket_of(at, release));
        if wins {
            best = Some(release);
        }
    }
    best
}

/// For each task, the release the device should follow (absent: the task should not be there).
pub fn choose<'a>(
    releases: &'a [LiveRelease],
    profile: &Profile,
    running: &HashMap<String, String>,
) -> HashMap<String, &'a LiveRelease> {
    let mut chosen: HashMap<String, &LiveRelease> = HashMap::new();
    for release in releases {
        if !release.includes(profile, running.get(&release.task).map(String::as_str)) {
            continue;
        }
        let better = chosen
            .get(&release.task)
            .is_none_or(|current| release.rank() > current.rank());
        if better {
            chosen.insert(release.task.clone(), release);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::target::Target;
    use walle_proto::v1::DeviceProfile;

    fn release(id: &str, seq: i64, version: &str, stages: Vec<f64>, priority: i32) -> LiveRelease {
        LiveRelease {
            id: id.into(),
            seq,
            task: "t".into(),
            version: version.into(),
            state: ReleaseState::Active,
            stage: 0,
            salt: id.into(),
            policy: ReleasePolicy {
                stages,
                priority,
                ..ReleasePolicy::default()
            },
        }
    }

    fn device(i: usize) -> Profile {
        Profile::from(DeviceProfile {
            device_id: format!("device-{i}"),
            hardware_tier: if i.is_multiple_of(2) { "high" } else { "low" }.into(),
            ..DeviceProfile::default()
        })
    }

    fn version_of(releases: &[LiveRelease], p: &Profile) -> Option<String> {
        choose(releases, p, &HashMap::new())
            .get("t")
            .map(|r| r.version.clone())
    }

    #[test]
    fn priority_then_newest_wins() {
        let old = release("a", 1, "1.0.0", vec![100.0], 0);
        let new = release("b", 2, "2.0.0", vec![100.0], 0);
        let pinned = release("c", 3, "0.9.0", vec![100.0], -1);
        assert_eq!(
            version_of(&[old.clone(), new.clone(), pinned], &device(0)).as_deref(),
            Some("2.0.0")
        );
        let urgent = release("d", 0, "1.5.0", vec![100.0], 5);
        assert_eq!(
            version_of(&[old, new, urgent], &device(0)).as_deref(),
            Some("1.5.0")
        );
    }

    #[test]
    fn stages_only_grow_the_set_of_devices() {
        let mut staged = release("r", 2, "2.0.0", vec![1.0, 10.0, 50.0, 100.0], 0);
        let base = release("base", 1, "1.0.0", vec![100.0], 0);
        let mut previous: Vec<bool> = vec![false; 2000];
        for stage in 0..4 {
            staged.stage = stage;
            let releases = [base.clone(), staged.clone()];
            let now: Vec<bool> = (0..2000)
                .map(|i| version_of(&releases, &device(i)).as_deref() == Some("2.0.0"))
                .collect();
            assert!(
                previous.iter().zip(&now).all(|(was, is)| !was || *is),
                "a device flipped out at stage {stage}"
            );
            let share = now.iter().filter(|x| **x).count() as f64 / 2000.0;
            let expected = staged.policy.stages[stage] / 100.0;
            assert!(
                (share - expected).abs() < 0.03,
                "stage {stage}: {share} vs {expected}"
            );
            previous = now;
        }
    }

    #[test]
    fn disjoint_targeting_gives_customised_versions() {
        let mut big = release("big", 1, "2.0.0-large", vec![100.0], 0);
        big.policy.target = Target::HardwareTier(vec!["high".into()]);
        let mut small = release("small", 2, "2.0.0-small", vec![100.0], 0);
        small.policy.target = Target::Not(Box::new(Target::HardwareTier(vec!["high".into()])));
        let releases = [big, small];
        assert_eq!(
            version_of(&releases, &device(0)).as_deref(),
            Some("2.0.0-large")
        );
        assert_eq!(
            version_of(&releases, &device(1)).as_deref(),
            Some("2.0.0-small")
        );
    }

    #[test]
    fn aborted_falls_back_and_paused_keeps_only_existing_devices() {
        let base = release("base", 1, "1.0.0", vec![100.0], 0);
        let mut next = release("next", 2, "2.0.0", vec![100.0], 0);
        next.state = ReleaseState::Aborted;
        assert_eq!(
            version_of(&[base.clone(), next.clone()], &device(3)).as_deref(),
            Some("1.0.0")
        );
        next.state = ReleaseState::Paused;
        let releases = [base, next];
        let running: HashMap<String, String> = [("t".to_owned(), "2.0.0".to_owned())].into();
        assert_eq!(
            choose(&releases, &device(3), &running)["t"].version,
            "2.0.0"
        );
        assert_eq!(version_of(&releases, &device(3)).as_deref(), Some("1.0.0"));
    }
}
