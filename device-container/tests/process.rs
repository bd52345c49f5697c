//! The `walle-device` binary as a service manager runs it: its ingest endpoint serves
//! Prometheus metrics, its logs carry no colour codes on a pipe, and SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the test waits for the agent to do what it should.
const PATIENCE: Duration = Duration::from_secs(60);

/// The value of the sample `name` (labels included, as written) in a Prometheus text page.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_ingest_endpoint_then_sigterm_stops_the_agent_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_walle-device"))
        .arg("run")
        // Nothing listens there: the agent keeps trying to reach its cloud while it serves.
        .args(["--cloud", "http://127.0.0.1:9", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--ingest-addr", "127.0.0.1:0", "--device-id", "ops-1"])
        .args(["--log-format", "text"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut said = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let ingest = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the agent never listened:\n{}", said.join("\n")));
        said.push(line.clone());
        if let Some(url) = line
            .split_whitespace()
            .find(|word| word.starts_with("http://127.0.0.1:"))
            && line.contains("ingest endpoint")
        {
            break url.to_owned();
        }
    };

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let events = format!(
        "{{\"id\":\"e1\",\"ts\":{now},\"session\":\"s\",\"page\":\"item\",\"event\":\"enter\",\"item\":\"sku\"}}\n{{oops\n"
    );
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{ingest}/v1/events"))
        .body(events)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    let response = http.get(format!("{ingest}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = response.text().await.unwrap();
    for (name, value) in [
        ("walle_device_connected", 0.0),
        ("walle_device_installed_tasks", 0.0),
        ("walle_device_events_accepted_total", 1.0),
        (
            "walle_device_events_rejected_total{reason=\"malformed\"}",
            1.0,
        ),
        ("walle_device_runs_total{outcome=\"ok\"}", 0.0),
        ("walle_device_outbox_queued{queue=\"records\"}", 0.0),
        ("walle_device_records_uploaded_total", 0.0),
    ] {
        assert_eq!(sample(&metrics, name), Some(value), "{name} in\n{metrics}");
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "still running {PATIENCE:?} after SIGTERM:\n{}",
                said.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The process is gone, so its stderr ends: the reader sends the rest and hangs up.
    said.extend(lines.iter());
    let said = said.join("\n");
    assert!(status.success(), "exit {status}:\n{said}");
    assert!(said.contains("walle-device: stopping"), "{said}");
    assert!(!said.contains('\u{1b}'), "colour codes on a pipe:\n{said}");
}
