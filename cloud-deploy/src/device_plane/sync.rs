//! `Sync`, the pull: the device says what it runs (and its profile), the cloud answers what it
//! should run. The answer comes from [`desired_set`], a pure function over the served releases,
//! the release [`choose`] picked per task and what the device runs; the I/O (reading the device,
//! recording what changed, counting pulls) stays in [`sync`].

use std::collections::HashMap;

use tonic::{Request, Response, Status};
use walle_proto::v1::{
    DesiredTask, InstalledTask, SignedManifest, SyncRequest, SyncResponse, desired_task,
};

use super::validation::{check_id, check_profile, profile_json};
use super::{DevicePlaneService, MAX_BATCH, internal};
use crate::release::select::{LiveRelease, choose};
use crate::release::target::Profile;
use crate::store::now_ms;
use crate::store::releases::ServedRelease;

/// `last_seen` is refreshed at most this often by Syncs that change nothing else.
const LAST_SEEN_RESOLUTION_MS: i64 = 60_000;

pub(super) async fn sync(
    service: &DevicePlaneService,
    request: Request<SyncRequest>,
) -> Result<Response<SyncResponse>, Status> {
    let device = service.authenticate(&request).await?;
    let request = request.into_inner();
    let profile = request
        .profile
        .as_ref()
        .map(|p| check_profile(Some(p)))
        .transpose()?;
    if let Some(p) = profile
        && p.device_id != device
    {
        return Err(Status::invalid_argument(
            "`profile.device_id` does not match the device token",
        ));
    }
    if request.installed.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "`installed` has more than {MAX_BATCH} entries"
        )));
    }
    for (i, t) in request.installed.iter().enumerate() {
        check_id(&format!("installed[{i}].task"), &t.task)?;
        check_id(&format!("installed[{i}].version"), &t.version)?;
    }
    let db = &service.state.db;
    // A steady-state Sync only reads: the device row and its task rows are written only when
    // something changed (or last_seen is stale), so a fleet polling in place costs no writes.
    let (seen, recorded) = db.device_for_sync(&device).await.map_err(internal)?;
    if let (Some(p), Some(seen)) = (profile, &seen)
        && !seen.app_id.is_empty()
        && p.app_id != seen.app_id
    {
        return Err(Status::invalid_argument(format!(
            "`profile.app_id` {:?} differs from the app this device enrolled for",
            p.app_id
        )));
    }
    let new_profile_json = profile.map(profile_json);
    let profile_changed = new_profile_json
        .as_ref()
        .is_some_and(|json| seen.as_ref().is_none_or(|s| &s.profile_json != json));
    let stale = seen
        .as_ref()
        .is_none_or(|s| now_ms() - s.last_seen_ms >= LAST_SEEN_RESOLUTION_MS);
    if profile_changed || stale {
        db.touch_device(
            &device,
            new_profile_json.as_deref().filter(|_| profile_changed),
        )
        .await
        .map_err(internal)?;
    }
    for t in &request.installed {
        let changed = recorded.get(&t.task) != Some(&(t.version.clone(), "installed".to_owned()));
        // Rows only for tasks that exist: a device cannot fill the table with made-up names.
        if changed && db.task_exists(&t.task).await.map_err(internal)? {
            db.set_device_task(&device, &t.task, &t.version, "installed", "")
                .await
                .map_err(internal)?;
        }
    }
    let mut profile = match (profile, seen) {
        (Some(p), _) => Profile::from(p.clone()),
        (None, Some(seen)) => serde_json::from_str(&seen.profile_json).unwrap_or_default(),
        (None, None) => Profile::default(),
    };
    let running: HashMap<String, String> = request
        .installed
        .iter()
        .map(|t| (t.task.clone(), t.version.clone()))
        .collect();
    let served = service
        .served
        .get(db, &service.state.hub)
        .await
        .map_err(internal)?;
    let releases: Vec<LiveRelease> = served.iter().map(|s| s.release.clone()).collect();
    // Group membership costs a query, so it is read only when some release targets a group.
    if releases.iter().any(|r| r.policy.target.uses_groups()) {
        profile.groups = db.groups_of(&device).await.map_err(internal)?;
    }
    let chosen = choose(&releases, &profile, &running);
    let decided = desired_set(&served, &chosen, &request.installed);
    for release in &decided.pulled {
        db.record_sync(release, &device).await.map_err(internal)?;
    }
    let desired = decided.tasks;
    Ok(Response::new(SyncResponse {
        desired,
        next_sync_secs: service.state.config.sync_interval_secs,
    }))
}

/// What a device should run, as [`desired_set`] decides it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Per task: install the chosen release's version (with its signed manifest), or remove a
    /// task no release includes the device in any more.
    pub tasks: Vec<DesiredTask>,
    /// Releases the device pulls now: chosen for it while it runs another version of the task.
    pub pulled: Vec<String>,
}

/// The answer to a Sync, without I/O: install what `chosen` picked from `served` for each task,
/// remove the installed tasks nothing picked. A served release whose stored signature is not hex
/// is not handed out (and logged); its pull still counts, as the device asked for it.
pub fn desired_set(
    served: &[ServedRelease],
    chosen: &HashMap<String, &LiveRelease>,
    installed: &[InstalledTask],
) -> Desired {
    let running = |task: &str| {
        installed
            .iter()
            .find(|t| t.task == task)
            .map(|t| t.version.as_str())
    };
    let mut out = Desired::default();
    for served in served.iter().filter(|s| {
        chosen
            .get(&s.release.task)
            .is_some_and(|c| c.id == s.release.id)
    }) {
        if running(&served.release.task) != Some(served.release.version.as_str()) {
            out.pulled.push(served.release.id.clone());
        }
        let Ok(signature) = hex::decode(&served.signature_hex) else {
            tracing::error!(release = %served.release.id, "stored signature is not hex; not serving it");
            continue;
        };
        out.tasks.push(DesiredTask {
            task: served.release.task.clone(),
            action: desired_task::Action::Install as i32,
            manifest: Some(SignedManifest {
                manifest_json: served.manifest_json.clone().into_bytes(),
                signature,
                key_id: served.key_id.clone(),
            }),
            release_id: served.release.id.clone(),
        });
    }
    for t in installed {
        if !chosen.contains_key(&t.task) {
            out.tasks.push(DesiredTask {
                task: t.task.clone(),
                action: desired_task::Action::Remove as i32,
                manifest: None,
                release_id: String::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::policy::ReleasePolicy;
    use crate::release::select::ReleaseState;

    fn served(id: &str, task: &str, version: &str, signature_hex: &str) -> ServedRelease {
        ServedRelease {
            release: LiveRelease {
                id: id.into(),
                seq: 1,
                task: task.into(),
                version: version.into(),
                state: ReleaseState::Active,
                stage: 0,
                salt: id.into(),
                policy: ReleasePolicy::default(),
            },
            manifest_json: format!("{{\"name\":\"{task}\"}}"),
            signature_hex: signature_hex.into(),
            key_id: "k1".into(),
        }
    }

    fn installed(task: &str, version: &str) -> InstalledTask {
        InstalledTask {
            task: task.into(),
            version: version.into(),
            ..InstalledTask::default()
        }
    }

    #[test]
    fn installs_what_was_chosen_removes_the_rest_and_counts_pulls() {
        let releases = [
            served("r-a", "a", "2.0.0", "abcd"),
            served("r-b", "b", "1.0.0", "beef"),
            served("r-old", "a", "1.0.0", "0000"),
        ];
        let chosen: HashMap<String, &LiveRelease> = [
            ("a".to_owned(), &releases[0].release),
            ("b".to_owned(), &releases[1].release),
        ]
        .into();
        let running = [
            installed("a", "1.0.0"),
            installed("b", "1.0.0"),
            installed("gone", "3.0.0"),
        ];
        let decided = desired_set(&releases, &chosen, &running);
        let summary: Vec<(String, i32, String)> = decided
            .tasks
            .iter()
            .map(|t| (t.task.clone(), t.action, t.release_id.clone()))
            .collect();
        let install = desired_task::Action::Install as i32;
        let remove = desired_task::Action::Remove as i32;
        assert_eq!(
            summary,
            [
                ("a".to_owned(), install, "r-a".to_owned()),
                ("b".to_owned(), install, "r-b".to_owned()),
                ("gone".to_owned(), remove, String::new()),
            ]
        );
        assert_eq!(
            decided.tasks[0]
                .manifest
                .as_ref()
                .map(|m| m.signature.clone()),
            Some(vec![0xab, 0xcd])
        );
        // Only "a" changes version: only its release is pulled.
        assert_eq!(decided.pulled, ["r-a"]);
    }

    #[test]
    fn a_release_with_a_corrupt_signature_is_not_handed_out() {
        let releases = [served("r-a", "a", "2.0.0", "not hex")];
        let chosen: HashMap<String, &LiveRelease> = [("a".to_owned(), &releases[0].release)].into();
        let decided = desired_set(&releases, &chosen, &[]);
        assert!(decided.tasks.is_empty());
        assert_eq!(decided.pulled, ["r-a"]);
    }
}
