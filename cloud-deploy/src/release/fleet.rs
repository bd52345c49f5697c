//! The fleet in memory: every registered device's profile, groups and installed versions, as
//! release statistics, previews and coverage samples walk it.
//!
//! [`FleetIndex`] reads the whole fleet once, then on each use re-reads only the devices changed
//! since its last read (`store::fleet`), so a walk of a million devices costs the walk, not a
//! million-row read. Change stamps come from the writing replica's clock; each read starts
//! [`CLOCK_MARGIN_MS`] before the previous one did, which covers a write stamped before that read
//! but committed after it, and clocks of replicas that disagree by less than the margin.
//! Devices are never deleted, so a re-read only replaces or adds entries.
//!
//! Viewers share reads: a caller that waited while a read that began after its call finished
//! uses that read (one that began earlier may miss a change the caller has seen).
//! Entries are shared (`Arc`), so handing out the fleet copies pointers, and applying a change
//! while a walk holds the old fleet copies the list of pointers, never the profiles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use walle_proto::v1::DeviceProfile;

use super::target::Profile;
use crate::CloudError;
use crate::store::fleet::FleetRow;
use crate::store::{Db, now_ms};

/// Each read starts this long before the previous one started.
pub const CLOCK_MARGIN_MS: i64 = 5_000;

/// One device as the selection rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetDevice {
    /// The profile, with the device's groups.
    pub profile: Profile,
    /// Task → installed version.
    pub running: HashMap<String, String>,
}

impl FleetDevice {
    fn from_row(row: FleetRow) -> FleetDevice {
        // A profile the cloud stored itself; one that no longer parses still has its id.
        let mut device: DeviceProfile = serde_json::from_str(&row.profile_json).unwrap_or_default();
        device.device_id = row.id;
        FleetDevice {
            profile: Profile {
                device,
                groups: row.groups,
            },
            running: row.running,
        }
    }
}

/// Every registered device, as of one read.
pub type Fleet = Arc<Vec<Arc<FleetDevice>>>;

/// The fleet kept in memory and brought up to date from the database on each use.
#[derive(Clone, Default)]
pub struct FleetIndex {
    loaded: Arc<tokio::sync::Mutex<Loaded>>,
}

#[derive(Default)]
struct Loaded {
    devices: Fleet,
    position: HashMap<String, usize>,
    /// Where the next read starts (`None`: nothing read yet, read everything).
    next_read_from_ms: Option<i64>,
    /// When the last read began.
    read_started: Option<Instant>,
}

impl FleetIndex {
    /// The fleet as of now: the last read, brought up to date with the devices changed since.
    pub async fn current(&self, db: &Db) -> Result<Fleet, CloudError> {
        let asked = Instant::now();
        let mut loaded = self.loaded.lock().await;
        // Only a read that started after this call sees every change made before it.
        if loaded.read_started.is_some_and(|at| at >= asked) {
            return Ok(loaded.devices.clone());
        }
        let started_ms = now_ms();
        let started = Instant::now();
        let rows = db.fleet_rows(loaded.next_read_from_ms).await?;
        let changed = rows.len();
        loaded.apply(rows);
        loaded.next_read_from_ms = Some(started_ms - CLOCK_MARGIN_MS);
        loaded.read_started = Some(started);
        tracing::debug!(changed, devices = loaded.devices.len(), took = ?started.elapsed(), "fleet read");
        Ok(loaded.devices.clone())
    }
}

impl Loaded {
    fn apply(&mut self, rows: Vec<FleetRow>) {
        if rows.is_empty() {
            return;
        }
        // Copies the pointers only when a walk still holds the previous fleet.
        let devices = Arc::make_mut(&mut self.devices);
        for row in rows {
            let device = Arc::new(FleetDevice::from_row(row));
            match self.position.get(&device.profile.device_id) {
                Some(&at) => devices[at] = device,
                None => {
                    self.position
                        .insert(device.profile.device_id.clone(), devices.len());
                    devices.push(device);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: &str, region: &str) -> String {
        format!(r#"{{"device_id":"{id}","app_id":"shop","region":"{region}"}}"#)
    }

    fn find<'a>(fleet: &'a Fleet, id: &str) -> &'a FleetDevice {
        let found = fleet.iter().find(|d| d.profile.device_id == id);
        found.unwrap_or_else(|| panic!("{id} is not in the fleet"))
    }

    #[tokio::test]
    async fn follows_every_kind_of_change_after_the_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url).await.unwrap();
        for id in ["a", "b"] {
            db.upsert_device(id, "shop", &format!("h-{id}"), &profile(id, "eu"))
                .await
                .unwrap();
        }
        db.set_device_task("a", "t", "1.0.0", "installed", "")
            .await
            .unwrap();
        db.create_group("beta", "").await.unwrap();
        db.change_group_members("beta", &["b".into()], &[])
            .await
            .unwrap();
        let index = FleetIndex::default();
        let first = index.current(&db).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(find(&first, "a").running["t"], "1.0.0");
        assert_eq!(find(&first, "b").profile.groups, ["beta"]);
        assert_eq!(find(&first, "b").profile.region, "eu");

        // What a device runs, its profile, its groups, and a new device.
        db.set_device_task("a", "t", "2.0.0", "installed", "")
            .await
            .unwrap();
        db.set_device_task("b", "t", "2.0.0", "failed", "bad bundle")
            .await
            .unwrap();
        db.touch_device("b", Some(&profile("b", "us")))
            .await
            .unwrap();
        db.change_group_members("beta", &["a".into()], &["b".into()])
            .await
            .unwrap();
        db.upsert_device("c", "shop", "h-c", &profile("c", "cn"))
            .await
            .unwrap();
        let second = index.current(&db).await.unwrap();
        assert_eq!(second.len(), 3);
        assert_eq!(find(&second, "a").running["t"], "2.0.0");
        assert_eq!(find(&second, "a").profile.groups, ["beta"]);
        let b = find(&second, "b");
        assert!(b.running.is_empty(), "a failed install is not running");
        assert!(b.profile.groups.is_empty(), "removed from the group");
        assert_eq!(b.profile.region, "us");
        assert_eq!(find(&second, "c").profile.region, "cn");
        // A walk that held the first read still sees it as it was.
        assert_eq!(first.len(), 2);
        assert_eq!(find(&first, "a").running["t"], "1.0.0");

        db.delete_group("beta").await.unwrap();
        let third = index.current(&db).await.unwrap();
        assert!(find(&third, "a").profile.groups.is_empty(), "group deleted");
        db.close().await;
    }

    #[tokio::test]
    async fn a_read_reads_only_what_changed_since_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url).await.unwrap();
        for id in ["a", "b", "c"] {
            db.upsert_device(id, "shop", &format!("h-{id}"), &profile(id, "eu"))
                .await
                .unwrap();
        }
        let index = FleetIndex::default();
        index.current(&db).await.unwrap();
        let since = index.loaded.lock().await.next_read_from_ms;
        // Stamps older than the margin are not read again.
        sqlx::query("UPDATE devices SET changed_at_ms = 0")
            .execute(db.pool())
            .await
            .unwrap();
        db.set_device_task("b", "t", "1.0.0", "installed", "")
            .await
            .unwrap();
        let changed = db.fleet_rows(since).await.unwrap();
        let ids: Vec<&str> = changed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["b"]);
        assert_eq!(changed[0].running["t"], "1.0.0");
        db.close().await;
    }
}
