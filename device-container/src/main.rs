//! `walle-device`: the Walle device agent.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use walle_device::config::{self, ProfileValueError, parse_addr_or_off};
use walle_device::ingest::Endpoint;
use walle_device::{Agent, DeviceConfig, ProfileConfig};

// Charges each task's allocations to its memory budget (see walle_vm::TaskAllocator).
#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

#[derive(Parser)]
#[command(
    name = "walle-device",
    version,
    about = "Walle device agent: installs released tasks and runs them on user-behaviour events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: connect to the cloud and serve the local ingest endpoint.
    Run(Box<RunArgs>),
    /// Send a recorded JSONL event stream to a running agent's ingest endpoint.
    Replay {
        /// JSONL file, one event per line.
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Show a running agent's status (installed tasks, runs, queues).
    Status {
        #[command(flatten)]
        target: Target,
    },
}

/// Which running agent to talk to: its ingest endpoint's URL or its Unix socket.
#[derive(clap::Args)]
struct Target {
    /// Ingest endpoint of the running agent.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7070",
        conflicts_with = "socket"
    )]
    to: String,
    /// Unix socket of the running agent's ingest endpoint, instead of `--to`.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl Target {
    fn endpoint(self) -> Endpoint {
        match self.socket {
            Some(path) => Endpoint::Socket(path),
            None => Endpoint::Http(self.to),
        }
    }
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people (coloured only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs to stderr in `format`, at the levels `RUST_LOG` sets [default: info].
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Log format on stderr; the levels come from RUST_LOG (e.g. `info`,
    /// `walle_device=debug`) [default: text].
    #[arg(long, env = "WALLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, hide_default_value = true)]
    log_format: LogFormat,
    /// TOML config file; flags below override its values.
    #[arg(long, env = "WALLE_DEVICE_CONFIG")]
    config: Option<PathBuf>,
    /// Device-plane URL of the cloud [default: http://127.0.0.1:50051].
    #[arg(long, env = "WALLE_CLOUD_URL")]
    cloud: Option<String>,
    /// Data directory (credential, installed tasks) [default: walle-device-data].
    #[arg(long, env = "WALLE_DEVICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Device id [default: generated once and kept in the data dir].
    #[arg(long, env = "WALLE_DEVICE_ID", value_parser = id)]
    device_id: Option<String>,
    /// Local ingest endpoint address, or `off` [default: 127.0.0.1:7070].
    #[arg(long, env = "WALLE_INGEST_ADDR", value_name = "ADDR|off", value_parser = IngestAddr::parse)]
    ingest_addr: Option<IngestAddr>,
    /// Serve the ingest endpoint on a Unix socket at PATH as well (mode 0600: only this user
    /// may connect; a stale socket there is replaced); with `--ingest-addr off`, on it alone.
    #[arg(long, env = "WALLE_INGEST_SOCKET", value_name = "PATH")]
    ingest_socket: Option<PathBuf>,
    /// Enrollment secret the cloud requires, if any.
    #[arg(long, env = "WALLE_ENROLLMENT_SECRET")]
    enrollment_secret: Option<String>,
    /// PEM certificate to trust for an https:// cloud.
    #[arg(long, env = "WALLE_CLOUD_CA_CERT")]
    cloud_ca_cert: Option<PathBuf>,
    #[command(flatten)]
    profile: ProfileArgs,
}

/// The device profile (`[profile]` in the config file), which release policies target.
#[derive(clap::Args)]
#[command(
    next_help_heading = "Device profile (what release policies target; sent at registration and every sync)"
)]
struct ProfileArgs {
    /// Id of the host app [default: com.example.app].
    #[arg(long, env = "WALLE_DEVICE_APP_ID", value_name = "ID", value_parser = id)]
    app_id: Option<String>,
    /// Version of the host app, semver: 5.2.0 (5.2 reads as 5.2.0) [default: 1.0.0].
    #[arg(long, env = "WALLE_DEVICE_APP_VERSION", value_name = "VERSION", value_parser = app_version)]
    app_version: Option<String>,
    /// Operating system, e.g. android, ios [default: this machine's, e.g. linux].
    #[arg(long, env = "WALLE_DEVICE_OS", value_parser = text)]
    os: Option<String>,
    /// Version of the operating system, e.g. 14 or 17.4 [default: none].
    #[arg(long, env = "WALLE_DEVICE_OS_VERSION", value_name = "VERSION", value_parser = text)]
    os_version: Option<String>,
    /// Device model, e.g. "Pixel 8" [default: none].
    #[arg(long, env = "WALLE_DEVICE_MODEL", value_parser = text)]
    model: Option<String>,
    /// Hardware tier, e.g. low, mid, high [default: mid].
    #[arg(long, env = "WALLE_DEVICE_HARDWARE_TIER", value_name = "TIER", value_parser = text)]
    hardware_tier: Option<String>,
    /// Region, e.g. eu-west [default: none].
    #[arg(long, env = "WALLE_DEVICE_REGION", value_parser = text)]
    region: Option<String>,
    /// A tag; repeat the flag or separate tags with commas (`--tag beta,qa`). Replaces the
    /// config file's tags [default: none].
    #[arg(
        long = "tag",
        env = "WALLE_DEVICE_TAGS",
        value_name = "TAG",
        value_delimiter = ',',
        value_parser = id
    )]
    tags: Option<Vec<String>>,
}

impl ProfileArgs {
    /// Overrides the config file's profile with the flags given.
    fn apply(self, profile: &mut ProfileConfig) {
        let fields = [
            (self.app_id, &mut profile.app_id),
            (self.app_version, &mut profile.app_version),
            (self.os, &mut profile.os),
            (self.os_version, &mut profile.os_version),
            (self.model, &mut profile.model),
            (self.hardware_tier, &mut profile.hardware_tier),
            (self.region, &mut profile.region),
        ];
        for (flag, field) in fields {
            if let Some(value) = flag {
                *field = value;
            }
        }
        if let Some(tags) = self.tags {
            profile.tags = tags;
        }
    }
}

/// `--device-id`, `--app-id`, `--tag`: what the cloud accepts as an id.
fn id(text: &str) -> Result<String, ProfileValueError> {
    config::check_id(text).map(|()| text.to_owned())
}

/// `--app-version`: a version release policies can compare.
fn app_version(text: &str) -> Result<String, ProfileValueError> {
    config::check_app_version(text).map(|()| text.to_owned())
}

/// The other profile flags: text the cloud accepts.
fn text(text: &str) -> Result<String, ProfileValueError> {
    config::check_text(text).map(|()| text.to_owned())
}

/// `--ingest-addr`: an address, or `off` (`None`).
#[derive(Clone)]
struct IngestAddr(Option<SocketAddr>);

impl IngestAddr {
    fn parse(text: &str) -> Result<IngestAddr, String> {
        parse_addr_or_off(text).map(IngestAddr)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command;
    init_logging(match &command {
        Command::Run(args) => args.log_format,
        Command::Replay { .. } | Command::Status { .. } => LogFormat::Text,
    });
    let result = match command {
        Command::Run(args) => run(*args).await,
        Command::Replay { file, target } => replay(&file, &target.endpoint()).await,
        Command::Status { target } => status(&target.endpoint()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Once, causes on one line, and no backtrace: these are the user's mistakes or the
            // world's (a bad value, a cloud or agent that is not there), not this program's.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn status(endpoint: &Endpoint) -> anyhow::Result<()> {
    let status = endpoint.status().await?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => DeviceConfig::from_toml_file(path)?,
        None => DeviceConfig::default(),
    };
    if let Some(v) = args.cloud {
        config.cloud_url = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.device_id {
        config.profile.device_id = v;
    }
    if let Some(IngestAddr(v)) = args.ingest_addr {
        config.ingest_addr = v;
    }
    if let Some(v) = args.ingest_socket {
        config.ingest_socket = Some(v);
    }
    if let Some(v) = args.enrollment_secret {
        config.enrollment_secret = v;
    }
    if let Some(v) = args.cloud_ca_cert {
        config.cloud_ca_cert = Some(v);
    }
    args.profile.apply(&mut config.profile);
    let socket = config.ingest_socket.clone();
    let agent = Agent::start(config).await.context("starting the agent")?;
    let mut endpoints: Vec<String> = agent
        .ingest_addr()
        .map(|a| format!("http://{a}"))
        .into_iter()
        .collect();
    endpoints.extend(socket.map(|path| format!("unix:{}", path.display())));
    eprintln!(
        "walle-device {}: ingest endpoint {}",
        agent.device_id(),
        if endpoints.is_empty() {
            "disabled".to_owned()
        } else {
            endpoints.join(" and ")
        }
    );
    let restart = tokio::select! {
        stop = stop_signal() => {
            stop?;
            eprintln!("walle-device: stopping");
            None
        }
        reason = agent.wait_restart_requested() => Some(reason),
    };
    agent.flush(Duration::from_secs(5)).await.ok();
    agent.shutdown().await;
    match restart {
        Some(reason) => restart_self(&reason),
        None => Ok(()),
    }
}

/// Waits for Ctrl-C or, on Unix, SIGTERM (what a service manager sends to stop a service).
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("listening for SIGTERM")?;
        tokio::select! {
            stop = tokio::signal::ctrl_c() => stop.context("waiting for Ctrl-C"),
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    }
}

/// Replaces this process with a fresh `walle-device` on the same arguments: what the task VM
/// lost to stuck native code (threads, their memory) goes with the old image. Runs in flight
/// were journalled, so the new process runs them again.
fn restart_self(reason: &str) -> anyhow::Result<()> {
    eprintln!("walle-device: restarting: {reason}");
    let program = std::env::current_exe().context("finding this program to restart it")?;
    let mut command = std::process::Command::new(&program);
    command.args(std::env::args_os().skip(1));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        Err(error).with_context(|| format!("restarting {}", program.display()))
    }
    #[cfg(not(unix))]
    {
        command
            .spawn()
            .with_context(|| format!("restarting {}", program.display()))?;
        Ok(())
    }
}

async fn replay(file: &PathBuf, endpoint: &Endpoint) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let result = endpoint
        .post_events(text, None)
        .await
        .with_context(|| format!("replaying {}", file.display()))?;
    for rejected in &result.rejected {
        eprintln!("{}:{}: {}", file.display(), rejected.line, rejected.error);
    }
    println!(
        "replayed {}: {} events accepted, {} rejected, {} task runs triggered",
        file.display(),
        result.accepted,
        result.rejected.len(),
        result.triggered
    );
    Ok(())
}
