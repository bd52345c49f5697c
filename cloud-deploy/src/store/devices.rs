//! Tables `devices` and `device_tasks`.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use super::{Db, db_err, now_ms};
use crate::CloudError;

/// A device's stored profile (JSON) and when it was last seen.
#[derive(Debug, Clone)]
pub struct DeviceSeen {
    pub app_id: String,
    pub profile_json: String,
    pub last_seen_ms: i64,
}

/// A device as the control plane lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceRow {
    pub id: String,
    #[schema(value_type = Object)]
    pub profile: serde_json::Value,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
    pub tasks: Vec<DeviceTaskRow>,
}

/// What a device runs for one task.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceTaskRow {
    pub task: String,
    pub version: String,
    pub state: String,
    pub detail: String,
    pub updated_at_ms: i64,
}

impl Db {
    /// Registers a device or re-registers it with a new token and profile.
    pub async fn upsert_device(
        &self,
        id: &str,
        app_id: &str,
        token_hash: &str,
        profile_json: &str,
    ) -> Result<(), CloudError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO devices (id, token_hash, profile_json, registered_at_ms, last_seen_ms, app_id) \
             VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET token_hash = excluded.token_hash, \
             profile_json = excluded.profile_json, last_seen_ms = excluded.last_seen_ms, app_id = excluded.app_id",
        )
        .bind(id)
        .bind(token_hash)
        .bind(profile_json)
        .bind(now)
        .bind(app_id)
        .execute(self.pool())
        .await
        .map_err(db_err("registering device"))?;
        Ok(())
    }

    /// The device a token hash belongs to.
    pub async fn device_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<String>, CloudError> {
        let row = sqlx::query("SELECT id FROM devices WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("authenticating device"))?;
        row.map(|r| r.try_get::<String, _>("id"))
            .transpose()
            .map_err(db_err("decoding device id"))
    }

    /// What Sync needs to decide whether to write: the stored profile and last-seen time.
    pub async fn device_seen(&self, id: &str) -> Result<Option<DeviceSeen>, CloudError> {
        let row =
            sqlx::query("SELECT app_id, profile_json, last_seen_ms FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(db_err("reading device"))?;
        row.map(|r| {
            Ok(DeviceSeen {
                app_id: r.try_get("app_id")?,
                profile_json: r.try_get("profile_json")?,
                last_seen_ms: r.try_get("last_seen_ms")?,
            })
        })
        .transpose()
        .map_err(db_err("decoding device"))
    }

    /// Task → (version, state) as last recorded for a device.
    pub async fn device_task_versions(
        &self,
        id: &str,
    ) -> Result<HashMap<String, (String, String)>, CloudError> {
        let rows =
            sqlx::query("SELECT task, version, state FROM device_tasks WHERE device_id = $1")
                .bind(id)
                .fetch_all(self.pool())
                .await
                .map_err(db_err("reading device tasks"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("task")?,
                    (r.try_get("version")?, r.try_get("state")?),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding device tasks"))
    }

    /// Records that a device was seen, with its current profile.
    pub async fn touch_device(
        &self,
        id: &str,
        profile_json: Option<&str>,
    ) -> Result<(), CloudError> {
        let query = match profile_json {
            Some(profile) => {
                sqlx::query("UPDATE devices SET last_seen_ms = $1, profile_json = $2 WHERE id = $3")
                    .bind(now_ms())
                    .bind(profile)
                    .bind(id)
            }
            None => sqlx::query("UPDATE devices SET last_seen_ms = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(id),
        };
        query
            .execute(self.pool())
            .await
            .map_err(db_err("updating device"))?;
        Ok(())
    }

    /// Sets what a device runs for a task.
    pub async fn set_device_task(
        &self,
        device_id: &str,
        task: &str,
        version: &str,
        state: &str,
        detail: &str,
    ) -> Result<(), CloudError> {
        sqlx::query(
            "INSERT INTO device_tasks (device_id, task, version, state, detail, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (device_id, task) DO UPDATE SET version = excluded.version, \
             state = excluded.state, detail = excluded.detail, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(device_id)
        .bind(task)
        .bind(version)
        .bind(state)
        .bind(detail)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map_err(db_err("recording device task"))?;
        Ok(())
    }

    /// All devices with what they run, by id.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRow>, CloudError> {
        let devices = sqlx::query(
            "SELECT id, profile_json, registered_at_ms, last_seen_ms FROM devices ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err("listing devices"))?;
        let tasks = sqlx::query(
            "SELECT device_id, task, version, state, detail, updated_at_ms FROM device_tasks ORDER BY device_id, task",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err("listing device tasks"))?;
        let mut out = Vec::with_capacity(devices.len());
        for row in &devices {
            let id: String = row.try_get("id").map_err(db_err("decoding device"))?;
            let profile_json: String = row
                .try_get("profile_json")
                .map_err(db_err("decoding device"))?;
            let mut device_tasks = Vec::new();
            for t in tasks
                .iter()
                .filter(|t| t.try_get::<String, _>("device_id").ok().as_deref() == Some(&id))
            {
                device_tasks.push(DeviceTaskRow {
                    task: t.try_get("task").map_err(db_err("decoding device task"))?,
                    version: t
                        .try_get("version")
                        .map_err(db_err("decoding device task"))?,
                    state: t.try_get("state").map_err(db_err("decoding device task"))?,
                    detail: t
                        .try_get("detail")
                        .map_err(db_err("decoding device task"))?,
                    updated_at_ms: t
                        .try_get("updated_at_ms")
                        .map_err(db_err("decoding device task"))?,
                });
            }
            out.push(DeviceRow {
                profile: serde_json::from_str(&profile_json).unwrap_or(serde_json::Value::Null),
                registered_at_ms: row
                    .try_get("registered_at_ms")
                    .map_err(db_err("decoding device"))?,
                last_seen_ms: row
                    .try_get("last_seen_ms")
                    .map_err(db_err("decoding device"))?,
                id,
                tasks: device_tasks,
            });
        }
        Ok(out)
    }
}
