//! The task bundle: one `tar` + `zstd` file holding `walle.toml`, scripts, models and resources.
//!
//! Packing is deterministic (sorted paths, zeroed times and owners), so the same task directory
//! always gives the same bytes and the same digest. Reading validates every entry: only regular
//! files and directories, only safe relative paths, bounded count and unpacked size.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{MANIFEST_FILE, ManifestError, TaskManifest, is_safe_relative_path};

/// Largest total unpacked size of a bundle.
pub const MAX_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;
/// Largest number of entries in a bundle.
pub const MAX_ENTRIES: usize = 10_000;
/// zstd level used when packing.
const ZSTD_LEVEL: i32 = 9;

/// Why a bundle could not be packed, read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle is not a valid tar+zstd archive: {0}")]
    Corrupt(String),
    #[error("bundle entry {0:?} has an unsafe path (absolute, `..` or empty parts)")]
    UnsafePath(String),
    #[error("bundle entry {path:?} is a {kind}; only regular files and directories are allowed")]
    UnsupportedEntry { path: String, kind: String },
    #[error("bundle has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")]
    TooLarge,
    #[error("bundle has no walle.toml at its root")]
    NoManifest,
    #[error("bundle manifest is invalid: {0}")]
    Manifest(#[from] ManifestError),
    #[error("bundle lacks {0:?}, which walle.toml names")]
    MissingFile(String),
    #[error("bundle has {0:?} twice")]
    DuplicateEntry(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// sha256 of `bytes` as lowercase hex: the bundle's identity everywhere.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A bundle whose every entry has been read and checked.
#[derive(Debug, Clone)]
pub struct BundleContents {
    pub manifest: TaskManifest,
    /// Relative path and content of every regular file, sorted by path.
    pub files: Vec<(String, Vec<u8>)>,
}

impl BundleContents {
    /// The content of one file, if the bundle has it.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.as_slice())
    }
}

/// Packs a task directory (which must hold a valid `walle.toml`) into bundle bytes.
///
/// Hidden files and directories (starting with `.`), `__pycache__` and type stubs (`*.pyi`) are
/// left out.
pub fn pack_dir(dir: &Path) -> Result<(TaskManifest, Vec<u8>), BundleError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).map_err(io_err(&manifest_path))?;
    let manifest = TaskManifest::parse(&text)?;
    let mut files = Vec::new();
    collect_files(dir, "", &mut files)?;
    files.sort();
    for required in manifest.required_files() {
        if !files.iter().any(|f| f == required) {
            return Err(BundleError::MissingFile(required.to_owned()));
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    for rel in &files {
        let path = dir.join(rel);
        let content = std::fs::read(&path).map_err(io_err(&path))?;
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, rel, content.as_slice())
            .map_err(io_err(&path))?;
    }
    let tar_bytes = builder.into_inner().map_err(io_err(dir))?;
    let packed = zstd::encode_all(tar_bytes.as_slice(), ZSTD_LEVEL).map_err(io_err(dir))?;
    Ok((manifest, packed))
}

fn collect_files(root: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), BundleError> {
    let dir = root.join(prefix);
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden files, Python's caches and type stubs (`*.pyi`, for editors) never run.
        if name.starts_with('.') || name == "__pycache__" || name.ends_with(".pyi") {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(io_err(&entry.path()))?;
        if kind.is_dir() {
            collect_files(root, &rel, out)?;
        } else if kind.is_file() {
            out.push(rel);
        } else {
            return Err(BundleError::UnsupportedEntry {
                path: rel,
                kind: "symlink or special file".into(),
            });
        }
    }
    Ok(())
}

/// Reads and validates a whole bundle in memory.
pub fn read_bundle(bytes: &[u8]) -> Result<BundleContents, BundleError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    walk_entries(bytes, |path, size, entry| {
        let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry
            .take(MAX_UNPACKED_BYTES)
            .read_to_end(&mut content)
            .map_err(|e| BundleError::Corrupt(e.to_string()))?;
        files.push((path, content));
        Ok(())
    })?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let manifest = {
        let manifest_bytes = files
            .iter()
            .find(|(p, _)| p == MANIFEST_FILE)
            .map(|(_, c)| c.as_slice());
        parse_manifest(manifest_bytes, |path| files.iter().any(|(p, _)| p == path))?
    };
    Ok(BundleContents { manifest, files })
}

/// Validates a bundle as it is read from `reader`, keeping only its manifest in memory: the same
/// checks as [`read_bundle`], for bundles too large to hold whole (e.g. an upload on disk).
pub fn check_bundle(reader: impl Read) -> Result<TaskManifest, BundleError> {
    /// A walle.toml larger than this is not a manifest.
    const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
    let mut paths = Vec::new();
    let mut manifest_bytes = None;
    walk_entries(reader, |path, _size, entry| {
        let corrupt = |e: std::io::Error| BundleError::Corrupt(e.to_string());
        if path == MANIFEST_FILE {
            let mut content = Vec::new();
            entry
                .take(MAX_MANIFEST_BYTES)
                .read_to_end(&mut content)
                .map_err(corrupt)?;
            manifest_bytes = Some(content);
        } else {
            std::io::copy(entry, &mut std::io::sink()).map_err(corrupt)?;
        }
        paths.push(path);
        Ok(())
    })?;
    parse_manifest(manifest_bytes.as_deref(), |path| {
        paths.iter().any(|p| p == path)
    })
}

/// Walks every entry of a bundle, enforcing the entry rules (safe paths, regular files only,
/// bounded count and unpacked size, no duplicates), and hands each regular file to `on_file`
/// with its path and declared size.
fn walk_entries(
    reader: impl Read,
    mut on_file: impl FnMut(String, u64, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let decoder = zstd::Decoder::new(reader).map_err(|e| BundleError::Corrupt(e.to_string()))?;
    let mut archive = tar::Archive::new(decoder);
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Corrupt(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    let mut total: u64 = 0;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(BundleError::TooManyEntries);
        }
        let mut entry = entry.map_err(|e| BundleError::Corrupt(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| BundleError::Corrupt(e.to_string()))?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        if !is_safe_relative_path(&path) {
            return Err(BundleError::UnsafePath(path));
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(BundleError::UnsupportedEntry {
                    path,
                    kind: format!("{other:?}").to_lowercase(),
                });
            }
        }
        total = total.saturating_add(entry.size());
        if total > MAX_UNPACKED_BYTES {
            return Err(BundleError::TooLarge);
        }
        if !seen.insert(path.clone()) {
            return Err(BundleError::DuplicateEntry(path));
        }
        let size = entry.size();
        on_file(path, size, &mut entry)?;
    }
    Ok(())
}

/// Parses the manifest and checks that every file it names is present.
fn parse_manifest(
    manifest_bytes: Option<&[u8]>,
    has_file: impl Fn(&str) -> bool,
) -> Result<TaskManifest, BundleError> {
    let manifest_bytes = manifest_bytes.ok_or(BundleError::NoManifest)?;
    let text = std::str::from_utf8(manifest_bytes).map_err(|_| ManifestError::NotUtf8)?;
    let manifest = TaskManifest::parse(text)?;
    if let Some(missing) = manifest.required_files().find(|f| !has_file(f)) {
        return Err(BundleError::MissingFile(missing.to_owned()));
    }
    Ok(manifest)
}

/// Writes validated bundle contents below `dest` (which must not exist yet).
pub fn write_contents(contents: &BundleContents, dest: &Path) -> Result<(), BundleError> {
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    for (rel, content) in &contents.files {
        let path = dest.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(&path, content).map_err(io_err(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("walle.toml"),
            "name = \"t\"\nversion = \"0.1.0\"\nruntime = \"python\"\nentry = \"src/main.py\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(
            dir.path().join("src/main.py"),
            "def run(ctx): return None\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden"), "secret").unwrap();
        std::fs::create_dir_all(dir.path().join("typings/walle")).unwrap();
        std::fs::write(dir.path().join("typings/walle/__init__.pyi"), "x: int\n").unwrap();
        dir
    }

    #[test]
    fn pack_is_deterministic_and_reads_back() {
        let dir = task_dir();
        let (manifest, a) = pack_dir(dir.path()).unwrap();
        let (_, b) = pack_dir(dir.path()).unwrap();
        assert_eq!(digest_hex(&a), digest_hex(&b));
        let contents = read_bundle(&a).unwrap();
        assert_eq!(contents.manifest, manifest);
        let paths: Vec<_> = contents.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["src/main.py", "walle.toml"]);
    }

    #[test]
    fn pack_refuses_a_missing_entry_file() {
        let dir = task_dir();
        std::fs::remove_file(dir.path().join("src/main.py")).unwrap();
        assert!(matches!(
            pack_dir(dir.path()),
            Err(BundleError::MissingFile(f)) if f == "src/main.py"
        ));
    }

    fn raw_bundle(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content, kind) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            // Write the name bytes directly: `append_data` itself refuses `..`.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *content).unwrap();
        }
        zstd::encode_all(builder.into_inner().unwrap().as_slice(), 1).unwrap()
    }

    #[test]
    fn hostile_bundles_are_refused() {
        let manifest: &[u8] =
            b"name = \"t\"\nversion = \"0.1.0\"\nruntime = \"python\"\nentry = \"m.py\"\n";
        let reg = tar::EntryType::Regular;
        type IsExpected = fn(&BundleError) -> bool;
        let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
            (
                "escape",
                raw_bundle(&[("walle.toml", manifest, reg), ("../evil", b"x", reg)]),
                |e| matches!(e, BundleError::UnsafePath(_)),
            ),
            (
                "symlink",
                raw_bundle(&[
                    ("walle.toml", manifest, reg),
                    ("m.py", b"", tar::EntryType::Symlink),
                ]),
                |e| matches!(e, BundleError::UnsupportedEntry { .. }),
            ),
            (
                "duplicate",
                raw_bundle(&[
                    ("walle.toml", manifest, reg),
                    ("m.py", b"a", reg),
                    ("m.py", b"b", reg),
                ]),
                |e| matches!(e, BundleError::DuplicateEntry(_)),
            ),
            (
                "missing entry file",
                raw_bundle(&[("walle.toml", manifest, reg)]),
                |e| matches!(e, BundleError::MissingFile(_)),
            ),
            ("no manifest", raw_bundle(&[("m.py", b"", reg)]), |e| {
                matches!(e, BundleError::NoManifest)
            }),
            ("garbage", b"garbage".to_vec(), |e| {
                matches!(e, BundleError::Corrupt(_))
            }),
        ];
        for (name, bytes, expected) in cases {
            let in_memory = read_bundle(&bytes).expect_err(name);
            assert!(expected(&in_memory), "{name}: read_bundle gave {in_memory}");
            let streamed = check_bundle(bytes.as_slice()).expect_err(name);
            assert!(expected(&streamed), "{name}: check_bundle gave {streamed}");
        }
        let good = raw_bundle(&[("walle.toml", manifest, reg), ("m.py", b"", reg)]);
        assert_eq!(check_bundle(good.as_slice()).unwrap().name, "t");
    }
}
