//! Walle's cloud: where task versions are stored and released to device fleets.
//!
//! One process serves two planes:
//! - the **control plane** ([`control`]): HTTP/JSON for operators, the web console and the
//!   `walle` CLI — tasks, versions (bundle uploads), releases, devices, received records;
//! - the **device plane** ([`device_plane`]): the gRPC service devices register with, subscribe
//!   to for push notices, sync and fetch bundles from, and report and upload to.
//!
//! State lives in a SQL database ([`store`], SQLite by default), bundles in an object store
//! ([`bundles`], the local filesystem by default), the tunnel records devices upload in the
//! [`records_sink`] (the database by default, or a NATS JetStream stream), and the ed25519
//! publisher key that signs every manifest in the data dir ([`secrets`]). What an operator's
//! monitoring reads — `/metrics`, `/v1/health`, `/v1/ready` — is counted in [`metrics`] and
//! served by the control plane.
//!
//! This crate must not run task code or know how devices execute tasks.

pub mod auth;
pub mod bundles;
pub mod catalog;
pub mod config;
pub mod control;
pub mod device_plane;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod records_sink;
pub mod release;
pub mod secrets;
pub mod served_cache;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use walle_proto::signing::Publisher;
use walle_proto::v1::device_plane_server::DevicePlaneServer;

pub use config::CloudConfig;

/// Everything that can go wrong in the cloud, with what and where.
///
/// A variant that wraps a lower-level error keeps it as its [`source`](std::error::Error::source)
/// and also shows it in its text, which is what the control plane (HTTP 500 bodies) and the
/// device plane (`INTERNAL` statuses) answer with. The variants holding only a message are the
/// ones callers answer with as they are (`Invalid` … `TooLarge`), plus `Config` and `Internal`
/// for the failures that have no underlying error.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// A setting or a file the cloud starts from is unusable (no underlying error).
    #[error("configuration: {0}")]
    Config(String),
    /// The config file cannot be read.
    #[error("configuration: cannot read {}: {source}", path.display())]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not TOML of a [`CloudConfig`].
    #[error("configuration: {}: {}", path.display(), source.message())]
    ConfigSyntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error("configuration: {0}")]
    Tls(#[from] tls::TlsError),
    /// The operating system gave no random bytes (for keys and tokens).
    #[error("configuration: no OS randomness available: {0}")]
    NoRandomness(#[source] getrandom::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database cannot be reached at its URL (shown without its password).
    #[error("database: connecting to {url}: {source}")]
    DatabaseUnreachable {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// The database schema cannot be brought up to date.
    #[error("database: migrating: {0}")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// A database statement failed while `doing` something.
    #[error("database: {doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The bundle store's settings do not make a store (e.g. an S3 bucket without a region).
    #[error("configuration: bundle store {location}: {source}")]
    StorageConfig {
        location: String,
        #[source]
        source: object_store::Error,
    },
    /// The bundle store failed; `context` says at what and where (bundle, store location).
    #[error("bundle storage: {context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: object_store::Error,
    },
    /// The records sink (NATS JetStream) cannot be reached or did not store a batch.
    #[error("records sink: {0}")]
    RecordsSink(#[from] records_sink::SinkError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A record the cloud stored itself does not read back (`what` names it).
    #[error("internal error: {what}: {source}")]
    CorruptRecord {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be encoded as JSON.
    #[error("internal error: encoding {what}: {source}")]
    Encoding {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A manifest the cloud signed is not UTF-8 text.
    #[error("internal error: signed manifest is not UTF-8: {0}")]
    ManifestNotUtf8(#[source] std::string::FromUtf8Error),
    /// Work moved off the async threads panicked.
    #[error("internal error: {what} panicked: {source}")]
    Panicked {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A rule the cloud keeps itself was broken (no underlying error).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CloudError {
    /// An I/O error on a path.
    pub fn io(path: &Path, source: std::io::Error) -> CloudError {
        CloudError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// State shared by every handler of both planes.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<CloudConfig>,
    pub db: store::Db,
    pub bundles: bundles::BundleStore,
    /// Where uploaded tunnel records go.
    pub records: records_sink::RecordsSink,
    pub publisher: Arc<Publisher>,
    pub hub: notify::NoticeHub,
    /// What `/metrics` exposes; the device plane and the notice hub count into it.
    pub metrics: metrics::Metrics,
    /// sha256 of the operator (admin) token.
    pub admin_token_hash: String,
    /// Identifies this process among replicas (e.g. as lease holder).
    pub replica_id: String,
    /// Whether this replica currently holds the release-controller lease.
    pub controller_active: Arc<AtomicBool>,
    /// Permits for concurrent bundle transfers.
    pub transfers: Arc<tokio::sync::Semaphore>,
    /// The fleet in memory, for release statistics and previews.
    pub fleet: release::fleet::FleetIndex,
    /// Release statuses that were slow to compute, shared by viewers while fresh.
    pub status_cache: release::StatusCache,
    /// Turns true when the cloud shuts down, so long-lived responses (the console's live
    /// streams) end and let the server stop.
    pub stopping: watch::Receiver<bool>,
}

/// Reads the fleet into memory at start, so the first release page after a restart does not
/// wait for it (on a million devices the first read takes seconds; later reads take only what
/// changed). A viewer that asks meanwhile shares this read.
async fn warm_fleet(state: AppState) {
    let started = std::time::Instant::now();
    match state.fleet.current(&state.db).await {
        Ok(fleet) => {
            tracing::info!(devices = fleet.len(), took = ?started.elapsed(), "fleet read into memory")
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the fleet into memory at start failed; the first release page will read it")
        }
    }
}

/// A running cloud: both planes listening, until [`Cloud::shutdown`].
pub struct Cloud {
    /// Where the control plane (HTTP) listens.
    pub http_addr: SocketAddr,
    /// Where the device plane (gRPC) listens.
    pub grpc_addr: SocketAddr,
    /// The operator token (kept in the data dir).
    pub admin_token: String,
    state: AppState,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl Cloud {
    /// Opens storage and starts both planes. Ports 0 in the config pick free ports.
    pub async fn start(config: CloudConfig) -> Result<Cloud, CloudError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| CloudError::io(&config.data_dir, e))?;
        let publisher = secrets::load_or_create_publisher(&config.data_dir)?;
        let admin_token = secrets::load_or_create_admin_token(&config.data_dir)?;
        let db = store::Db::connect(&config.database_url()).await?;
        let bundles = bundles::BundleStore::open(&config.bundle_store, &config.data_dir).await?;
        let records = records_sink::RecordsSink::open(&config.records_sink, db.clone()).await?;
        let (stop, stopped) = watch::channel(false);
        let metrics = metrics::Metrics::new();
        let state = AppState {
            config: Arc::new(config.clone()),
            db,
            bundles,
            records,
            publisher: Arc::new(publisher),
            hub: notify::NoticeHub::new(metrics.notices_sent()),
            metrics,
            admin_token_hash: secrets::token_hash(&admin_token),
            replica_id: format!("replica-{}", hex::encode(secrets::random_bytes::<6>()?)),
            controller_active: Arc::new(AtomicBool::new(false)),
            transfers: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_transfers.max(1),
            )),
            fleet: release::fleet::FleetIndex::default(),
            status_cache: release::StatusCache::default(),
            stopping: stopped.clone(),
        };
        // Load TLS material before listening, so a bad file fails the start with its path.
        let http_tls = config.tls.as_ref().map(|t| t.server_config()).transpose()?;
        let grpc_tls = config.tls.as_ref().map(|t| t.load()).transpose()?;
        let http = bind(config.http_addr).await?;
        let grpc = bind(config.grpc_addr).await?;
        let http_addr = http.local_addr().map_err(|e| CloudError::Bind {
            addr: config.http_addr,
            source: e,
        })?;
        let grpc_addr = grpc.local_addr().map_err(|e| CloudError::Bind {
            addr: config.grpc_addr,
            source: e,
        })?;
        let controller_interval =
            std::time::Duration::from_millis(config.controller_interval_ms.max(10));
        let mut servers = vec![
            tokio::spawn(serve_http(http, http_tls, state.clone(), stopped.clone())),
            tokio::spawn(serve_grpc(grpc, grpc_tls, state.clone(), stopped.clone())),
            tokio::spawn(release::controller::run(
                state.clone(),
                controller_interval,
                stopped.clone(),
            )),
        ];
        if state.db.postgres_url().is_some() {
            servers.push(tokio::spawn(notify::listen(
                state.db.clone(),
                state.hub.clone(),
                state.config.pace_window_ms,
                stopped,
            )));
        }
        tokio::spawn(warm_fleet(state.clone()));
        tracing::info!(
            %http_addr,
            %grpc_addr,
            data_dir = %config.data_dir.display(),
            database = %state.db.display_url(),
            bundle_store = %state.bundles.location(),
            records_sink = config.records_sink_name(),
            enrollment = if config.open_enrollment { "open" } else { "closed" },
            "walle-cloud started"
        );
        Ok(Cloud {
            http_addr,
            grpc_addr,
            admin_token,
            state,
            stop,
            servers,
        })
    }

    /// The control-plane base URL, e.g. `http://127.0.0.1:8080`.
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.http_addr)
    }

    fn scheme(&self) -> &'static str {
        if self.state.config.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The device-plane URL, e.g. `http://127.0.0.1:50051`.
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc_addr)
    }

    /// Whether this replica currently runs the release controller.
    pub fn is_controller(&self) -> bool {
        self.state.controller_active.load(Ordering::SeqCst)
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.state.replica_id
    }

    /// Number of devices holding an open notice stream.
    pub fn connected_devices(&self) -> usize {
        self.state.hub.connected_devices()
    }

    /// Stops both planes, ends device streams and closes the database.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.state.hub.close_all();
        for server in self.servers {
            let _ = server.await;
        }
        self.state.db.close().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, CloudError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CloudError::Bind { addr, source })
}

async fn stopped(mut signal: watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

async fn serve_http(
    listener: TcpListener,
    tls: Option<tokio_rustls::rustls::ServerConfig>,
    state: AppState,
    stop: watch::Receiver<bool>,
) {
    let app = control::router(state);
    let result = match tls {
        Some(config) => {
            axum::serve(tls::TlsListener::new(listener, config), app)
                .with_graceful_shutdown(stopped(stop))
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop))
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "control plane server failed");
    }
}

async fn serve_grpc(
    listener: TcpListener,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    state: AppState,
    stop: watch::Receiver<bool>,
) {
    let hub = state.hub.clone();
    let service = DevicePlaneServer::new(device_plane::DevicePlaneService::new(state));
    let shutdown = async move {
        stopped(stop).await;
        hub.close_all();
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder =
            match builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)) {
                Ok(builder) => builder,
                Err(e) => {
                    tracing::error!(error = %e, "device plane TLS configuration failed");
                    return;
                }
            };
    }
    let result = builder
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "device plane server failed");
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn errors_keep_their_cause_and_still_show_it() {
        let e = store::db_err("listing tasks")(sqlx::Error::RowNotFound);
        let cause = sqlx::Error::RowNotFound.to_string();
        assert_eq!(e.to_string(), format!("database: listing tasks: {cause}"));
        assert_eq!(e.source().map(|s| s.to_string()), Some(cause));
        assert!(matches!(
            e,
            CloudError::Database {
                doing: "listing tasks",
                source: sqlx::Error::RowNotFound
            }
        ));
    }

    #[test]
    fn a_config_file_that_does_not_parse_is_named_with_the_parsers_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.toml");
        std::fs::write(&path, "http_addr = 5\n").unwrap();
        let e = CloudConfig::from_toml_file(&path).unwrap_err();
        let CloudError::ConfigSyntax { source, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(
            e.to_string(),
            format!("configuration: {}: {}", path.display(), source.message())
        );
        let e = CloudConfig::from_toml_file(&dir.path().join("absent.toml")).unwrap_err();
        assert!(matches!(e, CloudError::ConfigRead { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("configuration: cannot read "),
            "{e}"
        );
        assert!(e.source().is_some());
    }
}
