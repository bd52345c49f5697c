//! The tunnel outbox: what the device must deliver to the cloud, kept in the device's SQLite
//! database until the cloud acknowledges it.
//!
//! * **Persistent**: [`Outbox::push`] commits the item before it returns, so a crash right
//!   after a task produced an output loses nothing; the item is removed only when the caller
//!   says the cloud acknowledged it ([`Outbox::remove`]). A crash between the cloud's
//!   acknowledgement and the removal sends the item again, which is why every item carries an
//!   id that the cloud stores once (at-least-once on the wire, exactly-once in the store).
//! * **Ordered**: each item gets a sequence number, increasing over the database's life (never
//!   reused, even after removals); [`Outbox::peek`] hands items out in that order, so the
//!   outputs of one task reach the cloud in the order the task produced them.
//! * **Several queues** in one table (e.g. task outputs and task reports), each with its own
//!   order and byte budget.
//! * **Bounded**: past [`OutboxConfig::max_bytes`] in one queue, the oldest items of that queue
//!   are deleted and counted in [`QueueStats::dropped`]: a device offline for weeks keeps the
//!   newest outputs rather than refusing them or filling the disk.
//!
//! This module knows nothing about networks; the device container's uplink sends what it peeks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::sqlite;

/// The outbox's tables, in order (see [`sqlite::migrate`]).
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        task TEXT NOT NULL,
        version TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        payload BLOB NOT NULL,
        UNIQUE (queue, id)
    );
    CREATE INDEX outbox_by_queue ON outbox (queue, seq);",
    // 2: how often an item was handed to its consumer (e.g. a pending run started).
    "ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;",
];

/// Outbox settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Payload bytes one queue may hold before its oldest items are dropped.
    pub max_bytes: u64,
    /// Size the database file may not grow past (see [`sqlite::open`]).
    pub max_db_bytes: Option<u64>,
}

impl Default for OutboxConfig {
    /// 64 MiB per queue.
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 64 << 20,
            max_db_bytes: None,
        }
    }
}

/// An item to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem<'a> {
    /// Unique within its queue; the cloud deduplicates by it.
    pub id: &'a str,
    pub task: &'a str,
    pub version: &'a str,
    /// Unix time in milliseconds when the item was produced.
    pub created_at_ms: i64,
    pub payload: &'a [u8],
}

/// An item waiting for delivery, with its place in the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Position in the outbox's order; increases with every push.
    pub seq: i64,
    pub id: String,
    pub task: String,
    pub version: String,
    pub created_at_ms: i64,
    pub payload: Vec<u8>,
}

/// What one queue holds and has dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub items: u64,
    pub bytes: u64,
    /// Items deleted undelivered to keep within the byte budget (since the outbox was opened).
    pub dropped: u64,
}

/// Why the outbox failed, with its file.
#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {what}: {source}")]
pub struct OutboxError {
    path: PathBuf,
    what: &'static str,
    #[source]
    source: rusqlite::Error,
}

/// The outbox over one connection to the device database.
pub struct Outbox {
    path: PathBuf,
    connection: Connection,
    config: OutboxConfig,
    stats: HashMap<String, QueueStats>,
}

impl Outbox {
    /// Opens the outbox in the database at `path` (created if needed) with what it held.
    pub fn open(path: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        let fail = |what| failure(path, what);
        let mut connection =
            sqlite::open(path, config.max_db_bytes).map_err(fail("cannot open"))?;
        sqlite::migrate(&mut connection, "outbox", MIGRATIONS)
            .map_err(fail("cannot migrate its tables"))?;
        let stats = count_queues(&connection).map_err(fail("cannot count its items"))?;
        Ok(Outbox {
            path: path.to_owned(),
            connection,
            config,
            stats,
        })
    }

    /// Stores an item at the end of `queue` (durably, before returning) and drops the queue's
    /// oldest items if it is over its byte budget. Returns the item's sequence number, or the
    /// existing one's if an item with this id is already queued.
    pub fn push(&mut self, queue: &str, item: &NewItem) -> Result<i64, OutboxError> {
        let change = Change {
            push: vec![(queue, item.clone())],
            remove: Vec::new(),
        };
        let seqs = self.commit(&change, |_| Ok(()))?;
        Ok(seqs.first().copied().unwrap_or_default())
    }
    /// The oldest items of `queue`, in order: at most `max_items`, and no more payload bytes
    /// than `max_bytes` except that the first item is always included.
    pub fn peek(
        &self,
        queue: &str,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        let fail = |what| failure(&self.path, what);
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT seq, id, task, version, created_at_ms, payload FROM outbox
                 WHERE queue = ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(fail("cannot prepare a read"))?;
        let rows = statement
            .query_map(params![queue, max_items as i64], |row| {
                Ok(Item {
                    seq: row.get(0)?,
                    id: row.get(1)?,
                    task: row.get(2)?,
                    version: row.get(3)?,
                    created_at_ms: row.get(4)?,
                    payload: row.get(5)?,
                })
            })
            .map_err(fail("cannot read items"))?;
        let mut items = Vec::new();
        let mut bytes = 0;
        for row in rows {
            let item = row.map_err(fail("cannot read an item"))?;
            bytes += item.payload.len();
            if bytes > max_bytes && !items.is_empty() {
                break;
            }
            items.push(item);
        }
        Ok(items)
    }

    /// Deletes delivered items of `queue` by sequence number (unknown ones are ignored).
    pub fn remove(&mut self, queue: &str, seqs: &[i64]) -> Result<(), OutboxError> {
        let change = Change {
            push: Vec::new(),
            remove: seqs.iter().map(|&seq| (queue, seq)).collect(),
        };
        self.commit(&change, |_| Ok(())).map(drop)
    }

    /// Makes `change` and whatever `also` writes in one transaction: all of it or none (e.g.
    /// a task run's outputs, its report, its state and the removal of the run from the queue of
    /// pending runs). Removals come first, then pushes (each like [`Outbox::push`]), then
    /// `also`; then each queue pushed to is brought back within its byte budget. Returns the
    /// pushed items' sequence numbers, in order.
    pub fn commit(
        &mut self,
        change: &Change,
        also: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<()>,
    ) -> Result<Vec<i64>, OutboxError> {
        let fail = |what| failure(&self.path, what);
        let transaction = self
            .connection
            .transaction()
            .map_err(fail("cannot begin a transaction"))?;
        let mut deltas: HashMap<&str, Delta> = HashMap::new();
        for &(queue, seq) in &change.remove {
            let freed = delete(&transaction, queue, seq).map_err(fail("cannot delete an item"))?;
            if let Some(bytes) = freed {
                deltas.entry(queue).or_default().removed(bytes);
            }
        }
        let mut seqs = Vec::with_capacity(change.push.len());
        for (queue, item) in &change.push {
            let (seq, inserted) =
                insert(&transaction, queue, item).map_err(fail("cannot store an item"))?;
            if inserted {
                deltas
                    .entry(queue)
                    .or_default()
                    .added(item.payload.len() as u64);
            }
            seqs.push(seq);
        }
        also(&transaction).map_err(fail("cannot write what goes with the outbox change"))?;
        for (queue, _) in &change.push {
            let stored = self.stats.get(*queue).map_or(0, |stats| stats.bytes);
            let held = stored + deltas.entry(queue).or_default().bytes_added;
            let over = held
                .saturating_sub(deltas[queue].bytes_removed)
                .saturating_sub(self.config.max_bytes);
            if over > 0 {
                let (items, bytes) = drop_oldest(&transaction, queue, over)
                    .map_err(fail("cannot drop old items"))?;
                deltas.entry(queue).or_default().dropped(items, bytes);
            }
        }
        transaction
            .commit()
            .map_err(fail("cannot commit a change"))?;
        for (queue, delta) in deltas {
            delta.apply(self.stats.entry(queue.to_owned()).or_default(), queue);
        }
        Ok(seqs)
    }

    /// Counts one more attempt at each item of `queue` given (e.g. a pending run started
    /// again after a restart), durably; returns each item's attempts so far, in order (0 for
    /// an unknown item).
    pub fn count_attempt(&mut self, queue: &str, seqs: &[i64]) -> Result<Vec<u32>, OutboxError> {
        let fail = |what| failure(&self.path, what);
        let transaction = self
            .connection
            .transaction()
            .map_err(fail("cannot begin a transaction"))?;
        let mut attempts = Vec::with_capacity(seqs.len());
        {
            let mut bump = transaction
                .prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1 WHERE queue = ?1 AND seq = ?2
                     RETURNING attempts",
                )
                .map_err(fail("cannot prepare an update"))?;
            for seq in seqs {
                let counted = bump
                    .query_row(params![queue, seq], |row| row.get::<_, u32>(0))
                    .optional()
                    .map_err(fail("cannot count an attempt"))?;
                attempts.push(counted.unwrap_or(0));
            }
        }
        transaction
            .commit()
            .map_err(fail("cannot commit attempts"))?;
        Ok(attempts)
    }

    /// What `queue` holds and has dropped.
    pub fn stats(&self, queue: &str) -> QueueStats {
        self.stats.get(queue).copied().unwrap_or_default()
    }
}

/// Changes to the outbox made in one transaction by [`Outbox::commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change<'a> {
    /// Items to store at the end of their queues, in order.
    pub push: Vec<(&'a str, NewItem<'a>)>,
    /// Items to delete, by queue and sequence number (unknown ones are ignored).
    pub remove: Vec<(&'a str, i64)>,
}

/// How one queue changed in a transaction.
#[derive(Debug, Default)]
struct Delta {
    items_added: u64,
    bytes_added: u64,
    items_removed: u64,
    bytes_removed: u64,
    dropped: u64,
}

impl Delta {
    fn added(&mut self, bytes: u64) {
        self.items_added += 1;
        self.bytes_added += bytes;
    }

    fn removed(&mut self, bytes: u64) {
        self.items_removed += 1;
        self.bytes_removed += bytes;
    }

    fn dropped(&mut self, items: u64, bytes: u64) {
        self.dropped += items;
        self.items_removed += items;
        self.bytes_removed += bytes;
    }

    fn apply(&self, stats: &mut QueueStats, queue: &str) {
        stats.items = (stats.items + self.items_added).saturating_sub(self.items_removed);
        stats.bytes = (stats.bytes + self.bytes_added).saturating_sub(self.bytes_removed);
        stats.dropped += self.dropped;
        if self.dropped > 0 {
            tracing::warn!(
                queue,
                dropped = self.dropped,
                "outbox over its byte budget: oldest items dropped"
            );
        }
    }
}

/// Stores `item` at the end of `queue` unless an item with its id is there; returns its
/// sequence number and whether it was stored now.
fn insert(
    transaction: &rusqlite::Transaction,
    queue: &str,
    item: &NewItem,
) -> rusqlite::Result<(i64, bool)> {
    let inserted = transaction
        .prepare_cached(
            "INSERT INTO outbox (queue, id, task, version, created_at_ms, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (queue, id) DO NOTHING",
        )?
        .execute(params![
            queue,
            item.id,
            item.task,
            item.version,
            item.created_at_ms,
            item.payload
        ])?;
    let seq = transaction
        .prepare_cached("SELECT seq FROM outbox WHERE queue = ?1 AND id = ?2")?
        .query_row(params![queue, item.id], |row| row.get(0))?;
    Ok((seq, inserted == 1))
}

/// Deletes one item; returns its payload size, or `None` if there was no such item.
fn delete(
    transaction: &rusqlite::Transaction,
    queue: &str,
    seq: i64,
) -> rusqlite::Result<Option<u64>> {
    let mut delete = transaction.prepare_cached(
        "DELETE FROM outbox WHERE queue = ?1 AND seq = ?2 RETURNING length(payload)",
    )?;
    let mut rows = delete.query(params![queue, seq])?;
    match rows.next()? {
        Some(row) => Ok(Some(row.get::<_, i64>(0)? as u64)),
        None => Ok(None),
    }
}

/// Deletes the oldest items of `queue` until at least `bytes` payload bytes are gone (always
/// keeping the newest item). Returns (items, bytes) deleted.
fn drop_oldest(
    transaction: &rusqlite::Transaction,
    queue: &str,
    bytes: u64,
) -> rusqlite::Result<(u64, u64)> {
    let mut statement = transaction.prepare(
        "SELECT seq, length(payload) FROM outbox WHERE queue = ?1 ORDER BY seq
         LIMIT (SELECT COUNT(*) - 1 FROM outbox WHERE queue = ?1)",
    )?;
    let mut victims = Vec::new();
    let mut freed = 0u64;
    let mut rows = statement.query(params![queue])?;
    while freed < bytes {
        let Some(row) = rows.next()? else { break };
        victims.push(row.get::<_, i64>(0)?);
        freed += row.get::<_, i64>(1)? as u64;
    }
    drop(rows);
    let mut delete = transaction.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
    for seq in &victims {
        delete.execute(params![seq])?;
    }
    Ok((victims.len() as u64, freed))
}

fn count_queues(connection: &Connection) -> rusqlite::Result<HashMap<String, QueueStats>> {
    let mut statement = connection.prepare(
        "SELECT queue, COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox GROUP BY queue",
    )?;
    let rows = statement.query_map([], |row| {
        let stats = QueueStats {
            items: row.get::<_, i64>(1)? as u64,
            bytes: row.get::<_, i64>(2)? as u64,
            dropped: 0,
        };
        Ok((row.get::<_, String>(0)?, stats))
    })?;
    rows.collect()
}

fn failure(path: &Path, what: &'static str) -> impl Fn(rusqlite::Error) -> OutboxError {
    let path = path.to_owned();
    move |source| OutboxError {
        path: path.clone(),
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(id: &'a str, payload: &'a [u8]) -> NewItem<'a> {
        NewItem {
            id,
            task: "t",
            version: "1.0.0",
            created_at_ms: 7,
            payload,
        }
    }

    fn ids(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn items_survive_reopening_in_order_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        let first_seq = {
            let mut outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
            let first = outbox.push("records", &item("a", b"{}")).unwrap();
            outbox.push("records", &item("b", b"[1]")).unwrap();
            outbox.push("reports", &item("r", b"x")).unwrap();
            first
        };
        let mut outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
        assert_eq!(
            outbox.stats("records"),
            QueueStats {
                items: 2,
                bytes: 5,
                dropped: 0
            }
        );
        let items = outbox.peek("records", 10, 1 << 20).unwrap();
        assert_eq!(ids(&items), ["a", "b"]);
        assert_eq!(items[0].seq, first_seq);
        assert_eq!(items[1].payload, b"[1]");
        outbox.remove("records", &[first_seq]).unwrap();
        // A later item never reuses a removed item's number.
        let later = outbox.push("records", &item("c", b"{}")).unwrap();
        assert!(later > items[1].seq);
        assert_eq!(
            ids(&outbox.peek("records", 10, 1 << 20).unwrap()),
            ["b", "c"]
        );
        assert_eq!(ids(&outbox.peek("reports", 10, 1 << 20).unwrap()), ["r"]);
        assert_eq!(outbox.stats("records").items, 2);
    }

    #[test]
    fn peek_stops_at_the_item_and_byte_limits_but_always_hands_out_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(&dir.path().join("db"), OutboxConfig::default()).unwrap();
        for id in ["a", "b", "c", "d"] {
            outbox.push("q", &item(id, &[0; 10])).unwrap();
        }
        assert_eq!(ids(&outbox.peek("q", 3, 1 << 20).unwrap()), ["a", "b", "c"]);
        assert_eq!(ids(&outbox.peek("q", 10, 25).unwrap()), ["a", "b"]);
        assert_eq!(ids(&outbox.peek("q", 10, 1).unwrap()), ["a"]);
        assert!(outbox.peek("empty", 10, 100).unwrap().is_empty());
    }

    #[test]
    fn pushing_an_id_again_keeps_one_item() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(&dir.path().join("db"), OutboxConfig::default()).unwrap();
        let seq = outbox.push("q", &item("a", b"1")).unwrap();
        assert_eq!(outbox.push("q", &item("a", b"1")).unwrap(), seq);
        assert_eq!(outbox.stats("q").items, 1);
        assert_eq!(outbox.stats("q").bytes, 1);
    }

    #[test]
    fn a_commit_makes_all_of_its_changes_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
        let run = outbox.push("runs", &item("run-1", b"ctx")).unwrap();
        let change = Change {
            push: vec![
                ("records", item("r1", b"{}")),
                ("reports", item("ok", b"x")),
            ],
            remove: vec![("runs", run)],
        };
        let side_table = |t: &rusqlite::Transaction| {
            t.execute_batch(
                "CREATE TABLE IF NOT EXISTS side (v TEXT); INSERT INTO side VALUES ('w');",
            )
        };
        // `also` fails: neither the removal nor the pushes nor its own write happen.
        let failing = outbox.commit(&change, |t| {
            side_table(t)?;
            t.execute("INSERT INTO no_such_table VALUES (1)", [])
                .map(drop)
        });
        assert!(failing.unwrap_err().to_string().contains("what goes with"));
        assert_eq!(ids(&outbox.peek("runs", 10, 1 << 20).unwrap()), ["run-1"]);
        assert!(outbox.peek("records", 10, 1 << 20).unwrap().is_empty());
        assert_eq!(outbox.stats("records").items, 0);
        assert_eq!(outbox.stats("runs").items, 1);
        // It succeeds: all of it happens, also after reopening.
        let seqs = outbox.commit(&change, side_table).unwrap();
        assert_eq!(seqs.len(), 2);
        assert_eq!(outbox.stats("runs"), QueueStats::default());
        assert_eq!(outbox.stats("records").items, 1);
        let reopened = Outbox::open(&path, OutboxConfig::default()).unwrap();
        assert!(reopened.peek("runs", 10, 1 << 20).unwrap().is_empty());
        assert_eq!(ids(&reopened.peek("records", 10, 1 << 20).unwrap()), ["r1"]);
        assert_eq!(ids(&reopened.peek("reports", 10, 1 << 20).unwrap()), ["ok"]);
        assert_eq!(reopened.stats("reports").bytes, 1);
        let side: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM side", [], |row| row.get(0))
            .unwrap();
        assert_eq!(side, 1);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_items_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = OutboxConfig {
            max_bytes: 25,
            max_db_bytes: None,
        };
        let mut outbox = Outbox::open(&dir.path().join("db"), config).unwrap();
        outbox.push("other", &item("x", &[0; 20])).unwrap();
        for id in ["a", "b", "c", "d"] {
            outbox.push("q", &item(id, &[0; 10])).unwrap();
        }
        assert_eq!(ids(&outbox.peek("q", 10, 1 << 20).unwrap()), ["c", "d"]);
        assert_eq!(
            outbox.stats("q"),
            QueueStats {
                items: 2,
                bytes: 20,
                dropped: 2
            }
        );
        // The budget is per queue.
        assert_eq!(outbox.stats("other").items, 1);
        // One item larger than the budget is kept: it is the newest.
        outbox.push("q", &item("huge", &[0; 100])).unwrap();
        assert_eq!(ids(&outbox.peek("q", 10, 1 << 20).unwrap()), ["huge"]);
    }
}
