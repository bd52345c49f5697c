//! Table `releases`.

// Dynamic SQL here only splices the constant column lists below; values are always bound.
use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};

use super::filter::Conditions;
use super::{Db, db_err, is_unique_violation, now_ms};
use crate::CloudError;
use crate::release::policy::ReleasePolicy;
use crate::release::select::{LiveRelease, ReleaseState};

/// Which releases a listing returns: newest first, `limit` at a time, below `before`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReleaseFilter {
    /// Only releases of this task.
    pub task: Option<String>,
    /// Only releases in this state (active, paused, aborted, superseded).
    pub state: Option<String>,
    /// Only releases of this version (with `task`).
    pub version: Option<String>,
    /// Only releases created before the one with this `seq` (the next page).
    pub before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// A release as the control plane shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReleaseRow {
    pub id: String,
    pub seq: i64,
    pub task: String,
    pub version: String,
    pub state: String,
    pub state_reason: String,
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
    pub stage: i64,
    pub stage_started_at_ms: i64,
    pub created_at_ms: i64,
    #[serde(skip)]
    pub salt: String,
}

impl ReleaseRow {
    /// The release in the form the selection rule uses.
    pub fn live(&self) -> Result<LiveRelease, CloudError> {
        let policy: ReleasePolicy =
            serde_json::from_value(self.policy.clone()).map_err(|source| {
                CloudError::CorruptRecord {
                    what: format!("stored policy of {} is invalid", self.id),
                    source,
                }
            })?;
        Ok(LiveRelease {
            id: self.id.clone(),
            seq: self.seq,
            task: self.task.clone(),
            version: self.version.clone(),
            state: ReleaseState::parse(&self.state).ok_or_else(|| {
                CloudError::Internal(format!(
                    "release {} has unknown state {:?}",
                    self.id, self.state
                ))
            })?,
            stage: usize::try_from(self.stage).unwrap_or(0),
            salt: self.salt.clone(),
            policy,
        })
    }
}

/// A release devices may follow, with the signed manifest they receive.
#[derive(Debug, Clone)]
pub struct ServedRelease {
    pub release: LiveRelease,
    pub manifest_json: String,
    pub signature_hex: String,
    pub key_id: String,
}

/// What devices reported about one release.
#[derive(Debug, Clone, Serialize, Default, PartialEq, utoipa::ToSchema)]
pub struct ReleaseHealth {
    /// Devices that reported an install outcome (installed or failed).
    pub executed: i64,
    /// Devices that reported at least one failure of the counted kinds.
    pub failed_devices: i64,
    /// Devices that reported a failed install.
    pub install_failed: i64,
    pub runs_ok: i64,
    pub runs_failed: i64,
    /// Devices that rolled the version back locally after failed runs.
    pub rolled_back: i64,
}

const RELEASE_COLUMNS: &str = "id, seq, task, version, state, state_reason, policy_json, stage, stage_started_at_ms, created_at_ms, salt";

fn release_from_row(row: &sqlx::any::AnyRow) -> Result<ReleaseRow, sqlx::Error> {
    let policy_json: String = row.try_get("policy_json")?;
    Ok(ReleaseRow {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        task: row.try_get("task")?,
        version: row.try_get("version")?,
        state: row.try_get("state")?,
        state_reason: row.try_get("state_reason")?,
        policy: serde_json::from_str(&policy_json).unwrap_or(serde_json::Value::Null),
        stage: row.try_get("stage")?,
        stage_started_at_ms: row.try_get("stage_started_at_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
        salt: row.try_get("salt")?,
    })
}

impl Db {
    /// Creates an active release at its first stage.
    pub async fn create_release(
        &self,
        id: &str,
        task: &str,
        version: &str,
        policy: &ReleasePolicy,
        salt: &str,
    ) -> Result<ReleaseRow, CloudError> {
        let now = now_ms();
        let policy_json = serde_json::to_string(policy).map_err(|source| CloudError::Encoding {
            what: "policy",
            source,
        })?;
        // `seq` is MAX + 1: on PostgreSQL two concurrent creates can pick the same number and
        // one fails the UNIQUE constraint; it simply takes the next.
        let mut attempt = 0;
        loop {
            let inserted = sqlx::query(
            "INSERT INTO releases (id, seq, task, version, state, created_at_ms, policy_json, salt, stage, \
             stage_started_at_ms, priority, state_reason, changed_at_ms) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, 'active', $4, $5, $6, 0, $4, $7, '', $4 FROM releases",
        )
        .bind(id)
        .bind(task)
        .bind(version)
        .bind(now)
        .bind(&policy_json)
        .bind(salt)
        .bind(i64::from(policy.priority))
        .execute(self.pool())
        .await;
            match inserted {
                Ok(_) => break,
                Err(e) if is_unique_violation(&e) && attempt < 5 => attempt += 1,
                Err(e) => return Err(db_err("creating release")(e)),
            }
        }
        self.get_release(id)
            .await?
            .ok_or_else(|| CloudError::Internal(format!("release {id} vanished after insert")))
    }

    /// All releases, newest first.
    pub async fn list_releases(
        &self,
        filter: &ReleaseFilter,
    ) -> Result<Vec<ReleaseRow>, CloudError> {
        let mut conditions = Conditions::default();
        if let Some(task) = &filter.task {
            conditions.text("task", "=", task);
        }
        if let Some(state) = &filter.state {
            conditions.text("state", "=", state);
        }
        if let Some(version) = &filter.version {
            conditions.text("version", "=", version);
        }
        if let Some(before) = filter.before {
            conditions.int("seq", "<", before);
        }
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
        let sql = format!(
            "SELECT {RELEASE_COLUMNS} FROM releases{} ORDER BY seq DESC LIMIT {}",
            conditions.where_clause(),
            conditions.next_placeholder()
        );
        let rows = conditions
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(db_err("listing releases"))?;
        rows.iter()
            .map(release_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_err("decoding releases"))
    }

    /// How many releases are in each state (states no release is in are absent).
    pub async fn count_releases_by_state(&self) -> Result<Vec<(String, i64)>, CloudError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM releases GROUP BY state")
            .fetch_all(self.pool())
            .await
            .map_err(db_err("counting releases by state"))?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding release counts"))
    }

    /// Active and paused releases, newest first: what the controller and the overview watch.
    pub async fn live_releases(&self) -> Result<Vec<ReleaseRow>, CloudError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE state IN ('active', 'paused') ORDER BY seq DESC"
        )))
        .fetch_all(self.pool())
        .await
        .map_err(db_err("listing live releases"))?;
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

    /// Releases devices may follow (active or paused), with their signed manifests, oldest first.
    pub async fn served_releases(&self) -> Result<Vec<ServedRelease>, CloudError> {
        let rows = sqlx::query(
            "SELECT r.id, r.seq, r.task, r.version, r.state, r.state_reason, r.policy_json, r.stage, \
             r.stage_started_at_ms, r.created_at_ms, r.salt, v.manifest_json, v.signature_hex, v.key_id \
             FROM releases r JOIN task_versions v ON v.task = r.task AND v.version = r.version \
             WHERE r.state IN ('active', 'paused') ORDER BY r.seq",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err("reading served releases"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let release = release_from_row(row).map_err(db_err("decoding served release"))?;
            // One broken row must not break Sync for the whole fleet: skip it, loudly.
            let live = match release.live() {
                Ok(live) => live,
                Err(e) => {
                    tracing::error!(release = %release.id, error = %e, "skipping unusable release");
                    continue;
                }
            };
            out.push(ServedRelease {
                release: live,
                manifest_json: row
                    .try_get("manifest_json")
                    .map_err(db_err("decoding manifest"))?,
                signature_hex: row
                    .try_get("signature_hex")
                    .map_err(db_err("decoding signature"))?,
                key_id: row.try_get("key_id").map_err(db_err("decoding key id"))?,
            });
        }
        Ok(out)
    }

    /// Moves a release to `to` if it is in one of `from`; returns whether it moved. A release
    /// that stops delivering (paused or aborted) hands its devices back in the same
    /// transaction: the releases it superseded return to the state they had (active or paused),
    /// so no reader, and no crash between two statements, ever sees both out of service.
    pub async fn transition_release(
        &self,
        id: &str,
        from: &[ReleaseState],
        to: ReleaseState,
        reason: &str,
    ) -> Result<bool, CloudError> {
        let current = match self.get_release(id).await? {
            Some(row) => row.state,
            None => return Err(CloudError::NotFound(format!("no release {id:?}"))),
        };
        if !from.iter().any(|s| s.as_str() == current) {
            return Ok(false);
        }
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_err("changing release state"))?;
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE releases SET state = $1, state_reason = $2, changed_at_ms = $5 \
             WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(reason)
        .bind(id)
        .bind(&current)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("changing release state"))?;
        let moved = result.rows_affected() == 1;
        if moved && matches!(to, ReleaseState::Paused | ReleaseState::Aborted) {
            sqlx::query(
                "UPDATE releases SET state = state_before_superseded, superseded_by = '', \
                 state_reason = 'restored: ' || $1 || ' was ' || $2, changed_at_ms = $3 \
                 WHERE superseded_by = $1 AND state = 'superseded'",
            )
            .bind(id)
            .bind(to.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err("restoring superseded releases"))?;
        }
        tx.commit()
            .await
            .map_err(db_err("changing release state"))?;
        Ok(moved)
    }

    /// Sets the state reason of a release that is still active (e.g. why its gate holds it);
    /// returns whether it was active.
    pub async fn set_active_reason(&self, id: &str, reason: &str) -> Result<bool, CloudError> {
        let result =
            sqlx::query("UPDATE releases SET state_reason = $1 WHERE id = $2 AND state = 'active'")
                .bind(reason)
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(db_err("setting release state reason"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Moves a release from stage `from` to `from + 1`; returns whether it moved (it does not when
    /// someone else advanced it first).
    pub async fn advance_stage(&self, id: &str, from: i64) -> Result<bool, CloudError> {
        let result = sqlx::query(
            "UPDATE releases SET stage = $1, stage_started_at_ms = $2, changed_at_ms = $2 \
             WHERE id = $3 AND stage = $4 AND state = 'active'",
        )
        .bind(from + 1)
        .bind(now_ms())
        .bind(id)
        .bind(from)
        .execute(self.pool())
        .await
        .map_err(db_err("advancing release"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Marks active or paused releases of `task` that can no longer win for any device (lower
    /// priority, or equal priority and older, than a release covering everyone) as superseded.
    pub async fn supersede_covered(
        &self,
        by: &str,
        task: &str,
        seq: i64,
        priority: i32,
    ) -> Result<u64, CloudError> {
        let result = sqlx::query(
            "UPDATE releases SET state = 'superseded', superseded_by = $1, \
             state_before_superseded = state, \
             state_reason = 'covered by newer full release ' || $1, changed_at_ms = $5 \
             WHERE task = $2 AND state IN ('active', 'paused') AND seq < $3 AND priority <= $4 \
             AND EXISTS (SELECT 1 FROM releases AS newer WHERE newer.id = $1 AND newer.state = 'active')",
        )
        .bind(by)
        .bind(task)
        .bind(seq)
        .bind(i64::from(priority))
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map_err(db_err("superseding releases"))?;
        Ok(result.rows_affected())
    }

    /// What devices reported about a release; `failure_kinds` are the event kinds that count as
    /// failures for `failed_devices`.
    pub async fn release_health(
        &self,
        id: &str,
        failure_kinds: &[&str],
    ) -> Result<ReleaseHealth, CloudError> {
        let count = |sql: &'static str| async move {
            sqlx::query(sql)
                .bind(id)
                .fetch_one(self.pool())
                .await
                .and_then(|row| row.try_get::<i64, _>(0))
                .map_err(db_err("counting release health"))
        };
        let failed_devices = if failure_kinds.is_empty() {
            0
        } else {
            // The kinds come from a fixed enum, never from input.
            let kinds = failure_kinds
                .iter()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", ");
            sqlx::query(AssertSqlSafe(format!(
                "SELECT COUNT(DISTINCT device_id) FROM task_events WHERE release_id = $1 AND kind IN ({kinds})"
            )))
            .bind(id)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_err("counting failed devices"))?
        };
        Ok(ReleaseHealth {
            executed: count(
                "SELECT COUNT(DISTINCT device_id) FROM task_events WHERE release_id = $1 AND kind IN ('installed', 'install_failed')",
            )
            .await?,
            failed_devices,
            install_failed: count(
                "SELECT COUNT(DISTINCT device_id) FROM task_events WHERE release_id = $1 AND kind = 'install_failed'",
            )
            .await?,
            runs_ok: count("SELECT COUNT(*) FROM task_events WHERE release_id = $1 AND kind = 'run_ok'").await?,
            runs_failed: count("SELECT COUNT(*) FROM task_events WHERE release_id = $1 AND kind = 'run_failed'")
                .await?,
            rolled_back: count(
                "SELECT COUNT(DISTINCT device_id) FROM task_events WHERE release_id = $1 AND kind = 'rolled_back'",
            )
            .await?,
        })
    }

    /// Whether a bundle with this digest exists and `device_id` may fetch it (it was handed a
    /// release of that bundle), read on one connection.
    pub async fn bundle_for_device(
        &self,
        device_id: &str,
        digest: &str,
    ) -> Result<BundleAccess, CloudError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(db_err("looking up bundle"))?;
        let Some(size) = super::tasks::bundle_size(&mut conn, digest).await? else {
            return Ok(BundleAccess::Unknown);
        };
        let handed = sqlx::query(
            "SELECT 1 AS handed FROM release_syncs s JOIN releases r ON r.id = s.release_id \
             JOIN task_versions v ON v.task = r.task AND v.version = r.version \
             WHERE s.device_id = $1 AND v.bundle_digest = $2 LIMIT 1",
        )
        .bind(device_id)
        .bind(digest)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err("checking bundle access"))?;
        Ok(match handed {
            Some(_) => BundleAccess::Size(size),
            None => BundleAccess::NotHanded,
        })
    }

    /// Devices whose active version of `task` is `version`.
    pub async fn count_installed(&self, task: &str, version: &str) -> Result<i64, CloudError> {
        sqlx::query("SELECT COUNT(*) FROM device_tasks WHERE task = $1 AND version = $2 AND state = 'installed'")
            .bind(task)
            .bind(version)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_err("counting installs"))
    }
}

/// What [`Db::bundle_for_device`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleAccess {
    /// No task version has a bundle with this digest.
    Unknown,
    /// The bundle exists, but no release of it was handed to this device.
    NotHanded,
    /// The device may fetch the bundle, of this many bytes.
    Size(i64),
}

/// The (task, version) of `release_id` if `device_id` was handed it by Sync; `None` otherwise.
pub(super) async fn pulled_release(
    conn: &mut sqlx::AnyConnection,
    release_id: &str,
    device_id: &str,
) -> Result<Option<(String, String)>, CloudError> {
    let row = sqlx::query(
        "SELECT r.task, r.version FROM release_syncs s JOIN releases r ON r.id = s.release_id \
         WHERE s.release_id = $1 AND s.device_id = $2",
    )
    .bind(release_id)
    .bind(device_id)
    .fetch_optional(conn)
    .await
    .map_err(db_err("checking reported release"))?;
    row.map(|r| Ok((r.try_get("task")?, r.try_get("version")?)))
        .transpose()
        .map_err(db_err("decoding reported release"))
}
