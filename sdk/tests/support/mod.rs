//! Helpers shared by the SDK's end-to-end tests: the workspace's binaries as processes, free
//! loopback ports, polling a JSON endpoint, the test venv's Python tools, a JetStream stream.

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

/// A NATS JetStream stream of one test on the server at `WALLE_TEST_NATS_URL` (default
/// `nats://127.0.0.1:4222`, which `scripts/setup.sh` starts), for a cloud's `--records-sink`;
/// deleted on drop. The test fails, saying why, when the server is down.
pub struct JetStreamStream {
    pub name: String,
    js: async_nats::jetstream::Context,
}

fn nats_url() -> String {
    std::env::var("WALLE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

impl JetStreamStream {
    pub async fn new(label: &str) -> JetStreamStream {
        let url = nats_url();
        let client = async_nats::connect(&url).await.unwrap_or_else(|e| {
            panic!(
                "NATS with JetStream is needed at {url} for this test (scripts/setup.sh starts \
                 one, or set WALLE_TEST_NATS_URL): {e}"
            )
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        JetStreamStream {
            name: format!("WALLE_TEST_{label}_{}_{nanos}", std::process::id()),
            js: async_nats::jetstream::new(client),
        }
    }

    /// The cloud's `--records-sink` setting for this stream.
    pub fn setting(&self) -> String {
        format!("{}/{}", nats_url(), self.name)
    }

    /// The bodies of every message in the stream, in stream order.
    pub async fn records(&self) -> Vec<serde_json::Value> {
        let mut stream = self.js.get_stream(&self.name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        if state.messages == 0 {
            return Vec::new();
        }
        let mut records = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(seq).await.unwrap();
            records.push(serde_json::from_slice(&message.payload).unwrap());
        }
        records
    }
}

impl Drop for JetStreamStream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        // Drop runs inside the test's runtime: delete from a helper thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(js.delete_stream(&name)).ok()
        })
        .join();
    }
}
