//! The releases devices may follow, cached for the device plane's `Sync`.
//!
//! Every Sync needs the list of active and paused releases with their signed manifests; reading
//! it from the database on each call was most of Sync's cost. The list changes only when a
//! release does, and every such change publishes a notice, which bumps the hub's change counter
//! (on the replica that made the change at once, on the others when PostgreSQL delivers the
//! notice). The cache is refreshed when the counter moved, and at least every [`MAX_AGE`] in
//! case a notice between replicas was lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::CloudError;
use crate::notify::NoticeHub;
use crate::store::Db;
use crate::store::releases::ServedRelease;

/// Longest a cached list is used without re-reading it.
pub const MAX_AGE: Duration = Duration::from_secs(1);

struct Snapshot {
    change: u64,
    read_at: Instant,
    releases: Arc<Vec<ServedRelease>>,
}

/// A cached copy of [`Db::served_releases`].
#[derive(Clone, Default)]
pub struct ServedCache {
    snapshot: Arc<Mutex<Option<Snapshot>>>,
}

impl ServedCache {
    /// The served releases, from the cache when it is still current.
    pub async fn get(
        &self,
        db: &Db,
        hub: &NoticeHub,
    ) -> Result<Arc<Vec<ServedRelease>>, CloudError> {
        // Read the counter before the database, so a change racing this read forces a refresh.
        let change = hub.changes();
        if let Some(current) = self.current(change) {
            return Ok(current);
        }
        let releases = Arc::new(db.served_releases().await?);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Snapshot {
            change,
            read_at: Instant::now(),
            releases: releases.clone(),
        });
        Ok(releases)
    }

    fn current(&self, change: u64) -> Option<Arc<Vec<ServedRelease>>> {
        let snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        snapshot
            .as_ref()
            .filter(|s| s.change == change && s.read_at.elapsed() < MAX_AGE)
            .map(|s| s.releases.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reuses_the_list_until_a_notice_moves_the_counter() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url).await.unwrap();
        let hub = NoticeHub::default();
        let cache = ServedCache::default();
        let first = cache.get(&db, &hub).await.unwrap();
        let again = cache.get(&db, &hub).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "re-read without a change");
        hub.mark_changed();
        let refreshed = cache.get(&db, &hub).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &refreshed), "a change was not noticed");
        db.close().await;
    }
}
