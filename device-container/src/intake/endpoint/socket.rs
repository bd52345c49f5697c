//! The ingest endpoint's Unix socket file: created with mode 0600 (only the agent's user may
//! connect), replacing a stale one left by an agent that did not stop cleanly, and removed when
//! the endpoint stops.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::AgentError;

/// Who may use the socket: its owner, read and write (connecting needs write).
const MODE: u32 = 0o600;
/// Longest path a Unix socket address holds (`sun_path` and its NUL: 108 bytes on Linux, 104
/// on the BSDs and Apple's systems).
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_PATH_BYTES: usize = 107;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MAX_PATH_BYTES: usize = 103;

/// The socket file this agent created; removed on drop if it is still the one at its path.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the file, so that a socket another agent has since put at the same
    /// path is left alone.
    identity: (u64, u64),
}

impl SocketFile {
    /// Where the socket is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the ingest socket");
        }
    }
}

/// Listens on a Unix socket at `path`, mode 0600 from the first moment anyone can connect.
///
/// A stale socket at `path` (nobody accepts on it) is replaced; anything else there — a file, a
/// directory, a socket another process serves — is refused.
pub(crate) async fn bind(path: &Path) -> Result<(UnixListener, SocketFile), AgentError> {
    clear_stale(path).await?;
    // Bound under a temporary name, restricted, then renamed into place: no moment exists at
    // which `path` accepts connections with the umask's looser mode.
    let temporary = temporary_name(path)?;
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)
        .map_err(|e| error(path, format!("cannot listen on a socket there: {e}")))?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(MODE))
        .and_then(|()| std::fs::rename(&temporary, path))
        .and_then(|()| std::fs::symlink_metadata(path));
    match placed {
        Ok(meta) => Ok((
            listener,
            SocketFile {
                path: path.to_owned(),
                identity: (meta.dev(), meta.ino()),
            },
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            Err(error(path, format!("cannot set up the socket file: {e}")))
        }
    }
}

/// Removes a socket left at `path` by a process that no longer serves it; refuses anything else.
async fn clear_stale(path: &Path) -> Result<(), AgentError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(path, format!("cannot inspect it: {e}"))),
    };
    if !meta.file_type().is_socket() {
        return Err(error(
            path,
            format!(
                "it exists and is not a socket (a {}); remove it or choose another path",
                kind(&meta.file_type())
            ),
        ));
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(error(
            path,
            "another process is serving on this socket (another agent?)".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale ingest socket");
            std::fs::remove_file(path)
                .map_err(|e| error(path, format!("cannot remove the stale socket: {e}")))
        }
        Err(e) => Err(error(
            path,
            format!("cannot tell whether the socket there is stale: {e}"),
        )),
    }
}

/// `path` with its file name turned into a hidden, per-process one in the same directory.
fn temporary_name(path: &Path) -> Result<PathBuf, AgentError> {
    let name = path
        .file_name()
        .ok_or_else(|| error(path, "the path has no file name".into()))?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}", std::process::id()));
    let temporary = path.with_file_name(temporary);
    let extra = temporary.as_os_str().len() - path.as_os_str().len();
    if temporary.as_os_str().len() > MAX_PATH_BYTES {
        return Err(error(
            path,
            format!(
                "the path is too long for a Unix socket: at most {} bytes (the agent briefly \
                 binds it under a name {extra} bytes longer)",
                MAX_PATH_BYTES - extra
            ),
        ));
    }
    Ok(temporary)
}

fn kind(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

fn error(path: &Path, reason: String) -> AgentError {
    AgentError::Config(format!("ingest socket {}: {reason}", path.display()))
}
