//! The JetStream records sink against a real NATS server with JetStream: `WALLE_TEST_NATS_URL`,
//! default `nats://127.0.0.1:4222` (scripts/setup.sh starts one where it is missing). These tests
//! fail, not skip, when it is down. Each uses a stream of its own, deleted at the end. The test
//! that stops its NATS server mid-run starts a server of its own (Debian's `nats-server`, which
//! scripts/setup.sh installs), so the shared one is never stopped.

use std::time::Duration;

use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use walle_cloud::records_sink::RecordsSinkConfig;
use walle_cloud::{Cloud, CloudConfig};
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::{DeviceProfile, RegisterRequest, TunnelRecord, UploadRequest};

type Client = DevicePlaneClient<tonic::transport::Channel>;

const PATIENCE: Duration = Duration::from_secs(60);

fn nats_url() -> String {
    std::env::var("WALLE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn jetstream() -> jetstream::Context {
    let url = nats_url();
    let client = async_nats::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "NATS with JetStream is needed at {url} for this test (scripts/setup.sh starts one, \
             or set WALLE_TEST_NATS_URL): {e}"
        )
    });
    jetstream::new(client)
}

/// A stream name no other test run uses.
fn unique_name(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("WALLE_TEST_{label}_{}_{nanos}", std::process::id())
}

/// One test's stream (created by the cloud or by the test), deleted when dropped.
struct TestStream {
    name: String,
    js: jetstream::Context,
    url: String,
}

impl TestStream {
    async fn new(label: &str) -> TestStream {
        TestStream {
            name: unique_name(label),
            js: jetstream().await,
            url: nats_url(),
        }
    }

    /// A stream on the server at `url`.
    async fn on(url: &str, label: &str) -> TestStream {
        let client = async_nats::connect(url).await.unwrap();
        TestStream {
            name: unique_name(label),
            js: jetstream::new(client),
            url: url.to_owned(),
        }
    }

    /// The `--records-sink` setting for this stream.
    fn setting(&self) -> String {
        format!("{}/{}", self.url, self.name)
    }

    fn sink(&self) -> RecordsSinkConfig {
        self.setting().parse().unwrap()
    }

    /// The stream's config as the cloud would create it.
    fn config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.>", self.name)],
            duplicate_window: Duration::from_secs(120),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Every message in the stream, in order: (subject, Nats-Msg-Id, body).
    async fn messages(&self) -> Vec<(String, String, Value)> {
        let mut stream = self.js.get_stream(&self.name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        if state.messages == 0 {
            return Vec::new();
        }
        let mut messages = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(seq).await.unwrap();
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let body = serde_json::from_slice(&message.payload).unwrap();
            messages.push((message.subject.to_string(), id, body));
        }
        messages
    }

    /// The message ids in the stream, sorted.
    async fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .messages()
            .await
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for TestStream {
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

async fn start_cloud(dir: &std::path::Path, sink: RecordsSinkConfig) -> Cloud {
    Cloud::start(CloudConfig {
        data_dir: dir.to_owned(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        records_sink: sink,
        ..CloudConfig::default()
    })
    .await
    .unwrap()
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = AsciiMetadataValue::try_from(format!("Bearer {token}")).unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

async fn register(client: &mut Client, id: &str) -> String {
    client
        .register(RegisterRequest {
            profile: Some(DeviceProfile {
                device_id: id.into(),
                app_id: "com.example".into(),
                app_version: "1.0.0".into(),
                ..Default::default()
            }),
            enrollment_secret: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .device_token
}

fn record(seq: i64, task: &str) -> TunnelRecord {
    TunnelRecord {
        id: format!("r{seq}"),
        task: task.into(),
        version: "1.0.0".into(),
        created_at_ms: 1000 + seq,
        payload: json!({ "n": seq }).to_string().into_bytes(),
        seq,
    }
}

/// A batch as the device's outbox sends it: compressed.
fn batch(records: &[TunnelRecord]) -> UploadRequest {
    UploadRequest {
        records: Vec::new(),
        zstd_batch: walle_proto::tunnel::compress(records.to_vec()),
    }
}

async fn upload(
    client: &Client,
    token: &str,
    records: &[TunnelRecord],
) -> Result<(u32, u32), tonic::Status> {
    let answer = client
        .clone()
        .upload(authed(batch(records), token))
        .await?
        .into_inner();
    assert!(answer.rejected.is_empty(), "{answer:?}");
    Ok((answer.stored, answer.duplicates))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_records_arrive_in_the_stream_once_each_and_a_resent_batch_is_stored_once() {
    let stream = TestStream::new("once").await;
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(dir.path(), stream.sink()).await;
    // The cloud created the stream as documented.
    let info = stream
        .js
        .get_stream(&stream.name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(info.subjects, [format!("{}.>", stream.name)]);
    assert_eq!(info.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.storage, jetstream::stream::StorageType::File);

    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let token = register(&mut client, "phone-1").await;
    let other = register(&mut client, "phone:2").await;
    let first: Vec<TunnelRecord> = (1..=3).map(|n| record(n, "ipv-feature")).collect();
    assert_eq!(upload(&client, &token, &first).await.unwrap(), (3, 0));
    // A device that lost the answer sends the batch again, with one record more.
    let mut again = first.clone();
    again.push(record(4, "other.task"));
    assert_eq!(upload(&client, &token, &again).await.unwrap(), (1, 3));
    // The same record ids from another device are other records.
    assert_eq!(upload(&client, &other, &first[..1]).await.unwrap(), (1, 0));

    let messages = stream.messages().await;
    assert_eq!(messages.len(), 5, "{messages:?}");
    let (subject, id, body) = &messages[0];
    assert_eq!(subject, &format!("{}.records.ipv-feature", stream.name));
    assert_eq!(id, "phone-1:r1");
    assert_eq!(body["device_id"], "phone-1");
    assert_eq!(body["task"], "ipv-feature");
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["seq"], 1);
    assert_eq!(body["created_at_ms"], 1001);
    assert!(body["received_at_ms"].as_i64().unwrap() > 1001, "{body}");
    assert_eq!(body["payload"], json!({"n": 1}));
    assert_eq!(
        messages[3].0,
        format!("{}.records.other%2Etask", stream.name)
    );
    assert_eq!(
        stream.ids().await,
        [
            "phone%3A2:r1",
            "phone-1:r1",
            "phone-1:r2",
            "phone-1:r3",
            "phone-1:r4"
        ]
    );

    // The database holds none of them, and the records API says where they are.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/records", cloud.http_url()))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&stream.name), "{error}");
    assert!(error.contains("JetStream"), "{error}");
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_stream_cannot_take_fails_unavailable_and_the_resent_batch_is_stored_once() {
    let stream = TestStream::new("refused").await;
    // The operator's own stream, which takes two messages and refuses more.
    stream
        .js
        .create_stream(jetstream::stream::Config {
            max_messages: 2,
            discard: jetstream::stream::DiscardPolicy::New,
            ..stream.config()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(dir.path(), stream.sink()).await;
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let token = register(&mut client, "phone-1").await;
    let records: Vec<TunnelRecord> = (1..=3).map(|n| record(n, "t")).collect();

    let refused = upload(&client, &token, &records).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(
        refused.message().contains(&stream.name) && refused.message().contains("r3"),
        "{refused}"
    );
    assert_eq!(stream.ids().await, ["phone-1:r1", "phone-1:r2"]);

    // Room again: the device's retry stores the missing record and only it.
    stream.js.update_stream(stream.config()).await.unwrap();
    assert_eq!(upload(&client, &token, &records).await.unwrap(), (1, 2));
    assert_eq!(
        stream.ids().await,
        ["phone-1:r1", "phone-1:r2", "phone-1:r3"]
    );

    // A stream deleted under the running cloud: refused until it is back.
    stream.js.delete_stream(&stream.name).await.unwrap();
    let more: Vec<TunnelRecord> = (4..=5).map(|n| record(n, "t")).collect();
    let refused = upload(&client, &token, &more).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    stream.js.create_stream(stream.config()).await.unwrap();
    assert_eq!(upload(&client, &token, &more).await.unwrap(), (2, 0));
    assert_eq!(stream.ids().await, ["phone-1:r4", "phone-1:r5"]);
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_does_not_start_without_its_records_stream() {
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = CloudConfig {
        data_dir: dir.path().to_owned(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        records_sink: format!("nats://127.0.0.1:{free}/R").parse().unwrap(),
        ..CloudConfig::default()
    };
    let Err(e) = Cloud::start(config).await else {
        panic!("started without NATS");
    };
    assert!(
        e.to_string()
            .contains(&format!("cannot reach NATS at nats://127.0.0.1:{free}")),
        "{e}"
    );

    // A stream of that name that does not take the cloud's subjects is refused, named.
    let stream = TestStream::new("foreign").await;
    stream
        .js
        .create_stream(jetstream::stream::Config {
            subjects: vec![format!("elsewhere.{}", stream.name)],
            ..stream.config()
        })
        .await
        .unwrap();
    let config = CloudConfig {
        data_dir: dir.path().to_owned(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        records_sink: stream.sink(),
        ..CloudConfig::default()
    };
    let Err(e) = Cloud::start(config).await else {
        panic!("started on a stream that does not take its subjects");
    };
    assert!(
        e.to_string()
            .contains(&format!("stream {} takes subjects", stream.name)),
        "{e}"
    );
}

/// A NATS server with JetStream of this test's own, on a free port, its store in a temporary
/// directory that outlives a restart; killed on drop.
struct NatsServer {
    child: std::process::Child,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    async fn start() -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let port = free_addr().rsplit_once(':').unwrap().1.parse().unwrap();
        let child = Self::spawn(port, store.path()).await;
        NatsServer { child, port, store }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(port: u16, store: &std::path::Path) -> std::process::Child {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nats-server is not installed: run scripts/setup.sh");
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child
    }

    /// kill -9: the server goes away at once, as a crashed broker would.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the server again on the same port and store.
    async fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.store.path()).await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cloud's `/v1/health` answer: (HTTP status, body).
async fn health(cloud: &Cloud) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{}/v1/health", cloud.http_url()))
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_stopped_mid_run_fails_uploads_until_it_is_back_and_stores_each_record_once()
{
    let mut nats = NatsServer::start().await;
    let stream = TestStream::on(&nats.url(), "stopped").await;
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(dir.path(), stream.sink()).await;
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let token = register(&mut client, "phone-1").await;
    let first: Vec<TunnelRecord> = (1..=2).map(|n| record(n, "t")).collect();
    assert_eq!(upload(&client, &token, &first).await.unwrap(), (2, 0));
    assert_eq!(health(&cloud).await.0, StatusCode::OK);

    nats.kill();
    // The device's upload is refused, not acknowledged: its outbox keeps the records.
    let second: Vec<TunnelRecord> = (3..=5).map(|n| record(n, "t")).collect();
    let refused = upload(&client, &token, &second).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(refused.message().contains(&stream.name), "{refused}");
    // The operator sees which part failed; the replica stays ready (Sync and installs go on).
    let (status, body) = health(&cloud).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["failing"], json!(["records_sink"]), "{body}");
    let ready = reqwest::get(format!("{}/v1/ready", cloud.http_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // The server comes back with its store: the cloud reconnects by itself, and the device's
    // retry stores what is missing. Messages the cloud had queued while the server was away
    // may have reached it on reconnect; they count as duplicates, never as second copies.
    nats.restart().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (stored, duplicates) = loop {
        match upload(&client, &token, &second).await {
            Ok(answer) => break answer,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "uploads still refused a minute after NATS came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(stored + duplicates, 3);
    assert_eq!(
        stream.ids().await,
        (1..=5).map(|n| format!("phone-1:r{n}")).collect::<Vec<_>>()
    );
    assert_eq!(health(&cloud).await.0, StatusCode::OK);
    cloud.shutdown().await;
}

/// A `walle-cloud serve` process with the JetStream sink; killed on drop.
struct CloudProcess {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl CloudProcess {
    fn start(
        data_dir: &std::path::Path,
        http: &str,
        grpc: &str,
        sink: &str,
        crash_at: Option<&str>,
        log: &std::path::Path,
    ) -> CloudProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walle-cloud"));
        command
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--http-addr", http, "--grpc-addr", grpc])
            .env("WALLE_RECORDS_SINK", sink)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        match crash_at {
            Some(point) => command.env("WALLE_CRASH_AT", point),
            None => command.env_remove("WALLE_CRASH_AT"),
        };
        CloudProcess {
            child: command.spawn().unwrap(),
            stderr: log.to_owned(),
        }
    }

    /// Waits until the control plane answers.
    async fn wait_up(&mut self, http: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(response) = reqwest::get(format!("http://{http}/v1/health")).await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "walle-cloud exited with {status}:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "walle-cloud never came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to die at its armed crash point.
    async fn wait_crashed(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                assert!(
                    !status.success() && stderr.contains("crash point"),
                    "walle-cloud exited with {status}, not at its crash point:\n{stderr}"
                );
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "walle-cloud never reached its crash point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_killed_between_jetstreams_ack_and_its_answer_stores_the_batch_once() {
    let stream = TestStream::new("crash").await;
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("cloud");
    let (http, grpc) = (free_addr(), free_addr());

    // The cloud aborts (as kill -9 would) right after JetStream acknowledged the whole batch,
    // before it answers the device.
    let mut cloud = CloudProcess::start(
        &data_dir,
        &http,
        &grpc,
        &stream.setting(),
        Some("cloud-upload-committed"),
        &root.path().join("cloud1.err"),
    );
    cloud.wait_up(&http).await;
    let mut client = DevicePlaneClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let token = register(&mut client, "phone-1").await;
    let records: Vec<TunnelRecord> = (1..=20).map(|n| record(n, "ipv-feature")).collect();
    let lost = upload(&client, &token, &records).await.unwrap_err();
    assert_ne!(lost.code(), Code::Ok, "{lost}");
    cloud.wait_crashed().await;
    let expected: Vec<String> = {
        let mut ids: Vec<String> = (1..=20).map(|n| format!("phone-1:r{n}")).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        stream.ids().await,
        expected,
        "acknowledged before the crash"
    );

    // The device never got its answer, so its outbox still holds the batch: it sends it again
    // to the restarted cloud, which finds every record already in the stream.
    let mut cloud = CloudProcess::start(
        &data_dir,
        &http,
        &grpc,
        &stream.setting(),
        None,
        &root.path().join("cloud2.err"),
    );
    cloud.wait_up(&http).await;
    let client = DevicePlaneClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    assert_eq!(upload(&client, &token, &records).await.unwrap(), (0, 20));
    let more: Vec<TunnelRecord> = (21..=25).map(|n| record(n, "ipv-feature")).collect();
    assert_eq!(upload(&client, &token, &more).await.unwrap(), (5, 0));

    let messages = stream.messages().await;
    let mut ids: Vec<String> = messages.iter().map(|(_, id, _)| id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25, "each record exactly once: {ids:?}");
    assert_eq!(messages.len(), 25);
    let seqs: Vec<i64> = messages
        .iter()
        .map(|(_, _, body)| body["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>(), "in the order produced");
    drop(cloud);
}
