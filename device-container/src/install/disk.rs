//! Task versions on the device's disk: verified, atomic unpacking and the active pointer.
//!
//! Layout below the install root:
//! ```text
//! <task>/<version>-<digest12>/...   unpacked bundle, one directory per installed version
//! <task>/current.json               which version is active (replaced atomically by rename)
//! <task>/previous.json              the version active before it, kept for a local rollback
//! ```
//! A bundle is trusted only after its manifest's signature verifies with a trusted publisher key,
//! its size and sha256 match the signed manifest, and the `walle.toml` inside equals the signed
//! one. Unpacking goes to a temporary directory that is renamed into place; the pointer switch is
//! a separate, final step ([`Installer::activate`]), so a failure at any point leaves the previous
//! version active. After a switch, unpacked versions other than the current and the previous one
//! are deleted, so a task keeps at most two versions on disk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use walle_proto::bundle::{self, BundleError, digest_hex};
use walle_proto::manifest::{ReleaseManifest, is_valid_task_name};
use walle_proto::signing::{self, VerifyError};
use walle_proto::v1::{PublisherKey, SignedManifest};

const CURRENT_FILE: &str = "current.json";
const PREVIOUS_FILE: &str = "previous.json";

/// Why a bundle was refused or could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("manifest refused: {0}")]
    Signature(#[from] VerifyError),
    #[error("bundle is {actual} bytes but the signed manifest says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("bundle digest mismatch: signed manifest says sha256 {expected}, bundle is {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("bundle content refused: {0}")]
    Bundle(#[from] BundleError),
    #[error("the walle.toml inside the bundle differs from the signed manifest")]
    ManifestMismatch,
    #[error("signed manifest names an invalid task {0:?}")]
    BadTaskName(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("install record {path} is corrupt: {reason}")]
    CorruptRecord { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An unpacked, verified task version (active or about to be).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledTask {
    pub manifest: ReleaseManifest,
    /// Release this version came from.
    pub release_id: String,
    /// Directory holding the unpacked bundle.
    pub dir: PathBuf,
}

impl InstalledTask {
    /// The task's name.
    pub fn task(&self) -> &str {
        &self.manifest.task.name
    }

    /// The version as text.
    pub fn version(&self) -> String {
        self.manifest.task.version.to_string()
    }

    /// Key of this version in the VM, e.g. `ipv-feature@1.0.0`.
    pub fn vm_key(&self) -> String {
        format!("{}@{}", self.task(), self.version())
    }
}

/// Installs and activates verified bundles below one root directory.
#[derive(Debug, Clone)]
pub struct Installer {
    root: PathBuf,
    trusted: Vec<PublisherKey>,
}

impl Installer {
    /// An installer below `root` trusting `trusted` publisher keys.
    pub fn new(root: PathBuf, trusted: Vec<PublisherKey>) -> Installer {
        Installer { root, trusted }
    }

    /// Replaces the trusted publisher keys (after registration).
    pub fn set_trusted(&mut self, trusted: Vec<PublisherKey>) {
        self.trusted = trusted;
    }

    /// Verifies a signed manifest and returns its contents.
    pub fn verify_manifest(
        &self,
        signed: &SignedManifest,
    ) -> Result<ReleaseManifest, InstallError> {
        let manifest = signing::verify(signed, &self.trusted)?;
        if !is_valid_task_name(&manifest.task.name) {
            return Err(InstallError::BadTaskName(manifest.task.name));
        }
        Ok(manifest)
    }

    /// Checks a downloaded bundle against its verified manifest and unpacks it into its own
    /// directory. The active version is not changed.
    pub fn unpack(
        &self,
        manifest: &ReleaseManifest,
        release_id: &str,
        bytes: &[u8],
    ) -> Result<InstalledTask, InstallError> {
        if bytes.len() as u64 != manifest.bundle_size {
            return Err(InstallError::SizeMismatch {
                expected: manifest.bundle_size,
                actual: bytes.len() as u64,
            });
        }
        let actual = digest_hex(bytes);
        if actual != manifest.bundle_digest {
            return Err(InstallError::DigestMismatch {
                expected: manifest.bundle_digest.clone(),
                actual,
            });
        }
        let contents = bundle::read_bundle(bytes)?;
        if contents.manifest != manifest.task {
            return Err(InstallError::ManifestMismatch);
        }
        let task_dir = self.root.join(&manifest.task.name);
        let digest_prefix = manifest
            .bundle_digest
            .get(..12)
            .unwrap_or(&manifest.bundle_digest);
        let final_dir = task_dir.join(format!("{}-{digest_prefix}", manifest.task.version));
        if !final_dir.exists() {
            let staging =
                task_dir.join(format!(".staging-{}-{}", std::process::id(), digest_prefix));
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
            }
            bundle::write_contents(&contents, &staging)?;
            walle_proto::crash::crash_point("device-unpack");
            std::fs::rename(&staging, &final_dir).map_err(io_err(&final_dir))?;
        }
        Ok(InstalledTask {
            manifest: manifest.clone(),
            release_id: release_id.to_owned(),
            dir: final_dir,
        })
    }

    /// Makes an unpacked version the active one, atomically (write a temp file, fsync, rename);
    /// the version it replaces becomes the previous one, and older versions are deleted.
    pub fn activate(&self, installed: &InstalledTask) -> Result<(), InstallError> {
        if let Some(current) = self.current(installed.task())?
            && current.dir != installed.dir
        {
            // Written first: a crash before the switch leaves previous == current, which is
            // harmless, never a previous pointing at a deleted directory.
            self.write_pointer(&current, PREVIOUS_FILE)?;
        }
        walle_proto::crash::crash_point("device-switch");
        self.write_pointer(installed, CURRENT_FILE)?;
        self.collect_garbage(installed.task());
        Ok(())
    }

    /// Makes the previous version active again and forgets it as previous; returns it, or
    /// `None` (changing nothing) when the task has no previous version on disk.
    pub fn roll_back(&self, task: &str) -> Result<Option<InstalledTask>, InstallError> {
        let Some(previous) = self.read_pointer(task, PREVIOUS_FILE)? else {
            return Ok(None);
        };
        if !previous.dir.is_dir() {
            return Ok(None);
        }
        self.write_pointer(&previous, CURRENT_FILE)?;
        let pointer = self.root.join(task).join(PREVIOUS_FILE);
        std::fs::remove_file(&pointer).map_err(io_err(&pointer))?;
        Ok(Some(previous))
    }

    /// The version before the active one, if it is still on disk.
    pub fn previous(&self, task: &str) -> Result<Option<InstalledTask>, InstallError> {
        Ok(self
            .read_pointer(task, PREVIOUS_FILE)?
            .filter(|previous| previous.dir.is_dir()))
    }

    /// The active version of a task, if any.
    pub fn current(&self, task: &str) -> Result<Option<InstalledTask>, InstallError> {
        self.read_pointer(task, CURRENT_FILE)
    }

    fn write_pointer(&self, installed: &InstalledTask, file: &str) -> Result<(), InstallError> {
        let task_dir = self.root.join(installed.task());
        let pointer = task_dir.join(file);
        let temp = task_dir.join(format!(".{file}.tmp"));
        let json =
            serde_json::to_vec_pretty(installed).map_err(|e| InstallError::CorruptRecord {
                path: pointer.clone(),
                reason: e.to_string(),
            })?;
        write_synced(&temp, &json)?;
        walle_proto::crash::crash_point("device-pointer-written");
        std::fs::rename(&temp, &pointer).map_err(io_err(&pointer))?;
        sync_dir(&task_dir);
        Ok(())
    }

    fn read_pointer(&self, task: &str, file: &str) -> Result<Option<InstalledTask>, InstallError> {
        let pointer = self.root.join(task).join(file);
        let bytes = match std::fs::read(&pointer) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&pointer)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| InstallError::CorruptRecord {
                path: pointer,
                reason: e.to_string(),
            })
    }

    /// Deletes unpacked versions of `task` that are neither current nor previous, and staging
    /// directories left by a crash. Failures are logged: they cost disk space, not correctness.
    fn collect_garbage(&self, task: &str) {
        let keep: Vec<PathBuf> = [CURRENT_FILE, PREVIOUS_FILE]
            .into_iter()
            .filter_map(|file| self.read_pointer(task, file).ok().flatten())
            .map(|installed| installed.dir)
            .collect();
        let task_dir = self.root.join(task);
        let Ok(entries) = std::fs::read_dir(&task_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir()
                && !keep.contains(&path)
                && let Err(e) = std::fs::remove_dir_all(&path)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an old task version");
            }
        }
    }

    /// Bytes of every unpacked version and install record.
    pub fn disk_bytes(&self) -> u64 {
        crate::cache::dir_bytes(&self.root)
    }

    /// Tasks that keep a previous version on disk, the one switched away from longest ago first.
    pub fn previous_versions_oldest_first(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut tasks: Vec<(std::time::SystemTime, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let pointer = entry.path().join(PREVIOUS_FILE);
                let switched = std::fs::metadata(pointer).and_then(|m| m.modified()).ok()?;
                Some((switched, entry.file_name().to_string_lossy().into_owned()))
            })
            .collect();
        tasks.sort();
        tasks.into_iter().map(|(_, task)| task).collect()
    }

    /// Deletes a task's previous version (its record first, so a crash never leaves a record of
    /// a deleted version); the task can then not be rolled back locally.
    pub fn forget_previous(&self, task: &str) -> Result<(), InstallError> {
        let previous = self.read_pointer(task, PREVIOUS_FILE)?;
        let pointer = self.root.join(task).join(PREVIOUS_FILE);
        std::fs::remove_file(&pointer).map_err(io_err(&pointer))?;
        sync_dir(&self.root.join(task));
        let current = self.current(task)?.map(|c| c.dir);
        if let Some(previous) = previous
            && Some(&previous.dir) != current.as_ref()
            && previous.dir.is_dir()
        {
            std::fs::remove_dir_all(&previous.dir).map_err(io_err(&previous.dir))?;
        }
        Ok(())
    }

    /// Every active task version, by task name.
    pub fn all_current(&self) -> Result<Vec<InstalledTask>, InstallError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| is_valid_task_name(name))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(installed) = self.current(&name)? {
                out.push(installed);
            }
        }
        Ok(out)
    }

    /// Deactivates a task (its unpacked versions are removed too).
    pub fn remove(&self, task: &str) -> Result<(), InstallError> {
        let task_dir = self.root.join(task);
        let pointer = task_dir.join(CURRENT_FILE);
        match std::fs::remove_file(&pointer) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&pointer)(e)),
        }
        std::fs::remove_dir_all(&task_dir).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(io_err(&task_dir)(e))
            }
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) {
    // Persisting the rename needs the directory synced; failure here is not fatal to the install.
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walle_proto::signing::Publisher;

    fn bundle_for(version: &str) -> (walle_proto::manifest::TaskManifest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("walle.toml"),
            format!(
                "name = \"t\"\nversion = \"{version}\"\nruntime = \"python\"\nentry = \"m.py\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("m.py"), format!("V = '{version}'\n")).unwrap();
        bundle::pack_dir(dir.path()).unwrap()
    }

    fn signed(publisher: &Publisher, version: &str) -> (SignedManifest, Vec<u8>) {
        let (task, bytes) = bundle_for(version);
        let manifest = ReleaseManifest {
            task,
            bundle_digest: digest_hex(&bytes),
            bundle_size: bytes.len() as u64,
        };
        (publisher.sign(&manifest), bytes)
    }

    fn install(
        installer: &Installer,
        signed: &SignedManifest,
        bytes: &[u8],
    ) -> Result<InstalledTask, InstallError> {
        let manifest = installer.verify_manifest(signed)?;
        let installed = installer.unpack(&manifest, "rel", bytes)?;
        installer.activate(&installed)?;
        Ok(installed)
    }

    #[test]
    fn installs_and_switches_versions() {
        let root = tempfile::tempdir().unwrap();
        let publisher = Publisher::from_seed(&[1; 32]);
        let installer = Installer::new(root.path().into(), vec![publisher.public_key()]);
        let (s1, b1) = signed(&publisher, "1.0.0");
        let v1 = install(&installer, &s1, &b1).unwrap();
        assert_eq!(installer.current("t").unwrap(), Some(v1.clone()));
        assert_eq!(
            std::fs::read_to_string(v1.dir.join("m.py")).unwrap(),
            "V = '1.0.0'\n"
        );
        let (s2, b2) = signed(&publisher, "1.1.0");
        install(&installer, &s2, &b2).unwrap();
        assert_eq!(installer.current("t").unwrap().unwrap().version(), "1.1.0");
        assert_eq!(installer.all_current().unwrap().len(), 1);
    }

    #[test]
    fn keeps_the_previous_version_for_a_rollback_and_deletes_older_ones() {
        let root = tempfile::tempdir().unwrap();
        let publisher = Publisher::from_seed(&[1; 32]);
        let installer = Installer::new(root.path().into(), vec![publisher.public_key()]);
        let mut versions = Vec::new();
        for version in ["1.0.0", "1.1.0", "1.2.0"] {
            let (signed, bundle) = signed(&publisher, version);
            versions.push(install(&installer, &signed, &bundle).unwrap());
        }
        assert!(!versions[0].dir.exists(), "the oldest version is deleted");
        assert!(versions[1].dir.exists() && versions[2].dir.exists());
        assert_eq!(installer.previous("t").unwrap(), Some(versions[1].clone()));
        // Reinstalling the active version does not make it its own previous.
        installer.activate(&versions[2]).unwrap();
        assert_eq!(installer.previous("t").unwrap(), Some(versions[1].clone()));

        assert_eq!(installer.roll_back("t").unwrap(), Some(versions[1].clone()));
        assert_eq!(installer.current("t").unwrap(), Some(versions[1].clone()));
        assert_eq!(installer.previous("t").unwrap(), None);
        assert_eq!(installer.roll_back("t").unwrap(), None);
        assert_eq!(installer.current("t").unwrap(), Some(versions[1].clone()));
    }

    #[test]
    fn over_the_cache_budget_previous_versions_go_but_active_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let publisher = Publisher::from_seed(&[1; 32]);
        let installer = Installer::new(root.path().into(), vec![publisher.public_key()]);
        let mut versions = Vec::new();
        for version in ["1.0.0", "1.1.0"] {
            let (signed, bundle) = signed(&publisher, version);
            versions.push(install(&installer, &signed, &bundle).unwrap());
        }
        let used = installer.disk_bytes();
        let mut status = crate::cache::CacheStatus::default();
        // Within the budget: nothing goes.
        crate::cache::make_room(&installer, downloads.path(), used, 0, &mut status).unwrap();
        assert!(versions[0].dir.exists());
        assert_eq!(status.bytes, used);
        // A new bundle needs room: the previous version goes, the active one stays.
        crate::cache::make_room(&installer, downloads.path(), used, 1, &mut status).unwrap();
        assert!(!versions[0].dir.exists());
        assert_eq!(installer.previous("t").unwrap(), None);
        assert_eq!(installer.current("t").unwrap(), Some(versions[1].clone()));
        assert_eq!(status.previous_versions_evicted, 1);
        // No room even so: refused with the figures, the active version untouched.
        let refusal = crate::cache::make_room(
            &installer,
            downloads.path(),
            status.bytes,
            1000,
            &mut status,
        )
        .unwrap_err()
        .to_string();
        assert!(refusal.contains("bundle of 1000 bytes"), "{refusal}");
        assert!(versions[1].dir.exists());
        assert_eq!(installer.roll_back("t").unwrap(), None);
    }

    #[test]
    fn tampered_bundles_are_refused_and_the_old_version_kept() {
        let root = tempfile::tempdir().unwrap();
        let publisher = Publisher::from_seed(&[1; 32]);
        let installer = Installer::new(root.path().into(), vec![publisher.public_key()]);
        let (s1, b1) = signed(&publisher, "1.0.0");
        let v1 = install(&installer, &s1, &b1).unwrap();

        // Bad digest: the bytes were changed after signing (same length).
        let (s2, mut b2) = signed(&publisher, "2.0.0");
        let last = b2.len() - 1;
        b2[last] ^= 0xff;
        let err = install(&installer, &s2, &b2).unwrap_err();
        assert!(matches!(err, InstallError::DigestMismatch { .. }), "{err}");

        // Bad signature: the manifest was changed after signing.
        let (mut s3, b3) = signed(&publisher, "3.0.0");
        s3.manifest_json = String::from_utf8(s3.manifest_json)
            .unwrap()
            .replace("3.0.0", "3.0.1")
            .into_bytes();
        let err = install(&installer, &s3, &b3).unwrap_err();
        assert!(
            matches!(err, InstallError::Signature(VerifyError::BadSignature(_))),
            "{err}"
        );

        // Signed by a key the device does not trust.
        let (s4, b4) = signed(&Publisher::from_seed(&[2; 32]), "4.0.0");
        let err = install(&installer, &s4, &b4).unwrap_err();
        assert!(
            matches!(err, InstallError::Signature(VerifyError::UnknownKey(_))),
            "{err}"
        );

        // Truncated download.
        let (s5, b5) = signed(&publisher, "5.0.0");
        let err = install(&installer, &s5, &b5[..b5.len() / 2]).unwrap_err();
        assert!(matches!(err, InstallError::SizeMismatch { .. }), "{err}");

        assert_eq!(installer.current("t").unwrap(), Some(v1));
    }

    #[test]
    fn a_bundle_whose_manifest_differs_from_the_signed_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let publisher = Publisher::from_seed(&[1; 32]);
        let installer = Installer::new(root.path().into(), vec![publisher.public_key()]);
        // Sign a manifest claiming version 9.9.9 over a bundle that says 1.0.0.
        let (mut task, bytes) = bundle_for("1.0.0");
        task.version = semver::Version::new(9, 9, 9);
        let lying = publisher.sign(&ReleaseManifest {
            task,
            bundle_digest: digest_hex(&bytes),
            bundle_size: bytes.len() as u64,
        });
        let err = install(&installer, &lying, &bytes).unwrap_err();
        assert!(matches!(err, InstallError::ManifestMismatch), "{err}");
        assert_eq!(installer.current("t").unwrap(), None);
    }
}
