//! Release statistics tables: `release_syncs`, `release_samples`, `release_stage_notices` and the
//! `notified` counter.

use serde::Serialize;
use sqlx::Row;

use super::{Db, db_err, now_ms, text_column};
use crate::CloudError;

/// One point of a release's coverage series.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct CoverageSample {
    pub at_ms: i64,
    pub stage: i64,
    pub targeted: i64,
    pub installed: i64,
}

impl Db {
    /// Adds delivered notices to a release's counter and to its current stage's.
    pub async fn add_notified(&self, release_id: &str, delivered: usize) -> Result<(), CloudError> {
        if delivered == 0 {
            return Ok(());
        }
        let delivered = delivered as i64;
        sqlx::query("UPDATE releases SET notified = notified + $1 WHERE id = $2")
            .bind(delivered)
            .bind(release_id)
            .execute(self.pool())
            .await
            .map_err(db_err("counting notices"))?;
        sqlx::query(
            "INSERT INTO release_stage_notices (release_id, stage, delivered) \
             SELECT id, stage, $1 FROM releases WHERE id = $2 \
             ON CONFLICT (release_id, stage) DO UPDATE \
             SET delivered = release_stage_notices.delivered + excluded.delivered",
        )
        .bind(delivered)
        .bind(release_id)
        .execute(self.pool())
        .await
        .map_err(db_err("counting notices per stage"))?;
        Ok(())
    }

    /// (stage, notices delivered while it was current) of a release.
    pub async fn stage_notices(&self, release_id: &str) -> Result<Vec<(i64, i64)>, CloudError> {
        let rows =
            sqlx::query("SELECT stage, delivered FROM release_stage_notices WHERE release_id = $1")
                .bind(release_id)
                .fetch_all(self.pool())
                .await
                .map_err(db_err("reading notices per stage"))?;
        rows.iter()
            .map(|row| Ok((row.try_get("stage")?, row.try_get("delivered")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding notices per stage"))
    }

    /// Devices that pulled a release.
    pub async fn synced_devices(&self, release_id: &str) -> Result<Vec<String>, CloudError> {
        let query = sqlx::query("SELECT device_id FROM release_syncs WHERE release_id = $1")
            .bind(release_id);
        text_column(self, query, "listing synced devices").await
    }

    /// (device, event kind, number of events) reported about a release.
    pub async fn release_event_counts(
        &self,
        release_id: &str,
    ) -> Result<Vec<(String, String, i64)>, CloudError> {
        let rows = sqlx::query(
            "SELECT device_id, kind, COUNT(*) AS n FROM task_events WHERE release_id = $1 \
             GROUP BY device_id, kind",
        )
        .bind(release_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("counting release events per device"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("device_id")?,
                    row.try_get("kind")?,
                    row.try_get("n")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding release events per device"))
    }

    /// Records that a device was handed a release (once per device and release).
    pub async fn record_sync(&self, release_id: &str, device_id: &str) -> Result<(), CloudError> {
        sqlx::query(
            "INSERT INTO release_syncs (release_id, device_id, synced_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (release_id, device_id) DO NOTHING",
        )
        .bind(release_id)
        .bind(device_id)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map_err(db_err("recording sync"))?;
        Ok(())
    }

    /// (notices delivered, devices that pulled) for a release.
    pub async fn notified_and_synced(&self, release_id: &str) -> Result<(i64, i64), CloudError> {
        let notified = sqlx::query("SELECT notified FROM releases WHERE id = $1")
            .bind(release_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("reading notices"))?
            .map(|row| row.try_get::<i64, _>(0))
            .transpose()
            .map_err(db_err("decoding notices"))?
            .unwrap_or(0);
        let synced = sqlx::query("SELECT COUNT(*) FROM release_syncs WHERE release_id = $1")
            .bind(release_id)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_err("counting syncs"))?;
        Ok((notified, synced))
    }

    /// Appends a coverage sample.
    pub async fn add_sample(
        &self,
        release_id: &str,
        sample: &CoverageSample,
    ) -> Result<(), CloudError> {
        sqlx::query(
            "INSERT INTO release_samples (release_id, at_ms, stage, targeted, installed) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (release_id, at_ms) DO NOTHING",
        )
        .bind(release_id)
        .bind(sample.at_ms)
        .bind(sample.stage)
        .bind(sample.targeted)
        .bind(sample.installed)
        .execute(self.pool())
        .await
        .map_err(db_err("sampling coverage"))?;
        Ok(())
    }

    /// A release's newest coverage sample.
    pub async fn latest_sample(
        &self,
        release_id: &str,
    ) -> Result<Option<CoverageSample>, CloudError> {
        let row = sqlx::query(
            "SELECT at_ms, stage, targeted, installed FROM release_samples WHERE release_id = $1 \
             ORDER BY at_ms DESC LIMIT 1",
        )
        .bind(release_id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("reading coverage"))?;
        row.map(|row| {
            Ok(CoverageSample {
                at_ms: row.try_get("at_ms")?,
                stage: row.try_get("stage")?,
                targeted: row.try_get("targeted")?,
                installed: row.try_get("installed")?,
            })
        })
        .transpose()
        .map_err(db_err("decoding coverage"))
    }

    /// A release's coverage series, oldest first.
    pub async fn samples(&self, release_id: &str) -> Result<Vec<CoverageSample>, CloudError> {
        let rows = sqlx::query(
            "SELECT at_ms, stage, targeted, installed FROM release_samples WHERE release_id = $1 ORDER BY at_ms",
        )
        .bind(release_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err("reading coverage"))?;
        rows.iter()
            .map(|row| {
                Ok(CoverageSample {
                    at_ms: row.try_get("at_ms")?,
                    stage: row.try_get("stage")?,
                    targeted: row.try_get("targeted")?,
                    installed: row.try_get("installed")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding coverage"))
    }
}
