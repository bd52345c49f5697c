//! Helpers shared by the SDK's end-to-end tests: the workspace's binaries as processes, free
//! loopback ports, polling a JSON endpoint, the test venv's Python tools.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

/// How long a helper waits for what it polls.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A `walle-cloud` or `walle-device` process, built next to this test by `cargo build
/// --workspace --bins` (scripts/test.sh does that first); killed on drop.
pub struct Process {
    pub child: std::process::Child,
    name: &'static str,
}

impl Process {
    pub fn start(name: &'static str, args: &[&str], crash_at: Option<&str>, log: &Path) -> Process {
        let mut command = std::process::Command::new(binary(name));
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        match crash_at {
            Some(point) => command.env("WALLE_CRASH_AT", point),
            None => command.env_remove("WALLE_CRASH_AT"),
        };
        Process {
            child: command.spawn().unwrap(),
            name,
        }
    }

    /// Spawns `command` (one of the workspace's binaries, see [`binary`]), killed on drop.
    pub fn spawn(name: &'static str, command: &mut std::process::Command) -> Process {
        Process {
            child: command.spawn().unwrap(),
            name,
        }
    }

    /// Waits for the process to die at its crash point (by SIGABRT, as armed).
    pub async fn wait_crashed(&mut self, log: &Path) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(log.with_extension("err")).unwrap();
                assert!(
                    !status.success() && stderr.contains("crash point"),
                    "{} exited with {status}, not at its crash point:\n{stderr}",
                    self.name
                );
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never reached its crash point",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of a binary built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> std::path::PathBuf {
    // This test runs from target/<profile>/deps; the binaries sit one level up.
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// A tool of the test venv (`WALLE_PY_ENV`, by default `~/.cache/walle-py`), which
/// `scripts/setup.sh` installs.
pub fn python_tool(name: &str) -> String {
    let venv = std::env::var("WALLE_PY_ENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/walle-py",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{venv}/bin/{name}")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `url` until `accept` takes the JSON answer; returns it.
pub async fn poll_json(
    url: &str,
    what: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(response) = reqwest::get(url).await {
            last = response.json().await.unwrap_or_default();
            if accept(&last) {
                return last;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
