//! The cloud's metadata database through sqlx `Any`: SQLite by default, PostgreSQL for
//! scale-out, selected by the URL. The same queries run on both (`$N` placeholders, times as
//! BIGINT milliseconds); each backend has its own migration directory with the same schema.
//! Queries live in the submodule that owns each table.

pub mod auth;
pub mod devices;
pub mod events;
pub mod filter;
pub mod fleet;
pub mod groups;
pub mod leases;
pub mod releases;
pub mod stats;
pub mod tasks;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::CloudError;

/// Handle to the metadata database.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    url: String,
}

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Db, CloudError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // sqlx pings a connection as it goes back to the pool (and drops a broken one);
            // a second ping before each acquire would add a round trip to every query — on
            // SQLite a hand-off to the connection's thread. Without it, a connection that died
            // while idle (PostgreSQL restarted) fails one query and is dropped.
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // In WAL mode, NORMAL syncs the log at checkpoints rather than at every
                        // commit: a commit survives the cloud's own crash (kill -9), and only a
                        // power loss or OS crash can take back the last ones.
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|source| CloudError::DatabaseUnreachable {
                url: redact(url),
                source,
            })?;
        if sqlite {
            // WAL lets readers (syncs, console) proceed while a writer (reports) commits.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(db_err("enabling WAL"))?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&pool)
                .await
                .map_err(CloudError::Migration)?;
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .map_err(CloudError::Migration)?;
        } else {
            return Err(CloudError::Config(format!(
                "unsupported database URL {}: use sqlite://PATH or postgres://USER@HOST/DB",
                redact(url)
            )));
        }
        Ok(Db {
            pool,
            url: url.to_owned(),
        })
    }

    /// The URL of a PostgreSQL database, or `None` for SQLite.
    pub fn postgres_url(&self) -> Option<&str> {
        (!self.url.starts_with("sqlite:")).then_some(self.url.as_str())
    }

    /// The URL without its password, for logs and messages.
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }

    /// Asks the database the cheapest question there is (`SELECT 1`): whether it answers.
    pub async fn ping(&self) -> Result<(), CloudError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map_err(db_err("probing the database"))?;
        Ok(())
    }

    /// The underlying pool, for the table modules.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that reads before it writes. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a transaction that took its snapshot with a read cannot wait
    /// for the lock later; it fails (`SQLITE_BUSY_SNAPSHOT`) if another writer committed since.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.postgres_url().is_none() {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs a query whose first column is text and returns that column of every row.
pub(crate) async fn text_column<'q>(
    db: &Db,
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    doing: &'static str,
) -> Result<Vec<String>, CloudError> {
    use sqlx::Row;
    let rows = query.fetch_all(db.pool()).await.map_err(db_err(doing))?;
    rows.iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_err(doing))
}

/// Maps a sqlx error to a `CloudError` saying what was being done.
pub(crate) fn db_err(doing: &'static str) -> impl Fn(sqlx::Error) -> CloudError {
    move |source| CloudError::Database { doing, source }
}

/// Whether a sqlx error is a unique-key violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A database URL without its password: the one in `user:password@` and a `password=`
/// parameter.
fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user_info, host)) => {
                let user = user_info
                    .split_once(':')
                    .map_or(user_info, |(user, _)| user);
                format!("{scheme}://{user}@{host}")
            }
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    match query {
        Some(query) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=…")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_redacted_url_keeps_everything_but_the_password() {
        assert_eq!(
            redact("postgres://walle:s3cret@db.internal:5432/walle?sslmode=require"),
            "postgres://walle@db.internal:5432/walle?sslmode=require"
        );
        assert_eq!(
            redact("postgres://db/walle?user=walle&password=s3cret"),
            "postgres://db/walle?user=walle&password=…"
        );
        assert_eq!(
            redact("postgres://walle@db/walle"),
            "postgres://walle@db/walle"
        );
        assert_eq!(
            redact("sqlite:///var/lib/walle/walle.db?mode=rwc"),
            "sqlite:///var/lib/walle/walle.db?mode=rwc"
        );
    }
}
