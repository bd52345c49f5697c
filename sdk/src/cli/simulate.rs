//! `walle fleet simulate`: many simulated devices against a real cloud, with live progress and a
//! summary; optionally releases a task version to them and times it (see [`crate::simulate`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::GlobalArgs;
use super::output::{Format, print_json};
use crate::simulate::progress::{Peaks, Snapshot};
use crate::simulate::{SimConfig, Simulation, connect};

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Simulate a fleet of devices against a cloud: each registers, subscribes, syncs, fetches
    /// and verifies bundles and reports, as the device agent does (task runs are stubbed).
    ///
    /// Prints progress every second on stderr and a summary at the end. With --release it
    /// creates that release once every device is connected and stops when --until percent of
    /// the targeted devices installed it.
    Simulate(Box<SimulateArgs>),
}

/// What `walle fleet simulate` runs.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Device-plane (gRPC) URL of the cloud; repeat it for replicas (devices are spread over
    /// them and move to the next when theirs fails).
    #[arg(long = "device-plane", required = true, env = "WALLE_DEVICE_PLANE")]
    device_planes: Vec<String>,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Devices per HTTP/2 connection; 1 gives each device its own, as phones have. More than
    /// one lets a fleet exceed this process's open-file limit.
    #[arg(long, default_value_t = 1)]
    devices_per_connection: usize,
    /// Source address for client sockets (repeat it to spread them) [default: 127.0.0.1 and
    /// one more loopback address per 20,000 connections when the cloud is on loopback].
    #[arg(long = "source-addr")]
    source_addrs: Vec<IpAddr>,
    /// Device ids are PREFIX-000000, PREFIX-000001, …
    #[arg(long, default_value = "sim")]
    id_prefix: String,
    /// Seed of the profile mix and of which devices fail, are slow, skewed or full.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Devices started per second at the beginning.
    #[arg(long, default_value_t = 2000)]
    ramp: u32,
    /// Enrollment secret of the app (com.example.shop), if the cloud requires one.
    #[arg(
        long,
        env = "WALLE_ENROLLMENT_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    enrollment_secret: String,
    /// Share of devices (0-1) whose installs fail.
    #[arg(long, default_value_t = 0.0)]
    install_failure_share: f64,
    /// Share of stubbed runs (0-1) that fail.
    #[arg(long, default_value_t = 0.0)]
    run_failure_share: f64,
    /// Stubbed runs per device per minute once a task is installed; each reports and uploads
    /// one tunnel record (the event load).
    #[arg(long, default_value_t = 0.0)]
    runs_per_minute: f64,
    /// Share of devices (0-1) that go offline each minute, for a random time in --offline-secs.
    #[arg(long, default_value_t = 0.0)]
    churn_per_minute: f64,
    /// How long a churned device stays offline: MIN..MAX seconds.
    #[arg(long, default_value = "5..60", value_parser = parse_range)]
    offline_secs: (u64, u64),
    /// Share of devices (0-1) on a slow network.
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    /// Latency the slow network adds to every call and every bundle chunk.
    #[arg(long, default_value_t = 300)]
    slow_latency_ms: u64,
    /// Share of devices (0-1) whose clock is off by --clock-skew-hours, either way.
    #[arg(long, default_value_t = 0.0)]
    clock_skew_share: f64,
    #[arg(long, default_value_t = 3.0)]
    clock_skew_hours: f64,
    /// Share of devices (0-1) whose disk is full (their installs fail).
    #[arg(long, default_value_t = 0.0)]
    full_disk_share: f64,
    /// Create this release (TASK@VERSION, already published) once the fleet is connected, and
    /// time it. Needs an operator token (--cloud/--token or a profile).
    #[arg(long)]
    release: Option<String>,
    /// The release's policy (JSON file) [default: every device at once].
    #[arg(long, requires = "release")]
    policy: Option<PathBuf>,
    /// With --release: stop when this percent of the targeted devices installed it.
    #[arg(long, default_value_t = 99.0)]
    until: f64,
    /// Longest wait for the fleet to connect, and for --release to reach --until.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Once every device is connected, wait this long before creating --release (lets the
    /// cloud's idle footprint be measured).
    #[arg(long, default_value_t = 0)]
    settle_secs: u64,
    /// Without --release: run this long, then stop [default: until Ctrl-C].
    #[arg(long)]
    duration_secs: Option<u64>,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (low, high) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not MIN..MAX"))?;
    let parse = |v: &str| v.trim().parse::<u64>().map_err(|e| format!("{v:?}: {e}"));
    Ok((parse(low)?, parse(high)?))
}

/// Runs a `walle fleet` command.
pub async fn run(command: FleetCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        FleetCommand::Simulate(args) => simulate(*args, global).await,
    }
}

impl SimulateArgs {
    fn config(&self) -> SimConfig {
        let connections = self.devices.div_ceil(self.devices_per_connection.max(1));
        SimConfig {
            urls: self.device_planes.clone(),
            devices: self.devices,
            id_prefix: self.id_prefix.clone(),
            seed: self.seed,
            devices_per_connection: self.devices_per_connection,
            sources: if self.source_addrs.is_empty() {
                connect::default_sources(&self.device_planes, connections)
            } else {
                self.source_addrs.clone()
            },
            ramp_per_sec: self.ramp,
            enrollment_secret: self.enrollment_secret.clone(),
            install_failure_share: self.install_failure_share,
            run_failure_share: self.run_failure_share,
            runs_per_device_per_min: self.runs_per_minute,
            churn_per_min: self.churn_per_minute,
            offline_secs: self.offline_secs,
            slow_share: self.slow_share,
            slow_latency: Duration::from_millis(self.slow_latency_ms),
            clock_skew_share: self.clock_skew_share,
            clock_skew: Duration::from_secs_f64(self.clock_skew_hours.max(0.0) * 3600.0),
            full_disk_share: self.full_disk_share,
        }
    }
}

/// Prints a progress line every second until dropped, and keeps the peak rates.
struct Progress {
    task: tokio::task::JoinHandle<Peaks>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Progress {
    fn start(simulation: &Simulation) -> Progress {
        let counters = simulation.counters_handle();
        let started = simulation.started();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peaks = Peaks::default();
            let mut before = counters.snapshot();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => return peaks,
                }
                let now = counters.snapshot();
                peaks.observe(&before, &now);
                eprintln!("{}", now.line(&before, now.at.duration_since(started)));
                before = now;
            }
        });
        Progress { task, stop }
    }

    async fn finish(self) -> Peaks {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

async fn simulate(args: SimulateArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let release = args
        .release
        .as_deref()
        .map(|r| {
            r.split_once('@')
                .map(|(t, v)| (t.to_owned(), v.to_owned()))
                .with_context(|| format!("--release {r:?} is not TASK@VERSION"))
        })
        .transpose()?;
    let policy: Value = match &args.policy {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", path.display()))?,
        None => json!({}),
    };
    let client = release.as_ref().map(|_| global.client()).transpose()?;
    if let (Some((task, version)), Some(client)) = (&release, &client) {
        check_version_exists(client, task, version).await?;
    }
    let config = args.config();
    let timeout = Duration::from_secs(args.timeout_secs);
    let started_at = unix_ms();
    let simulation = Simulation::start(config.clone())?;
    eprintln!(
        "simulating {} devices on {} connection(s) from {} source address(es) to {}",
        config.devices,
        config
            .devices
            .div_ceil(config.devices_per_connection.max(1)),
        config.sources.len().max(1),
        config.urls.join(", ")
    );
    let progress = Progress::start(&simulation);
    // With churn some devices are offline at any moment: the fleet is up once every device
    // has connected (registered) once.
    let churn = config.churn_per_min > 0.0;
    let connected = simulation
        .wait_until("every device connected", timeout, |s| {
            let up = if churn { s.registered } else { s.connected };
            up as usize >= config.devices
        })
        .await;
    let connect_time = simulation.started().elapsed();
    let connected_at = unix_ms();
    if connected.is_ok() && args.settle_secs > 0 {
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    }
    let settled_at = unix_ms();
    let mut summary = json!({
        "devices": config.devices,
        "connections": config.devices.div_ceil(config.devices_per_connection.max(1)),
        "source_addresses": config.sources.len().max(1),
        "connect_ms": connect_time.as_millis() as u64,
        "connected": connected.is_ok(),
        "started_at_unix_ms": started_at,
        "connected_at_unix_ms": connected_at,
        "settled_at_unix_ms": settled_at,
    });
    let mut outcome = Ok(());
    if let Err(e) = connected {
        outcome = Err(anyhow::Error::new(e));
    } else if let (Some((task, version)), Some(client)) = (&release, &client) {
        match timed_release(
            &simulation,
            client,
            task,
            version,
            policy,
            args.until,
            timeout,
        )
        .await
        {
            Ok(timing) => summary["release"] = timing,
            Err(e) => outcome = Err(e),
        }
    } else {
        wait_for_end(args.duration_secs).await?;
    }
    summary["ended_at_unix_ms"] = json!(unix_ms());
    let peaks = progress.finish().await;
    if let Some(spread) = simulation.counters().reconnect_spread() {
        summary["reconnect_spread"] = json!({
            "reconnects": spread.reconnects,
            "span_ms": spread.span.as_millis() as u64,
            "peak_per_100ms": spread.peak_per_100ms,
            "delay_p50_ms": spread.delay_p50.as_millis() as u64,
            "delay_p99_ms": spread.delay_p99.as_millis() as u64,
        });
    }
    let totals = simulation.stop().await;
    summary["peaks"] = json!({
        "syncs_per_sec": peaks.syncs_per_sec.round(),
        "notices_per_sec": peaks.notices_per_sec.round(),
        "installs_per_sec": peaks.installs_per_sec.round(),
        "bundle_bytes_per_sec": peaks.bundle_bytes_per_sec.round(),
    });
    summary["totals"] = totals_json(&totals);
    print_summary(global.format(), &summary)?;
    outcome
}

/// How often a timed release's status is read from the cloud.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

/// Creates the release, then waits until `until` percent of its targeted devices installed it
/// (or it aborts); returns the timings.
async fn timed_release(
    simulation: &Simulation,
    client: &crate::client::ControlClient,
    task: &str,
    version: &str,
    policy: Value,
    until: f64,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let start = simulation.watch(task, version);
    let created = client
        .create_release_with(task, version, policy)
        .await
        .with_context(|| format!("creating the release of {task}@{version}"))?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    eprintln!("release {id} of {task}@{version} created");
    let deadline = start + timeout;
    let mut status = Value::Null;
    let mut asked = start;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The release's statistics cost the cloud a walk over the fleet: ask for them every
        // few seconds (for the targeted count and an abort), not at every check.
        if status.is_null() || asked.elapsed() >= STATUS_PERIOD {
            status = client.release_status(&id).await.unwrap_or(status);
            asked = Instant::now();
        }
        let targeted = status["stats"]["targeted"].as_u64().unwrap_or(0) as f64;
        let installed = simulation.snapshot().watched_installed as f64;
        let state = status["state"].as_str().unwrap_or_default();
        if matches!(state, "aborted" | "superseded") || Instant::now() >= deadline {
            break;
        }
        if targeted > 0.0 && installed >= (targeted * until / 100.0).ceil() {
            break;
        }
    }
    status = client.release_status(&id).await.unwrap_or(status);
    let targeted = status["stats"]["targeted"].as_u64().unwrap_or(0) as usize;
    let of = if targeted > 0 {
        targeted
    } else {
        simulation.config().devices
    };
    let times = simulation
        .counters()
        .time_to_shares(start, of, &[0.5, 0.9, 0.99, until / 100.0]);
    let ms = |d: Option<Duration>| d.map_or(Value::Null, |d| json!(d.as_millis() as u64));
    let fanout: Vec<Value> = simulation
        .counters()
        .notice_fanout(start, simulation.config().urls.len())
        .into_iter()
        .map(|f| {
            json!({
                "replica": f.replica,
                "notices": f.notices,
                "first_ms": ms(f.first),
                "p50_ms": ms(f.p50),
                "p99_ms": ms(f.p99),
            })
        })
        .collect();
    let timing = json!({
        "id": id,
        "task": task,
        "version": version,
        "state": status["state"],
        "targeted": targeted,
        "installed": simulation.snapshot().watched_installed,
        "cloud_notified": status["stats"]["notified"],
        "cloud_synced": status["stats"]["synced"],
        "time_to_50_percent_ms": ms(times[0]),
        "time_to_90_percent_ms": ms(times[1]),
        "time_to_99_percent_ms": ms(times[2]),
        "time_to_until_ms": ms(times[3]),
        "until_percent": until,
        "notices_by_replica": fanout,
    });
    if times[3].is_none() {
        bail!(
            "release {id} reached {} of {of} targeted devices, not {until} %, before it ended ({}) or {timeout:?} passed",
            timing["installed"],
            timing["state"]
        );
    }
    Ok(timing)
}

/// Refuses a --release whose version is not published, before any device starts.
async fn check_version_exists(
    client: &crate::client::ControlClient,
    task: &str,
    version: &str,
) -> anyhow::Result<()> {
    let versions = client
        .get(&format!("/tasks/{}/versions", crate::client::encode(task)))
        .await
        .with_context(|| format!("looking up task {task:?} for --release"))?;
    let listed = versions
        .as_array()
        .or_else(|| versions["versions"].as_array())
        .into_iter()
        .flatten()
        .any(|v| v["version"].as_str() == Some(version));
    if !listed {
        bail!(
            "task {task:?} has no published version {version:?}: publish it first (`walle task publish DIR`)"
        );
    }
    Ok(())
}

async fn wait_for_end(duration: Option<u64>) -> anyhow::Result<()> {
    match duration {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        None => tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?,
    }
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn totals_json(s: &Snapshot) -> Value {
    json!({
        "registered": s.registered,
        "notices": s.notices,
        "syncs": s.syncs,
        "installed": s.installed,
        "install_failed": s.install_failed,
        "refused": s.refused,
        "removed": s.removed,
        "bundle_bytes": s.bundle_bytes,
        "runs_ok": s.runs_ok,
        "runs_failed": s.runs_failed,
        "records_uploaded": s.records_uploaded,
        "reconnects": s.reconnects,
        "went_offline": s.went_offline,
        "rpc_errors": s.rpc_errors,
        "moved_replica": s.moved_replica,
    })
}

fn print_summary(format: Format, summary: &Value) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(summary);
    }
    let totals = &summary["totals"];
    println!(
        "{} devices on {} connections: connected in {:.1} s",
        summary["devices"],
        summary["connections"],
        summary["connect_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    if let Some(release) = summary.get("release") {
        let secs = |v: &Value| {
            v.as_f64()
                .map_or("-".to_owned(), |ms| format!("{:.1} s", ms / 1000.0))
        };
        println!(
            "release {} ({}@{}, {}): {} of {} targeted installed; 50 % in {}, 90 % in {}, 99 % in {}",
            release["id"].as_str().unwrap_or_default(),
            release["task"].as_str().unwrap_or_default(),
            release["version"].as_str().unwrap_or_default(),
            release["state"].as_str().unwrap_or_default(),
            release["installed"],
            release["targeted"],
            secs(&release["time_to_50_percent_ms"]),
            secs(&release["time_to_90_percent_ms"]),
            secs(&release["time_to_99_percent_ms"]),
        );
        let fanout = release["notices_by_replica"].as_array();
        for replica in fanout
            .into_iter()
            .flatten()
            .filter(|_| fanout.is_some_and(|f| f.len() > 1))
        {
            println!(
                "  replica {}: {} notices, first after {}, 50 % after {}, 99 % after {}",
                replica["replica"],
                replica["notices"],
                secs(&replica["first_ms"]),
                secs(&replica["p50_ms"]),
                secs(&replica["p99_ms"]),
            );
        }
    }
    let peaks = &summary["peaks"];
    let rate = |v: &Value| format!("{:.0}", v.as_f64().unwrap_or(0.0));
    println!(
        "peaks: {} syncs/s, {} notices/s, {} installs/s, {:.1} MB/s of bundles",
        rate(&peaks["syncs_per_sec"]),
        rate(&peaks["notices_per_sec"]),
        rate(&peaks["installs_per_sec"]),
        peaks["bundle_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e6
    );
    println!(
        "totals: {} registered, {} notices, {} syncs, {} installed, {} failed ({} refused), {:.1} MB of bundles, {} runs ok, {} failed, {} records, {} reconnects, {} offline spells, {} errors",
        totals["registered"],
        totals["notices"],
        totals["syncs"],
        totals["installed"],
        totals["install_failed"],
        totals["refused"],
        totals["bundle_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        totals["runs_ok"],
        totals["runs_failed"],
        totals["records_uploaded"],
        totals["reconnects"],
        totals["went_offline"],
        totals["rpc_errors"],
    );
    Ok(())
}
