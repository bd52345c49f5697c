//! Tables `task_events` (device reports) and `tunnel_records` (task outputs).

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

use super::filter::Conditions;
use super::{Db, db_err, now_ms};
use crate::CloudError;

/// What [`Db::store_report`] did with a report.
#[derive(Debug, Default)]
pub struct StoredReport {
    /// Events stored (new to this device).
    pub accepted: u32,
    /// Events about a release this device was not handed (for their task and version).
    pub untrusted: Vec<TaskEventRow>,
}

/// What a device runs for a task after reporting an event of `kind` about a release.
fn device_task_state(kind: &str) -> Option<&'static str> {
    match kind {
        "installed" => Some("installed"),
        // The device abandoned this version locally (it reports the version it went back to
        // as installed next).
        "rolled_back" => Some("rolled_back"),
        "removed" => Some("removed"),
        _ => None,
    }
}

async fn insert_task_events(
    conn: &mut AnyConnection,
    device_id: &str,
    events: &[TaskEventRow],
) -> Result<u32, CloudError> {
    let mut stored = 0;
    for e in events {
        let result = sqlx::query(
            "INSERT INTO task_events (device_id, id, kind, task, version, release_id, at_ms, detail, duration_ms, failure, count, queued_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (device_id, id) DO NOTHING",
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
        .bind(&e.failure)
        .bind(e.count)
        .bind(e.queued_ms)
        .execute(&mut *conn)
        .await
        .map_err(db_err("storing task event"))?;
        stored += result.rows_affected() as u32;
    }
    Ok(stored)
}

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
    /// How long a run executed.
    pub duration_ms: i64,
    /// How long a run waited for a VM worker before it executed.
    pub queued_ms: i64,
    /// Kind of a failed run (`exception`, `deadline`, …); empty otherwise.
    pub failure: String,
    /// For `run_dropped`: how many runs.
    pub count: i64,
}

/// A release's runs as devices reported them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RunMetrics {
    /// Failed runs by kind of failure (`exception`, `deadline`, `memory`, …).
    pub failures_by_kind: std::collections::BTreeMap<String, i64>,
    /// Median and 99th-percentile duration of successful runs (the time they executed), in ms;
    /// absent before any.
    pub duration_p50_ms: Option<i64>,
    pub duration_p99_ms: Option<i64>,
    /// 99th-percentile time successful runs waited for a VM worker before they executed
    /// (behind other tasks' runs), in ms: apart from their duration.
    pub queued_p99_ms: Option<i64>,
    /// Runs devices dropped because their run queue was full.
    pub dropped: i64,
}

/// Which time of a run: how long it executed, or how long it waited before.
#[derive(Debug, Clone, Copy)]
enum RunTime {
    Duration,
    Queued,
}

impl RunTime {
    /// The successful run at rank $2 (0-based) of release $1, in this time's order.
    fn ranked_query(self) -> &'static str {
        match self {
            RunTime::Duration => {
                "SELECT duration_ms FROM task_events WHERE release_id = $1 AND kind = 'run_ok' \
                 ORDER BY duration_ms LIMIT 1 OFFSET $2"
            }
            RunTime::Queued => {
                "SELECT queued_ms FROM task_events WHERE release_id = $1 AND kind = 'run_ok' \
                 ORDER BY queued_ms LIMIT 1 OFFSET $2"
            }
        }
    }
}

/// How long a release's successful runs took: what the health gate and abort rule compare.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunLatency {
    /// Successful runs reported for the release.
    pub runs: i64,
    /// Their 99th-percentile duration in ms; `None` before any.
    pub p99_ms: Option<i64>,
}

/// One received tunnel record.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordRow {
    pub id: String,
    pub device_id: String,
    pub task: String,
    pub version: String,
    /// Position in the device's outbox: one device's records come in this order.
    pub seq: i64,
    pub created_at_ms: i64,
    pub received_at_ms: i64,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// A record a device uploaded, checked and ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub id: String,
    pub task: String,
    pub version: String,
    pub seq: i64,
    pub created_at_ms: i64,
    /// The record, UTF-8 JSON.
    pub payload: String,
}

/// Filters for listing and exporting records. Absent fields do not filter.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordFilter {
    /// Only records of this task.
    pub task: Option<String>,
    /// Only records of this device.
    pub device: Option<String>,
    /// Only records of this task version.
    pub version: Option<String>,
    /// Only records the task produced at or after this Unix time (ms).
    pub from_ms: Option<i64>,
    /// Only records the task produced before this Unix time (ms).
    pub to_ms: Option<i64>,
    /// At most this many (default 100, at most 1000; listing only, export returns all).
    pub limit: Option<i64>,
}

/// Where an export page ends: the last record's place in receive order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordCursor {
    received_at_ms: i64,
    device_id: String,
    seq: i64,
    id: String,
}

impl RecordRow {
    /// The cursor just past this record.
    pub fn cursor(&self) -> RecordCursor {
        RecordCursor {
            received_at_ms: self.received_at_ms,
            device_id: self.device_id.clone(),
            seq: self.seq,
            id: self.id.clone(),
        }
    }
}

/// Most records one listing returns.
pub const MAX_RECORDS_PER_PAGE: i64 = 1000;

/// The 0-based rank, in duration order, of the 99th-percentile run among `runs` (> 0).
fn p99_rank(runs: i64) -> i64 {
    (runs - 1) * 99 / 100
}

impl Db {
    /// Stores one device report in one transaction. An event about a release counts only if
    /// Sync handed this device that release, for that task and version; others come back in
    /// [`StoredReport::untrusted`], unstored. An event id already stored for the device is
    /// skipped. Installs, rollbacks and removals about a release also set what the device runs.
    pub async fn store_report(
        &self,
        device_id: &str,
        rows: Vec<TaskEventRow>,
    ) -> Result<StoredReport, CloudError> {
        let mut tx = self
            .begin_write()
            .await
            .map_err(db_err("starting report transaction"))?;
        let mut trusted = Vec::with_capacity(rows.len());
        let mut untrusted = Vec::new();
        for row in rows {
            let handed = row.release_id.is_empty()
                || super::releases::pulled_release(&mut tx, &row.release_id, device_id).await?
                    == Some((row.task.clone(), row.version.clone()));
            if handed {
                trusted.push(row);
            } else {
                untrusted.push(row);
            }
        }
        let accepted = insert_task_events(&mut tx, device_id, &trusted).await?;
        for row in trusted.iter().filter(|r| !r.release_id.is_empty()) {
            if let Some(state) = device_task_state(row.kind) {
                super::devices::set_device_task(
                    &mut tx,
                    device_id,
                    &row.task,
                    &row.version,
                    state,
                    &row.detail,
                )
                .await?;
            }
        }
        tx.commit()
            .await
            .map_err(db_err("committing task events"))?;
        Ok(StoredReport {
            accepted,
            untrusted,
        })
    }

    /// What devices reported about the runs of one release's version.
    pub async fn run_metrics(&self, release_id: &str) -> Result<RunMetrics, CloudError> {
        let kinds = sqlx::query(
            "SELECT failure, COUNT(*) AS n FROM task_events \
             WHERE release_id = $1 AND kind = 'run_failed' GROUP BY failure",
        )
        .bind(release_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("reading run metrics"))?;
        let mut metrics = RunMetrics::default();
        for row in kinds {
            let kind: String = row
                .try_get("failure")
                .map_err(db_err("reading run metrics"))?;
            let count: i64 = row.try_get("n").map_err(db_err("reading run metrics"))?;
            let kind = if kind.is_empty() {
                "unknown".to_owned()
            } else {
                kind
            };
            metrics.failures_by_kind.insert(kind, count);
        }
        metrics.dropped = sqlx::query(
            // PostgreSQL sums BIGINTs into NUMERIC; the cast keeps the result an i64 on both.
            "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM task_events WHERE release_id = $1 AND kind = 'run_dropped'",
        )
        .bind(release_id)
        .fetch_one(self.pool())
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db_err("reading dropped runs"))?;
        let runs = self.successful_runs(release_id).await?;
        if runs > 0 {
            metrics.duration_p50_ms = Some(
                self.successful_run_at(release_id, RunTime::Duration, (runs - 1) / 2)
                    .await?,
            );
            metrics.duration_p99_ms = Some(
                self.successful_run_at(release_id, RunTime::Duration, p99_rank(runs))
                    .await?,
            );
            metrics.queued_p99_ms = Some(
                self.successful_run_at(release_id, RunTime::Queued, p99_rank(runs))
                    .await?,
            );
        }
        Ok(metrics)
    }

    /// The number of successful runs of one release and their p99 duration.
    pub async fn run_latency(&self, release_id: &str) -> Result<RunLatency, CloudError> {
        let runs = self.successful_runs(release_id).await?;
        let p99_ms = if runs > 0 {
            Some(
                self.successful_run_at(release_id, RunTime::Duration, p99_rank(runs))
                    .await?,
            )
        } else {
            None
        };
        Ok(RunLatency { runs, p99_ms })
    }

    /// Successful runs reported for one release (events are tagged with the release that handed
    /// the device its version, so these are runs of that version).
    async fn successful_runs(&self, release_id: &str) -> Result<i64, CloudError> {
        sqlx::query("SELECT COUNT(*) FROM task_events WHERE release_id = $1 AND kind = 'run_ok'")
            .bind(release_id)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db_err("counting successful runs"))
    }

    /// `time` of the successful run at `rank` (0-based) in `time` order.
    async fn successful_run_at(
        &self,
        release_id: &str,
        time: RunTime,
        rank: i64,
    ) -> Result<i64, CloudError> {
        sqlx::query(time.ranked_query())
            .bind(release_id)
            .bind(rank)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db_err("reading run times"))
    }

    /// Stores tunnel records exactly once per (device, record id). Returns (stored, duplicates).
    pub async fn insert_records(
        &self,
        device_id: &str,
        records: &[NewRecord],
    ) -> Result<(u32, u32), CloudError> {
        let received_at_ms = now_ms();
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_err("starting upload transaction"))?;
        let mut stored = 0;
        for r in records {
            let result = sqlx::query(
                "INSERT INTO tunnel_records (device_id, id, task, version, seq, created_at_ms, received_at_ms, payload) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device_id, id) DO NOTHING",
            )
            .bind(device_id)
            .bind(&r.id)
            .bind(&r.task)
            .bind(&r.version)
            .bind(r.seq)
            .bind(r.created_at_ms)
            .bind(received_at_ms)
            .bind(&r.payload)
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

    /// Received records matching `filter`, newest first.
    pub async fn list_records(&self, filter: &RecordFilter) -> Result<Vec<RecordRow>, CloudError> {
        let limit = filter.limit.unwrap_or(100).clamp(1, MAX_RECORDS_PER_PAGE);
        self.select_records(filter, None, "DESC", limit).await
    }

    /// One page of the records matching `filter` in the order they were received (one device's
    /// records in the order its tasks produced them), starting after `after`.
    pub async fn export_records(
        &self,
        filter: &RecordFilter,
        after: Option<&RecordCursor>,
    ) -> Result<Vec<RecordRow>, CloudError> {
        self.select_records(filter, after, "ASC", MAX_RECORDS_PER_PAGE)
            .await
    }

    async fn select_records(
        &self,
        filter: &RecordFilter,
        after: Option<&RecordCursor>,
        direction: &str,
        limit: i64,
    ) -> Result<Vec<RecordRow>, CloudError> {
        let after = after.cloned().unwrap_or(RecordCursor {
            received_at_ms: i64::MIN,
            ..RecordCursor::default()
        });
        let sql = format!(
            "SELECT id, device_id, task, version, seq, created_at_ms, received_at_ms, payload \
             FROM tunnel_records \
             WHERE ($1 = '' OR task = $1) AND ($2 = '' OR device_id = $2) AND ($3 = '' OR version = $3) \
             AND created_at_ms >= $4 AND created_at_ms < $5 \
             AND (received_at_ms, device_id, seq, id) > ($6, $7, $8, $9) \
             ORDER BY received_at_ms {direction}, device_id {direction}, seq {direction}, id {direction} LIMIT $10"
        );
        // `direction` is one of two literals from this module, never input.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.task.clone().unwrap_or_default())
            .bind(filter.device.clone().unwrap_or_default())
            .bind(filter.version.clone().unwrap_or_default())
            .bind(filter.from_ms.unwrap_or(i64::MIN))
            .bind(filter.to_ms.unwrap_or(i64::MAX))
            .bind(after.received_at_ms)
            .bind(after.device_id)
            .bind(after.seq)
            .bind(after.id)
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
                    seq: row.try_get("seq")?,
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

/// Report kinds that are failures, shown in failure lists.
pub const FAILURE_KINDS: [&str; 3] = ["install_failed", "run_failed", "rolled_back"];

/// One failure a device reported: what failed, how, and the device's own words.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FailureRow {
    pub device_id: String,
    /// `install_failed`, `run_failed` or `rolled_back`.
    pub kind: String,
    /// For a failed run: its kind (`exception`, `deadline`, `memory`, …); empty otherwise.
    pub failure: String,
    /// The device's message, e.g. a Python traceback or why it rolled back.
    pub detail: String,
    pub task: String,
    pub version: String,
    pub release_id: String,
    pub at_ms: i64,
}

/// One report a device sent about a task.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ReportRow {
    pub kind: String,
    pub task: String,
    pub version: String,
    pub release_id: String,
    pub at_ms: i64,
    pub detail: String,
    pub failure: String,
    pub duration_ms: i64,
}

/// Which failures a listing returns.
#[derive(Debug, Clone, Default)]
pub struct FailureQuery<'a> {
    pub release_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    /// One of [`FAILURE_KINDS`]; all of them when absent.
    pub kind: Option<&'a str>,
    pub limit: i64,
    pub offset: i64,
}

const FAILURE_COLUMNS: &str = "device_id, kind, failure, detail, task, version, release_id, at_ms";

fn failure_from_row(row: &sqlx::any::AnyRow) -> Result<FailureRow, sqlx::Error> {
    Ok(FailureRow {
        device_id: row.try_get("device_id")?,
        kind: row.try_get("kind")?,
        failure: row.try_get("failure")?,
        detail: row.try_get("detail")?,
        task: row.try_get("task")?,
        version: row.try_get("version")?,
        release_id: row.try_get("release_id")?,
        at_ms: row.try_get("at_ms")?,
    })
}

impl Db {
    /// Failures devices reported, newest first.
    pub async fn failures(&self, query: &FailureQuery<'_>) -> Result<Vec<FailureRow>, CloudError> {
        let mut conditions = Conditions::default();
        match query.kind {
            Some(kind) => conditions.text("kind", "=", kind),
            None => conditions.raw("kind IN ('install_failed', 'run_failed', 'rolled_back')"),
        };
        if let Some(release) = query.release_id {
            conditions.text("release_id", "=", release);
        }
        if let Some(device) = query.device_id {
            conditions.text("device_id", "=", device);
        }
        let sql = format!(
            "SELECT {FAILURE_COLUMNS} FROM task_events{} ORDER BY at_ms DESC, device_id, id LIMIT {} OFFSET {}",
            conditions.where_clause(),
            conditions.next_placeholder(),
            conditions.placeholder_after(1),
        );
        let rows = conditions
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .bind(query.limit.clamp(1, 1000))
            .bind(query.offset.max(0))
            .fetch_all(self.pool())
            .await
            .map_err(db_err("listing failures"))?;
        rows.iter()
            .map(failure_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_err("decoding failures"))
    }

    /// A device's most recent reports, newest first.
    pub async fn device_reports(
        &self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<ReportRow>, CloudError> {
        let rows = sqlx::query(
            "SELECT kind, task, version, release_id, at_ms, detail, failure, duration_ms \
             FROM task_events WHERE device_id = $1 ORDER BY at_ms DESC, id LIMIT $2",
        )
        .bind(device_id)
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await
        .map_err(db_err("listing a device's reports"))?;
        rows.iter()
            .map(|row| {
                Ok(ReportRow {
                    kind: row.try_get("kind")?,
                    task: row.try_get("task")?,
                    version: row.try_get("version")?,
                    release_id: row.try_get("release_id")?,
                    at_ms: row.try_get("at_ms")?,
                    detail: row.try_get("detail")?,
                    failure: row.try_get("failure")?,
                    duration_ms: row.try_get("duration_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding a device's reports"))
    }

    /// (task, records received since `since_ms`), most records first.
    pub async fn records_per_task_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(String, i64)>, CloudError> {
        let rows = sqlx::query(
            "SELECT task, COUNT(*) AS n FROM tunnel_records WHERE received_at_ms >= $1 \
             GROUP BY task ORDER BY n DESC, task",
        )
        .bind(since_ms)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("counting records per task"))?;
        rows.iter()
            .map(|row| Ok((row.try_get("task")?, row.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding records per task"))
    }
}
