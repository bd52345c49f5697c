//! Tables `task_events` (device reports) and `tunnel_records` (task outputs).

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Db, db_err, now_ms};
use crate::CloudError;

/// One reported task event, as stored.
#[derive(Debug, Clone)]
pub struct TaskEventRow {
    pub id: String,
    pub kind: &'static str,
    pub task: String,
    pub version: String,
    pub release_id: String,
    pub at_ms: i64,
    pub detail: String,
    pub duration_ms: i64,
}

/// One received tunnel record.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordRow {
    pub id: String,
    pub device_id: String,
    pub task: String,
    pub version: String,
    pub created_at_ms: i64,
    pub received_at_ms: i64,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// Filters for listing records.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordFilter {
    /// Only records of this task.
    pub task: Option<String>,
    /// Only records of this device.
    pub device: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Most records one listing returns.
pub const MAX_RECORDS_PER_PAGE: i64 = 1000;

impl Db {
    /// Stores a device's task events; an event id already stored for that device is skipped.
    /// Returns how many were new.
    pub async fn insert_task_events(
        &self,
        device_id: &str,
        events: &[TaskEventRow],
    ) -> Result<u32, CloudError> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_err("starting report transaction"))?;
        let mut stored = 0;
        for e in events {
            let result = sqlx::query(
                "INSERT INTO task_events (device_id, id, kind, task, version, release_id, at_ms, detail, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (device_id, id) DO NOTHING",
            )
            .bind(device_id)
            .bind(&e.id)
            .bind(e.kind)
            .bind(&e.task)
            .bind(&e.version)
            .bind(&e.release_id)
            .bind(e.at_ms)
            .bind(&e.detail)
            .bind(e.duration_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err("storing task event"))?;
            stored += result.rows_affected() as u32;
        }
        tx.commit()
            .await
            .map_err(db_err("committing task events"))?;
        Ok(stored)
    }

    /// Stores tunnel records exactly once per (device, record id). Returns (stored, duplicates).
    pub async fn insert_records(
        &self,
        device_id: &str,
        records: &[(String, String, String, i64, String)],
    ) -> Result<(u32, u32), CloudError> {
        let received_at_ms = now_ms();
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_err("starting upload transaction"))?;
        let mut stored = 0;
        for (id, task, version, created_at_ms, payload) in records {
            let result = sqlx::query(
                "INSERT INTO tunnel_records (device_id, id, task, version, created_at_ms, received_at_ms, payload) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id, id) DO NOTHING",
            )
            .bind(device_id)
            .bind(id)
            .bind(task)
            .bind(version)
            .bind(*created_at_ms)
            .bind(received_at_ms)
            .bind(payload)
            .execute(&mut *tx)
            .await
            .map_err(db_err("storing tunnel record"))?;
            stored += result.rows_affected() as u32;
        }
        tx.commit()
            .await
            .map_err(db_err("committing tunnel records"))?;
        Ok((stored, records.len() as u32 - stored))
    }

    /// Received records, newest first, filtered by task and/or device.
    pub async fn list_records(&self, filter: &RecordFilter) -> Result<Vec<RecordRow>, CloudError> {
        let limit = filter.limit.unwrap_or(100).clamp(1, MAX_RECORDS_PER_PAGE);
        let rows = sqlx::query(
            "SELECT id, device_id, task, version, created_at_ms, received_at_ms, payload FROM tunnel_records \
             WHERE ($1 = '' OR task = $1) AND ($2 = '' OR device_id = $2) \
             ORDER BY received_at_ms DESC, device_id, id LIMIT $3",
        )
        .bind(filter.task.clone().unwrap_or_default())
        .bind(filter.device.clone().unwrap_or_default())
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("listing records"))?;
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get("payload")?;
                Ok(RecordRow {
                    id: row.try_get("id")?,
                    device_id: row.try_get("device_id")?,
                    task: row.try_get("task")?,
                    version: row.try_get("version")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    received_at_ms: row.try_get("received_at_ms")?,
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding records"))
    }
}
