//! Opening the device's SQLite database and versioning each component's tables in it.
//!
//! The device keeps one database file; several components own tables in it (the device
//! container's task state, this crate's event store, …). Each component versions its own
//! tables: table `schema_versions` records how many of its migrations ran, so components evolve
//! independently and a migration runs exactly once, in the same transaction as its record.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

/// How long a writer waits for another connection's write to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if needed) the database at `path` in WAL mode, ready for concurrent use by
/// several connections of this process. With `max_bytes`, this connection's writes fail as on
/// a full disk once the file would grow past it (or past its size now, if larger).
pub fn open(path: &Path, max_bytes: Option<u64>) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // With WAL, NORMAL loses at most the last transactions on power loss, never consistency.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    if let Some(max_bytes) = max_bytes {
        let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let pages = (max_bytes / page_size.max(1) as u64).max(1);
        connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| {
            row.get::<_, i64>(0)
        })?;
    }
    Ok(connection)
}

/// Whether `error` says the disk, or the database's size limit, is full.
pub fn is_storage_full(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// Runs the migrations of `component` that have not run yet, each in its own transaction.
pub fn migrate(
    connection: &mut Connection,
    component: &str,
    migrations: &[&str],
) -> rusqlite::Result<()> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_versions (
            component TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        ) WITHOUT ROWID;",
    )?;
    let applied: Option<i64> = connection
        .query_row(
            "SELECT version FROM schema_versions WHERE component = ?1",
            params![component],
            |row| row.get(0),
        )
        .optional()?;
    let applied = usize::try_from(applied.unwrap_or(0)).unwrap_or(0);
    for (index, sql) in migrations.iter().enumerate().skip(applied) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.execute(
            "INSERT INTO schema_versions (component, version) VALUES (?1, ?2)
             ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            params![component, (index + 1) as i64],
        )?;
        transaction.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_migration_runs_once_per_component() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let first = ["CREATE TABLE a (x INTEGER);"];
        let both = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER);"];
        migrate(&mut open(&path, None).unwrap(), "one", &first).unwrap();
        // Reopened with one more migration: only the new one runs (the first would fail: a exists).
        let mut connection = open(&path, None).unwrap();
        migrate(&mut connection, "one", &both).unwrap();
        migrate(&mut connection, "two", &["CREATE TABLE c (z INTEGER);"]).unwrap();
        let tables: Vec<String> = connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["a", "b", "c", "schema_versions"]);
    }

    #[test]
    fn a_failing_migration_leaves_nothing_half_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut connection = open(&dir.path().join("db.sqlite"), None).unwrap();
        let broken = ["CREATE TABLE a (x INTEGER); CREATE TABLE oops (;"];
        assert!(migrate(&mut connection, "one", &broken).is_err());
        let a_exists: i64 = connection
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'a'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(a_exists, 0);
        migrate(&mut connection, "one", &["CREATE TABLE a (x INTEGER);"]).unwrap();
    }
}
