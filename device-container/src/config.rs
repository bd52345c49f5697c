//! `walle-device` configuration: one typed struct, loadable from TOML, overridable by flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The device's description of itself, sent to the cloud for targeting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub device_id: String,
    pub app_id: String,
    pub app_version: String,
    pub os: String,
    pub os_version: String,
    pub model: String,
    pub hardware_tier: String,
    pub region: String,
    pub tags: Vec<String>,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            device_id: String::new(),
            app_id: "com.example.app".into(),
            app_version: "1.0.0".into(),
            os: std::env::consts::OS.into(),
            os_version: String::new(),
            model: String::new(),
            hardware_tier: "mid".into(),
            region: String::new(),
            tags: Vec::new(),
        }
    }
}

/// Everything the agent needs. Every field has a default except the device id, which is
/// generated and kept in the data dir when left empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Device-plane URL of the cloud, e.g. `http://127.0.0.1:50051`.
    pub cloud_url: String,
    /// Directory for the credential and installed tasks.
    pub data_dir: PathBuf,
    /// Secret the cloud requires at registration, if any.
    pub enrollment_secret: String,
    /// PEM certificate (or CA) to trust for an `https://` cloud URL.
    pub cloud_ca_cert: Option<PathBuf>,
    /// Local ingest endpoint for the host app, HTTP on a TCP address (loopback); `None`
    /// (`"off"` in TOML) disables it.
    #[serde(with = "addr_or_off")]
    pub ingest_addr: Option<SocketAddr>,
    /// The same endpoint on a Unix socket at this path, created with mode 0600 so that only the
    /// agent's user may feed events; a stale socket there is replaced, anything else refused.
    /// May be enabled together with `ingest_addr`.
    pub ingest_socket: Option<PathBuf>,
    /// Worker threads of the task VM.
    pub vm_threads: usize,
    /// Task runs waiting to execute, in all; runs that would overflow it are dropped and
    /// counted.
    pub run_queue: usize,
    /// Task runs of one task waiting to execute (a task's `limits.max_queued_runs` may lower
    /// it), so one busy task cannot fill the whole queue.
    pub run_queue_per_task: usize,
    /// Events older than this many hours are deleted from the event store.
    pub event_max_age_hours: u64,
    /// Most bytes of events the store keeps; the oldest go first.
    pub event_max_bytes: u64,
    /// Most payload bytes of task outputs (and, separately, of reports) waiting for the cloud;
    /// past it the oldest are dropped and counted.
    pub outbox_max_bytes: u64,
    /// Disk the bundle cache (unpacked task versions and partial downloads) may take; over it,
    /// previous versions are deleted, and a bundle that does not fit is refused.
    pub bundle_cache_max_bytes: u64,
    /// Size the device database file may not grow past; writes beyond it fail as on a full
    /// disk (events are refused, outputs counted as outbox failures). No limit when absent.
    pub db_max_bytes: Option<u64>,
    /// Consecutive failed runs after which a task version is rolled back to the version before
    /// it, and never installed again on this device; 0 never rolls back.
    pub rollback_after_failures: u32,
    /// Task VM worker threads lost to stuck native code (abandoned, still running or parked)
    /// at which the agent asks to be restarted, to get the cores and memory back: the binary
    /// restarts itself; an app embedding the agent sees [`crate::Agent::restart_requested`].
    /// 0 never asks.
    pub restart_after_lost_threads: usize,
    /// Heap bytes the lost threads' tasks may hold before the same; 0 never asks.
    pub restart_after_lost_bytes: u64,
    pub profile: ProfileConfig,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            cloud_url: "http://127.0.0.1:50051".into(),
            data_dir: PathBuf::from("walle-device-data"),
            enrollment_secret: String::new(),
            cloud_ca_cert: None,
            ingest_addr: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            ingest_socket: None,
            vm_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            run_queue: 1024,
            run_queue_per_task: 256,
            event_max_age_hours: 7 * 24,
            event_max_bytes: 64 << 20,
            outbox_max_bytes: 64 << 20,
            bundle_cache_max_bytes: 256 << 20,
            db_max_bytes: None,
            rollback_after_failures: 3,
            restart_after_lost_threads: 2,
            restart_after_lost_bytes: 256 << 20,
            profile: ProfileConfig::default(),
        }
    }
}

impl DeviceConfig {
    /// What the event store keeps.
    pub fn event_retention(&self) -> walle_pipeline::Retention {
        walle_pipeline::Retention {
            max_age_ms: i64::try_from(self.event_max_age_hours.saturating_mul(3_600_000))
                .unwrap_or(i64::MAX),
            max_bytes: self.event_max_bytes,
        }
    }

    /// Reads a TOML config file; absent fields take their defaults.
    pub fn from_toml_file(path: &std::path::Path) -> Result<DeviceConfig, crate::AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::AgentError::Config(format!("cannot read {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| crate::AgentError::Config(format!("{}: {}", path.display(), e.message())))
    }
}

/// `ingest_addr` in TOML: an address, or `"off"`.
mod addr_or_off {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_addr_or_off(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses an ingest address, or `off` (no TCP endpoint).
pub fn parse_addr_or_off(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| format!("{text:?} is neither an address (IP:PORT) nor \"off\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_endpoints_are_read_from_toml() {
        let config: DeviceConfig =
            toml::from_str("ingest_addr = \"off\"\ningest_socket = \"/run/walle/ingest.sock\"")
                .unwrap();
        assert_eq!(config.ingest_addr, None);
        assert_eq!(
            config.ingest_socket.as_deref(),
            Some(std::path::Path::new("/run/walle/ingest.sock"))
        );
        let config: DeviceConfig = toml::from_str("ingest_addr = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(config.ingest_addr, "127.0.0.1:9000".parse().ok());
        assert_eq!(config.ingest_socket, None);
        let config: DeviceConfig = toml::from_str("").unwrap();
        assert_eq!(config.ingest_addr, DeviceConfig::default().ingest_addr);
        let err = toml::from_str::<DeviceConfig>("ingest_addr = \"nowhere\"").unwrap_err();
        assert!(err.message().contains("neither an address"), "{err}");
        // What is written out reads back.
        let off = DeviceConfig {
            ingest_addr: None,
            ..DeviceConfig::default()
        };
        let back: DeviceConfig = toml::from_str(&toml::to_string(&off).unwrap()).unwrap();
        assert_eq!(back.ingest_addr, None);
    }
}
