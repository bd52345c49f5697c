//! Runs the cloud's integration tests on both metadata backends: SQLite (a file in the test's
//! data dir) and PostgreSQL (a throwaway database per test on the server in
//! `WALLE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`, dropped after).

use std::path::Path;

use sqlx::Connection;
use walle_cloud::{Cloud, CloudConfig};

/// Where a test cloud keeps its metadata.
pub enum Backend {
    Sqlite,
    Postgres { admin_url: String, database: String },
}

fn admin_url() -> String {
    std::env::var("WALLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn with_database(url: &str, database: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let server = base
        .rsplit_once('/')
        .map(|(server, _)| server)
        .unwrap_or(base);
    format!("{server}/{database}")
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite
    }

    /// Creates a fresh database for one test.
    pub async fn postgres() -> Backend {
        sqlx::any::install_default_drivers();
        let admin_url = admin_url();
        let database = format!(
            "walle_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut admin = sqlx::AnyConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed for this test: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .unwrap();
        Backend::Postgres {
            admin_url,
            database,
        }
    }

    fn database_url(&self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres {
                admin_url,
                database,
            } => Some(with_database(admin_url, database)),
        }
    }

    /// Starts a cloud with its data in `dir` on this backend.
    pub async fn start(&self, dir: &Path, configure: impl FnOnce(&mut CloudConfig)) -> Cloud {
        let mut config = CloudConfig {
            data_dir: dir.to_owned(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            database_url: self.database_url(),
            ..CloudConfig::default()
        };
        configure(&mut config);
        Cloud::start(config).await.unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let Backend::Postgres {
            admin_url,
            database,
        } = self
        else {
            return;
        };
        let (admin_url, database) = (admin_url.clone(), database.clone());
        // Drop runs outside async context: use a private runtime on a helper thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::AnyConnection::connect(&admin_url).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// Turns each `async fn name(backend: Backend)` into two tests, `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::Backend::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::common::Backend::postgres().await).await
            }
        })*
    };
}
