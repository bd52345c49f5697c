//! Tables `devices` and `device_tasks`.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use super::filter::Conditions;
use super::{Db, db_err, now_ms};
use crate::CloudError;

/// A device's stored profile (JSON) and when it was last seen.
#[derive(Debug, Clone)]
pub struct DeviceSeen {
    pub app_id: String,
    pub profile_json: String,
    pub last_seen_ms: i64,
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
            "INSERT INTO devices (id, token_hash, profile_json, registered_at_ms, last_seen_ms, app_id, changed_at_ms) \
             VALUES ($1, $2, $3, $4, $4, $5, $4) \
             ON CONFLICT (id) DO UPDATE SET token_hash = excluded.token_hash, \
             profile_json = excluded.profile_json, last_seen_ms = excluded.last_seen_ms, app_id = excluded.app_id, \
             changed_at_ms = excluded.changed_at_ms",
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
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(db_err("reading device"))?;
        device_seen(&mut conn, id).await
    }

    /// [`Db::device_seen`] and what the device was last recorded running (task → (version,
    /// state)), read on one connection.
    pub async fn device_for_sync(
        &self,
        id: &str,
    ) -> Result<(Option<DeviceSeen>, HashMap<String, (String, String)>), CloudError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(db_err("reading device"))?;
        let seen = device_seen(&mut conn, id).await?;
        let rows =
            sqlx::query("SELECT task, version, state FROM device_tasks WHERE device_id = $1")
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err("reading device tasks"))?;
        let tasks = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("task")?,
                    (r.try_get("version")?, r.try_get("state")?),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding device tasks"))?;
        Ok((seen, tasks))
    }

    /// Records that a device was seen, with its current profile.
    pub async fn touch_device(
        &self,
        id: &str,
        profile_json: Option<&str>,
    ) -> Result<(), CloudError> {
        let query = match profile_json {
            Some(profile) => {
                sqlx::query(
                    "UPDATE devices SET last_seen_ms = $1, changed_at_ms = $1, profile_json = $2 WHERE id = $3",
                )
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
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(db_err("recording device task"))?;
        set_device_task(&mut conn, device_id, task, version, state, detail).await
    }

    /// A page of devices matching a search, by id.
    pub async fn search_devices(
        &self,
        search: &DeviceSearch,
    ) -> Result<Vec<DeviceSummary>, CloudError> {
        let mut conditions = Conditions::default();
        if let Some(prefix) = search.q.as_deref().filter(|q| !q.is_empty()) {
            conditions.starts_with("id", prefix);
            if self.postgres_url().is_none() {
                // SQLite compares text bytewise: this range lets the primary key find the
                // prefix (its LIKE is case-insensitive and cannot use the index). PostgreSQL's
                // collations do not promise that order, so there LIKE alone decides.
                conditions
                    .text("id", ">=", prefix)
                    .text("id", "<", format!("{prefix}\u{10FFFF}"));
            }
        }
        if let Some(after) = &search.after {
            conditions.text("id", ">", after);
        }
        if let Some(app) = &search.app_id {
            conditions.text("app_id", "=", app);
        }
        for (field, value) in search.profile_fields() {
            // The profile is stored as serde's compact JSON of a flat struct, so an exact field
            // value appears as `"field":"value"` with the value JSON-escaped.
            let value = serde_json::to_string(value).unwrap_or_default();
            conditions.contains("profile_json", &format!("\"{field}\":{value}"));
        }
        if let Some(group) = &search.group {
            conditions.raw("EXISTS (SELECT 1 FROM device_group_members m WHERE m.device_id = devices.id AND m.group_name = ");
            conditions.text_tail(group, ")");
        }
        let limit = search.limit.unwrap_or(50).clamp(1, 1001);
        let sql = format!(
            "SELECT id, app_id, profile_json, registered_at_ms, last_seen_ms FROM devices{} ORDER BY id LIMIT {}",
            conditions.where_clause(),
            conditions.next_placeholder()
        );
        let rows = conditions
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(db_err("searching devices"))?;
        rows.iter()
            .map(summary_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_err("decoding devices"))
    }

    /// One device, if registered.
    pub async fn get_device(&self, id: &str) -> Result<Option<DeviceSummary>, CloudError> {
        let row = sqlx::query(
            "SELECT id, app_id, profile_json, registered_at_ms, last_seen_ms FROM devices WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("reading device"))?;
        row.as_ref()
            .map(summary_from_row)
            .transpose()
            .map_err(db_err("decoding device"))
    }

    /// What a device runs, per task.
    pub async fn device_tasks(&self, id: &str) -> Result<Vec<DeviceTaskRow>, CloudError> {
        let rows = sqlx::query(
            "SELECT task, version, state, detail, updated_at_ms FROM device_tasks WHERE device_id = $1 ORDER BY task",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("reading device tasks"))?;
        rows.iter()
            .map(device_task_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_err("decoding device tasks"))
    }

    /// How many devices are registered.
    pub async fn count_devices(&self) -> Result<i64, CloudError> {
        sqlx::query("SELECT COUNT(*) FROM devices")
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_err("counting devices"))
    }
}

/// A device without what it runs: a row of a device search.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceSummary {
    pub id: String,
    pub app_id: String,
    #[schema(value_type = Object)]
    pub profile: serde_json::Value,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
}

/// Which devices a search returns: by id, `limit` at a time, after `after`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceSearch {
    /// Devices whose id starts with this.
    pub q: Option<String>,
    /// Only devices of this host app.
    pub app_id: Option<String>,
    /// Profile fields, matched exactly.
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub model: Option<String>,
    pub hardware_tier: Option<String>,
    pub region: Option<String>,
    pub app_version: Option<String>,
    /// Only members of this device group.
    pub group: Option<String>,
    /// Only devices whose id sorts after this (the next page: the last id of this one).
    pub after: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<i64>,
}

impl DeviceSearch {
    /// The profile fields the search asks to match, by their name in the stored profile.
    fn profile_fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("os", &self.os),
            ("os_version", &self.os_version),
            ("model", &self.model),
            ("hardware_tier", &self.hardware_tier),
            ("region", &self.region),
            ("app_version", &self.app_version),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.as_deref().map(|v| (field, v)))
        .collect()
    }
}

fn summary_from_row(row: &sqlx::any::AnyRow) -> Result<DeviceSummary, sqlx::Error> {
    let profile_json: String = row.try_get("profile_json")?;
    Ok(DeviceSummary {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        profile: serde_json::from_str(&profile_json).unwrap_or(serde_json::Value::Null),
        registered_at_ms: row.try_get("registered_at_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
    })
}

fn device_task_from_row(row: &sqlx::any::AnyRow) -> Result<DeviceTaskRow, sqlx::Error> {
    Ok(DeviceTaskRow {
        task: row.try_get("task")?,
        version: row.try_get("version")?,
        state: row.try_get("state")?,
        detail: row.try_get("detail")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

/// Sets what a device runs for a task, on `conn` (e.g. inside a report's transaction).
pub(super) async fn set_device_task(
    conn: &mut sqlx::AnyConnection,
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
    .execute(conn)
    .await
    .map_err(db_err("recording device task"))?;
    Ok(())
}

async fn device_seen(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<DeviceSeen>, CloudError> {
    let row = sqlx::query("SELECT app_id, profile_json, last_seen_ms FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
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
