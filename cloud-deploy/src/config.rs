//! `walle-cloud` configuration: one typed struct, loadable from TOML, overridable by flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything `walle-cloud serve` needs. Every field has an embedded default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Directory for the SQLite database, bundles, the publisher key and the admin token.
    pub data_dir: PathBuf,
    /// Control plane (HTTP/JSON + web console) listen address.
    pub http_addr: SocketAddr,
    /// Device plane (gRPC) listen address.
    pub grpc_addr: SocketAddr,
    /// Metadata database; defaults to `sqlite://<data_dir>/walle.db`.
    pub database_url: Option<String>,
    /// Where bundles are kept: `{ kind = "local" }` (below `<data_dir>/objects`, the default) or
    /// `{ kind = "s3", bucket = "…", endpoint = "…", … }`.
    pub bundle_store: crate::bundles::BundleStoreConfig,
    /// Largest accepted bundle upload, in bytes.
    pub max_bundle_bytes: u64,
    /// Whether devices of apps not registered through `/v1/apps` may register (without a
    /// secret). Devices of registered apps always need their app's enrollment secret.
    pub open_enrollment: bool,
    /// Fallback sync period devices are told to use.
    pub sync_interval_secs: u32,
    /// Window within which notified devices spread their syncs.
    pub pace_window_ms: u32,
    /// How often the release controller checks health gates and abort rules.
    pub controller_interval_ms: u64,
    /// How often the release controller samples each release's coverage (for the series the
    /// console draws).
    pub coverage_sample_ms: u64,
    /// TLS for both planes; plain TCP when absent.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Bundle downloads served at once; devices beyond it are told when to come back.
    pub max_concurrent_transfers: usize,
    /// Base of the come-back hint given to devices refused a transfer (plus random jitter of the
    /// same size, so refused devices do not return together).
    pub transfer_retry_ms: u32,
    /// Serve the web console's files from this directory instead of the copies built into the
    /// binary: for working on the console without rebuilding the cloud.
    pub console_dir: Option<PathBuf>,
    /// Where uploaded tunnel records go: `"database"` (the default) or
    /// `"nats://HOST[:PORT]/STREAM"`, a NATS JetStream stream (see [`crate::records_sink`]).
    pub records_sink: crate::records_sink::RecordsSinkConfig,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            data_dir: PathBuf::from("walle-data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: None,
            bundle_store: crate::bundles::BundleStoreConfig::Local,
            // A device takes bundles up to 256 MiB: a task with a small language model
            // (SmolLM2-135M is 94 MiB) fits.
            max_bundle_bytes: 256 * 1024 * 1024,
            open_enrollment: true,
            sync_interval_secs: 300,
            pace_window_ms: 2_000,
            controller_interval_ms: 1_000,
            coverage_sample_ms: 10_000,
            tls: None,
            max_concurrent_transfers: 256,
            transfer_retry_ms: 1_000,
            console_dir: None,
            records_sink: crate::records_sink::RecordsSinkConfig::Database,
        }
    }
}

impl CloudConfig {
    /// Reads a TOML config file; absent fields take their defaults.
    pub fn from_toml_file(path: &std::path::Path) -> Result<CloudConfig, crate::CloudError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| crate::CloudError::ConfigRead {
                path: path.to_owned(),
                source,
            })?;
        toml::from_str(&text).map_err(|source| crate::CloudError::ConfigSyntax {
            path: path.to_owned(),
            source,
        })
    }

    /// Where tunnel records (`Upload`) are stored, as the start-up log names it: today always
    /// the metadata database.
    pub fn records_sink_name(&self) -> &'static str {
        "database"
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("walle.db").display()
            )
        })
    }
}
