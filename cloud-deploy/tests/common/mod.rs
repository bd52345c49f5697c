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

    pub fn database_url(&self) -> Option<String> {
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

/// A real S3-compatible server (moto, installed by `scripts/setup.sh` into the venv at
/// `WALLE_PY_ENV`, default `~/.cache/walle-py`) on a free loopback port, with one empty bucket.
/// Stopped on drop.
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
    pub bucket: String,
}

/// A command from the tests' Python venv (`WALLE_PY_ENV`, default `~/.cache/walle-py`), which
/// `scripts/setup.sh` installs.
pub fn python_tool(name: &str) -> String {
    let venv = std::env::var("WALLE_PY_ENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/walle-py",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{venv}/bin/{name}")
}

impl S3Server {
    pub async fn start() -> S3Server {
        let binary = python_tool("moto_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = std::process::Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} ({e}); run scripts/setup.sh, which installs it")
            });
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "walle-bundles".into(),
        };
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        // moto does not check signatures: an unsigned PUT creates the bucket.
        loop {
            let created = http
                .put(format!("{}/{}", server.endpoint, server.bucket))
                .send()
                .await;
            if created.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto_server never came up on {}",
                server.endpoint
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The bundle-store config of a cloud keeping its bundles in this server's bucket.
    pub fn store_config(&self, prefix: &str) -> walle_cloud::bundles::BundleStoreConfig {
        walle_cloud::bundles::BundleStoreConfig::S3(walle_cloud::bundles::S3Config {
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            allow_http: true,
        })
    }

    /// Keys of every object in the bucket (via S3's ListObjectsV2).
    pub async fn keys(&self) -> Vec<String> {
        let xml = reqwest::get(format!("{}/{}?list-type=2", self.endpoint, self.bucket))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
