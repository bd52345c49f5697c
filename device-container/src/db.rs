//! The device's SQLite database: one file in the data directory (WAL), in which each component
//! versions its own tables (`walle_pipeline::sqlite`).
//!
//! The agent's tables here: tasks' `walle.state` (`task_state`), the bundles this device
//! refused or rolled back (`refused_bundles`), which it must not install again after a restart,
//! and the task versions the VM quarantined (`quarantined_tasks`), which it must not run again.
//! Every write is one transaction, so a crash leaves each row either old or new.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use walle_pipeline::sqlite;
use walle_vm::{StateStore, StateWrite};

/// File name of the database in the data directory.
pub const DB_FILE: &str = "device.sqlite";

/// The agent's migrations, in order.
const MIGRATIONS: &[&str] = &[
    // 1: tasks' walle.state, keyed by task name (not version), so an upgrade keeps it.
    "CREATE TABLE task_state (
        task TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (task, key)
    ) WITHOUT ROWID;",
    // 2: bundles refused (failed to install or load) or rolled back, by digest.
    "CREATE TABLE refused_bundles (
        digest TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        version TEXT NOT NULL,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: task versions (VM keys, `task@version`) the VM quarantined for getting it stuck.
    "CREATE TABLE quarantined_tasks (
        vm_key TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

/// The open device database.
pub struct DeviceDb {
    path: PathBuf,
    connection: Mutex<Connection>,
}

/// Why the database could not be used, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("device database {path}: {what}: {source}")]
pub struct DbError {
    path: PathBuf,
    what: &'static str,
    source: rusqlite::Error,
}

impl DeviceDb {
    /// Opens (creating if needed) `DB_FILE` in `data_dir` and brings its schema up to date; the
    /// file may not grow past `max_bytes` (see [`sqlite::open`]).
    pub fn open(data_dir: &Path, max_bytes: Option<u64>) -> Result<DeviceDb, DbError> {
        let path = data_dir.join(DB_FILE);
        let fail = |what| {
            let path = path.clone();
            move |source| DbError { path, what, source }
        };
        let mut connection = sqlite::open(&path, max_bytes).map_err(fail("cannot open"))?;
        sqlite::migrate(&mut connection, "agent", MIGRATIONS)
            .map_err(fail("cannot migrate the schema"))?;
        Ok(DeviceDb {
            path,
            connection: Mutex::new(connection),
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remembers that the bundle with `digest` must not be installed again, and why.
    pub fn refuse_bundle(
        &self,
        digest: &str,
        task: &str,
        version: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), DbError> {
        self.connection()
            .execute(
                "INSERT INTO refused_bundles (digest, task, version, reason, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (digest) DO NOTHING",
                params![digest, task, version, reason, at_ms],
            )
            .map(drop)
            .map_err(|source| self.error("cannot record a refused bundle", source))
    }

    /// Digests of every refused bundle.
    pub fn refused_bundles(&self) -> Result<Vec<String>, DbError> {
        let connection = self.connection();
        let read = |source| self.error("cannot read refused bundles", source);
        let mut statement = connection
            .prepare("SELECT digest FROM refused_bundles")
            .map_err(read)?;
        let rows = statement.query_map([], |row| row.get(0)).map_err(read)?;
        rows.collect::<Result<_, _>>().map_err(read)
    }

    /// Remembers that the task version `vm_key` is quarantined, and why.
    pub fn quarantine(&self, vm_key: &str, reason: &str, at_ms: i64) -> Result<(), DbError> {
        self.connection()
            .execute(
                "INSERT INTO quarantined_tasks (vm_key, reason, at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (vm_key) DO NOTHING",
                params![vm_key, reason, at_ms],
            )
            .map(drop)
            .map_err(|source| self.error("cannot record a quarantined task", source))
    }

    /// Every quarantined task version, with the reason.
    pub fn quarantined(&self) -> Result<Vec<(String, String)>, DbError> {
        let connection = self.connection();
        let read = |source| self.error("cannot read quarantined tasks", source);
        let mut statement = connection
            .prepare("SELECT vm_key, reason FROM quarantined_tasks ORDER BY vm_key")
            .map_err(read)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(read)?;
        rows.collect::<Result<_, _>>().map_err(read)
    }

    fn error(&self, what: &'static str, source: rusqlite::Error) -> DbError {
        DbError {
            path: self.path.clone(),
            what,
            source,
        }
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes a run's state writes for `task` (within the caller's transaction).
pub fn write_state(
    connection: &Connection,
    task: &str,
    writes: &[StateWrite],
) -> rusqlite::Result<()> {
    writes
        .iter()
        .try_for_each(|write| write_state_key(connection, task, &write.key, write.value.as_ref()))
}

/// Sets (or with `None` deletes) one key of a task's state.
fn write_state_key(
    connection: &Connection,
    task: &str,
    key: &str,
    value: Option<&Value>,
) -> rusqlite::Result<()> {
    match value {
        Some(value) => connection
            .prepare_cached(
                "INSERT INTO task_state (task, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (task, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![task, key, value.to_string()]),
        None => connection
            .prepare_cached("DELETE FROM task_state WHERE task = ?1 AND key = ?2")?
            .execute(params![task, key]),
    }
    .map(drop)
}

impl StateStore for DeviceDb {
    fn get(&self, task: &str, key: &str) -> Result<Option<Value>, String> {
        let text: Option<String> = self
            .connection()
            .query_row(
                "SELECT value FROM task_state WHERE task = ?1 AND key = ?2",
                params![task, key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| format!("stored value in {} is not JSON: {e}", self.path.display()))
    }

    fn set(&self, task: &str, key: &str, value: Option<&Value>) -> Result<(), String> {
        write_state_key(&self.connection(), task, key, value)
            .map_err(|e| format!("writing {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_state_survives_reopening_and_is_kept_per_task() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = DeviceDb::open(dir.path(), None).unwrap();
            db.set("counter", "n", Some(&json!(3))).unwrap();
            db.set("counter", "seen", Some(&json!({"a": [1, 2]})))
                .unwrap();
            db.set("other", "n", Some(&json!("x"))).unwrap();
            db.set("counter", "n", Some(&json!(4))).unwrap();
            db.set("other", "n", None).unwrap();
        }
        let db = DeviceDb::open(dir.path(), None).unwrap();
        assert_eq!(db.get("counter", "n").unwrap(), Some(json!(4)));
        assert_eq!(
            db.get("counter", "seen").unwrap(),
            Some(json!({"a": [1, 2]}))
        );
        assert_eq!(db.get("other", "n").unwrap(), None);
        assert_eq!(db.get("counter", "missing").unwrap(), None);
    }

    #[test]
    fn quarantined_tasks_survive_reopening_with_their_first_reason() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = DeviceDb::open(dir.path(), None).unwrap();
            db.quarantine("bomb@1.0.0", "got its VM worker stuck 2 times", 1)
                .unwrap();
            db.quarantine("bomb@1.0.0", "again", 2).unwrap();
        }
        let db = DeviceDb::open(dir.path(), None).unwrap();
        assert_eq!(
            db.quarantined().unwrap(),
            vec![(
                "bomb@1.0.0".to_owned(),
                "got its VM worker stuck 2 times".to_owned()
            )]
        );
    }

    #[test]
    fn refused_bundles_are_remembered_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = DeviceDb::open(dir.path(), None).unwrap();
            db.refuse_bundle("abc", "t", "2.0.0", "3 failed runs", 1)
                .unwrap();
            db.refuse_bundle("abc", "t", "2.0.0", "again", 2).unwrap();
        }
        let db = DeviceDb::open(dir.path(), None).unwrap();
        assert_eq!(db.refused_bundles().unwrap(), ["abc"]);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"not a database, just bytes").unwrap();
        let error = DeviceDb::open(dir.path(), None).err().unwrap().to_string();
        assert!(error.contains(DB_FILE), "{error}");
    }
}
