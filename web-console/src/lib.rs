//! Walle's operator web console.
//!
//! Static assets (HTML, JS, CSS) embedded in the crate at compile time, so there is no build step
//! to run: `walle-cloud` serves them under `/console/`. The page talks only to the control-plane
//! HTTP API with the operator token the user enters. This crate must not contain server logic.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

const ASSETS: &[(&str, Asset)] = &[
    (
        "index.html",
        Asset {
            content_type: "text/html; charset=utf-8",
            body: include_str!("../assets/index.html"),
        },
    ),
    (
        "app.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../assets/app.js"),
        },
    ),
    (
        "style.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_str!("../assets/style.css"),
        },
    ),
];

/// The asset at `name` (e.g. `index.html`), if the console has one.
pub fn asset(name: &str) -> Option<Asset> {
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_references_only_embedded_assets() {
        let index = asset("index.html").unwrap().body;
        for referenced in ["app.js", "style.css"] {
            assert!(index.contains(referenced));
            assert!(asset(referenced).is_some());
        }
        assert!(asset("../Cargo.toml").is_none());
    }
}
