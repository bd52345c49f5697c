//! `walle-device` configuration: one typed struct, loadable from TOML, overridable by flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use walle_proto::profile::{
    MAX_ID_CHARS, MAX_TAGS, MAX_TEXT_CHARS, ProfileError, ProfileValueError, check_app_version,
    check_id, check_text, lenient_version,
};

/// The device's description of itself, sent to the cloud at Register and every Sync; release
/// policies target devices by it (`[profile]` in the TOML file, `--app-id` … on the command
/// line). It is the protocol's [`DeviceProfile`](walle_proto::profile::DeviceProfile) itself;
/// its `check` refuses, at start, what the cloud would refuse at Register and an app version no
/// policy could compare. Its `Default` is the wire's (every field empty): the device's defaults
/// are [`default_profile`], which [`DeviceConfig::default`] and a `[profile]` table start from.
pub type ProfileConfig = walle_proto::profile::DeviceProfile;

/// The profile of a device that was told nothing about itself: app `com.example.app` 1.0.0, this
/// machine's OS, hardware tier `mid`, and a device id generated at first start.
pub fn default_profile() -> ProfileConfig {
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
    /// The fields a `[profile]` table gives replace those of [`default_profile`]; other keys are
    /// refused.
    #[serde(deserialize_with = "profile_over_defaults")]
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
            profile: default_profile(),
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

    /// Reads a TOML config file; absent fields take their defaults. Its profile is checked
    /// ([`ProfileConfig::check`]), so that a mistake in it is reported with the file's name.
    pub fn from_toml_file(path: &std::path::Path) -> Result<DeviceConfig, crate::AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::AgentError::Config(format!("cannot read {}: {e}", path.display()))
        })?;
        let config: DeviceConfig = toml::from_str(&text).map_err(|e| {
            crate::AgentError::Config(format!("{}: {}", path.display(), e.message()))
        })?;
        config
            .profile
            .check()
            .map_err(|e| crate::AgentError::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
    }
}

/// A `[profile]` table: [`default_profile`] with the fields it gives replaced, refusing any other
/// key as `deny_unknown_fields` would. The table goes through JSON values so the fields are
/// listed only in the profile type.
fn profile_over_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<ProfileConfig, D::Error> {
    use serde::de::Error;
    let given = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    if let Some(unknown) = given
        .keys()
        .find(|key| !ProfileConfig::FIELDS.contains(&key.as_str()))
    {
        return Err(D::Error::unknown_field(unknown, ProfileConfig::FIELDS));
    }
    let mut profile = match serde_json::to_value(default_profile()) {
        Ok(serde_json::Value::Object(fields)) => fields,
        Ok(other) => {
            return Err(D::Error::custom(format!(
                "the default profile is not a table: {other}"
            )));
        }
        Err(e) => return Err(D::Error::custom(e)),
    };
    profile.extend(given);
    serde_json::from_value(serde_json::Value::Object(profile)).map_err(D::Error::custom)
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

    #[test]
    fn a_profile_the_cloud_would_refuse_is_refused_with_its_field() {
        assert_eq!(default_profile().check(), Ok(()));
        let with = |edit: fn(&mut ProfileConfig)| {
            let mut profile = default_profile();
            edit(&mut profile);
            profile.check()
        };
        assert_eq!(with(|p| p.app_version = "5".into()), Ok(()));
        assert_eq!(with(|p| p.app_version = "5.2.0-beta.1".into()), Ok(()));
        // Not a version targeting reads, but an OS's own format: warned about, not refused.
        assert_eq!(with(|p| p.os_version = "10.0.19045.3803".into()), Ok(()));
        let err = with(|p| p.app_version = "five".into()).unwrap_err();
        assert_eq!(err.field, "app_version");
        assert!(
            err.to_string()
                .starts_with("profile.app_version: \"five\" is not a version like 5.2.0"),
            "{err}"
        );
        let err = with(|p| p.app_id = String::new()).unwrap_err();
        assert_eq!(err.to_string(), "profile.app_id: must not be empty");
        let err = with(|p| p.device_id = "x".repeat(MAX_ID_CHARS + 1)).unwrap_err();
        assert_eq!(err.field, "device_id");
        let err = with(|p| p.tags = vec!["beta".into(), "a\tb".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "profile.tags: must not contain control characters"
        );
        let err = with(|p| p.tags = (0..=MAX_TAGS).map(|i| i.to_string()).collect()).unwrap_err();
        assert_eq!(err.problem, ProfileValueError::TooManyTags(MAX_TAGS + 1));
        let err = with(|p| p.region = "r".repeat(MAX_TEXT_CHARS + 1)).unwrap_err();
        assert_eq!(err.field, "region");
    }

    #[test]
    fn a_profile_table_replaces_only_the_fields_it_gives() {
        let config: DeviceConfig = toml::from_str("[profile]\nregion = \"eu-west\"\n").unwrap();
        assert_eq!(
            config.profile,
            ProfileConfig {
                region: "eu-west".into(),
                ..default_profile()
            }
        );
        let config: DeviceConfig = toml::from_str("").unwrap();
        assert_eq!(config.profile, default_profile());
        let err = toml::from_str::<DeviceConfig>("[profile]\ncolour = \"red\"\n").unwrap_err();
        assert!(
            err.message()
                .starts_with("unknown field `colour`, expected one of `device_id`, `app_id`"),
            "{err}"
        );
        let err = toml::from_str::<DeviceConfig>("[profile]\ntags = \"beta\"\n").unwrap_err();
        assert!(err.message().contains("invalid type"), "{err}");
        // What is written out reads back.
        let back: DeviceConfig =
            toml::from_str(&toml::to_string(&DeviceConfig::default()).unwrap()).unwrap();
        assert_eq!(back.profile, default_profile());
    }

    #[test]
    fn the_profile_is_read_from_toml_and_checked_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.toml");
        std::fs::write(
            &path,
            "[profile]\napp_id = \"com.example.shop\"\napp_version = \"5.2.0\"\ntags = [\"beta\"]\n",
        )
        .unwrap();
        let config = DeviceConfig::from_toml_file(&path).unwrap();
        assert_eq!(config.profile.app_id, "com.example.shop");
        assert_eq!(config.profile.app_version, "5.2.0");
        assert_eq!(config.profile.tags, ["beta"]);
        assert_eq!(
            config.profile.hardware_tier, "mid",
            "absent fields keep their default"
        );
        std::fs::write(&path, "[profile]\napp_version = \"latest\"\n").unwrap();
        let err = DeviceConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("device.toml: profile.app_version: \"latest\" is not a version"),
            "{err}"
        );
    }
}
