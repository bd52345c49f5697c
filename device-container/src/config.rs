//! `walle-device` configuration: one typed struct, loadable from TOML, overridable by flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The device's description of itself, sent to the cloud at Register and every Sync; release
/// policies target devices by it (`[profile]` in the TOML file, `--app-id` … on the command
/// line). [`ProfileConfig::check`] refuses, at start, what the cloud would refuse at Register
/// and an app version no policy could compare.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Device id; empty: generated once and kept in the data dir.
    pub device_id: String,
    /// Id of the host app, e.g. `com.example.shop`.
    pub app_id: String,
    /// Version of the host app, semver (`5.2.0`; `5` and `5.2` read as `5.0.0` and `5.2.0`).
    pub app_version: String,
    /// Operating system, e.g. `android`, `ios`.
    pub os: String,
    /// Version of the operating system, e.g. `14` or `17.4`.
    pub os_version: String,
    /// Device model, e.g. `Pixel 8`.
    pub model: String,
    /// Hardware tier, e.g. `low`, `mid`, `high`.
    pub hardware_tier: String,
    /// Region, e.g. `eu-west`.
    pub region: String,
    /// Free-form tags, e.g. `beta`.
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

/// Longest device id, app id or tag the cloud accepts at Register.
pub const MAX_ID_CHARS: usize = 128;
/// Longest other profile value the cloud accepts at Register.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most tags the cloud accepts at Register.
pub const MAX_TAGS: usize = 64;

/// What is wrong with one profile value (worded to follow the value's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileValueError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error(
        "{0:?} is not a version like 5.2.0: release policies compare app versions as semver, \
         so no app_version target could ever match this device"
    )]
    NotAVersion(String),
    #[error("must be at most {MAX_TAGS} tags, not {0}")]
    TooManyTags(usize),
}

/// A profile field the cloud would refuse at Register, or could never target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile.{field}: {problem}")]
pub struct ProfileError {
    /// The field, as named in the `[profile]` table of the TOML file.
    pub field: &'static str,
    pub problem: ProfileValueError,
}

impl ProfileConfig {
    /// Checks every field against what the cloud accepts at Register (its limits are mirrored
    /// here so that a bad value stops the agent at start, not at its first contact with the
    /// cloud) and the app version against what release targeting can compare. An OS version
    /// targeting cannot compare is only warned about: its format is the platform's, not the
    /// app's to choose.
    pub fn check(&self) -> Result<(), ProfileError> {
        let at = |field| move |problem| ProfileError { field, problem };
        if !self.device_id.is_empty() {
            check_id(&self.device_id).map_err(at("device_id"))?;
        }
        check_id(&self.app_id).map_err(at("app_id"))?;
        check_app_version(&self.app_version).map_err(at("app_version"))?;
        for (field, value) in [
            ("os", &self.os),
            ("os_version", &self.os_version),
            ("model", &self.model),
            ("hardware_tier", &self.hardware_tier),
            ("region", &self.region),
        ] {
            check_text(value).map_err(at(field))?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(at("tags")(ProfileValueError::TooManyTags(self.tags.len())));
        }
        for tag in &self.tags {
            check_id(tag).map_err(at("tags"))?;
        }
        if !self.os_version.is_empty() && lenient_version(&self.os_version).is_none() {
            tracing::warn!(
                os_version = %self.os_version,
                "profile.os_version is not a version like 14 or 17.4: \
                 no os_version target will match this device"
            );
        }
        Ok(())
    }
}

/// An id (device id, app id, tag): not empty, at most [`MAX_ID_CHARS`] printable characters.
pub fn check_id(value: &str) -> Result<(), ProfileValueError> {
    if value.is_empty() {
        return Err(ProfileValueError::Empty);
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(ProfileValueError::TooLong(MAX_ID_CHARS));
    }
    if value.chars().any(char::is_control) {
        return Err(ProfileValueError::ControlCharacter);
    }
    Ok(())
}

/// Other profile text: at most [`MAX_TEXT_CHARS`] characters, may be empty.
pub fn check_text(value: &str) -> Result<(), ProfileValueError> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(ProfileValueError::TooLong(MAX_TEXT_CHARS));
    }
    Ok(())
}

/// The app version: one release targeting can compare (see [`lenient_version`]).
pub fn check_app_version(value: &str) -> Result<(), ProfileValueError> {
    check_text(value)?;
    match lenient_version(value) {
        Some(_) => Ok(()),
        None => Err(ProfileValueError::NotAVersion(value.to_owned())),
    }
}

/// Reads a version as release targeting does (the cloud's `release::target::lenient_version`):
/// `14` → 14.0.0, `17.4` → 17.4.0, `5.2.0-beta` as is.
pub fn lenient_version(text: &str) -> Option<semver::Version> {
    let text = text.trim();
    if let Ok(v) = semver::Version::parse(text) {
        return Some(v);
    }
    let padded = match text.split('.').count() {
        1 => format!("{text}.0.0"),
        2 => format!("{text}.0"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
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
        assert_eq!(ProfileConfig::default().check(), Ok(()));
        let with = |edit: fn(&mut ProfileConfig)| {
            let mut profile = ProfileConfig::default();
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
