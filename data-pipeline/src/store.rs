//! The event store: every accepted event, append-only, in the device's SQLite database.
//!
//! * **Batched**: [`EventStore::append`] buffers events and writes a batch in one transaction
//!   when [`StoreConfig::batch_events`] are waiting; [`EventStore::flush`] writes what waits
//!   (the device calls it on a timer and before shutting down). A crash loses at most the
//!   buffered events, never part of a batch.
//! * **Full disk**: a batch that cannot be written stays buffered; from then on
//!   [`EventStore::append`] tries the write again before taking an event and refuses the event
//!   with the write's error while it fails ([`StoreError::is_storage_full`] tells a full disk).
//!   So at most one batch is accepted and not yet stored (as with a crash), memory stays
//!   bounded, nothing stored is touched, and events are taken again once space is back.
//! * **Once per id**: an event whose id is already stored (or buffered) is skipped and counted,
//!   so a host app that sends again after a crash does not double-count.
//! * **Bounded**: [`EventStore::enforce_retention`] deletes events older than
//!   [`Retention::max_age_ms`] and then the oldest until the stored bytes fit
//!   [`Retention::max_bytes`].
//! * **Queries** by session, page and time range ([`EventQuery`]) serve windows and tasks, in
//!   arrival order.
//!
//! A batch is stored as one row, a *block*: its events' JSON, one per line, with their time
//! range and a 64-bit hash of each id. Writes are constant and queries rare, so a block costs one
//! sequential insert instead of a row and four index entries per event; a query reads the blocks
//! whose time range overlaps its own and filters their events exactly. Ids are checked against
//! an in-memory map from id hash to a block holding it (20 to 40 bytes per stored event, rebuilt
//! from the hashes at open); on a hit the block is read and the id itself compared, so a hash
//! collision never drops a different event. Retention deletes whole blocks and rewrites the one
//! at the edge, so it stays exact per event.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use foldhash::{HashMap, HashMapExt};
use rusqlite::{Connection, OptionalExtension, params};

use crate::event::{Event, EventKind};
use crate::sqlite;

/// The store's tables, in order (see [`sqlite::migrate`]).
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE events (
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
    CREATE INDEX events_by_ts ON events (ts);",
    // One row per batch (see the module doc). `EventStore::open` moves the rows of `events` into
    // blocks and drops it: SQL cannot compute the id hashes.
    "CREATE TABLE event_blocks (
        seq INTEGER PRIMARY KEY,
        min_ts INTEGER NOT NULL,
        max_ts INTEGER NOT NULL,
        count INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        ids BLOB NOT NULL,
        events BLOB NOT NULL
    );",
];

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
    /// How much history is kept.
    pub retention: Retention,
    /// Events buffered before a batch is written.
    pub batch_events: usize,
    /// Size the database file may not grow past (see [`sqlite::open`]).
    pub max_db_bytes: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retention: Retention::default(),
            batch_events: 256,
            max_db_bytes: None,
        }
    }
}

/// What to read back. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events of this session.
    pub session: Option<String>,
    /// Only events on this page.
    pub page: Option<String>,
    /// Earliest timestamp, inclusive.
    pub from_ts: Option<i64>,
    /// Latest timestamp, inclusive.
    pub to_ts: Option<i64>,
    /// Most events returned; no limit if `None`.
    pub limit: Option<usize>,
    /// With a `limit`, take the newest matching events rather than the oldest (they are still
    /// returned oldest first).
    pub newest: bool,
}

/// Counts of what the store holds and has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Events stored (not counting the buffered ones).
    pub events: u64,
    /// Their bytes (JSON size).
    pub bytes: u64,
    /// Events waiting in the buffer.
    pub buffered: usize,
    /// Events skipped because their id was already stored.
    pub duplicates: u64,
    /// Events deleted for being older than the retention's age.
    pub deleted_by_age: u64,
    /// Events deleted, oldest first, to fit the retention's bytes.
    pub deleted_by_bytes: u64,
    /// Attempts to write a batch that failed (it stayed buffered), e.g. on a full disk.
    pub write_failures: u64,
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

impl StoreError {
    /// Whether the disk (or the database's size limit) is full.
    pub fn is_storage_full(&self) -> bool {
        crate::sqlite::is_storage_full(&self.source)
    }
}

/// The event store over one connection to the device database.
pub struct EventStore {
    path: PathBuf,
    connection: Connection,
    config: StoreConfig,
    /// The next block, not written yet; it will be block `next_seq`.
    pending: Block,
    /// Whether the last attempt to write `pending` failed.
    write_failing: bool,
    next_seq: i64,
    /// The hash of every stored or buffered id, to a block holding it.
    ids: HashMap<u64, i64>,
    /// Hashes that more than one id had (collisions, almost never), with how many still hold
    /// them: their entry in `ids` may name a block that holds another id.
    shared: HashMap<u64, u32>,
    /// Hashes ids; [`id_hash`] except in tests, which force collisions.
    hash: fn(&str) -> u64,
    stats: StoreStats,
}

impl EventStore {
    /// Opens the store in the database at `path` (created if needed).
    pub fn open(path: &Path, config: StoreConfig) -> Result<EventStore, StoreError> {
        EventStore::open_hashing(path, config, id_hash)
    }

    fn open_hashing(
        path: &Path,
        config: StoreConfig,
        hash: fn(&str) -> u64,
    ) -> Result<EventStore, StoreError> {
        let fail = |what| failure(path, what);
        let mut connection =
            sqlite::open(path, config.max_db_bytes).map_err(fail("cannot open"))?;
        sqlite::migrate(&mut connection, "events", MIGRATIONS)
            .map_err(fail("cannot migrate its tables"))?;
        import_event_rows(&mut connection, config.batch_events.max(1), hash)
            .map_err(fail("cannot move its events into blocks"))?;
        let mut store = EventStore {
            path: path.to_owned(),
            connection,
            config,
            pending: Block::default(),
            write_failing: false,
            next_seq: 1,
            ids: HashMap::new(),
            shared: HashMap::new(),
            hash,
            stats: StoreStats::default(),
        };
        store
            .load_ids()
            .map_err(fail("cannot read its events' ids"))?;
        Ok(store)
    }

    /// Buffers a validated event, unless its id is known; writes the batch when it is full.
    /// Fails only if the event cannot be taken: its id cannot be looked up, or the last batch
    /// could not be written and still cannot.
    pub fn append(&mut self, event: &Event) -> Result<(), StoreError> {
        let hash = (self.hash)(&event.id);
        let known = self
            .is_known(hash, &event.id)
            .map_err(failure(&self.path, "cannot look up an event id"))?;
        if known {
            self.stats.duplicates += 1;
            return Ok(());
        }
        if self.write_failing {
            self.flush()?;
        }
        self.pending
            .push(hash, event)
            .map_err(failure(&self.path, "cannot encode an event"))?;
        self.remember(hash, self.next_seq);
        if self.pending.len() >= self.config.batch_events.max(1)
            && let Err(e) = self.flush()
        {
            tracing::warn!(error = %e, buffered = self.pending.len(), "events stay buffered");
        }
        Ok(())
    }

    /// Writes the buffered events in one transaction; returns how many were new.
    pub fn flush(&mut self) -> Result<usize, StoreError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let written = write_block(&self.connection, self.next_seq, &self.pending);
        self.write_failing = written.is_err();
        if self.write_failing {
            self.stats.write_failures += 1;
        }
        written.map_err(failure(&self.path, "cannot write a batch"))?;
        let written = self.pending.len();
        self.stats.events += written as u64;
        self.stats.bytes += self.pending.bytes;
        self.next_seq += 1;
        self.pending.clear();
        Ok(written)
    }

    /// Deletes what the retention does not keep, as of `now_ms`.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<(), StoreError> {
        // Deleting may be what makes room for the buffered batch: write it after, if it fails.
        let flushed = self.flush();
        let retention = self.config.retention;
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        let transaction = self
            .connection
            .transaction()
            .map_err(failure(&self.path, "cannot start deleting"))?;
        let by_age = delete_older(&transaction, cutoff)
            .map_err(failure(&self.path, "cannot delete old events"))?;
        let excess =
            (self.stats.bytes.saturating_sub(by_age.bytes)).saturating_sub(retention.max_bytes);
        let by_bytes = delete_oldest(&transaction, excess)
            .map_err(failure(&self.path, "cannot delete the oldest events"))?;
        transaction
            .commit()
            .map_err(failure(&self.path, "cannot commit deleting"))?;
        for hash in by_age.hashes.iter().chain(&by_bytes.hashes) {
            self.forget(*hash);
        }
        let count = |deleted: &Deleted| deleted.hashes.len() as u64;
        let (events, bytes) = (&mut self.stats.events, &mut self.stats.bytes);
        *events = events.saturating_sub(count(&by_age) + count(&by_bytes));
        *bytes = bytes.saturating_sub(by_age.bytes + by_bytes.bytes);
        self.stats.deleted_by_age += count(&by_age);
        self.stats.deleted_by_bytes += count(&by_bytes);
        match flushed {
            Ok(_) => Ok(()),
            Err(_) => self.flush().map(drop),
        }
    }

    /// Stored events matching `query`, in arrival order (buffered events are written first).
    pub fn query(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.flush()?;
        select(&self.connection, query).map_err(failure(&self.path, "cannot query events"))
    }

    /// What the store holds now.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            buffered: self.pending.len(),
            ..self.stats
        }
    }

    /// Fills `ids`, the counts and `next_seq` from the stored blocks.
    fn load_ids(&mut self) -> rusqlite::Result<()> {
        let mut statement = self
            .connection
            .prepare("SELECT seq, bytes, ids FROM event_blocks ORDER BY seq")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let hashes = decode_hashes(row.get_ref(2)?.as_blob()?)?;
            for hash in &hashes {
                remember(&mut self.ids, &mut self.shared, *hash, seq);
            }
            self.stats.events += hashes.len() as u64;
            self.stats.bytes += row.get::<_, i64>(1)? as u64;
            self.next_seq = seq + 1;
        }
        Ok(())
    }

    /// Whether an event with this id is stored or buffered.
    fn is_known(&self, hash: u64, id: &str) -> rusqlite::Result<bool> {
        let Some(&seq) = self.ids.get(&hash) else {
            return Ok(false);
        };
        if self.block_holds(seq, hash, id)? {
            return Ok(true);
        }
        if !self.shared.contains_key(&hash) {
            // The only id with this hash is another one.
            return Ok(false);
        }
        if self.pending.holds(hash, id)? {
            return Ok(true);
        }
        let mut statement = self
            .connection
            .prepare("SELECT min_ts, max_ts, bytes, ids, events FROM event_blocks")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            if Block::from_row(row)?.holds(hash, id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether block `seq` (stored or the pending one) holds an event with this id.
    fn block_holds(&self, seq: i64, hash: u64, id: &str) -> rusqlite::Result<bool> {
        if seq == self.next_seq {
            return self.pending.holds(hash, id);
        }
        match read_block(&self.connection, seq)? {
            Some(block) => block.holds(hash, id),
            None => Ok(false),
        }
    }

    fn remember(&mut self, hash: u64, seq: i64) {
        remember(&mut self.ids, &mut self.shared, hash, seq);
    }

    /// Forgets one holder of `hash` (a deleted event).
    fn forget(&mut self, hash: u64) {
        if let Some(holders) = self.shared.get_mut(&hash) {
            *holders -= 1;
            if *holders > 0 {
                return;
            }
            self.shared.remove(&hash);
        }
        self.ids.remove(&hash);
    }
}

/// Records that block `seq` holds an event whose id has `hash`.
fn remember(ids: &mut HashMap<u64, i64>, shared: &mut HashMap<u64, u32>, hash: u64, seq: i64) {
    match ids.entry(hash) {
        Entry::Occupied(_) => *shared.entry(hash).or_insert(1) += 1,
        Entry::Vacant(slot) => {
            slot.insert(seq);
        }
    }
}

/// Makes the error for `what` failing on the store at `path`.
fn failure(path: &Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError { path, what, source }
}

/// FNV-1a: stored with the events, so it must never change (unlike std's or foldhash's hashes).
fn id_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The error for stored data that does not decode.
fn corrupt(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, what.into())
}

/// What of a stored event's JSON retention and dedup need, without decoding the rest.
#[derive(serde::Deserialize)]
struct Key<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    ts: i64,
}

fn decode<'a, T: serde::Deserialize<'a>>(line: &'a [u8]) -> rusqlite::Result<T> {
    serde_json::from_slice(line).map_err(|e| corrupt(format!("stored event is not valid: {e}")))
}

fn decode_hashes(blob: &[u8]) -> rusqlite::Result<Vec<u64>> {
    if !blob.len().is_multiple_of(8) {
        return Err(corrupt(format!(
            "stored id hashes are {} bytes",
            blob.len()
        )));
    }
    Ok(blob
        .chunks_exact(8)
        .map(|chunk| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(chunk);
            u64::from_le_bytes(bytes)
        })
        .collect())
}

/// Events written together, in arrival order: their JSON, each ended by a newline (which JSON
/// text never holds), and the hashes of their ids.
#[derive(Debug, Default)]
struct Block {
    hashes: Vec<u64>,
    json: Vec<u8>,
    min_ts: i64,
    max_ts: i64,
    /// The events' JSON size, newlines not counted.
    bytes: u64,
}

impl Block {
    fn len(&self) -> usize {
        self.hashes.len()
    }

    fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    fn clear(&mut self) {
        self.hashes.clear();
        self.json.clear();
        self.bytes = 0;
    }

    fn push(&mut self, hash: u64, event: &Event) -> rusqlite::Result<()> {
        let start = self.json.len();
        serde_json::to_writer(&mut self.json, event)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        self.push_json(hash, event.ts, start);
        Ok(())
    }

    /// Ends the event whose JSON was written from `start`.
    fn push_json(&mut self, hash: u64, ts: i64, start: usize) {
        self.bytes += (self.json.len() - start) as u64;
        self.json.push(b'\n');
        if self.hashes.is_empty() {
            (self.min_ts, self.max_ts) = (ts, ts);
        }
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        self.hashes.push(hash);
    }

    /// Each event's id hash and JSON.
    fn events(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.hashes
            .iter()
            .copied()
            .zip(self.json.split(|&byte| byte == b'\n'))
    }

    fn holds(&self, hash: u64, id: &str) -> rusqlite::Result<bool> {
        for (_, line) in self.events().filter(|(h, _)| *h == hash) {
            if decode::<Key<'_>>(line)?.id == id {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The block without the events `drop` chooses (given each one's key and JSON size), and
    /// the hashes of those dropped.
    fn without(
        &self,
        mut drop: impl FnMut(&Key<'_>, u64) -> bool,
    ) -> rusqlite::Result<(Block, Vec<u64>)> {
        let (mut kept, mut dropped) = (Block::default(), Vec::new());
        for (hash, line) in self.events() {
            let key: Key<'_> = decode(line)?;
            if drop(&key, line.len() as u64) {
                dropped.push(hash);
            } else {
                let start = kept.json.len();
                kept.json.extend_from_slice(line);
                kept.push_json(hash, key.ts, start);
            }
        }
        Ok((kept, dropped))
    }

    /// Reads `min_ts, max_ts, bytes, ids, events`.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Block> {
        let block = Block {
            min_ts: row.get(0)?,
            max_ts: row.get(1)?,
            bytes: row.get::<_, i64>(2)? as u64,
            hashes: decode_hashes(row.get_ref(3)?.as_blob()?)?,
            json: row.get(4)?,
        };
        let lines = block.json.iter().filter(|&&byte| byte == b'\n').count();
        if lines != block.hashes.len() {
            return Err(corrupt(format!(
                "stored block has {} id hashes for {lines} events",
                block.hashes.len()
            )));
        }
        Ok(block)
    }
}

fn read_block(connection: &Connection, seq: i64) -> rusqlite::Result<Option<Block>> {
    connection
        .prepare_cached(
            "SELECT min_ts, max_ts, bytes, ids, events FROM event_blocks WHERE seq = ?1",
        )?
        .query_row(params![seq], Block::from_row)
        .optional()
}

/// Writes `block` as block `seq`, replacing it if it exists.
fn write_block(connection: &Connection, seq: i64, block: &Block) -> rusqlite::Result<()> {
    let ids: Vec<u8> = block.hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
    connection
        .prepare_cached(
            "INSERT OR REPLACE INTO event_blocks (seq, min_ts, max_ts, count, bytes, ids, events)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            seq,
            block.min_ts,
            block.max_ts,
            block.len() as i64,
            block.bytes as i64,
            ids,
            block.json,
        ])?;
    Ok(())
}

/// Events deleted by retention: their id hashes and bytes.
#[derive(Default)]
struct Deleted {
    hashes: Vec<u64>,
    bytes: u64,
}

/// Replaces block `seq` by `kept` (deleted if empty), recording what went.
fn shrink_block(
    connection: &Connection,
    seq: i64,
    old: &Block,
    (kept, dropped): (Block, Vec<u64>),
    deleted: &mut Deleted,
) -> rusqlite::Result<()> {
    if kept.is_empty() {
        connection.execute("DELETE FROM event_blocks WHERE seq = ?1", params![seq])?;
    } else {
        write_block(connection, seq, &kept)?;
    }
    deleted.bytes += old.bytes - kept.bytes;
    deleted.hashes.extend(dropped);
    Ok(())
}

/// The stored blocks (seq, block) matching `condition`, in arrival order.
fn blocks_where(
    connection: &Connection,
    condition: &str,
    value: i64,
) -> rusqlite::Result<Vec<(i64, Block)>> {
    let mut statement = connection.prepare(&format!(
        "SELECT min_ts, max_ts, bytes, ids, events, seq FROM event_blocks
         WHERE {condition} ORDER BY seq"
    ))?;
    let rows = statement.query_map(params![value], |row| {
        Ok((row.get(5)?, Block::from_row(row)?))
    })?;
    rows.collect()
}

/// Deletes the events with a timestamp before `cutoff`.
fn delete_older(connection: &Connection, cutoff: i64) -> rusqlite::Result<Deleted> {
    let mut deleted = Deleted::default();
    for (seq, block) in blocks_where(connection, "min_ts < ?1", cutoff)? {
        let split = block.without(|key, _| key.ts < cutoff)?;
        shrink_block(connection, seq, &block, split, &mut deleted)?;
    }
    Ok(deleted)
}

/// Deletes the oldest events (in arrival order) until they held at least `excess` bytes.
fn delete_oldest(connection: &Connection, excess: u64) -> rusqlite::Result<Deleted> {
    let mut deleted = Deleted::default();
    let mut after = 0;
    while deleted.bytes < excess {
        let Some((seq, block)) = blocks_where(
            connection,
            "seq = (SELECT MIN(seq) FROM event_blocks WHERE seq > ?1)",
            after,
        )?
        .pop() else {
            break;
        };
        let mut freed = deleted.bytes;
        let split = block.without(|_, bytes| {
            let go = freed < excess;
            freed += if go { bytes } else { 0 };
            go
        })?;
        shrink_block(connection, seq, &block, split, &mut deleted)?;
        after = seq;
    }
    Ok(deleted)
}

fn select(connection: &Connection, query: &EventQuery) -> rusqlite::Result<Vec<Event>> {
    let from = query.from_ts.unwrap_or(i64::MIN);
    let to = query.to_ts.unwrap_or(i64::MAX);
    let limit = query.limit.unwrap_or(usize::MAX);
    let mut statement = connection.prepare(if query.newest {
        "SELECT min_ts, max_ts, bytes, ids, events FROM event_blocks
         WHERE max_ts >= ?1 AND min_ts <= ?2 ORDER BY seq DESC"
    } else {
        "SELECT min_ts, max_ts, bytes, ids, events FROM event_blocks
         WHERE max_ts >= ?1 AND min_ts <= ?2 ORDER BY seq"
    })?;
    let mut rows = statement.query(params![from, to])?;
    let mut events = Vec::new();
    while events.len() < limit {
        let Some(row) = rows.next()? else {
            break;
        };
        let mut block = Vec::new();
        for (_, line) in Block::from_row(row)?.events() {
            let event: Event = decode(line)?;
            let wanted = (from..=to).contains(&event.ts)
                && query.session.as_ref().is_none_or(|s| *s == event.session)
                && query.page.as_ref().is_none_or(|p| *p == event.page);
            if wanted {
                block.push(event);
            }
        }
        if query.newest {
            // Blocks come newest first; within one, the newest events are at its end.
            let keep = block.len().min(limit - events.len());
            events.extend(block.drain(block.len() - keep..).rev());
        } else {
            block.truncate(limit - events.len());
            events.append(&mut block);
        }
    }
    if query.newest {
        events.reverse();
    }
    Ok(events)
}

/// Moves the events of the first schema's `events` table, if it is still there, into blocks of
/// `batch` events and drops it, in one transaction.
fn import_event_rows(
    connection: &mut Connection,
    batch: usize,
    hash: fn(&str) -> u64,
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    let exists: i64 = transaction.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |row| row.get(0),
    )?;
    if exists == 0 {
        return Ok(());
    }
    let mut seq: i64 = transaction.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM event_blocks",
        [],
        |row| row.get(0),
    )?;
    {
        let mut statement = transaction
            .prepare("SELECT id, ts, session, page, kind, item, args FROM events ORDER BY seq")?;
        let mut rows = statement.query_map([], row_event)?;
        let mut block = Block::default();
        loop {
            let next = rows.next().transpose()?;
            if let Some(event) = &next {
                block.push(hash(&event.id), event)?;
            }
            if !block.is_empty() && (next.is_none() || block.len() >= batch) {
                write_block(&transaction, seq, &block)?;
                seq += 1;
                block.clear();
            }
            if next.is_none() {
                break;
            }
        }
    }
    transaction.execute_batch("DROP TABLE events;")?;
    transaction.commit()
}

/// An event of the first schema's `events` table.
fn row_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = row.get(4)?;
    let args: String = row.get(6)?;
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
            max_db_bytes: None,
        }
    }

    #[test]
    fn a_full_disk_refuses_new_events_keeps_the_stored_ones_and_recovers_when_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        let config = StoreConfig {
            max_db_bytes: Some(256 << 10),
            ..config(50, Retention::default())
        };
        let mut store = EventStore::open(&path, config).unwrap();
        let mut accepted = Vec::new();
        let refusal = (0..100_000)
            .find_map(|i| {
                let id = format!("e{i:06}-{}", "x".repeat(100));
                match store.append(&event(&id, i, "s", "item")) {
                    Ok(()) => {
                        accepted.push(id);
                        None
                    }
                    Err(e) => Some(e),
                }
            })
            .expect("the size limit was never reached");
        assert!(refusal.is_storage_full(), "{refusal}");
        assert!(refusal.to_string().contains("full"), "{refusal}");
        let stats = store.stats();
        assert!(stats.write_failures >= 2, "{stats:?}");
        // At most one batch was accepted without being stored; what is stored reads back whole.
        assert!(stats.buffered <= 50, "{stats:?}");
        let stored = store.query(&EventQuery::default());
        assert!(
            stored.is_err(),
            "a query writes the buffer first, which still fails"
        );
        // Space comes back (here: the retention deletes the oldest events).
        let mut store = {
            drop(store);
            let smaller = Retention {
                max_bytes: 64 << 10,
                ..Retention::default()
            };
            EventStore::open(
                &path,
                StoreConfig {
                    retention: smaller,
                    ..config
                },
            )
            .unwrap()
        };
        let kept_before = store.stats().events;
        store.enforce_retention(0).unwrap();
        assert!(store.stats().events < kept_before);
        store.append(&event("after", 1, "s", "item")).unwrap();
        store.flush().unwrap();
        let stored = store.query(&EventQuery::default()).unwrap();
        assert_eq!(stored.last().map(|e| e.id.as_str()), Some("after"));
        // The events that survived the retention are the newest stored ones, in order.
        let survivors: Vec<&str> = ids(&stored[..stored.len() - 1]).to_vec();
        let start = accepted.iter().position(|id| id == survivors[0]).unwrap();
        assert_eq!(survivors, accepted[start..start + survivors.len()]);
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
            newest: false,
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
    fn ids_with_the_same_hash_are_told_apart_and_each_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        // Every id collides.
        let same = |_: &str| 7;
        let open = || EventStore::open_hashing(&path, config(2, Retention::default()), same);
        let mut store = open().unwrap();
        for id in ["e1", "e2", "e3", "e2", "e3", "e4"] {
            store.append(&event(id, 1, "s", "p")).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.stats().duplicates, 2);
        drop(store);
        let mut store = open().unwrap();
        for id in ["e1", "e4", "e5"] {
            store.append(&event(id, 2, "s", "p")).unwrap();
        }
        assert_eq!(store.stats().duplicates, 2);
        assert_eq!(
            ids(&store.query(&EventQuery::default()).unwrap()),
            ["e1", "e2", "e3", "e4", "e5"]
        );
        // Deleting some holders of the hash keeps the others known.
        store
            .enforce_retention(1 + Retention::default().max_age_ms + 1)
            .unwrap();
        assert_eq!(store.stats().deleted_by_age, 4);
        store.append(&event("e5", 2, "s", "p")).unwrap();
        store.append(&event("e1", 3, "s", "p")).unwrap();
        assert_eq!(store.stats().duplicates, 3);
        assert_eq!(
            ids(&store.query(&EventQuery::default()).unwrap()),
            ["e5", "e1"]
        );
    }

    #[test]
    fn retention_by_bytes_deletes_whole_blocks_then_the_oldest_of_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        let mut store = EventStore::open(&path, config(2, Retention::default())).unwrap();
        for i in 0..6 {
            store
                .append(&event(&format!("e{i}"), 10, "s", "p"))
                .unwrap();
        }
        let per_event = store.stats().bytes / 6;
        drop(store);
        let retention = Retention {
            max_age_ms: i64::MAX,
            max_bytes: per_event * 3,
        };
        let mut store = EventStore::open(&path, config(2, retention)).unwrap();
        store.enforce_retention(10).unwrap();
        assert_eq!(store.stats().deleted_by_bytes, 3);
        let kept = store.query(&EventQuery::default()).unwrap();
        assert_eq!(ids(&kept), ["e3", "e4", "e5"]);
        let stats = store.stats();
        drop(store);
        // What is counted is what is stored.
        let store = EventStore::open(&path, config(2, retention)).unwrap();
        assert_eq!(
            (store.stats().events, store.stats().bytes),
            (stats.events, stats.bytes)
        );
        assert_eq!(stats.events, 3);
    }

    #[test]
    fn queries_filter_exactly_across_blocks_and_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        let mut store = EventStore::open(&path, config(2, Retention::default())).unwrap();
        // Out of time order, over four blocks.
        for (i, ts) in [50, 10, 40, 20, 30, 60, 5].into_iter().enumerate() {
            let session = if i % 2 == 0 { "a" } else { "b" };
            store
                .append(&event(&format!("e{i}"), ts, session, "p"))
                .unwrap();
        }
        let query = EventQuery {
            session: Some("a".into()),
            from_ts: Some(20),
            to_ts: Some(50),
            ..EventQuery::default()
        };
        assert_eq!(ids(&store.query(&query).unwrap()), ["e0", "e2", "e4"]);
        let limited = EventQuery {
            limit: Some(2),
            ..query
        };
        assert_eq!(ids(&store.query(&limited).unwrap()), ["e0", "e2"]);
        let newest = EventQuery {
            newest: true,
            ..limited.clone()
        };
        assert_eq!(ids(&store.query(&newest).unwrap()), ["e2", "e4"]);
        let one_newest = EventQuery {
            limit: Some(1),
            ..newest
        };
        assert_eq!(ids(&store.query(&one_newest).unwrap()), ["e4"]);
        let other_page = EventQuery {
            page: Some("q".into()),
            ..EventQuery::default()
        };
        assert!(store.query(&other_page).unwrap().is_empty());
    }

    #[test]
    fn events_of_the_row_per_event_schema_move_into_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.sqlite");
        {
            let mut connection = sqlite::open(&path, None).unwrap();
            sqlite::migrate(&mut connection, "events", &MIGRATIONS[..1]).unwrap();
            for e in [event("e1", 1, "s", "p"), event("e2", 2, "t", "q")] {
                connection
                    .execute(
                        "INSERT INTO events (id, ts, session, page, kind, item, args, bytes)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![
                            e.id,
                            e.ts,
                            e.session,
                            e.page,
                            e.event.as_str(),
                            e.item,
                            serde_json::Value::Object(e.args.clone()).to_string(),
                            serde_json::to_vec(&e).unwrap().len() as i64,
                        ],
                    )
                    .unwrap();
            }
        }
        let mut store = EventStore::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.stats().events, 2);
        store.append(&event("e2", 2, "t", "q")).unwrap();
        assert_eq!(store.stats().duplicates, 1);
        let all = store.query(&EventQuery::default()).unwrap();
        assert_eq!(all, [event("e1", 1, "s", "p"), event("e2", 2, "t", "q")]);
        let old_table: i64 = store
            .connection
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'events'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(old_table, 0);
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
