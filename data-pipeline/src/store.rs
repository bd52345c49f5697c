//! The event store: every accepted event, append-only, in the device's SQLite database.
//!
//! * **Batched**: [`EventStore::append`] buffers events and writes a batch in one transaction
//!   when [`StoreConfig::batch_events`] are waiting; [`EventStore::flush`] writes what waits
//!   (the device calls it on a timer and before shutting down). A crash loses at most the
//!   buffered events, never part of a batch.
//! * **Once per id**: an event whose id is already stored is skipped and counted, so a host app
//!   that sends again after a crash does not double-count.
//! * **Bounded**: [`EventStore::enforce_retention`] deletes events older than
//!   [`Retention::max_age_ms`] and then the oldest until the stored bytes fit
//!   [`Retention::max_bytes`].
//! * **Queries** by session, page and time range ([`EventQuery`]) serve windows and tasks, in
//!   arrival order.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, params, params_from_iter, types::Value as SqlValue};

use crate::event::{Event, EventKind};
use crate::sqlite;

/// The store's tables, in order (see [`sqlite::migrate`]).
const MIGRATIONS: &[&str] = &["CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        ts INTEGER NOT NULL,
        session TEXT NOT NULL,
        page TEXT NOT NULL,
        kind TEXT NOT NULL,
        item TEXT NOT NULL,
        args TEXT NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE INDEX events_by_session ON events (session, ts);
    CREATE INDEX events_by_page ON events (page, ts);
    CREATE INDEX events_by_ts ON events (ts);"];

/// How much history the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this (by their timestamp) are deleted.
    pub max_age_ms: i64,
    /// Stored event bytes (their JSON size) above this are deleted, oldest first.
    pub max_bytes: u64,
}

impl Default for Retention {
    /// Seven days, 64 MiB.
    fn default() -> Self {
        Retention {
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_bytes: 64 << 20,
        }
    }
}

/// Store settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    pub retention: Retention,
    /// Events buffered before a batch is written.
    pub batch_events: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retention: Retention::default(),
            batch_events: 256,
        }
    }
}

/// What to read back. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub session: Option<String>,
    pub page: Option<String>,
    /// Earliest timestamp, inclusive.
    pub from_ts: Option<i64>,
    /// Latest timestamp, inclusive.
    pub to_ts: Option<i64>,
    /// Most events returned (the oldest first); no limit if `None`.
    pub limit: Option<usize>,
}

/// Counts of what the store holds and has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub events: u64,
    pub bytes: u64,
    /// Events waiting in the buffer.
    pub buffered: usize,
    /// Events skipped because their id was already stored.
    pub duplicates: u64,
    pub deleted_by_age: u64,
    pub deleted_by_bytes: u64,
}

/// Why the store failed, with its file.
#[derive(Debug, thiserror::Error)]
#[error("event store {path}: {what}: {source}")]
pub struct StoreError {
    path: PathBuf,
    what: &'static str,
    #[source]
    source: rusqlite::Error,
}

/// The event store over one connection to the device database.
pub struct EventStore {
    path: PathBuf,
    connection: Connection,
    config: StoreConfig,
    buffer: Vec<(Event, String)>,
    stats: StoreStats,
}

impl EventStore {
    /// Opens the store in the database at `path` (created if needed).
    pub fn open(path: &Path, config: StoreConfig) -> Result<EventStore, StoreError> {
        let fail = |what| failure(path, what);
        let mut connection = sqlite::open(path).map_err(fail("cannot open"))?;
        sqlite::migrate(&mut connection, "events", MIGRATIONS)
            .map_err(fail("cannot migrate its tables"))?;
        let (events, bytes): (i64, i64) = connection
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM events",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(fail("cannot count its events"))?;
        Ok(EventStore {
            path: path.to_owned(),
            connection,
            config,
            buffer: Vec::new(),
            stats: StoreStats {
                events: events as u64,
                bytes: bytes as u64,
                ..StoreStats::default()
            },
        })
    }

    /// Buffers a validated event; writes the batch when it is full.
    pub fn append(&mut self, event: &Event) -> Result<(), StoreError> {
        self.buffer.push((event.clone(), event_args(event)));
        if self.buffer.len() >= self.config.batch_events.max(1) {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered events in one transaction; returns how many were new.
    pub fn flush(&mut self) -> Result<usize, StoreError> {
        if self.buffer.is_empty() {
            return Ok(0);
        }
        let fail = |what| failure(&self.path, what);
        let transaction = self
            .connection
            .transaction()
            .map_err(fail("cannot start a batch"))?;
        let (written, bytes) =
            insert_batch(&transaction, &self.buffer).map_err(fail("cannot write a batch"))?;
        transaction
            .commit()
            .map_err(fail("cannot commit a batch"))?;
        self.stats.duplicates += (self.buffer.len() - written) as u64;
        self.stats.events += written as u64;
        self.stats.bytes += bytes;
        self.buffer.clear();
        Ok(written)
    }

    /// Deletes what the retention does not keep, as of `now_ms`.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.flush()?;
        let path = self.path.clone();
        let fail = |what| failure(&path, what);
        let cutoff = now_ms.saturating_sub(self.config.retention.max_age_ms);
        let (count, bytes) = delete_where(&self.connection, "ts < ?1", cutoff)
            .map_err(fail("cannot delete old events"))?;
        self.forget(count, bytes);
        self.stats.deleted_by_age += count;
        let excess = self
            .stats
            .bytes
            .saturating_sub(self.config.retention.max_bytes);
        if excess > 0 {
            let last = oldest_holding(&self.connection, excess)
                .map_err(fail("cannot find the oldest events"))?;
            let (count, bytes) = delete_where(&self.connection, "seq <= ?1", last)
                .map_err(fail("cannot delete the oldest events"))?;
            self.forget(count, bytes);
            self.stats.deleted_by_bytes += count;
        }
        Ok(())
    }

    /// Stored events matching `query`, in arrival order (buffered events are written first).
    pub fn query(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.flush()?;
        let fail = |what| failure(&self.path, what);
        select(&self.connection, query).map_err(fail("cannot query events"))
    }

    /// What the store holds now.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            buffered: self.buffer.len(),
            ..self.stats
        }
    }

    fn forget(&mut self, count: u64, bytes: u64) {
        self.stats.events = self.stats.events.saturating_sub(count);
        self.stats.bytes = self.stats.bytes.saturating_sub(bytes);
    }
}

/// Makes the error for `what` failing on the store at `path`.
fn failure(path: &Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError { path, what, source }
}

fn event_args(event: &Event) -> String {
    serde_json::Value::Object(event.args.clone()).to_string()
}

/// The event's size as stored: the length of its JSON form.
fn event_bytes(event: &Event) -> u64 {
    serde_json::to_vec(event).map_or(0, |json| json.len() as u64)
}

/// Inserts a batch, skipping ids already stored; returns (inserted, their bytes).
fn insert_batch(
    transaction: &Transaction<'_>,
    batch: &[(Event, String)],
) -> rusqlite::Result<(usize, u64)> {
    let mut insert = transaction.prepare_cached(
        "INSERT OR IGNORE INTO events (id, ts, session, page, kind, item, args, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let (mut written, mut bytes) = (0, 0);
    for (event, args) in batch {
        let size = event_bytes(event);
        let inserted = insert.execute(params![
            event.id,
            event.ts,
            event.session,
            event.page,
            event.event.as_str(),
            event.item,
            args,
            size as i64,
        ])?;
        if inserted == 1 {
            written += 1;
            bytes += size;
        }
    }
    Ok((written, bytes))
}

/// Deletes events matching `condition` (one `?1` parameter); returns (count, bytes).
fn delete_where(
    connection: &Connection,
    condition: &str,
    value: i64,
) -> rusqlite::Result<(u64, u64)> {
    let (count, bytes): (i64, i64) = connection.query_row(
        &format!("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM events WHERE {condition}"),
        params![value],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    if count > 0 {
        connection.execute(
            &format!("DELETE FROM events WHERE {condition}"),
            params![value],
        )?;
    }
    Ok((count as u64, bytes as u64))
}

/// The `seq` of the newest event among the oldest ones that together hold at least `bytes`.
fn oldest_holding(connection: &Connection, bytes: u64) -> rusqlite::Result<i64> {
    let mut oldest = connection.prepare("SELECT seq, bytes FROM events ORDER BY seq")?;
    let mut rows = oldest.query([])?;
    let (mut freed, mut last) = (0u64, 0i64);
    while let Some(row) = rows.next()? {
        last = row.get(0)?;
        freed += row.get::<_, i64>(1)? as u64;
        if freed >= bytes {
            break;
        }
    }
    Ok(last)
}

fn select(connection: &Connection, query: &EventQuery) -> rusqlite::Result<Vec<Event>> {
    let mut conditions = Vec::new();
    let mut values: Vec<SqlValue> = Vec::new();
    let mut filter = |condition: &str, value: SqlValue| {
        values.push(value);
        conditions.push(format!("{condition} ?{}", values.len()));
    };
    if let Some(session) = &query.session {
        filter("session =", SqlValue::Text(session.clone()));
    }
    if let Some(page) = &query.page {
        filter("page =", SqlValue::Text(page.clone()));
    }
    if let Some(from) = query.from_ts {
        filter("ts >=", SqlValue::Integer(from));
    }
    if let Some(to) = query.to_ts {
        filter("ts <=", SqlValue::Integer(to));
    }
    let mut sql = "SELECT id, ts, session, page, kind, item, args FROM events".to_owned();
    if !conditions.is_empty() {
        sql += &format!(" WHERE {}", conditions.join(" AND "));
    }
    sql += " ORDER BY seq";
    if let Some(limit) = query.limit {
        sql += &format!(" LIMIT {limit}");
    }
    let mut statement = connection.prepare(&sql)?;
    let rows = statement.query_map(params_from_iter(values), row_event)?;
    rows.collect()
}

fn row_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = row.get(4)?;
    let args: String = row.get(6)?;
    let corrupt = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
    };
    Ok(Event {
        id: row.get(0)?,
        ts: row.get(1)?,
        session: row.get(2)?,
        page: row.get(3)?,
        event: EventKind::from_name(&kind)
            .ok_or_else(|| corrupt(format!("stored event kind {kind:?} is unknown")))?,
        item: row.get(5)?,
        args: serde_json::from_str(&args)
            .map_err(|e| corrupt(format!("stored event args are not a JSON object: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, ts: i64, session: &str, page: &str) -> Event {
        let mut args = serde_json::Map::new();
        args.insert("n".into(), ts.into());
        Event {
            id: id.into(),
            ts,
            session: session.into(),
            page: page.into(),
            event: EventKind::Click,
            item: "sku".into(),
            args,
        }
    }

    fn ids(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.id.as_str()).collect()
    }

    fn config(batch_events: usize, retention: Retention) -> StoreConfig {
        StoreConfig {
            retention,
            batch_events,
        }
    }

    #[test]
    fn writes_in_batches_and_queries_by_session_page_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        let mut store = EventStore::open(&path, config(3, Retention::default())).unwrap();
        for (i, (session, page)) in [("a", "home"), ("a", "item"), ("b", "item"), ("a", "item")]
            .into_iter()
            .enumerate()
        {
            store
                .append(&event(&format!("e{i}"), i as i64 * 10, session, page))
                .unwrap();
        }
        // Three made a batch; the fourth waits.
        assert_eq!(store.stats().events, 3);
        assert_eq!(store.stats().buffered, 1);
        let query = |session: Option<&str>, page: Option<&str>, from, to| EventQuery {
            session: session.map(Into::into),
            page: page.map(Into::into),
            from_ts: from,
            to_ts: to,
            limit: None,
        };
        let a_items = store
            .query(&query(Some("a"), Some("item"), None, None))
            .unwrap();
        assert_eq!(ids(&a_items), ["e1", "e3"]);
        assert_eq!(a_items[1], event("e3", 30, "a", "item"));
        let middle = store.query(&query(None, None, Some(10), Some(20))).unwrap();
        assert_eq!(ids(&middle), ["e1", "e2"]);
        let first_two = EventQuery {
            limit: Some(2),
            ..EventQuery::default()
        };
        assert_eq!(ids(&store.query(&first_two).unwrap()), ["e0", "e1"]);
    }

    #[test]
    fn events_survive_reopening_and_an_id_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        {
            let mut store = EventStore::open(&path, StoreConfig::default()).unwrap();
            store.append(&event("e1", 1, "s", "p")).unwrap();
            store.append(&event("e2", 2, "s", "p")).unwrap();
            store.flush().unwrap();
        }
        let mut store = EventStore::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.stats().events, 2);
        let bytes = store.stats().bytes;
        assert!(bytes > 0);
        store.append(&event("e2", 2, "s", "p")).unwrap();
        store.append(&event("e3", 3, "s", "p")).unwrap();
        assert_eq!(store.flush().unwrap(), 1);
        assert_eq!(store.stats().duplicates, 1);
        assert_eq!(
            ids(&store.query(&EventQuery::default()).unwrap()),
            ["e1", "e2", "e3"]
        );
    }

    #[test]
    fn retention_deletes_by_age_then_oldest_first_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        let mut store = EventStore::open(
            &path,
            config(
                100,
                Retention {
                    max_age_ms: 1000,
                    max_bytes: u64::MAX,
                },
            ),
        )
        .unwrap();
        for i in 0..10 {
            store
                .append(&event(&format!("e{i}"), i * 200, "s", "p"))
                .unwrap();
        }
        // Now = 2000: events before ts 1000 go.
        store.enforce_retention(2000).unwrap();
        let kept = store.query(&EventQuery::default()).unwrap();
        assert_eq!(ids(&kept), ["e5", "e6", "e7", "e8", "e9"]);
        assert_eq!(store.stats().deleted_by_age, 5);
        let per_event = store.stats().bytes / 5;
        drop(store);
        // Reopened with room for two events' bytes: the three oldest go.
        let mut store = EventStore::open(
            &path,
            config(
                100,
                Retention {
                    max_age_ms: i64::MAX,
                    max_bytes: per_event * 2,
                },
            ),
        )
        .unwrap();
        store.enforce_retention(2000).unwrap();
        assert_eq!(
            ids(&store.query(&EventQuery::default()).unwrap()),
            ["e8", "e9"]
        );
        assert_eq!(store.stats().deleted_by_bytes, 3);
        assert!(store.stats().bytes <= per_event * 2);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        std::fs::write(&path, b"definitely not SQLite").unwrap();
        let error = EventStore::open(&path, StoreConfig::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("device.sqlite"), "{error}");
    }
}
