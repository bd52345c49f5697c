//! What an operator expects of the cloud as a server, against real servers and the real
//! `walle-cloud` binary: `/metrics` counting what devices did, `/v1/health` and `/v1/ready`
//! naming the part that fails, JSON 404s for unknown API routes, structured start-up logs,
//! a clean exit on SIGTERM, and `walle-cloud openapi | head` without a panic.

// Only some of the shared test support is used here.
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use tonic::metadata::AsciiMetadataValue;
use walle_cloud::Cloud;
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::{
    DeviceProfile, FetchBundleRequest, RegisterRequest, ReportRequest, SubscribeRequest,
    SyncRequest, TaskEvent, TunnelRecord, UploadRequest, task_event,
};

/// How long a test waits for a process or a server to do what it should.
const PATIENCE: Duration = Duration::from_secs(60);

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = AsciiMetadataValue::try_from(format!("Bearer {token}")).unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn profile(id: &str) -> DeviceProfile {
    DeviceProfile {
        device_id: id.into(),
        app_id: "com.example".into(),
        app_version: "1.0.0".into(),
        ..Default::default()
    }
}

/// The value of the sample `name` (labels included, as written) in a Prometheus text page.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
}

async fn get_metrics(cloud: &Cloud) -> String {
    let response = reqwest::get(format!("{}/metrics", cloud.http_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

async fn get_json(url: String) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_device_plane_did_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Backend::sqlite().start(dir.path(), |_| {}).await;
    let before = get_metrics(&cloud).await;
    for zero in [
        "walle_cloud_devices_connected",
        "walle_cloud_notices_sent_total",
        "walle_cloud_bundle_bytes_sent_total",
        "walle_cloud_bundle_transfers_in_flight",
        "walle_cloud_releases{state=\"active\"}",
    ] {
        assert_eq!(sample(&before, zero), Some(0.0), "{zero} in\n{before}");
    }

    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let token = client
        .register(RegisterRequest {
            profile: Some(profile("d1")),
            enrollment_secret: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .device_token;
    let mut notices = client
        .subscribe(authed(SubscribeRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    notices.message().await.unwrap().unwrap(); // HELLO

    let http = reqwest::Client::new();
    let operator = |request: reqwest::RequestBuilder| request.bearer_auth(&cloud.admin_token);
    let task = dir.path().join("t");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("walle.toml"),
        "name = \"t\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\n",
    )
    .unwrap();
    std::fs::write(task.join("main.py"), "def run(ctx):\n    return ctx\n").unwrap();
    let bundle = walle_proto::bundle::pack_dir(&task).unwrap().1;
    let base = cloud.http_url();
    operator(
        http.post(format!("{base}/v1/tasks"))
            .json(&json!({"name": "t"})),
    )
    .send()
    .await
    .unwrap();
    let uploaded = operator(
        http.post(format!("{base}/v1/tasks/t/versions"))
            .body(bundle.clone()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let released = operator(
        http.post(format!("{base}/v1/releases"))
            .json(&json!({"task": "t", "version": "1.0.0"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(released.status(), StatusCode::CREATED);
    notices.message().await.unwrap().unwrap(); // the release's notice

    let sync = client
        .sync(authed(
            SyncRequest {
                profile: Some(profile("d1")),
                installed: vec![],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let refused = client
        .sync(authed(
            SyncRequest {
                profile: Some(profile("someone-else")),
                installed: vec![],
            },
            &token,
        ))
        .await;
    assert!(refused.is_err());
    let manifest: Value =
        serde_json::from_slice(&sync.desired[0].manifest.as_ref().unwrap().manifest_json).unwrap();
    let mut stream = client
        .fetch_bundle(authed(
            FetchBundleRequest {
                digest: manifest["bundle_digest"].as_str().unwrap().to_owned(),
                offset: 0,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut fetched = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        fetched += chunk.data.len();
    }
    assert_eq!(fetched, bundle.len());
    let accepted = client
        .report(authed(
            ReportRequest {
                events: vec![TaskEvent {
                    id: "e1".into(),
                    kind: task_event::Kind::RunOk as i32,
                    task: "t".into(),
                    version: "1.0.0".into(),
                    ..Default::default()
                }],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, 1);
    let record = |id: &str, seq| TunnelRecord {
        id: id.into(),
        task: "t".into(),
        version: "1.0.0".into(),
        created_at_ms: 1000,
        payload: b"{}".to_vec(),
        seq,
    };
    let upload = || UploadRequest {
        records: vec![record("r1", 1), record("r2", 2)],
        zstd_batch: Vec::new(),
    };
    client.upload(authed(upload(), &token)).await.unwrap();
    // Sent again (the device did not hear the answer): accepted, as duplicates.
    client.upload(authed(upload(), &token)).await.unwrap();

    let after = get_metrics(&cloud).await;
    let expect = [
        ("walle_cloud_devices_connected", 1.0),
        ("walle_cloud_notices_sent_total", 2.0),
        ("walle_cloud_sync_calls_total{outcome=\"ok\"}", 1.0),
        ("walle_cloud_sync_calls_total{outcome=\"error\"}", 1.0),
        ("walle_cloud_bundle_bytes_sent_total", bundle.len() as f64),
        ("walle_cloud_bundle_transfers_in_flight", 0.0),
        ("walle_cloud_report_events_accepted_total", 1.0),
        ("walle_cloud_upload_records_accepted_total", 4.0),
        ("walle_cloud_upload_records_duplicate_total", 2.0),
        ("walle_cloud_releases{state=\"active\"}", 1.0),
        ("walle_cloud_releases{state=\"aborted\"}", 0.0),
        ("walle_cloud_db_probe_failures_total", 0.0),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&after, name), Some(value), "{name} in\n{after}");
    }
    // Each scrape probes the database once: two so far.
    assert_eq!(
        sample(&after, "walle_cloud_db_probe_seconds_count"),
        Some(2.0),
        "{after}"
    );
    drop(notices);
    let deadline = Instant::now() + PATIENCE;
    while cloud.connected_devices() > 0 {
        assert!(Instant::now() < deadline, "the notice stream never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = get_metrics(&cloud).await;
    assert_eq!(sample(&gone, "walle_cloud_devices_connected"), Some(0.0));
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_503_naming_a_database_that_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::postgres().await;
    let cloud = backend.start(dir.path(), |_| {}).await;
    let base = cloud.http_url();
    assert_eq!(
        get_json(format!("{base}/v1/health")).await,
        (
            StatusCode::OK,
            json!({"status": "ok", "database": "ok", "bundle_store": "ok", "records_sink": "ok",
                "failing": []})
        )
    );
    assert_eq!(
        get_json(format!("{base}/v1/ready")).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );

    // The database disappears under the running cloud.
    let Backend::Postgres {
        admin_url,
        database,
    } = &backend
    else {
        unreachable!()
    };
    let mut admin = sqlx::AnyConnection::connect(admin_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    let (status, health) = get_json(format!("{base}/v1/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["status"], "unavailable", "{health}");
    assert_eq!(health["failing"], json!(["database"]), "{health}");
    assert_eq!(health["bundle_store"], "ok", "{health}");
    assert!(
        health["error"].as_str().unwrap().starts_with("database: "),
        "{health}"
    );
    let (status, ready) = get_json(format!("{base}/v1/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "unavailable", "{ready}");
    let metrics = get_metrics(&cloud).await;
    assert!(
        sample(&metrics, "walle_cloud_db_probe_failures_total").unwrap() >= 1.0,
        "{metrics}"
    );
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_503_naming_a_bundle_store_that_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = common::S3Server::start().await;
    let store = s3.store_config("health");
    let cloud = Backend::sqlite()
        .start(dir.path(), |c| c.bundle_store = store)
        .await;
    let base = cloud.http_url();
    assert_eq!(
        get_json(format!("{base}/v1/health")).await.0,
        StatusCode::OK
    );

    drop(s3);
    let (status, health) = get_json(format!("{base}/v1/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["failing"], json!(["bundle_store"]), "{health}");
    assert_eq!(health["database"], "ok", "{health}");
    assert!(
        health["error"].as_str().unwrap().contains("bundle"),
        "{health}"
    );
    // Readiness is about this replica and its database: a store outage is health's to report.
    assert_eq!(get_json(format!("{base}/v1/ready")).await.0, StatusCode::OK);
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_api_route_answers_404_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Backend::sqlite().start(dir.path(), |_| {}).await;
    let client = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/v1/not-a-route"),
        (reqwest::Method::POST, "/v1/tasks/t/versions/1.0.0/nothing"),
        (reqwest::Method::GET, "/v1"),
    ] {
        let response = client
            .request(method.clone(), format!("{}{path}", cloud.http_url()))
            .bearer_auth(&cloud.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": format!("no such route: {method} {path}")})
        );
    }
    cloud.shutdown().await;
}

/// A spawned binary whose stderr lines arrive on a channel; killed on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line that `wanted` accepts and returns it.
    fn wait_line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} on stderr; it said:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns its status and every line.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {PATIENCE:?} after SIGTERM; it said:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The process is gone, so its stderr ends: the reader sends the rest and hangs up.
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly_after_a_json_startup_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_walle-cloud"))
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(["--log-format", "json", "--closed-enrollment"])
            .env("RUST_LOG", "info")
            .env_remove("WALLE_LOG_FORMAT"),
    );
    let started = cloud.wait_line("start-up log", |l| l.contains("walle-cloud started"));
    let started: Value = serde_json::from_str(&started)
        .unwrap_or_else(|e| panic!("the start-up log is not one JSON object ({e}): {started}"));
    assert_eq!(started["level"], "INFO", "{started}");
    assert_eq!(started["records_sink"], "database", "{started}");
    assert_eq!(started["enrollment"], "closed", "{started}");
    assert!(
        started["database"]
            .as_str()
            .unwrap()
            .starts_with("sqlite://"),
        "{started}"
    );
    assert!(
        started["bundle_store"]
            .as_str()
            .unwrap()
            .starts_with("file://"),
        "{started}"
    );
    let listening = cloud.wait_line("listening line", |l| l.contains("control plane http://"));
    let url = listening
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap()
        .to_owned();
    assert_eq!(
        get_json(format!("{url}/v1/ready")).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
    let (status, said) = cloud.terminate();
    assert!(status.success(), "exit {status}; it said:\n{said}");
    assert!(said.contains("walle-cloud: stopping"), "{said}");
    assert!(!said.contains('\u{1b}'), "colour codes on a pipe:\n{said}");
}

#[test]
fn openapi_into_a_pipe_closed_early_exits_quietly() {
    let doc = walle_cloud::control::openapi().to_pretty_json().unwrap();
    // Bigger than a pipe's buffer, so the writer is still writing when the reader goes away.
    assert!(doc.len() > 64 * 1024, "{} bytes", doc.len());
    let mut child = Command::new(env!("CARGO_BIN_EXE_walle-cloud"))
        .arg("openapi")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 16];
    stdout.read_exact(&mut head).unwrap();
    assert!(head.starts_with(b"{"));
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "exit {status}: {stderr}");
}
