//! Walle's cloud: where task versions are stored and released to device fleets.
//!
//! One process serves two planes:
//! - the **control plane** ([`control`]): HTTP/JSON for operators, the web console and the
//!   `walle` CLI — tasks, versions (bundle uploads), releases, devices, received records;
//! - the **device plane** ([`device_plane`]): the gRPC service devices register with, subscribe
//!   to for push notices, sync and fetch bundles from, and report and upload to.
//!
//! State lives in a SQL database ([`store`], SQLite by default), bundles in an object store
//! ([`bundles`], the local filesystem by default), and the ed25519 publisher key that signs every
//! manifest in the data dir ([`secrets`]).
//!
//! This crate must not run task code or know how devices execute tasks.

pub mod auth;
pub mod bundles;
pub mod catalog;
pub mod config;
pub mod control;
pub mod device_plane;
pub mod notify;
pub mod release;
pub mod secrets;
pub mod served_cache;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
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
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Database(String),
    #[error("bundle storage: {0}")]
    Storage(String),
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
    pub publisher: Arc<Publisher>,
    pub hub: notify::NoticeHub,
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
        let (stop, stopped) = watch::channel(false);
        let state = AppState {
            config: Arc::new(config.clone()),
            db,
            bundles,
            publisher: Arc::new(publisher),
            hub: notify::NoticeHub::default(),
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
                stopped,
            )));
        }
        tokio::spawn(warm_fleet(state.clone()));
        tracing::info!(%http_addr, %grpc_addr, data_dir = %config.data_dir.display(), "walle-cloud started");
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
