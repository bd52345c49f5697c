//! Where the CLI finds its cloud: flags and environment first, then a saved profile.
//!
//! `walle login` saves a profile (cloud URL, operator token, CA certificate path) in
//! `$WALLE_CONFIG`, else `$XDG_CONFIG_HOME/walle/config.toml`, else
//! `~/.config/walle/config.toml`, readable by the user only. `--profile NAME` (or
//! `WALLE_PROFILE`) picks one; otherwise the one last logged in to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::client::ControlClient;

/// The profiles file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One cloud and how to sign in to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub cloud: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl Profile {
    /// A control-plane client for this profile.
    pub fn client(&self) -> anyhow::Result<ControlClient> {
        match &self.ca_cert {
            None => Ok(ControlClient::new(&self.cloud, &self.token)),
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading the CA certificate {}", path.display()))?;
                Ok(ControlClient::with_ca_cert(&self.cloud, &self.token, &pem)?)
            }
        }
    }
}

/// The profiles file's path.
pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WALLE_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".config"),
            None => bail!(
                "neither WALLE_CONFIG, XDG_CONFIG_HOME nor HOME is set: nowhere to keep profiles"
            ),
        },
    };
    Ok(base.join("walle").join("config.toml"))
}

impl Config {
    /// The saved profiles (none when the file does not exist yet).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| {
                format!(
                    "{} is not a walle profiles file (fix or delete it, then `walle login` again)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the profiles, readable by the user only (they hold tokens).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string(self).context("writing the profiles")?;
        let temp = path.with_extension("toml.tmp");
        write_private(&temp, text.as_bytes())?;
        std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The profile to use: `name`, else the default one.
    pub fn pick(&self, name: Option<&str>, path: &Path) -> anyhow::Result<&Profile> {
        let Some(name) = name.or(self.default.as_deref()) else {
            bail!(
                "no cloud to talk to: run `walle login --cloud URL --token TOKEN`, or pass \
                 --cloud and --token (or WALLE_CLOUD and WALLE_TOKEN)"
            );
        };
        self.profiles.get(name).with_context(|| {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            format!(
                "no profile {name:?} in {} (profiles: {}); `walle login --profile {name} …` creates it",
                path.display(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )
        })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_round_trip_privately_and_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walle").join("config.toml");
        let empty = Config::load(&path).unwrap();
        let error = empty.pick(None, &path).unwrap_err().to_string();
        assert!(error.contains("walle login"), "{error}");
        let mut config = Config::default();
        config.profiles.insert(
            "prod".into(),
            Profile {
                cloud: "https://cloud.example".into(),
                token: "wt_secret".into(),
                ca_cert: Some("/etc/ca.pem".into()),
            },
        );
        config.default = Some("prod".into());
        config.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = Config::load(&path).unwrap();
        assert_eq!(loaded, config);
        assert_eq!(
            loaded.pick(None, &path).unwrap().cloud,
            "https://cloud.example"
        );
        let error = loaded.pick(Some("staging"), &path).unwrap_err().to_string();
        assert!(
            error.contains("\"staging\"") && error.contains("prod"),
            "{error}"
        );
        std::fs::write(&path, "profiles = 3").unwrap();
        let error = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(error.contains("not a walle profiles file"), "{error}");
    }
}
