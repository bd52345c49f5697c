//! Secrets the cloud keeps in its data dir: the publisher signing key and the admin API token.
//! Both are created on first start and reused afterwards.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};
use walle_proto::signing::Publisher;

use crate::CloudError;

const PUBLISHER_KEY_FILE: &str = "publisher.key";
const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Loads the ed25519 publisher key from the data dir, creating it on first start.
pub fn load_or_create_publisher(data_dir: &Path) -> Result<Publisher, CloudError> {
    let path = data_dir.join(PUBLISHER_KEY_FILE);
    let hex_seed = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = hex::encode(random_bytes::<32>()?);
            write_private(&path, &seed)?;
            seed
        }
        Err(e) => return Err(CloudError::io(&path, e)),
    };
    let seed: [u8; 32] = hex::decode(&hex_seed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            CloudError::Config(format!(
                "{} does not hold a 32-byte hex key",
                path.display()
            ))
        })?;
    Ok(Publisher::from_seed(&seed))
}

/// Loads the admin API token from the data dir, creating it on first start.
pub fn load_or_create_admin_token(data_dir: &Path) -> Result<String, CloudError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(CloudError::Config(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token("wlo")?;
            write_private(&path, &token)?;
            Ok(token)
        }
        Err(e) => Err(CloudError::io(&path, e)),
    }
}

/// A fresh random bearer token with a readable prefix.
pub fn new_token(prefix: &str) -> Result<String, CloudError> {
    Ok(format!("{prefix}_{}", hex::encode(random_bytes::<24>()?)))
}

/// sha256 of a token, hex: what the database keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CloudError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(CloudError::NoRandomness)?;
    Ok(bytes)
}

fn write_private(path: &Path, content: &str) -> Result<(), CloudError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| CloudError::io(path, e))?;
    file.write_all(content.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| CloudError::io(path, e))
}
