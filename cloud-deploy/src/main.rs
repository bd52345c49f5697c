//! `walle-cloud`: the Walle cloud server.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use walle_cloud::bundles::{BundleStoreConfig, S3Config};
use walle_cloud::records_sink::{RecordsSinkConfig, SinkUrlError};
use walle_cloud::{Cloud, CloudConfig};

#[derive(Parser)]
#[command(
    name = "walle-cloud",
    version,
    about = "Walle cloud: stores task versions and releases them to device fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the control plane (HTTP/JSON + web console) and the device plane (gRPC).
    Serve(Box<ServeArgs>),
    /// Print the control plane's OpenAPI document (JSON), e.g. to generate a client.
    Openapi,
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
struct ServeArgs {
    /// Log format on stderr; the levels come from RUST_LOG (e.g. `info`,
    /// `walle_cloud=debug,sqlx=warn`) [default: text].
    #[arg(long, env = "WALLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, hide_default_value = true)]
    log_format: LogFormat,
    /// TOML config file; flags below override its values.
    #[arg(long, env = "WALLE_CLOUD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, bundles, publisher key, admin token).
    #[arg(long, env = "WALLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Control plane listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "WALLE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Device plane (gRPC) listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "WALLE_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Database URL [default: sqlite://<data-dir>/walle.db].
    #[arg(long, env = "WALLE_DATABASE_URL")]
    database_url: Option<String>,
    /// Where bundles are kept: `local` (below the data dir) or `s3://BUCKET[/PREFIX]`; the S3
    /// endpoint, region and credentials come from the AWS_* environment variables
    /// (AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP).
    #[arg(long, env = "WALLE_BUNDLE_STORE", value_parser = parse_bundle_store)]
    bundle_store: Option<BundleStoreConfig>,
    /// Largest accepted bundle upload in bytes [default: 268435456].
    #[arg(long, env = "WALLE_MAX_BUNDLE_BYTES")]
    max_bundle_bytes: Option<u64>,
    /// PEM certificate chain: serve both planes over TLS (with --tls-key).
    #[arg(long, env = "WALLE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WALLE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse devices of apps not registered through /v1/apps (each with its enrollment secret).
    #[arg(long, env = "WALLE_CLOSED_ENROLLMENT")]
    closed_enrollment: bool,
    /// Serve the web console from this directory (e.g. `web-console/assets`) instead of the
    /// built-in copy, to work on the console without rebuilding.
    #[arg(long, env = "WALLE_CONSOLE_DIR")]
    console_dir: Option<PathBuf>,
    /// Where uploaded tunnel records go: `database` (the metadata database, the default) or
    /// `nats://HOST[:PORT]/STREAM`, a NATS JetStream stream (created if absent; subjects
    /// STREAM.records.<task>, message id `<device>:<record id>`).
    #[arg(long, env = "WALLE_RECORDS_SINK", value_parser = parse_records_sink)]
    records_sink: Option<RecordsSinkConfig>,
}

fn parse_records_sink(value: &str) -> Result<RecordsSinkConfig, String> {
    value.parse().map_err(|e: SinkUrlError| e.to_string())
}

fn parse_bundle_store(value: &str) -> Result<BundleStoreConfig, String> {
    if value == "local" {
        return Ok(BundleStoreConfig::Local);
    }
    let Some(rest) = value.strip_prefix("s3://") else {
        return Err(format!(
            "{value:?} is neither `local` nor `s3://BUCKET[/PREFIX]`"
        ));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{value:?} names no bucket"));
    }
    Ok(BundleStoreConfig::S3(S3Config {
        bucket: bucket.to_owned(),
        prefix: prefix.trim_end_matches('/').to_owned(),
        endpoint: None,
        region: None,
        access_key_id: None,
        secret_access_key: None,
        allow_http: false,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Cli::parse().command {
        Command::Serve(args) => *args,
        Command::Openapi => {
            init_logging(LogFormat::Text);
            return print_openapi();
        }
    };
    init_logging(args.log_format);
    let mut config = match &args.config {
        Some(path) => CloudConfig::from_toml_file(path)?,
        None => CloudConfig::default(),
    };
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.http_addr {
        config.http_addr = v;
    }
    if let Some(v) = args.grpc_addr {
        config.grpc_addr = v;
    }
    if let Some(v) = args.database_url {
        config.database_url = Some(v);
    }
    if let Some(v) = args.bundle_store {
        config.bundle_store = v;
    }
    if let Some(v) = args.max_bundle_bytes {
        config.max_bundle_bytes = v;
    }
    if let (Some(cert_pem), Some(key_pem)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(walle_cloud::tls::TlsFiles { cert_pem, key_pem });
    }
    if args.closed_enrollment {
        config.open_enrollment = false;
    }
    if let Some(v) = args.console_dir {
        config.console_dir = Some(v);
    }
    if let Some(v) = args.records_sink {
        config.records_sink = v;
    }
    let data_dir = config.data_dir.clone();
    let open_files = walle_cloud::limits::raise_open_file_limit();
    tracing::info!(
        open_files,
        "open-file limit: at most about {} device connections",
        open_files.saturating_sub(256)
    );
    let cloud = Cloud::start(config).await.context("starting walle-cloud")?;
    eprintln!(
        "walle-cloud: control plane {} (console at /console/), device plane {}\n\
         operator token in {}",
        cloud.http_url(),
        cloud.grpc_url(),
        data_dir.join("admin.token").display()
    );
    stop_signal().await?;
    eprintln!("walle-cloud: stopping");
    cloud.shutdown().await;
    Ok(())
}

/// Writes the OpenAPI document to stdout. A reader that stops early (`walle-cloud openapi |
/// head`) has taken what it wanted: a closed pipe ends the program quietly, with success.
fn print_openapi() -> anyhow::Result<()> {
    let doc = walle_cloud::control::openapi()
        .to_pretty_json()
        .context("encoding the OpenAPI document")?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{doc}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing the OpenAPI document to stdout"),
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
