//! Tables `api_tokens`, `audit_log` and `apps`.

use serde::Serialize;
use sqlx::Row;

use super::filter::Conditions;
use super::{Db, db_err, is_unique_violation, now_ms};
use crate::CloudError;

/// An API token as listed (never the token itself).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: i64,
}

/// One audited call.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: String,
    pub at_ms: i64,
    pub actor: String,
    pub role: String,
    pub method: String,
    pub path: String,
    pub status: i64,
}

/// A registered host app (its secret is shown once, at creation).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppRow {
    pub app_id: String,
    pub created_at_ms: i64,
}

/// Which audit entries a listing returns, newest first.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// Entries whose actor (name and token id) contains this.
    pub actor: Option<String>,
    /// Entries of this HTTP method (POST, DELETE, …).
    pub method: Option<String>,
    /// Entries whose path starts with this (e.g. `/v1/releases`).
    pub path: Option<String>,
    /// Entries at or after this Unix time (ms).
    pub since_ms: Option<i64>,
    /// Entries before this Unix time (ms) (the next page: the last entry's `at_ms`).
    pub until_ms: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

impl Db {
    /// Stores a new API token by its hash.
    pub async fn create_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        token_hash: &str,
    ) -> Result<TokenRow, CloudError> {
        let created_at_ms = now_ms();
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, token_hash, created_at_ms, revoked_at_ms) VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(id)
        .bind(name)
        .bind(role)
        .bind(token_hash)
        .bind(created_at_ms)
        .execute(self.pool())
        .await
        .map_err(db_err("creating API token"))?;
        Ok(TokenRow {
            id: id.to_owned(),
            name: name.to_owned(),
            role: role.to_owned(),
            created_at_ms,
            revoked_at_ms: 0,
        })
    }

    /// The valid (unrevoked) token with this hash.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRow>, CloudError> {
        let row = sqlx::query(
            "SELECT id, name, role, created_at_ms, revoked_at_ms FROM api_tokens WHERE token_hash = $1 AND revoked_at_ms = 0",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("authenticating operator"))?;
        row.as_ref()
            .map(token_from_row)
            .transpose()
            .map_err(db_err("decoding API token"))
    }

    /// Every API token, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, CloudError> {
        let rows = sqlx::query("SELECT id, name, role, created_at_ms, revoked_at_ms FROM api_tokens ORDER BY created_at_ms DESC, id")
            .fetch_all(self.pool())
            .await
            .map_err(db_err("listing API tokens"))?;
        rows.iter()
            .map(token_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_err("decoding API tokens"))
    }

    /// Revokes a token; false when no valid token has this id.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, CloudError> {
        let result = sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms = 0",
        )
        .bind(now_ms())
        .bind(id)
        .execute(self.pool())
        .await
        .map_err(db_err("revoking API token"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Appends to the audit log.
    pub async fn audit(&self, entry: &AuditRow) -> Result<(), CloudError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, actor, role, method, path, status) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&entry.id)
        .bind(entry.at_ms)
        .bind(&entry.actor)
        .bind(&entry.role)
        .bind(&entry.method)
        .bind(&entry.path)
        .bind(entry.status)
        .execute(self.pool())
        .await
        .map_err(db_err("writing audit log"))?;
        Ok(())
    }

    /// The newest audit entries matching a filter.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, CloudError> {
        let mut conditions = Conditions::default();
        if let Some(actor) = &filter.actor {
            conditions.contains("actor", actor);
        }
        if let Some(method) = &filter.method {
            conditions.text("method", "=", method.to_ascii_uppercase());
        }
        if let Some(path) = &filter.path {
            conditions.starts_with("path", path);
        }
        if let Some(since) = filter.since_ms {
            conditions.int("at_ms", ">=", since);
        }
        if let Some(until) = filter.until_ms {
            conditions.int("at_ms", "<", until);
        }
        let sql = format!(
            "SELECT id, at_ms, actor, role, method, path, status FROM audit_log{} ORDER BY at_ms DESC, id LIMIT {}",
            conditions.where_clause(),
            conditions.next_placeholder()
        );
        let rows = conditions
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .bind(filter.limit.unwrap_or(100).clamp(1, 1000))
            .fetch_all(self.pool())
            .await
            .map_err(db_err("reading audit log"))?;
        rows.iter()
            .map(|row| {
                Ok(AuditRow {
                    id: row.try_get("id")?,
                    at_ms: row.try_get("at_ms")?,
                    actor: row.try_get("actor")?,
                    role: row.try_get("role")?,
                    method: row.try_get("method")?,
                    path: row.try_get("path")?,
                    status: row.try_get("status")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding audit log"))
    }

    /// Registers a host app with the hash of its enrollment secret; `Conflict` if it exists.
    pub async fn create_app(&self, app_id: &str, secret_hash: &str) -> Result<AppRow, CloudError> {
        let created_at_ms = now_ms();
        sqlx::query(
            "INSERT INTO apps (app_id, enrollment_secret_hash, created_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(app_id)
        .bind(secret_hash)
        .bind(created_at_ms)
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CloudError::Conflict(format!("app {app_id:?} is already registered"))
            } else {
                db_err("registering app")(e)
            }
        })?;
        Ok(AppRow {
            app_id: app_id.to_owned(),
            created_at_ms,
        })
    }

    /// The enrollment secret hash of a registered app.
    pub async fn app_secret_hash(&self, app_id: &str) -> Result<Option<String>, CloudError> {
        let row = sqlx::query("SELECT enrollment_secret_hash FROM apps WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("looking up app"))?;
        row.map(|r| r.try_get::<String, _>("enrollment_secret_hash"))
            .transpose()
            .map_err(db_err("decoding app"))
    }

    /// Every registered app.
    pub async fn list_apps(&self) -> Result<Vec<AppRow>, CloudError> {
        let rows = sqlx::query("SELECT app_id, created_at_ms FROM apps ORDER BY app_id")
            .fetch_all(self.pool())
            .await
            .map_err(db_err("listing apps"))?;
        rows.iter()
            .map(|row| {
                Ok(AppRow {
                    app_id: row.try_get("app_id")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding apps"))
    }
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRow, sqlx::Error> {
    Ok(TokenRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        created_at_ms: row.try_get("created_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
    })
}
