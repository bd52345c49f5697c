//! Bundle downloads: resumable from the last received byte, within one attempt and across
//! restarts of the agent (progress is kept in `<data-dir>/downloads/<digest>.part`), obeying the
//! cloud's come-back hints when it is at its transfer cap. The bytes are verified against the
//! signed manifest by the installer, never here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::Status;
use walle_proto::manifest::ReleaseManifest;
use walle_proto::v1::FetchBundleRequest;

use crate::AgentError;
#[cfg(test)]
use crate::backoff::MAX_RETRY_HINT;
use crate::backoff::retry_hint;
use crate::cloud::Client;

/// Largest bundle the agent downloads, whatever a manifest claims.
const MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;
/// Download attempts (each resuming where the last stopped) before a fetch fails.
const FETCH_ATTEMPTS: usize = 4;

/// Why one download attempt stopped.
enum FetchFailure {
    /// The cloud is at its transfer cap and said when to come back.
    Busy(Duration),
    Failed(String),
}

/// Most come-back hints obeyed for one download before giving up until the next sync.
const MAX_BUSY_RETRIES: usize = 30;
/// Downloads a bundle into `<dir>/<digest>.part`, resuming from what an earlier attempt or an
/// earlier run of the agent left there, and coming back when the cloud says it is busy. Returns
/// the bytes once there are as many as the signed manifest says; the caller verifies them and
/// calls [`discard`] when done with them (installed or refused).
pub(crate) async fn fetch_bundle(
    client: &mut Client,
    manifest: &ReleaseManifest,
    dir: &Path,
) -> Result<Vec<u8>, AgentError> {
    let size = manifest.bundle_size;
    if size > MAX_BUNDLE_BYTES {
        return Err(AgentError::Transport(format!(
            "bundle of {size} bytes exceeds the {MAX_BUNDLE_BYTES}-byte limit"
        )));
    }
    let mut part = Part::open(dir, manifest)?;
    let mut last_error = String::new();
    let (mut failures, mut busy) = (0, 0);
    while failures < FETCH_ATTEMPTS && busy <= MAX_BUSY_RETRIES {
        match fetch_from(client, manifest, &mut part).await {
            Ok(()) if part.len() == size && part.resumed && !part.matches(manifest) => {
                // What an earlier run left was damaged: start again rather than refuse a
                // bundle the cloud may be serving intact.
                tracing::warn!(digest = %manifest.bundle_digest, "resumed download does not match its digest; downloading it again");
                drop(part);
                discard(dir, manifest);
                part = Part::open(dir, manifest)?;
                failures += 1;
            }
            Ok(()) if part.len() == size => return part.finish(),
            Ok(()) => {
                failures += 1;
                last_error = format!("stream ended at byte {} of {size}", part.len());
            }
            Err(FetchFailure::Busy(wait)) => {
                busy += 1;
                last_error = format!("cloud busy; told to come back in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(FetchFailure::Failed(e)) => {
                failures += 1;
                last_error = e;
            }
        }
    }
    Err(AgentError::Transport(format!(
        "fetching bundle {}: {last_error}",
        manifest.bundle_digest
    )))
}

/// Deletes the partial download of `manifest`'s bundle, if any.
pub(crate) fn discard(dir: &Path, manifest: &ReleaseManifest) {
    let path = part_path(dir, manifest);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot delete a partial download");
    }
}

fn part_path(dir: &Path, manifest: &ReleaseManifest) -> PathBuf {
    // The digest is hex (the manifest is signed and the installer checks it), so it is a safe
    // file name; anything else would not match a bundle anyway.
    let name: String = manifest
        .bundle_digest
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(64)
        .collect();
    dir.join(format!("{name}.part"))
}

/// The bytes received so far, mirrored in a file so a restarted agent resumes where it stopped.
struct Part {
    path: PathBuf,
    file: std::fs::File,
    bytes: Vec<u8>,
    /// Whether the download started from bytes an earlier attempt left in the file.
    resumed: bool,
}

impl Part {
    fn open(dir: &Path, manifest: &ReleaseManifest) -> Result<Part, AgentError> {
        std::fs::create_dir_all(dir).map_err(AgentError::file("create", dir))?;
        let path = part_path(dir, manifest);
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        if bytes.len() as u64 > manifest.bundle_size {
            bytes.clear();
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .and_then(|file| file.set_len(bytes.len() as u64).map(|()| file))
            .map_err(AgentError::file("open", &path))?;
        if !bytes.is_empty() {
            tracing::info!(
                digest = %manifest.bundle_digest,
                offset = bytes.len(),
                "resuming a bundle download from a partial file"
            );
        }
        let resumed = !bytes.is_empty();
        Ok(Part {
            path,
            file,
            bytes,
            resumed,
        })
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Appends a chunk to memory and to the file. A failed file write only costs the resume.
    fn push(&mut self, chunk: &[u8]) {
        use std::io::{Seek, SeekFrom, Write};
        self.bytes.extend_from_slice(chunk);
        let written = self
            .file
            .seek(SeekFrom::End(0))
            .and_then(|_| self.file.write_all(chunk));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save download progress");
        }
    }

    fn matches(&self, manifest: &ReleaseManifest) -> bool {
        walle_proto::bundle::digest_hex(&self.bytes) == manifest.bundle_digest
    }

    fn finish(self) -> Result<Vec<u8>, AgentError> {
        Ok(self.bytes)
    }
}

async fn fetch_from(
    client: &mut Client,
    manifest: &ReleaseManifest,
    part: &mut Part,
) -> Result<(), FetchFailure> {
    let failed = |status: Status| match retry_hint(&status) {
        Some(wait) => FetchFailure::Busy(wait),
        None => FetchFailure::Failed(status.to_string()),
    };
    let mut stream = client
        .fetch_bundle(FetchBundleRequest {
            digest: manifest.bundle_digest.clone(),
            offset: part.len(),
        })
        .await
        .map_err(failed)?
        .into_inner();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| FetchFailure::Failed(s.to_string()))?
    {
        if chunk.offset != part.len() {
            return Err(FetchFailure::Failed(format!(
                "chunk at offset {} while expecting {}",
                chunk.offset,
                part.len()
            )));
        }
        if part.len() + chunk.data.len() as u64 > manifest.bundle_size {
            return Err(FetchFailure::Failed(format!(
                "cloud sent more than the signed size of {} bytes",
                manifest.bundle_size
            )));
        }
        part.push(&chunk.data);
        walle_proto::crash::crash_point("device-download");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obeys_the_clouds_come_back_hint_within_bounds() {
        let mut busy = Status::resource_exhausted("busy");
        busy.metadata_mut()
            .insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_hint(&busy), Some(Duration::from_millis(1500)));
        busy.metadata_mut()
            .insert("retry-after-ms", "99999999".parse().unwrap());
        assert_eq!(retry_hint(&busy), Some(MAX_RETRY_HINT));
        assert_eq!(retry_hint(&Status::resource_exhausted("no hint")), None);
        assert_eq!(retry_hint(&Status::unavailable("down")), None);
    }
}
