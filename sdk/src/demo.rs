//! `walle demo`: a cloud and a few devices in one process, on loopback, talking real gRPC and HTTP.
//! Publishes the example IPV task, releases it, replays a synthetic event stream into each device
//! and checks that every visit's feature reached the cloud with the right values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use walle_cloud::{Cloud, CloudConfig};
use walle_device::{Agent, DeviceConfig, ProfileConfig};

use crate::client::{ControlClient, RecordQuery};
use crate::events::{ExpectedVisit, synthetic_stream};

/// The example task shipped inside the binary, so the demo runs from any directory.
const EXAMPLE_MANIFEST: &str = include_str!("../../examples/tasks/ipv-feature/walle.toml");
const EXAMPLE_SCRIPT: &str = include_str!("../../examples/tasks/ipv-feature/main.py");

/// How long to wait for installs, runs and uploads before declaring failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A cloud and its devices, all in this process.
pub struct Fleet {
    pub cloud: Cloud,
    pub agents: Vec<Agent>,
    pub client: ControlClient,
}

/// Profiles that make the demo fleet look like a fleet.
fn profile(index: usize) -> ProfileConfig {
    let (os, os_version, model, tier, region) = [
        ("android", "14", "Pixel 8", "high", "eu-west"),
        ("ios", "17.4", "iPhone 13", "mid", "us-east"),
        ("android", "12", "Galaxy A23", "low", "ap-south"),
    ][index % 3];
    ProfileConfig {
        device_id: format!("demo-device-{}", index + 1),
        app_id: "com.example.shop".into(),
        app_version: "5.2.0".into(),
        os: os.into(),
        os_version: os_version.into(),
        model: model.into(),
        hardware_tier: tier.into(),
        region: region.into(),
        tags: vec!["demo".into()],
    }
}

impl Fleet {
    /// Starts a cloud with its data in `root/cloud` and `devices` agents in `root/device-N`.
    pub async fn start(root: &Path, devices: usize) -> anyhow::Result<Fleet> {
        let cloud = Cloud::start(CloudConfig {
            data_dir: root.join("cloud"),
            http_addr: "127.0.0.1:0".parse()?,
            grpc_addr: "127.0.0.1:0".parse()?,
            pace_window_ms: 300,
            ..CloudConfig::default()
        })
        .await
        .context("starting the cloud")?;
        let client = ControlClient::new(&cloud.http_url(), &cloud.admin_token);
        let mut agents = Vec::with_capacity(devices);
        for index in 0..devices {
            let agent = Agent::start(DeviceConfig {
                cloud_url: cloud.grpc_url(),
                data_dir: root.join(format!("device-{}", index + 1)),
                ingest_addr: None,
                vm_threads: 1,
                profile: profile(index),
                ..DeviceConfig::default()
            })
            .await
            .with_context(|| format!("starting device {}", index + 1))?;
            agents.push(agent);
        }
        let fleet = Fleet {
            cloud,
            agents,
            client,
        };
        fleet.wait_connected().await?;
        Ok(fleet)
    }

    async fn wait_connected(&self) -> anyhow::Result<()> {
        for agent in &self.agents {
            agent
                .wait_for(STEP_TIMEOUT, |s| s.connected)
                .await
                .with_context(|| format!("device {} did not connect", agent.device_id()))?;
        }
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while self.cloud.connected_devices() < self.agents.len() {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "devices did not all subscribe"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Packs a task directory, creates the task if needed and uploads the version.
    pub async fn publish(&self, task_dir: &Path) -> anyhow::Result<Value> {
        let (manifest, bundle) = walle_proto::bundle::pack_dir(task_dir)
            .with_context(|| format!("packing {}", task_dir.display()))?;
        self.client
            .ensure_task(&manifest.name, &manifest.description)
            .await?;
        Ok(self.client.upload_version(&manifest.name, bundle).await?)
    }

    /// Waits until every device runs `task@version`.
    pub async fn wait_installed(&self, task: &str, version: &str) -> anyhow::Result<()> {
        for agent in &self.agents {
            agent
                .wait_for(STEP_TIMEOUT, |s| {
                    s.installed
                        .iter()
                        .any(|t| t.task == task && t.version == version)
                })
                .await
                .with_context(|| {
                    format!(
                        "device {} did not install {task}@{version}",
                        agent.device_id()
                    )
                })?;
        }
        Ok(())
    }

    /// Stops every device, then the cloud.
    pub async fn shutdown(self) {
        for agent in self.agents {
            agent.shutdown().await;
        }
        self.cloud.shutdown().await;
    }
}

/// Options of `walle demo`.
pub struct DemoOptions {
    pub devices: usize,
    pub sessions: usize,
    /// Keep the data here instead of a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// Leave the cloud running (for the console) until Ctrl-C.
    pub keep_running: bool,
}

/// Runs the demo and returns an error saying what went wrong, if anything did.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let root = options
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    let task_dir = root.join("tasks/ipv-feature");
    std::fs::create_dir_all(&task_dir)?;
    std::fs::write(task_dir.join("walle.toml"), EXAMPLE_MANIFEST)?;
    std::fs::write(task_dir.join("main.py"), EXAMPLE_SCRIPT)?;

    let fleet = Fleet::start(&root, options.devices).await?;
    println!(
        "walle demo: cloud control plane {} (console {}/console/), device plane {}, {} devices connected",
        fleet.cloud.http_url(),
        fleet.cloud.http_url(),
        fleet.cloud.grpc_url(),
        fleet.agents.len()
    );
    let outcome = drive(&fleet, &task_dir, options.sessions).await;
    if options.keep_running {
        println!(
            "console: {}/console/#token={}\ncloud left running; press Ctrl-C to stop",
            fleet.cloud.http_url(),
            fleet.cloud.admin_token
        );
        tokio::signal::ctrl_c().await.ok();
    }
    fleet.shutdown().await;
    outcome
}

async fn drive(fleet: &Fleet, task_dir: &Path, sessions: usize) -> anyhow::Result<()> {
    let version = fleet.publish(task_dir).await?;
    let (task, semver) = (str_field(&version, "task"), str_field(&version, "version"));
    println!(
        "published {task} {semver} (bundle sha256 {}…, {} bytes)",
        &str_field(&version, "bundle_digest")[..12],
        version["bundle_size"]
    );
    let release = fleet.client.create_release(&task, &semver).await?;
    let release_id = str_field(&release, "id");
    println!("released as {release_id}: notices pushed, devices pulling…");
    fleet.wait_installed(&task, &semver).await?;

    let mut failures = Vec::new();
    for (index, agent) in fleet.agents.iter().enumerate() {
        let (events, visits) = synthetic_stream(index as u64 + 1, sessions, 1_700_000_000_000);
        for event in &events {
            agent.track(event.clone())?;
        }
        let status = agent.flush(STEP_TIMEOUT).await?;
        let records = fleet
            .client
            .records(&RecordQuery::task(&task, Some(agent.device_id())))
            .await?;
        println!("\ndevice {}", agent.device_id());
        for t in &status.installed {
            println!(
                "  installed       {} {} ({})",
                t.task, t.version, t.release_id
            );
        }
        println!("  events replayed {}", events.len());
        println!("  triggers fired  {}", status.triggers_fired);
        println!(
            "  runs            {} ok, {} failed",
            status.runs_ok, status.runs_failed
        );
        for output in agent.outputs(&task) {
            println!(
                "    output  item {:<8} dwell {:>6} ms  clicks {}  add_to_cart {}",
                output["item"].as_str().unwrap_or("?"),
                output["dwell_ms"],
                output["clicks"],
                output["add_to_cart"]
            );
        }
        let mismatches = check_records(&records, &visits);
        println!(
            "  cloud received  {} records for {} visits{}",
            records.len(),
            visits.len(),
            if mismatches.is_empty() {
                " — all match"
            } else {
                " — MISMATCH"
            }
        );
        failures.extend(
            mismatches
                .into_iter()
                .map(|m| format!("{}: {m}", agent.device_id())),
        );
    }
    let status = fleet.client.release_status(&release_id).await?;
    let stats = &status["stats"];
    println!(
        "\nrelease {release_id}: installed on {}/{} devices, {} runs ok, {} runs failed, {} failed installs",
        stats["installed"],
        stats["targeted"],
        stats["runs_ok"],
        stats["runs_failed"],
        stats["install_failed"]
    );
    if !failures.is_empty() {
        bail!("demo failed:\n  {}", failures.join("\n  "));
    }
    println!("demo OK");
    Ok(())
}

fn str_field(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_owned()
}

/// Compares the records the cloud stored with the visits the stream contained; returns what
/// differs.
pub fn check_records(records: &[Value], visits: &[ExpectedVisit]) -> Vec<String> {
    let mut problems = Vec::new();
    if records.len() != visits.len() {
        problems.push(format!(
            "{} records for {} visits",
            records.len(),
            visits.len()
        ));
    }
    for visit in visits {
        let found = records
            .iter()
            .map(|r| &r["payload"])
            .find(|p| p["session"] == visit.session.as_str() && p["item"] == visit.item.as_str());
        match found {
            None => problems.push(format!("no record for {} in {}", visit.item, visit.session)),
            Some(p)
                if p["dwell_ms"] != visit.dwell_ms
                    || p["clicks"] != visit.clicks
                    || p["add_to_cart"] != visit.add_to_cart =>
            {
                problems.push(format!(
                    "record for {} in {} is {p}, expected {visit:?}",
                    visit.item, visit.session
                ))
            }
            Some(_) => {}
        }
    }
    problems
}
