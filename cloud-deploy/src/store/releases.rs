//! Table `releases`.

use serde::Serialize;
// Dynamic SQL here only splices the constant column lists below; values are always bound.
use sqlx::{AssertSqlSafe, Row};

use super::{Db, db_err, now_ms};
use crate::CloudError;

/// A release as the control plane shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRow {
    pub id: String,
    pub task: String,
    pub version: String,
    pub state: String,
    pub created_at_ms: i64,
}

/// An active release with the signed manifest devices receive.
#[derive(Debug, Clone)]
pub struct ActiveRelease {
    pub id: String,
    pub task: String,
    pub version: String,
    pub manifest_json: String,
    pub signature_hex: String,
    pub key_id: String,
}

/// How a release is doing across the fleet.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReleaseStats {
    /// Registered devices the release targets (all of them, for now).
    pub targeted: i64,
    /// Devices whose active version of the task is this release's version.
    pub installed: i64,
    /// Devices that reported a failed install of this release.
    pub install_failed: i64,
    pub runs_ok: i64,
    pub runs_failed: i64,
}

const RELEASE_COLUMNS: &str = "id, task, version, state, created_at_ms";

fn release_from_row(row: &sqlx::any::AnyRow) -> Result<ReleaseRow, sqlx::Error> {
    Ok(ReleaseRow {
        id: row.try_get("id")?,
        task: row.try_get("task")?,
        version: row.try_get("version")?,
        state: row.try_get("state")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

impl Db {
    /// Creates an active release of a task version; earlier active releases of the same task are
    /// superseded in the same transaction.
    pub async fn create_release(
        &self,
        id: &str,
        task: &str,
        version: &str,
    ) -> Result<ReleaseRow, CloudError> {
        let created_at_ms = now_ms();
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_err("starting release transaction"))?;
        sqlx::query(
            "UPDATE releases SET state = 'superseded' WHERE task = $1 AND state = 'active'",
        )
        .bind(task)
        .execute(&mut *tx)
        .await
        .map_err(db_err("superseding releases"))?;
        sqlx::query(
            "INSERT INTO releases (id, seq, task, version, state, created_at_ms) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, 'active', $4 FROM releases",
        )
        .bind(id)
        .bind(task)
        .bind(version)
        .bind(created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err("creating release"))?;
        tx.commit().await.map_err(db_err("committing release"))?;
        Ok(ReleaseRow {
            id: id.to_owned(),
            task: task.to_owned(),
            version: version.to_owned(),
            state: "active".to_owned(),
            created_at_ms,
        })
    }

    /// All releases, newest first.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseRow>, CloudError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases ORDER BY seq DESC"
        )))
        .fetch_all(self.pool())
        .await
        .map_err(db_err("listing releases"))?;
        rows.iter()
            .map(release_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_err("decoding releases"))
    }

    /// One release.
    pub async fn get_release(&self, id: &str) -> Result<Option<ReleaseRow>, CloudError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("reading release"))?;
        row.as_ref()
            .map(release_from_row)
            .transpose()
            .map_err(db_err("decoding release"))
    }

    /// Every active release with its signed manifest, oldest first.
    pub async fn active_releases(&self) -> Result<Vec<ActiveRelease>, CloudError> {
        let rows = sqlx::query(
            "SELECT r.id, r.task, r.version, v.manifest_json, v.signature_hex, v.key_id \
             FROM releases r JOIN task_versions v ON v.task = r.task AND v.version = r.version \
             WHERE r.state = 'active' ORDER BY r.seq",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err("reading active releases"))?;
        rows.iter()
            .map(|row| {
                Ok(ActiveRelease {
                    id: row.try_get("id")?,
                    task: row.try_get("task")?,
                    version: row.try_get("version")?,
                    manifest_json: row.try_get("manifest_json")?,
                    signature_hex: row.try_get("signature_hex")?,
                    key_id: row.try_get("key_id")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding active releases"))
    }

    /// Fleet-wide progress of one release.
    pub async fn release_stats(&self, release: &ReleaseRow) -> Result<ReleaseStats, CloudError> {
        let count = |sql: &'static str| async move {
            sqlx::query(sql)
                .bind(&release.id)
                .fetch_one(self.pool())
                .await
                .and_then(|row| row.try_get::<i64, _>(0))
                .map_err(db_err("counting release progress"))
        };
        let installed = sqlx::query(
            "SELECT COUNT(*) FROM device_tasks WHERE task = $1 AND version = $2 AND state = 'installed'",
        )
        .bind(&release.task)
        .bind(&release.version)
        .fetch_one(self.pool())
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .map_err(db_err("counting installs"))?;
        let targeted = sqlx::query("SELECT COUNT(*) FROM devices")
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_err("counting devices"))?;
        Ok(ReleaseStats {
            targeted,
            installed,
            install_failed: count(
                "SELECT COUNT(DISTINCT device_id) FROM task_events WHERE release_id = $1 AND kind = 'install_failed'",
            )
            .await?,
            runs_ok: count("SELECT COUNT(*) FROM task_events WHERE release_id = $1 AND kind = 'run_ok'").await?,
            runs_failed: count(
                "SELECT COUNT(*) FROM task_events WHERE release_id = $1 AND kind = 'run_failed'",
            )
            .await?,
        })
    }
}
