//! `walle`: the Walle command line for task authors and release managers.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use walle_sdk::client::{ControlClient, RecordQuery};
use walle_sdk::{demo, local};

// `walle task test` runs tasks: charge their allocations to their budgets (walle_vm::TaskAllocator).
#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

#[derive(Parser)]
#[command(
    name = "walle",
    version,
    about = "Walle: write, test, publish and release on-device ML tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct CloudArgs {
    /// Control-plane URL of the cloud.
    #[arg(long, env = "WALLE_CLOUD", default_value = "http://127.0.0.1:8080")]
    cloud: String,
    /// Operator token (the cloud keeps the admin token in <data-dir>/admin.token).
    #[arg(long, env = "WALLE_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM certificate to trust for an https:// cloud.
    #[arg(long, env = "WALLE_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl CloudArgs {
    fn client(&self) -> anyhow::Result<ControlClient> {
        match &self.ca_cert {
            None => Ok(ControlClient::new(&self.cloud, &self.token)),
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Ok(ControlClient::with_ca_cert(&self.cloud, &self.token, &pem)?)
            }
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Work on a task: pack, test locally, publish.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Release task versions to the fleet.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Read what tasks uploaded through the tunnel.
    #[command(subcommand)]
    Records(RecordsCommand),
    /// Start a cloud and devices in this process, release the example task and show it running.
    Demo {
        /// Number of devices.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// App sessions replayed per device.
        #[arg(long, default_value_t = 3)]
        sessions: usize,
        /// Keep cloud and device data here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Leave the cloud running afterwards so the web console can be opened; Ctrl-C stops it.
        #[arg(long)]
        keep_running: bool,
    },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Validate a task directory and pack it into a bundle file.
    Pack {
        /// Task directory (holding walle.toml).
        dir: PathBuf,
        /// Output file [default: <name>-<version>.walle in the current directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run a task directory locally over a JSONL event file and print its outputs.
    ///
    /// Triggers fire as the events match them. Timers do not fire on their own in a local test:
    /// `--timer NAME` runs the task once as that timer would, after the events.
    Test {
        /// Task directory (holding walle.toml).
        dir: PathBuf,
        /// JSONL file, one event per line.
        #[arg(long)]
        events: PathBuf,
        /// After the events, run the task once as its timer NAME fires: no event, features as
        /// of the last event (repeatable).
        #[arg(long = "timer", value_name = "NAME")]
        timers: Vec<String>,
    },
    /// Upload a task version (a task directory or a packed bundle) to the cloud.
    Publish {
        /// Task directory or .walle bundle file.
        path: PathBuf,
        #[command(flatten)]
        cloud: CloudArgs,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Release a published task version (to every device at once unless a policy says otherwise).
    Create {
        #[arg(long)]
        task: String,
        #[arg(long)]
        version: String,
        /// JSON policy file: target, stages, gate, abort, priority (see README).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Show, per stage, how many registered devices would run which version.
    Preview {
        #[arg(long)]
        task: String,
        #[arg(long)]
        version: String,
        /// JSON policy file.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Pause, resume, advance, abort or roll back a release.
    Act {
        id: String,
        #[arg(value_parser = ["pause", "resume", "advance", "abort", "rollback"])]
        action: String,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Show a release and its fleet statistics.
    Status {
        id: String,
        #[command(flatten)]
        cloud: CloudArgs,
    },
}

#[derive(Subcommand)]
enum RecordsCommand {
    /// Print the newest records (at most 1,000) as a JSON array.
    List {
        #[command(flatten)]
        filter: RecordFilterArgs,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Write every matching record as JSON Lines, in the order the cloud received them.
    Export {
        #[command(flatten)]
        filter: RecordFilterArgs,
        /// Output file [default: standard output].
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        cloud: CloudArgs,
    },
}

#[derive(clap::Args, Clone)]
struct RecordFilterArgs {
    /// Only records of this task.
    #[arg(long)]
    task: Option<String>,
    /// Only records of this device.
    #[arg(long)]
    device: Option<String>,
    /// Only records of this task version.
    #[arg(long)]
    version: Option<String>,
    /// Only records produced at or after this Unix time in milliseconds.
    #[arg(long)]
    from_ms: Option<i64>,
    /// Only records produced before this Unix time in milliseconds.
    #[arg(long)]
    to_ms: Option<i64>,
}

impl RecordFilterArgs {
    fn query(self) -> RecordQuery {
        RecordQuery {
            task: self.task,
            device: self.device,
            version: self.version,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Task(TaskCommand::Pack { dir, output }) => pack(&dir, output),
        Command::Task(TaskCommand::Test {
            dir,
            events,
            timers,
        }) => test(&dir, &events, &timers),
        Command::Task(TaskCommand::Publish { path, cloud }) => publish(&path, &cloud).await,
        Command::Release(ReleaseCommand::Create {
            task,
            version,
            policy,
            cloud,
        }) => {
            let policy = read_policy(policy.as_deref())?;
            print_json(
                &cloud
                    .client()?
                    .create_release_with(&task, &version, policy)
                    .await?,
            )
        }
        Command::Release(ReleaseCommand::Preview {
            task,
            version,
            policy,
            cloud,
        }) => {
            let policy = read_policy(policy.as_deref())?;
            print_json(
                &cloud
                    .client()?
                    .preview_release(&task, &version, policy)
                    .await?,
            )
        }
        Command::Release(ReleaseCommand::Act { id, action, cloud }) => {
            print_json(&cloud.client()?.release_action(&id, &action).await?)
        }
        Command::Release(ReleaseCommand::Status { id, cloud }) => {
            print_json(&cloud.client()?.release_status(&id).await?)
        }
        Command::Records(RecordsCommand::List { filter, cloud }) => {
            let records = cloud.client()?.records(&filter.query()).await?;
            print_json(&serde_json::Value::Array(records))
        }
        Command::Records(RecordsCommand::Export {
            filter,
            output,
            cloud,
        }) => export_records(filter.query(), output.as_deref(), &cloud).await,
        Command::Demo {
            devices,
            sessions,
            data_dir,
            keep_running,
        } => {
            if devices == 0 {
                bail!("--devices must be at least 1");
            }
            demo::run(demo::DemoOptions {
                devices,
                sessions,
                data_dir,
                keep_running,
            })
            .await
        }
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn read_policy(path: Option<&Path>) -> anyhow::Result<serde_json::Value> {
    let Some(path) = path else {
        return Ok(serde_json::json!({}));
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn pack(dir: &Path, output: Option<PathBuf>) -> anyhow::Result<()> {
    let (manifest, bytes) =
        walle_proto::bundle::pack_dir(dir).with_context(|| format!("packing {}", dir.display()))?;
    let output = output
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.walle", manifest.name, manifest.version)));
    std::fs::write(&output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "packed {} {} into {} ({} bytes, sha256 {})",
        manifest.name,
        manifest.version,
        output.display(),
        bytes.len(),
        walle_proto::bundle::digest_hex(&bytes)
    );
    Ok(())
}

fn test(dir: &Path, events: &Path, timers: &[String]) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let run = local::run_task(dir, &lines, timers)?;
    for (line, error) in &run.rejected {
        eprintln!("{}:{line}: {error}", events.display());
    }
    for output in &run.outputs {
        println!("{output}");
    }
    for log in &run.logs {
        eprint!("{log}");
    }
    for failure in &run.failures {
        eprintln!("run failed: {failure}");
    }
    eprintln!(
        "{} events, {} rejected, {} triggers fired, {} outputs, {} failed runs",
        run.events,
        run.rejected.len(),
        run.fired,
        run.outputs.len(),
        run.failures.len()
    );
    if !run.timers_not_run.is_empty() {
        eprintln!(
            "timers not run (they do not fire on their own here; --timer NAME runs one): {}",
            run.timers_not_run.join(", ")
        );
    }
    if !run.failures.is_empty() {
        bail!("{} runs failed", run.failures.len());
    }
    Ok(())
}

async fn publish(path: &Path, cloud: &CloudArgs) -> anyhow::Result<()> {
    let bytes = if path.is_dir() {
        walle_proto::bundle::pack_dir(path)
            .with_context(|| format!("packing {}", path.display()))?
            .1
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    let manifest = walle_proto::bundle::read_bundle(&bytes)
        .with_context(|| format!("{} is not a valid bundle", path.display()))?
        .manifest;
    let client = cloud.client()?;
    client
        .ensure_task(&manifest.name, &manifest.description)
        .await?;
    let version = client.upload_version(&manifest.name, bytes).await?;
    println!("{}", serde_json::to_string_pretty(&version)?);
    Ok(())
}

async fn export_records(
    query: RecordQuery,
    output: Option<&Path>,
    cloud: &CloudArgs,
) -> anyhow::Result<()> {
    let client = cloud.client()?;
    let written = match output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let written = client.export_records(&query, &mut out).await?;
            std::io::Write::flush(&mut out)
                .with_context(|| format!("writing {}", path.display()))?;
            written
        }
        None => {
            let mut out = std::io::stdout().lock();
            client.export_records(&query, &mut out).await?
        }
    };
    tracing::info!(bytes = written, "records exported");
    Ok(())
}
