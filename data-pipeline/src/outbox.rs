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

use rusqlite::{Connection, params};

use crate::sqlite;

/// The outbox's tables, in order (see [`sqlite::migrate`]).
const MIGRATIONS: &[&str] = &["CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        task TEXT NOT NULL,
        version TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        payload BLOB NOT NULL,
        UNIQUE (queue, id)
    );
    CREATE INDEX outbox_by_queue ON outbox (queue, seq);"];

/// Outbox settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Payload bytes one queue may hold before its oldest items are dropped.
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    /// 64 MiB per queue.
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 64 << 20,
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
        let mut connection = sqlite::open(path).map_err(fail("cannot open"))?;
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
        let fail = |what| failure(&self.path, what);
        let transaction = self
            .connection
            .transaction()
            .map_err(fail("cannot begin a transaction"))?;
        let inserted = transaction
            .execute(
                "INSERT INTO outbox (queue, id, task, version, created_at_ms, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (queue, id) DO NOTHING",
                params![
                    queue,
                    item.id,
                    item.task,
                    item.version,
                    item.created_at_ms,
                    item.payload
                ],
            )
            .map_err(fail("cannot store an item"))?;
        let seq: i64 = transaction
            .query_row(
                "SELECT seq FROM outbox WHERE queue = ?1 AND id = ?2",
                params![queue, item.id],
                |row| row.get(0),
            )
            .map_err(fail("cannot read back an item"))?;
        let stats = self.stats.get(queue).copied().unwrap_or_default();
        let bytes = stats.bytes
            + if inserted == 1 {
                item.payload.len() as u64
            } else {
                0
            };
        let over = bytes.saturating_sub(self.config.max_bytes);
        let (dropped, dropped_bytes) = if over > 0 {
            drop_oldest(&transaction, queue, over).map_err(fail("cannot drop old items"))?
        } else {
            (0, 0)
        };
        transaction
            .commit()
            .map_err(fail("cannot commit an item"))?;
        let stats = self.stats.entry(queue.to_owned()).or_default();
        stats.items = stats.items + inserted as u64 - dropped;
        stats.bytes = bytes - dropped_bytes;
        stats.dropped += dropped;
        if dropped > 0 {
            tracing::warn!(
                queue,
                dropped,
                "outbox over its byte budget: oldest items dropped"
            );
        }
        Ok(seq)
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
        let fail = |what| failure(&self.path, what);
        let transaction = self
            .connection
            .transaction()
            .map_err(fail("cannot begin a transaction"))?;
        let (mut items, mut bytes) = (0u64, 0u64);
        {
            let mut delete = transaction
                .prepare_cached(
                    "DELETE FROM outbox WHERE queue = ?1 AND seq = ?2 RETURNING length(payload)",
                )
                .map_err(fail("cannot prepare a delete"))?;
            for seq in seqs {
                let mut rows = delete
                    .query(params![queue, seq])
                    .map_err(fail("cannot delete an item"))?;
                if let Some(row) = rows.next().map_err(fail("cannot delete an item"))? {
                    items += 1;
                    bytes +=
                        row.get::<_, i64>(0)
                            .map_err(fail("cannot delete an item"))? as u64;
                }
            }
        }
        transaction
            .commit()
            .map_err(fail("cannot commit a delete"))?;
        let stats = self.stats.entry(queue.to_owned()).or_default();
        stats.items = stats.items.saturating_sub(items);
        stats.bytes = stats.bytes.saturating_sub(bytes);
        Ok(())
    }

    /// What `queue` holds and has dropped.
    pub fn stats(&self, queue: &str) -> QueueStats {
        self.stats.get(queue).copied().unwrap_or_default()
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
    fn a_full_queue_drops_its_oldest_items_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = OutboxConfig { max_bytes: 25 };
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
