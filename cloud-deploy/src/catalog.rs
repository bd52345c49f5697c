//! Publishing task versions: spool the uploaded bundle to disk, validate it, store it, sign its
//! manifest.
//!
//! An upload is never held whole in memory: it is written to a temporary file while its size and
//! sha256 are computed, and refused as soon as it passes the size limit.

use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use walle_proto::bundle;
use walle_proto::manifest::ReleaseManifest;

use crate::store::now_ms;
use crate::store::tasks::VersionRow;
use crate::{AppState, CloudError};

/// An uploaded bundle in a temporary file (deleted on drop), with its size and digest.
pub struct SpooledBundle {
    path: tempfile::TempPath,
    size: u64,
    digest: String,
}

/// Bytes of an oversized upload read and thrown away after the refusal is sent, and for how
/// long at most. A server that answers and closes while the client is still writing makes the
/// client's TCP stack see a reset, which may arrive before the client has read the 413. Reading
/// (never storing) a bounded excess after answering — a lingering close — lets the client read
/// the refusal, while a huge or endless body is still cut off after this much.
pub const DISCARD_AFTER_REFUSAL: u64 = 16 * 1024 * 1024;
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuses an oversized upload at once with the 413 error, and leaves a background task to
/// read and discard at most [`DISCARD_AFTER_REFUSAL`] more bytes of it for at most [`LINGER`]
/// before the connection is dropped.
pub fn refuse_oversized<S, E>(body: S, limit: u64) -> CloudError
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut discarded: u64 = 0;
        let drain = async {
            while discarded < DISCARD_AFTER_REFUSAL {
                match body.next().await {
                    Some(Ok(chunk)) => discarded += chunk.len() as u64,
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
    too_large(limit)
}

/// Writes an upload body to a temporary file below `<data_dir>/uploads`, hashing it on the way.
/// Refuses with [`CloudError::TooLarge`] as soon as more than `limit` bytes arrive; the rest is
/// never stored (see [`refuse_oversized`]).
pub async fn spool<S, E>(data_dir: &Path, body: S, limit: u64) -> Result<SpooledBundle, CloudError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let dir = data_dir.join("uploads");
    std::fs::create_dir_all(&dir).map_err(|e| CloudError::io(&dir, e))?;
    let (file, path) = tempfile::NamedTempFile::new_in(&dir)
        .map_err(|e| CloudError::io(&dir, e))?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = Box::pin(body);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| CloudError::Invalid(format!("reading the upload body: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(refuse_oversized(body, limit));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| CloudError::io(&path, e))?;
    }
    file.flush().await.map_err(|e| CloudError::io(&path, e))?;
    if size == 0 {
        return Err(CloudError::Invalid(
            "request body is empty; send the bundle file".into(),
        ));
    }
    Ok(SpooledBundle {
        path,
        size,
        digest: hex::encode(hasher.finalize()),
    })
}

/// The refusal of a bundle over the size limit.
pub fn too_large(limit: u64) -> CloudError {
    CloudError::TooLarge(format!("bundle is larger than the {limit}-byte limit"))
}

/// Validates and stores a spooled bundle as a new version of `task`.
pub async fn publish_version(
    state: &AppState,
    task: &str,
    bundle: SpooledBundle,
) -> Result<VersionRow, CloudError> {
    if !state.db.task_exists(task).await? {
        return Err(CloudError::NotFound(format!(
            "task {task:?} does not exist; create it first"
        )));
    }
    let manifest = check_spooled(&bundle).await?;
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
    let release_manifest = ReleaseManifest {
        task: manifest,
        bundle_digest: bundle.digest.clone(),
        bundle_size: bundle.size,
    };
    let signed = state.publisher.sign(&release_manifest);
    state
        .bundles
        .put_file(&bundle.digest, &bundle.path, bundle.size)
        .await?;
    let row = VersionRow {
        task: task.to_owned(),
        version,
        bundle_digest: bundle.digest.clone(),
        bundle_size: i64::try_from(bundle.size).unwrap_or(i64::MAX),
        manifest_json: String::from_utf8(signed.manifest_json)
            .map_err(CloudError::ManifestNotUtf8)?,
        signature_hex: hex::encode(signed.signature),
        key_id: signed.key_id,
        created_at_ms: now_ms(),
    };
    state.db.insert_version(&row).await?;
    tracing::info!(task, version = %row.version, digest = %row.bundle_digest, size = bundle.size, "published task version");
    Ok(row)
}

/// Runs the bundle checks over the spooled file, off the async threads.
async fn check_spooled(
    bundle: &SpooledBundle,
) -> Result<walle_proto::manifest::TaskManifest, CloudError> {
    let path = bundle.path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| CloudError::io(&path, e))?;
        bundle::check_bundle(std::io::BufReader::new(file))
            .map_err(|e| CloudError::Invalid(e.to_string()))
    })
    .await
    .map_err(|source| CloudError::Panicked {
        what: "bundle validation",
        source,
    })?
}
