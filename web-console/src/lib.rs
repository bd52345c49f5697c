//! Walle's operator web console.
//!
//! Static assets (HTML, JS modules, CSS) embedded in the crate at compile time — every file of
//! `assets/`, found by `build.rs` — so there is no build step to run: `walle-cloud` serves them
//! under `/console/`. The page talks only to the control-plane HTTP API with the operator token
//! the user signs in with. This crate must not contain server logic.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The asset at `name` (e.g. `index.html`), if the console has one.
pub fn asset(name: &str) -> Option<Asset> {
    let (_, body) = FILES.iter().find(|(n, _)| *n == name)?;
    Some(Asset {
        content_type: content_type(name)?,
        body,
    })
}

/// The names of every embedded asset.
pub fn names() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(name, _)| *name)
}

/// The content type the console serves a file name with; `None` for a name that is not a plain
/// file name of a kind the console uses (so a path such as `../x` is never served).
pub fn content_type(name: &str) -> Option<&'static str> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !plain {
        return None;
    }
    let (_, extension) = name.rsplit_once('.')?;
    Some(match extension {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_is_served_and_nothing_else() {
        assert!(asset("index.html").is_some());
        for name in names() {
            assert!(asset(name).is_some(), "{name} is embedded but not served");
        }
        for hostile in ["../Cargo.toml", "..", ".hidden.js", "a/b.js", "x.rs", ""] {
            assert!(asset(hostile).is_none(), "{hostile:?}");
            assert!(content_type(hostile).is_none(), "{hostile:?}");
        }
    }

    #[test]
    fn index_references_only_embedded_assets() {
        let index = std::str::from_utf8(asset("index.html").unwrap().body).unwrap();
        for referenced in index
            .split(['"', '\''])
            .filter(|part| part.ends_with(".js") || part.ends_with(".css"))
        {
            assert!(asset(referenced).is_some(), "{referenced} is not embedded");
        }
    }
}
