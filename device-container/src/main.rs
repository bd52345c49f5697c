//! `walle-device`: the Walle device agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use walle_device::ingest::IngestResult;
use walle_device::{Agent, DeviceConfig};

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
    Run(RunArgs),
    /// Send a recorded JSONL event stream to a running agent's ingest endpoint.
    Replay {
        /// JSONL file, one event per line.
        file: PathBuf,
        /// Ingest endpoint of the running agent.
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        to: String,
    },
    /// Show a running agent's status (installed tasks, runs, queues).
    Status {
        /// Ingest endpoint of the running agent.
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        to: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
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
    #[arg(long, env = "WALLE_DEVICE_ID")]
    device_id: Option<String>,
    /// Local ingest endpoint address [default: 127.0.0.1:7070].
    #[arg(long, env = "WALLE_INGEST_ADDR")]
    ingest_addr: Option<SocketAddr>,
    /// Enrollment secret the cloud requires, if any.
    #[arg(long, env = "WALLE_ENROLLMENT_SECRET")]
    enrollment_secret: Option<String>,
    /// PEM certificate to trust for an https:// cloud.
    #[arg(long, env = "WALLE_CLOUD_CA_CERT")]
    cloud_ca_cert: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Replay { file, to } => replay(&file, &to).await,
        Command::Status { to } => {
            let status: serde_json::Value = reqwest::get(format!("{to}/v1/status"))
                .await
                .with_context(|| format!("asking {to} for status"))?
                .json()
                .await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
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
    if let Some(v) = args.ingest_addr {
        config.ingest_addr = Some(v);
    }
    if let Some(v) = args.enrollment_secret {
        config.enrollment_secret = v;
    }
    if let Some(v) = args.cloud_ca_cert {
        config.cloud_ca_cert = Some(v);
    }
    let agent = Agent::start(config).await.context("starting the agent")?;
    eprintln!(
        "walle-device {}: ingest endpoint {}",
        agent.device_id(),
        agent
            .ingest_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_else(|| "disabled".into())
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    agent.flush(Duration::from_secs(5)).await.ok();
    agent.shutdown().await;
    Ok(())
}

async fn replay(file: &PathBuf, to: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let response = reqwest::Client::new()
        .post(format!("{to}/v1/events"))
        .body(text)
        .send()
        .await
        .with_context(|| format!("sending events to {to}"))?;
    if !response.status().is_success() {
        bail!(
            "{to} answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let result: IngestResult = response.json().await.context("reading the ingest answer")?;
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
