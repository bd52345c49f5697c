//! The bundle cache's disk budget (`bundle_cache_max_bytes`): unpacked task versions under
//! `<data-dir>/tasks` and partial downloads under `<data-dir>/downloads`.
//!
//! Each task keeps its active version and the previous one (for a local rollback); nothing
//! else is kept. Over the budget, previous versions go first, oldest switch first: an active
//! version is never deleted. Partial downloads untouched for [`STALE_DOWNLOAD`] (a bundle no
//! longer wanted) are deleted whenever the cache is checked. Before a download, the new bundle
//! must fit next to the active versions (its partial download plus its unpacked copy, taken as
//! twice its size); if it cannot, it is refused with the figures, not half-downloaded.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::install::Installer;

/// Age after which a partial download nobody resumed is deleted.
pub(crate) const STALE_DOWNLOAD: Duration = Duration::from_secs(3 * 24 * 3600);

/// What the bundle cache holds, for status.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CacheStatus {
    /// Bytes of unpacked versions and partial downloads.
    pub bytes: u64,
    pub budget: u64,
    /// Previous versions deleted to keep within the budget, since the agent started.
    pub previous_versions_evicted: u64,
    /// Stale partial downloads deleted, since the agent started.
    pub stale_downloads_deleted: u64,
}

/// Why a bundle cannot be cached.
#[derive(Debug, thiserror::Error)]
#[error(
    "bundle of {bundle} bytes needs about {needed} bytes of cache, but the bundle cache budget is \
     {budget} bytes and the active versions take {active}"
)]
pub struct NoRoom {
    bundle: u64,
    needed: u64,
    budget: u64,
    active: u64,
}

/// Deletes stale partial downloads, then previous versions until the cache fits `budget` with
/// room for a new bundle of `bundle` bytes (0: none), updating `status`. Fails, with the
/// figures, if even the active versions leave no room for it.
pub(crate) fn make_room(
    installer: &Installer,
    downloads: &Path,
    budget: u64,
    bundle: u64,
    status: &mut CacheStatus,
) -> Result<(), NoRoom> {
    let extra = bundle.saturating_mul(2);
    status.budget = budget;
    status.stale_downloads_deleted += delete_stale_downloads(downloads, SystemTime::now());
    let used = |installer: &Installer| installer.disk_bytes() + dir_bytes(downloads);
    let mut bytes = used(installer);
    let mut previous = installer.previous_versions_oldest_first();
    while bytes + extra > budget {
        let Some(task) = previous.first().cloned() else {
            break;
        };
        previous.remove(0);
        match installer.forget_previous(&task) {
            Ok(()) => {
                status.previous_versions_evicted += 1;
                tracing::info!(%task, "previous version deleted to keep the bundle cache budget");
            }
            Err(e) => tracing::warn!(%task, error = %e, "cannot delete a previous version"),
        }
        bytes = used(installer);
    }
    status.bytes = bytes;
    if bytes + extra > budget {
        return Err(NoRoom {
            bundle,
            needed: extra,
            budget,
            active: bytes,
        });
    }
    Ok(())
}

/// Deletes `.part` files in `downloads` not modified for [`STALE_DOWNLOAD`]; returns how many.
fn delete_stale_downloads(downloads: &Path, now: SystemTime) -> u64 {
    let Ok(entries) = std::fs::read_dir(downloads) else {
        return 0;
    };
    let mut deleted = 0;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| now.duration_since(at).unwrap_or_default() > STALE_DOWNLOAD);
        if path.extension().is_some_and(|e| e == "part") && stale {
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a stale download")
                }
            }
        }
    }
    deleted
}

/// Bytes of the files below `dir` (0 if it does not exist).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_partial_downloads_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["old.part", "fresh.part", "old.other"] {
            std::fs::write(dir.path().join(name), b"1234").unwrap();
        }
        let later = SystemTime::now() + STALE_DOWNLOAD + Duration::from_secs(60);
        let file = |name: &str| {
            std::fs::File::options()
                .write(true)
                .open(dir.path().join(name))
        };
        // "fresh.part" was written to just now, as far as `later` is concerned.
        file("fresh.part")
            .unwrap()
            .set_modified(later - Duration::from_secs(10))
            .unwrap();
        assert_eq!(delete_stale_downloads(dir.path(), later), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["fresh.part", "old.other"]);
        assert_eq!(dir_bytes(dir.path()), 8);
    }
}
