//! Publishing task versions: validate the uploaded bundle, store it, sign its manifest.

use bytes::Bytes;
use walle_proto::bundle::{self, digest_hex};
use walle_proto::manifest::ReleaseManifest;

use crate::store::now_ms;
use crate::store::tasks::VersionRow;
use crate::{AppState, CloudError};

/// Validates and stores a bundle as a new version of `task`.
pub async fn publish_version(
    state: &AppState,
    task: &str,
    bytes: Bytes,
) -> Result<VersionRow, CloudError> {
    if !state.db.task_exists(task).await? {
        return Err(CloudError::NotFound(format!(
            "task {task:?} does not exist; create it first"
        )));
    }
    let checked = bytes.clone();
    let contents = tokio::task::spawn_blocking(move || bundle::read_bundle(&checked))
        .await
        .map_err(|e| CloudError::Internal(format!("bundle validation panicked: {e}")))?
        .map_err(|e| CloudError::Invalid(e.to_string()))?;
    let manifest = contents.manifest;
    if manifest.name != task {
        return Err(CloudError::Invalid(format!(
            "bundle is for task {:?}, but was uploaded to task {task:?}",
            manifest.name
        )));
    }
    let version = manifest.version.to_string();
    if state.db.get_version(task, &version).await?.is_some() {
        return Err(CloudError::Conflict(format!(
            "task {task:?} already has version {version}"
        )));
    }
    let digest = digest_hex(&bytes);
    let release_manifest = ReleaseManifest {
        task: manifest,
        bundle_digest: digest.clone(),
        bundle_size: bytes.len() as u64,
    };
    let signed = state.publisher.sign(&release_manifest);
    state.bundles.put(&digest, bytes.clone()).await?;
    let row = VersionRow {
        task: task.to_owned(),
        version,
        bundle_digest: digest,
        bundle_size: bytes.len() as i64,
        manifest_json: String::from_utf8(signed.manifest_json)
            .map_err(|e| CloudError::Internal(format!("signed manifest is not UTF-8: {e}")))?,
        signature_hex: hex::encode(signed.signature),
        key_id: signed.key_id,
        created_at_ms: now_ms(),
    };
    state.db.insert_version(&row).await?;
    tracing::info!(task, version = %row.version, digest = %row.bundle_digest, "published task version");
    Ok(row)
}
