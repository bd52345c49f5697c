//! Fleet faults, each checked with `walle fleet simulate`'s devices against a real
//! `walle-cloud` process: a release must complete (or abort, when it should) with no data lost and
//! no device stuck, whatever happens to the cloud, its replicas, the bundle store or the devices.
//!
//! Small fleets (300–1,000 devices, each on its own HTTP/2 connection) keep these in CI; the
//! large runs are in `bench/fleet/`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::{PATIENCE, Process, free_port};
use walle_sdk::client::ControlClient;
use walle_sdk::simulate::{SimConfig, Simulation};

/// A `walle-cloud serve` process that can be killed and started again on the same ports and data.
struct CloudProcess {
    dir: PathBuf,
    name: String,
    http_port: u16,
    grpc_port: u16,
    database_url: Option<String>,
    process: Option<Process>,
    starts: usize,
}

impl CloudProcess {
    fn new(dir: &Path, name: &str, database_url: Option<String>) -> CloudProcess {
        CloudProcess {
            dir: dir.to_owned(),
            name: name.to_owned(),
            http_port: free_port(),
            grpc_port: free_port(),
            database_url,
            process: None,
            starts: 0,
        }
    }

    /// Starts the cloud. Devices fall back to a sync every 15 s: a replica killed between
    /// storing a stage change and its LISTEN/NOTIFY fan-out takes that notice with it, and the
    /// other replica's devices learn of the stage only from their periodic sync.
    async fn start(&mut self) {
        let data = self.dir.join("cloud-data");
        let config = self.dir.join(format!("{}.toml", self.name));
        let mut toml = format!(
            "data_dir = {:?}\nhttp_addr = \"127.0.0.1:{}\"\ngrpc_addr = \"127.0.0.1:{}\"\npace_window_ms = 1000\ncontroller_interval_ms = 200\nsync_interval_secs = 15\n",
            data, self.http_port, self.grpc_port
        );
        if let Some(url) = &self.database_url {
            toml.push_str(&format!("database_url = {url:?}\n"));
        }
        std::fs::write(&config, toml).unwrap();
        self.starts += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        self.process = Some(Process::start(
            "walle-cloud",
            &["serve", "--config", config.to_str().unwrap()],
            None,
            &log,
        ));
        support::poll_json(
            &format!("{}/v1/health", self.http_url()),
            "the cloud to start",
            |v| !v.is_null(),
        )
        .await;
    }

    /// kill -9.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.child.kill().unwrap();
            process.child.wait().unwrap();
        }
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn client(&self) -> ControlClient {
        let token = std::fs::read_to_string(self.dir.join("cloud-data/admin.token")).unwrap();
        ControlClient::new(&self.http_url(), token.trim())
    }
}

/// Publishes version `version` of a small task named `fleet-task`.
async fn publish(client: &ControlClient, dir: &Path, version: &str) -> Value {
    let task = dir.join(format!("task-{version}"));
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("walle.toml"),
        format!("name = \"fleet-task\"\nversion = \"{version}\"\nruntime = \"python\"\nentry = \"main.py\"\n"),
    )
    .unwrap();
    std::fs::write(task.join("main.py"), "def run(ctx):\n    return None\n").unwrap();
    let bundle = walle_proto::bundle::pack_dir(&task).unwrap().1;
    client.ensure_task("fleet-task", "").await.unwrap();
    client.upload_version("fleet-task", bundle).await.unwrap()
}

fn fleet(urls: Vec<String>, devices: usize) -> SimConfig {
    SimConfig {
        urls,
        devices,
        ..SimConfig::default()
    }
}

async fn connected(sim: &Simulation, devices: usize) {
    sim.wait_until("every device connected", PATIENCE, |s| {
        s.connected as usize >= devices
    })
    .await
    .unwrap();
}

/// Polls a release's status until `accept` takes it.
async fn release_until(
    client: &ControlClient,
    id: &str,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = client.release_status(id).await.unwrap();
        if accept(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_killed_mid_release_resumes_it_from_its_stored_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProcess::new(dir.path(), "cloud", None);
    cloud.start().await;
    publish(&cloud.client(), dir.path(), "1.0.0").await;
    let devices = 400;
    let sim = Simulation::start(fleet(vec![cloud.grpc_url()], devices)).unwrap();
    connected(&sim, devices).await;

    // Two stages; the second begins only when the controller sees the first healthy.
    sim.watch("fleet-task", "1.0.0");
    let policy = json!({"stages": [20, 100],
        "gate": {"auto_advance": true, "min_success_rate": 0.9, "min_devices": 20}});
    let release = cloud
        .client()
        .create_release_with("fleet-task", "1.0.0", policy)
        .await
        .unwrap();
    let id = release["id"].as_str().unwrap().to_owned();
    sim.wait_until("part of the first stage installed", PATIENCE, |s| {
        s.watched_installed >= 20
    })
    .await
    .unwrap();

    cloud.kill();
    let at_kill = sim.snapshot().watched_installed;
    cloud.start().await;
    let status = release_until(
        &cloud.client(),
        &id,
        "release completes after the restart",
        |s| s["stage"] == 1 && s["stats"]["installed"] == json!(devices),
    )
    .await;
    assert_eq!(status["state"], "active", "{status:#}");
    assert_eq!(status["stats"]["targeted"], json!(devices));
    let done = sim
        .wait_until("every device installed", PATIENCE, |s| {
            s.watched_installed as usize == devices
        })
        .await
        .unwrap();
    assert!(
        at_kill < devices as u64,
        "the kill came after the release had finished"
    );
    assert_eq!(done.install_failed, 0, "{done:?}");
    assert!(
        done.reconnects as usize >= devices,
        "every device came back: {done:?}"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_lose_the_cloud_at_once_come_back_spread_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProcess::new(dir.path(), "cloud", None);
    cloud.start().await;
    let devices = 1000;
    let sim = Simulation::start(fleet(vec![cloud.grpc_url()], devices)).unwrap();
    connected(&sim, devices).await;

    cloud.kill();
    cloud.start().await;
    sim.wait_until("every device reconnected", PATIENCE, |s| {
        s.connected as usize >= devices && s.reconnects as usize >= devices
    })
    .await
    .unwrap();
    let spread = sim.counters().reconnect_spread().unwrap();
    eprintln!("reconnect spread of {devices} devices: {spread:?}");
    // A herd brings most devices back within one instant; backoff with jitter spreads them
    // over seconds (the exact figure depends on when the cloud came back).
    assert!(
        spread.peak_per_100ms * 5 <= devices,
        "{} of {devices} devices reconnected within 100 ms: {spread:?}",
        spread.peak_per_100ms
    );
    assert!(spread.span >= Duration::from_secs(1), "{spread:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_corrupted_in_the_store_is_refused_everywhere_and_the_release_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProcess::new(dir.path(), "cloud", None);
    cloud.start().await;
    let client = cloud.client();
    publish(&client, dir.path(), "1.0.0").await;
    let devices = 300;
    let sim = Simulation::start(fleet(vec![cloud.grpc_url()], devices)).unwrap();
    connected(&sim, devices).await;
    sim.watch("fleet-task", "1.0.0");
    client
        .create_release_with("fleet-task", "1.0.0", json!({}))
        .await
        .unwrap();
    sim.wait_until("1.0.0 installed everywhere", PATIENCE, |s| {
        s.watched_installed as usize == devices
    })
    .await
    .unwrap();

    // 2.0.0's bundle rots in the object store after upload (same size, one byte flipped).
    let version = publish(&client, dir.path(), "2.0.0").await;
    let digest = version["bundle_digest"].as_str().unwrap();
    let object = dir
        .path()
        .join(format!("cloud-data/objects/bundles/sha256/{digest}"));
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();

    sim.watch("fleet-task", "2.0.0");
    let policy =
        json!({"abort": {"max_failure_rate": 0.2, "min_executed": 20, "kinds": ["install"]}});
    let second = client
        .create_release_with("fleet-task", "2.0.0", policy)
        .await
        .unwrap();
    let second_id = second["id"].as_str().unwrap();
    release_until(&client, second_id, "the release aborts", |s| {
        s["state"] == "aborted"
    })
    .await;
    let after = sim.snapshot();
    assert_eq!(
        after.watched_installed, 0,
        "a device installed the corrupted bundle: {after:?}"
    );
    assert!(after.refused >= 20, "{after:?}");
    assert_eq!(after.refused, after.install_failed, "{after:?}");
    // Nothing was lost: every device keeps running 1.0.0 (none was told to remove it), and
    // the cloud still serves 1.0.0's bundle intact to a device that asks now.
    assert_eq!(
        (after.installed, after.removed),
        (devices as u64, 0),
        "{after:?}"
    );
    let late = Simulation::start(SimConfig {
        id_prefix: "late".into(),
        ..fleet(vec![cloud.grpc_url()], 5)
    })
    .unwrap();
    late.wait_until("a late device installs 1.0.0", PATIENCE, |s| {
        s.installed == 5
    })
    .await
    .unwrap();
    late.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_networks_skewed_clocks_and_full_disks_do_not_stall_a_release() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProcess::new(dir.path(), "cloud", None);
    cloud.start().await;
    let client = cloud.client();
    publish(&client, dir.path(), "1.0.0").await;
    let devices = 300;
    let config = SimConfig {
        slow_share: 0.1,
        slow_latency: Duration::from_millis(250),
        clock_skew_share: 0.1,
        clock_skew: Duration::from_secs(5 * 3600),
        full_disk_share: 0.05,
        runs_per_device_per_min: 30.0,
        ..fleet(vec![cloud.grpc_url()], devices)
    };
    let full_disks = (0..devices)
        .filter(|&i| {
            walle_sdk::simulate::profiles::in_share(config.seed, i, 2, config.full_disk_share)
        })
        .count();
    assert!(full_disks > 0);
    let sim = Simulation::start(config).unwrap();
    connected(&sim, devices).await;
    sim.watch("fleet-task", "1.0.0");
    let release = client
        .create_release_with("fleet-task", "1.0.0", json!({}))
        .await
        .unwrap();
    let id = release["id"].as_str().unwrap();
    let healthy = devices - full_disks;
    sim.wait_until("every device with room installed", PATIENCE, |s| {
        s.watched_installed as usize == healthy
    })
    .await
    .unwrap();
    let status = release_until(
        &client,
        id,
        "the cloud counts every install and failure",
        |s| {
            s["stats"]["installed"] == json!(healthy)
                && s["stats"]["stages"][0]["install_failed"] == json!(full_disks)
        },
    )
    .await;
    assert_eq!(status["state"], "active");
    // Devices whose clocks are hours off still run and upload; the cloud keeps every record.
    let running = sim
        .wait_until("records from the fleet", PATIENCE, |s| {
            s.records_uploaded >= 100
        })
        .await
        .unwrap();
    let records = client
        .records(&walle_sdk::client::RecordQuery::task("fleet-task", None))
        .await
        .unwrap();
    assert!(
        records.len() as u64 >= running.records_uploaded.min(1000),
        "{} records",
        records.len()
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_hands_its_devices_to_the_other_and_the_release_completes() {
    let dir = tempfile::tempdir().unwrap();
    let database = postgres_database().await;
    let mut a = CloudProcess::new(dir.path(), "replica-a", Some(database.clone()));
    let mut b = CloudProcess::new(dir.path(), "replica-b", Some(database));
    a.start().await;
    b.start().await;
    let client = b.client();
    publish(&client, dir.path(), "1.0.0").await;
    let devices = 400;
    let sim = Simulation::start(fleet(vec![a.grpc_url(), b.grpc_url()], devices)).unwrap();
    connected(&sim, devices).await;

    // Released through B, reaching A's devices through LISTEN/NOTIFY; A dies midway.
    let released = sim.watch("fleet-task", "1.0.0");
    let release = client
        .create_release_with(
            "fleet-task",
            "1.0.0",
            json!({"stages": [25, 100],
            "gate": {"auto_advance": true, "min_success_rate": 0.9, "min_devices": 20}}),
        )
        .await
        .unwrap();
    let id = release["id"].as_str().unwrap();
    sim.wait_until("the first stage under way", PATIENCE, |s| {
        s.watched_installed >= 20
    })
    .await
    .unwrap();
    let fanout = sim.counters().notice_fanout(released, 2);
    assert!(
        fanout[0].notices > 0 && fanout[1].notices > 0,
        "both replicas' devices heard of the release: {fanout:?}"
    );
    a.kill();
    let done = sim
        .wait_until(
            "every device installed through the surviving replica",
            PATIENCE,
            |s| s.watched_installed as usize == devices,
        )
        .await
        .unwrap();
    assert!(done.moved_replica > 0, "{done:?}");
    let status = release_until(&client, id, "the survivor sees the release complete", |s| {
        s["stage"] == 1 && s["stats"]["installed"] == json!(devices)
    })
    .await;
    assert_eq!(status["state"], "active");
    sim.stop().await;
}

/// A fresh PostgreSQL database for one test (on `WALLE_TEST_POSTGRES_URL`, by default the
/// machine's `test` database server).
async fn postgres_database() -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let admin = std::env::var("WALLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("walle_fleet_{}_{}", std::process::id(), free_port());
    let mut connection = sqlx::AnyConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for this test: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .unwrap();
    let server = admin
        .rsplit_once('/')
        .map(|(server, _)| server)
        .unwrap_or(&admin);
    format!("{server}/{name}")
}
