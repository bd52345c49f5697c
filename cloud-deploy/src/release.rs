//! The release controller: binding a task version to the fleet and telling devices about it.
//!
//! For now a release targets every device at 100%; the newest release of a task supersedes the
//! earlier ones.

use walle_proto::v1::{Notice, notice};

use crate::store::releases::ReleaseRow;
use crate::{AppState, CloudError, secrets};

/// Creates a release of `task@version` and pushes a notice to every subscribed device.
pub async fn create_release(
    state: &AppState,
    task: &str,
    version: &str,
) -> Result<ReleaseRow, CloudError> {
    if state.db.get_version(task, version).await?.is_none() {
        return Err(CloudError::NotFound(format!(
            "task {task:?} has no version {version:?}"
        )));
    }
    let id = format!("rel_{}", hex::encode(secrets::random_bytes::<8>()?));
    let release = state.db.create_release(&id, task, version).await?;
    let notified = state.hub.notify_all(&Notice {
        kind: notice::Kind::TaskChanged as i32,
        task: task.to_owned(),
        release_id: id.clone(),
        pace_window_ms: state.config.pace_window_ms,
    });
    tracing::info!(release = %id, task, version, notified, "release created");
    Ok(release)
}
