//! The device's identity and credential, kept in its data dir across restarts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use walle_proto::v1::PublisherKey;

use crate::AgentError;

const CREDENTIAL_FILE: &str = "credential.json";
const DEVICE_ID_FILE: &str = "device-id";

/// What registration gave the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub device_token: String,
    /// (key id, hex public key) pairs the device trusts.
    pub publisher_keys: Vec<(String, String)>,
    pub sync_interval_secs: u32,
}

impl Credential {
    /// The trusted keys in protocol form.
    pub fn trusted_keys(&self) -> Vec<PublisherKey> {
        self.publisher_keys
            .iter()
            .filter_map(|(key_id, hex_key)| {
                Some(PublisherKey {
                    key_id: key_id.clone(),
                    public_key: hex::decode(hex_key).ok()?,
                })
            })
            .collect()
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(CREDENTIAL_FILE)
}

/// Loads the stored credential, if the device registered before.
pub fn load(data_dir: &Path) -> Result<Option<Credential>, AgentError> {
    let path = path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| AgentError::CorruptFile {
                    path: path.clone(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::file("read", &path)(e)),
    }
}

/// Stores the credential (atomically: temp file + rename).
pub fn store(data_dir: &Path, credential: &Credential) -> Result<(), AgentError> {
    let path = path(data_dir);
    let temp = data_dir.join(".credential.json.tmp");
    let bytes = serde_json::to_vec_pretty(credential).map_err(|source| AgentError::Encode {
        what: "credential",
        source,
    })?;
    std::fs::write(&temp, bytes)
        .and_then(|_| std::fs::rename(&temp, &path))
        .map_err(AgentError::file("write", &path))
}

/// The configured device id, or one generated on first start and kept in the data dir.
pub fn device_id(data_dir: &Path, configured: &str) -> Result<String, AgentError> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let path = data_dir.join(DEVICE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::file("read", &path)(e)),
    }
    let id = format!("dev-{}", hex::encode(crate::random::bytes::<8>()));
    std::fs::write(&path, &id).map_err(AgentError::file("write", &path))?;
    Ok(id)
}
