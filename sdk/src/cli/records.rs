//! `walle records …`: what tasks uploaded through the tunnel.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::GlobalArgs;
use super::output::{Format, Table, cell, print_json, time};
use crate::client::{ControlClient, RecordQuery};

#[derive(Subcommand)]
pub enum RecordsCommand {
    /// The newest records (at most 1,000), newest first.
    Ls {
        #[command(flatten)]
        filter: RecordFilterArgs,
    },
    /// Every matching record as JSON Lines, in the order the cloud received them.
    Export {
        #[command(flatten)]
        filter: RecordFilterArgs,
        /// Output file [default: standard output].
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The last records, then new ones as they arrive (until Ctrl-C).
    Tail {
        #[command(flatten)]
        filter: RecordFilterArgs,
        /// How many of the newest records to show first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
        /// Seconds between looks for new records.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
}

#[derive(clap::Args, Clone)]
pub struct RecordFilterArgs {
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

/// Runs a `walle records` command.
pub async fn run(command: RecordsCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = global.client()?;
    let format = global.format();
    match command {
        RecordsCommand::Ls { filter } => {
            let records = client.records(&filter.query()).await?;
            if format == Format::Json {
                return print_json(&Value::Array(records));
            }
            let mut table = record_table();
            for record in &records {
                table.row(record_row(record));
            }
            println!("{}", table.render());
            Ok(())
        }
        RecordsCommand::Export { filter, out } => {
            export(&client, filter.query(), out.as_deref()).await
        }
        RecordsCommand::Tail {
            filter,
            lines,
            interval,
        } => tail(&client, format, filter.query(), lines, interval).await,
    }
}

fn record_table() -> Table {
    Table::new(&["RECEIVED", "DEVICE", "TASK", "VERSION", "PAYLOAD"])
}

fn record_row(record: &Value) -> Vec<String> {
    vec![
        time(&record["received_at_ms"]),
        cell(&record["device_id"]),
        cell(&record["task"]),
        cell(&record["version"]),
        record["payload"].to_string(),
    ]
}

async fn export(
    client: &ControlClient,
    query: RecordQuery,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let written = match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let written = client.export_records(&query, &mut writer).await?;
            std::io::Write::flush(&mut writer)
                .with_context(|| format!("writing {}", path.display()))?;
            written
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            client.export_records(&query, &mut stdout).await?
        }
    };
    tracing::info!(bytes = written, "records exported");
    Ok(())
}

/// Prints records not printed before, oldest first.
fn print_new(format: Format, records: &[Value], seen: &mut HashSet<String>, limit: usize) {
    let fresh: Vec<&Value> = records
        .iter()
        .filter(|r| !seen.contains(&cell(&r["id"])))
        .take(limit)
        .collect();
    for record in fresh.iter().rev() {
        seen.insert(cell(&record["id"]));
        match format {
            Format::Json => println!("{record}"),
            Format::Table => println!("{}", record_row(record).join("  ")),
        }
    }
}

async fn tail(
    client: &ControlClient,
    format: Format,
    query: RecordQuery,
    lines: usize,
    interval: f64,
) -> anyhow::Result<()> {
    let mut seen: HashSet<String> = HashSet::new();
    let first = client.records(&query).await?;
    // Everything older than the last `lines` counts as seen.
    for record in first.iter().skip(lines) {
        seen.insert(cell(&record["id"]));
    }
    print_new(format, &first, &mut seen, lines);
    let pause = Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    loop {
        tokio::time::sleep(pause).await;
        let records = client.records(&query).await?;
        print_new(format, &records, &mut seen, usize::MAX);
        // Keep only what the newest page can still show.
        if seen.len() > 10_000 {
            let current: HashSet<String> = records.iter().map(|r| cell(&r["id"])).collect();
            seen.retain(|id| current.contains(id));
        }
    }
}
