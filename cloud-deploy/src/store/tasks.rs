//! Tables `tasks` and `task_versions`.

use serde::Serialize;
// Dynamic SQL here only splices the constant column lists below; values are always bound.
use sqlx::{AssertSqlSafe, Row};

use super::{Db, db_err, is_unique_violation, now_ms};
use crate::CloudError;

/// A task as the control plane lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskRow {
    pub name: String,
    pub description: String,
    pub created_at_ms: i64,
}

/// A stored task version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionRow {
    pub task: String,
    pub version: String,
    pub bundle_digest: String,
    pub bundle_size: i64,
    #[serde(skip)]
    pub manifest_json: String,
    #[serde(skip)]
    pub signature_hex: String,
    #[serde(skip)]
    pub key_id: String,
    pub created_at_ms: i64,
}

const VERSION_COLUMNS: &str = "task, version, bundle_digest, bundle_size, manifest_json, signature_hex, key_id, created_at_ms";

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<VersionRow, sqlx::Error> {
    Ok(VersionRow {
        task: row.try_get("task")?,
        version: row.try_get("version")?,
        bundle_digest: row.try_get("bundle_digest")?,
        bundle_size: row.try_get("bundle_size")?,
        manifest_json: row.try_get("manifest_json")?,
        signature_hex: row.try_get("signature_hex")?,
        key_id: row.try_get("key_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

impl Db {
    /// Creates a task; `Conflict` if the name is taken.
    pub async fn create_task(&self, name: &str, description: &str) -> Result<TaskRow, CloudError> {
        let created_at_ms = now_ms();
        sqlx::query("INSERT INTO tasks (name, description, created_at_ms) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(description)
            .bind(created_at_ms)
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CloudError::Conflict(format!("task {name:?} already exists"))
                } else {
                    db_err("creating task")(e)
                }
            })?;
        Ok(TaskRow {
            name: name.to_owned(),
            description: description.to_owned(),
            created_at_ms,
        })
    }

    /// All tasks, by name.
    pub async fn list_tasks(&self) -> Result<Vec<TaskRow>, CloudError> {
        let rows = sqlx::query("SELECT name, description, created_at_ms FROM tasks ORDER BY name")
            .fetch_all(self.pool())
            .await
            .map_err(db_err("listing tasks"))?;
        rows.iter()
            .map(|row| {
                Ok(TaskRow {
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("reading tasks"))
    }

    /// Whether a task exists.
    pub async fn task_exists(&self, name: &str) -> Result<bool, CloudError> {
        let row = sqlx::query("SELECT 1 FROM tasks WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("looking up task"))?;
        Ok(row.is_some())
    }

    /// Stores a new version; `Conflict` if that version of the task exists.
    pub async fn insert_version(&self, v: &VersionRow) -> Result<(), CloudError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO task_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )))
        .bind(&v.task)
        .bind(&v.version)
        .bind(&v.bundle_digest)
        .bind(v.bundle_size)
        .bind(&v.manifest_json)
        .bind(&v.signature_hex)
        .bind(&v.key_id)
        .bind(v.created_at_ms)
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CloudError::Conflict(format!(
                    "task {:?} already has version {}",
                    v.task, v.version
                ))
            } else {
                db_err("storing task version")(e)
            }
        })?;
        Ok(())
    }

    /// One version of a task.
    pub async fn get_version(
        &self,
        task: &str,
        version: &str,
    ) -> Result<Option<VersionRow>, CloudError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM task_versions WHERE task = $1 AND version = $2"
        )))
        .bind(task)
        .bind(version)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("reading task version"))?;
        row.as_ref()
            .map(version_from_row)
            .transpose()
            .map_err(db_err("decoding task version"))
    }

    /// All versions of a task, newest first.
    pub async fn list_versions(&self, task: &str) -> Result<Vec<VersionRow>, CloudError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM task_versions WHERE task = $1 ORDER BY created_at_ms DESC"
        )))
        .bind(task)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("listing task versions"))?;
        rows.iter()
            .map(version_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_err("decoding task versions"))
    }
}

/// The size of the bundle with this digest, if a task version has it.
pub(super) async fn bundle_size(
    conn: &mut sqlx::AnyConnection,
    digest: &str,
) -> Result<Option<i64>, CloudError> {
    let row = sqlx::query("SELECT bundle_size FROM task_versions WHERE bundle_digest = $1 LIMIT 1")
        .bind(digest)
        .fetch_optional(conn)
        .await
        .map_err(db_err("looking up bundle"))?;
    row.map(|r| r.try_get::<i64, _>("bundle_size"))
        .transpose()
        .map_err(db_err("decoding bundle size"))
}
