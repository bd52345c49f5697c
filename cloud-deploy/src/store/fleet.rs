//! The fleet as release statistics and previews read it (tables `devices`, `device_tasks` and
//! `device_group_members`): each device's profile, groups and installed versions — of every
//! device, or of the devices changed since a time.
//!
//! A device counts as changed when its `changed_at_ms` (registration, a new profile, a change of
//! its groups) or one of its `device_tasks.updated_at_ms` (what it runs) is at or after the time.
//! The three reads are not one snapshot: a device changed between them carries a stamp after the
//! time the caller started reading, so the caller's next read, from before that time, sees it.

use std::collections::HashMap;

use futures::TryStreamExt;
use sqlx::Row;

use super::{Db, db_err};
use crate::CloudError;

/// One device as the fleet read returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    pub id: String,
    /// The profile as the device sent it (JSON).
    pub profile_json: String,
    /// The groups it is a member of.
    pub groups: Vec<String>,
    /// Task → version, for the tasks it has installed.
    pub running: HashMap<String, String>,
}

impl Db {
    /// Every device (`changed_since` `None`), or the devices changed at or after `changed_since`.
    pub async fn fleet_rows(
        &self,
        changed_since: Option<i64>,
    ) -> Result<Vec<FleetRow>, CloudError> {
        let scope = |column: &str, join: &str| match changed_since {
            None => String::new(),
            Some(_) => format!(
                " {join} {column} IN (SELECT id FROM devices WHERE changed_at_ms >= $1 \
                 UNION SELECT device_id FROM device_tasks WHERE updated_at_ms >= $1)"
            ),
        };
        let bind = |sql: String| {
            let query = sqlx::query(sqlx::AssertSqlSafe(sql));
            match changed_since {
                Some(since) => query.bind(since),
                None => query,
            }
        };
        let mut rows = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        let sql = format!(
            "SELECT id, profile_json FROM devices{}",
            scope("id", "WHERE")
        );
        let mut devices = bind(sql).fetch(self.pool());
        while let Some(row) = devices
            .try_next()
            .await
            .map_err(db_err("reading the fleet"))?
        {
            let id: String = row.try_get(0).map_err(db_err("decoding a device"))?;
            position.insert(id.clone(), rows.len());
            rows.push(FleetRow {
                id,
                profile_json: row.try_get(1).map_err(db_err("decoding a device"))?,
                groups: Vec::new(),
                running: HashMap::new(),
            });
        }
        drop(devices);
        let sql = format!(
            "SELECT device_id, task, version FROM device_tasks WHERE state = 'installed'{}",
            scope("device_id", "AND")
        );
        let mut tasks = bind(sql).fetch(self.pool());
        while let Some(row) = tasks
            .try_next()
            .await
            .map_err(db_err("reading the fleet's tasks"))?
        {
            let device: String = row.try_get(0).map_err(db_err("decoding a device task"))?;
            if let Some(&at) = position.get(&device) {
                let task = row.try_get(1).map_err(db_err("decoding a device task"))?;
                let version = row.try_get(2).map_err(db_err("decoding a device task"))?;
                rows[at].running.insert(task, version);
            }
        }
        drop(tasks);
        let sql = format!(
            "SELECT device_id, group_name FROM device_group_members{}",
            scope("device_id", "WHERE")
        );
        let mut members = bind(sql).fetch(self.pool());
        while let Some(row) = members
            .try_next()
            .await
            .map_err(db_err("reading the fleet's groups"))?
        {
            let device: String = row.try_get(0).map_err(db_err("decoding a membership"))?;
            if let Some(&at) = position.get(&device) {
                let group = row.try_get(1).map_err(db_err("decoding a membership"))?;
                rows[at].groups.push(group);
            }
        }
        Ok(rows)
    }
}
