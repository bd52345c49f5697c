//! Table `leases`: one holder per named job across replicas.

use super::{Db, db_err, now_ms};
use crate::CloudError;

impl Db {
    /// Takes or renews the lease `name` for `holder` until `ttl_ms` from now. Returns whether
    /// `holder` holds it: true if it was free, expired or already ours.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, CloudError> {
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE leases.holder = excluded.holder OR leases.expires_at_ms < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(db_err("acquiring lease"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Gives the lease up (on shutdown) so another replica can take it at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), CloudError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.pool())
            .await
            .map_err(db_err("releasing lease"))?;
        Ok(())
    }

    /// Publishes a payload on a PostgreSQL notification channel (every replica listens).
    pub async fn pg_notify(&self, channel: &str, payload: &str) -> Result<(), CloudError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(self.pool())
            .await
            .map_err(db_err("publishing notification"))?;
        Ok(())
    }
}
