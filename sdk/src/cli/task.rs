//! `walle task …`: the author's loop — pack, test locally, publish — and the tasks the cloud has.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

use super::GlobalArgs;
use super::init;
use super::output::{Format, Table, cell, print_json, time};
use crate::client::encode;
use crate::{local, validate};

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a task folder that passes `walle task test` as created.
    ///
    /// The task is named after the folder. Python tasks come with sample events, the outputs
    /// they must give (`walle task test DIR --events DIR/events.jsonl --expect
    /// DIR/expected.jsonl`) and the `walle` module's type stubs for editors (`typings/`).
    Init {
        /// The new folder (its name is the task's name: lowercase letters, digits and `-`).
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = init::Runtime::Python)]
        runtime: init::Runtime,
        /// Start from an example task instead (renamed after the folder).
        #[arg(long, value_enum, conflicts_with = "runtime")]
        template: Option<init::Template>,
    },
    /// Check a task folder: manifest, bundle, every script's syntax, and loading it in the VM.
    ///
    /// Prints every problem found, each with its file (and line and column where it has one)
    /// and a hint; exits 1 when there is any.
    Validate {
        /// Task directory (holding walle.toml).
        dir: PathBuf,
    },
    /// Validate a task directory and pack it into a bundle file.
    Pack {
        /// Task directory (holding walle.toml).
        dir: PathBuf,
        /// Output file [default: <name>-<version>.walle in the current directory].
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Run a task directory locally over a JSONL event file and show every run.
    ///
    /// Triggers fire as the events match them; each run shows its trigger, the features and
    /// events handed to it, its outputs, logs, run time and memory. Timers do not fire on their
    /// own in a local test: `--timer NAME` runs the task once as that timer would, after the
    /// events. Exits 1 when a run fails, an event line is refused (unless --allow-rejected), or
    /// the outputs differ from --expect.
    Test(Box<TestArgs>),
    /// Time a task's handler: p50 / p99 run time and peak memory against its limits and a
    /// release gate's `max_run_p99_ms`.
    ///
    /// Feeds the events through the task's triggers once, then runs the handler over the
    /// firings, in turn, `--runs` times. Exits 1 when a run fails or the p99 is over the gate.
    Bench {
        /// Task directory (holding walle.toml).
        dir: PathBuf,
        /// JSONL file, one event per line.
        #[arg(long)]
        events: PathBuf,
        /// How many runs to time.
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// A release policy (JSON) whose gate's `max_run_p99_ms` the p99 must meet.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Upload a task version (a task directory or a packed bundle) to the cloud.
    Publish {
        /// Task directory or .walle bundle file.
        path: PathBuf,
    },
    /// List the cloud's tasks.
    Ls,
    /// List a task's versions.
    Versions {
        /// Task name.
        task: String,
    },
}

/// What `walle task test` runs and checks.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Task directory (holding walle.toml).
    dir: PathBuf,
    /// JSONL file, one event per line.
    #[arg(long)]
    events: PathBuf,
    /// After the events, run the task once as its timer NAME fires: no event, features as of
    /// the last event (repeatable).
    #[arg(long = "timer", value_name = "NAME")]
    timers: Vec<String>,
    /// JSONL file of the outputs the run must give, in order: the test fails on any difference.
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// After the events, move the clock to this Unix time in ms (fires matches waiting for
    /// time, e.g. a trailing "not followed by").
    #[arg(long, value_name = "MS", conflicts_with = "end_of_stream")]
    advance_to: Option<i64>,
    /// After the events, move the clock past the last event by the longest trigger window.
    #[arg(long)]
    end_of_stream: bool,
    /// Do not fail when event lines are refused.
    #[arg(long)]
    allow_rejected: bool,
    /// Run again whenever a file of the task or the events file changes (Ctrl-C stops).
    #[arg(long)]
    watch: bool,
}

/// Runs a `walle task` command.
pub async fn run(command: TaskCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        TaskCommand::Validate { dir } => validate_command(&dir, global.format()),
        TaskCommand::Pack { dir, out } => pack(&dir, out),
        TaskCommand::Init {
            dir,
            runtime,
            template,
        } => {
            let written = init::init(&dir, runtime, template)?;
            for path in &written {
                println!("created {}", path.display());
            }
            let shown = dir.display();
            if written.iter().any(|p| p.ends_with("make_model.py")) {
                println!(
                    "next: python {shown}/make_model.py   (writes the model; needs onnx and numpy)"
                );
            }
            let expect = if written.iter().any(|p| p.ends_with("expected.jsonl")) {
                format!(" --expect {shown}/expected.jsonl")
            } else {
                String::new()
            };
            println!(
                "next: walle task test {shown} --events {shown}/events.jsonl{expect}\n      walle task publish {shown}"
            );
            Ok(())
        }
        TaskCommand::Test(args) if args.watch => watch_tests(&args, global.format()).await,
        TaskCommand::Test(args) => test(&args, global.format()),
        TaskCommand::Bench {
            dir,
            events,
            runs,
            policy,
        } => bench(&dir, &events, runs, policy.as_deref(), global.format()),
        TaskCommand::Publish { path } => publish(&path, global).await,
        TaskCommand::Ls => {
            let tasks = global.client()?.get("/tasks").await?;
            show(
                global.format(),
                &tasks,
                &["NAME", "DESCRIPTION", "CREATED"],
                |t| {
                    vec![
                        cell(&t["name"]),
                        cell(&t["description"]),
                        time(&t["created_at_ms"]),
                    ]
                },
            )
        }
        TaskCommand::Versions { task } => {
            let path = format!("/tasks/{}/versions", encode(&task));
            let versions = global.client()?.get(&path).await?;
            show(
                global.format(),
                &versions,
                &["VERSION", "SIZE", "SHA256", "UPLOADED"],
                |v| {
                    vec![
                        cell(&v["version"]),
                        cell(&v["bundle_size"]),
                        cell(&v["bundle_digest"]),
                        time(&v["created_at_ms"]),
                    ]
                },
            )
        }
    }
}

/// Prints a JSON array as a table of `columns`, or as JSON.
pub fn show(
    format: Format,
    items: &Value,
    headers: &[&str],
    columns: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(items);
    }
    let mut table = Table::new(headers);
    for item in items.as_array().into_iter().flatten() {
        table.row(columns(item));
    }
    println!("{}", table.render());
    Ok(())
}

/// The folder's bundle, or every problem it has as one error.
fn valid(dir: &Path) -> anyhow::Result<validate::Valid> {
    validate::validate(dir).map_err(|problems| {
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{} has {} problem{}:\n{}",
            dir.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            listed.join("\n")
        )
    })
}

fn validate_command(dir: &Path, format: Format) -> anyhow::Result<()> {
    match (validate::validate(dir), format) {
        (Ok(valid), Format::Json) => print_json(&serde_json::json!({
            "valid": true, "name": valid.manifest.name, "version": valid.manifest.version.to_string(),
            "problems": [],
        })),
        (Err(problems), Format::Json) => {
            print_json(&serde_json::json!({"valid": false, "problems": problems}))?;
            bail!("{} problems", problems.len())
        }
        (Ok(valid), Format::Table) => {
            let m = &valid.manifest;
            println!(
                "{} {} is valid: {:?} runtime, {} triggers, {} features, {} timers, {} models",
                m.name,
                m.version,
                m.runtime,
                m.triggers.len(),
                m.features.len(),
                m.timers.len(),
                m.models.len()
            );
            Ok(())
        }
        (Err(_), Format::Table) => valid(dir).map(drop),
    }
}

fn pack(dir: &Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    let validate::Valid {
        manifest,
        bundle: bytes,
    } = valid(dir)?;
    let out = out
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.walle", manifest.name, manifest.version)));
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "packed {} {} into {} ({} bytes, sha256 {})",
        manifest.name,
        manifest.version,
        out.display(),
        bytes.len(),
        walle_proto::bundle::digest_hex(&bytes)
    );
    Ok(())
}

fn test(args: &TestArgs, format: Format) -> anyhow::Result<()> {
    let (dir, events) = (args.dir.as_path(), args.events.as_path());
    valid(dir)?;
    let text =
        std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let options = local::LocalOptions {
        timers: args.timers.clone(),
        advance_to: args.advance_to,
        end_of_stream: args.end_of_stream,
    };
    let run = local::run_task_with(dir, &lines, &options)?;
    let expected = args
        .expect
        .as_deref()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok::<_, anyhow::Error>((path, compare_outputs(&run.outputs, &text)))
        })
        .transpose()?;
    match format {
        Format::Json => print_json(&serde_json::to_value(&run)?)?,
        Format::Table => print_run(&run, events),
    }
    if !run.failures.is_empty() {
        bail!("{} of {} runs failed", run.failures.len(), run.fired);
    }
    if !run.rejected.is_empty() && !args.allow_rejected {
        bail!(
            "{} of {} event lines were refused (see above; --allow-rejected accepts that)",
            run.rejected.len(),
            run.rejected.len() + run.events
        );
    }
    if let Some((path, comparison)) = expected {
        comparison.map_err(|difference| anyhow::anyhow!("{}: {difference}", path.display()))?;
        if format == Format::Table {
            eprintln!("outputs match {}", path.display());
        }
    }
    Ok(())
}

/// A local run for people: each firing with what it got and gave, then warnings and a summary.
fn print_run(run: &local::LocalRun, events: &Path) {
    for (line, error) in &run.rejected {
        eprintln!("{}:{line}: refused: {error}", events.display());
    }
    for (n, firing) in run.firings.iter().enumerate() {
        let memory = firing
            .memory_bytes
            .map(|b| format!(", memory {:.1} MiB", b as f64 / 1048576.0))
            .unwrap_or_default();
        println!(
            "run {}: {} ({} matched, {} in window) {:.1} ms{memory}",
            n + 1,
            firing.trigger,
            firing.matched,
            firing.window,
            firing.run_ms
        );
        if !firing.features.is_empty() {
            println!("  features {}", Value::Object(firing.features.clone()));
        }
        for output in &firing.outputs {
            println!("  output   {output}");
        }
        for line in firing.logs.lines() {
            println!("  log      {line}");
        }
        if let Some(error) = &firing.error {
            println!("  FAILED   {}", error.replace('\n', "\n           "));
        }
    }
    for warning in &run.warnings {
        eprintln!("warning: {warning}");
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
}

fn bench(
    dir: &Path,
    events: &Path,
    runs: usize,
    policy: Option<&Path>,
    format: Format,
) -> anyhow::Result<()> {
    let manifest = valid(dir)?.manifest;
    let gate = super::release::read_policy(policy)?["gate"]["max_run_p99_ms"].as_f64();
    let text =
        std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let report = local::bench_task(dir, &lines, runs)?;
    if format == Format::Json {
        let mut value = serde_json::to_value(&report)?;
        value["gate_max_run_p99_ms"] = serde_json::json!(gate);
        print_json(&value)?;
    } else {
        let mib = |bytes: u64| bytes as f64 / 1048576.0;
        println!(
            "{} {}: {} runs over {} firings, {} failed",
            manifest.name, manifest.version, report.runs, report.firings, report.failed
        );
        println!(
            "run time  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (deadline {} ms: p99 is {:.1}% of it)",
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            report.deadline_ms,
            100.0 * report.p99_ms / report.deadline_ms.max(1) as f64
        );
        println!(
            "memory    peak {:.1} MiB of {:.1} MiB ({:.0}%)",
            mib(report.peak_memory_bytes),
            mib(report.memory_limit_bytes),
            100.0 * report.peak_memory_bytes as f64 / report.memory_limit_bytes.max(1) as f64
        );
        match gate {
            Some(max) => println!(
                "gate      max_run_p99_ms {max}: {}",
                if report.p99_ms <= max {
                    "passes"
                } else {
                    "FAILS"
                }
            ),
            None => println!(
                "gate      none given (--policy FILE checks a release gate's max_run_p99_ms)"
            ),
        }
        println!("(this machine's timings: a phone's CPU is slower; keep a margin)");
    }
    if report.failed > 0 {
        bail!(
            "{} of {} runs failed (`walle task test` shows why)",
            report.failed,
            report.runs
        );
    }
    if let Some(max) = gate.filter(|max| report.p99_ms > *max) {
        bail!(
            "p99 run time {:.2} ms is over the gate's max_run_p99_ms {max}",
            report.p99_ms
        );
    }
    Ok(())
}

/// The newest modification time among the task's files and the events file.
fn newest_change(args: &TestArgs) -> Option<std::time::SystemTime> {
    fn walk(path: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if let Ok(modified) = meta.modified() {
            *newest = (*newest).max(Some(modified));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        }
    }
    let mut newest = None;
    walk(&args.dir, &mut newest);
    walk(&args.events, &mut newest);
    newest
}

/// Runs the test, then again after each change, until interrupted.
async fn watch_tests(args: &TestArgs, format: Format) -> anyhow::Result<()> {
    let mut last = newest_change(args);
    loop {
        match test(args, format) {
            Ok(()) => eprintln!(
                "passed; watching {} for changes (Ctrl-C stops)",
                args.dir.display()
            ),
            Err(e) => eprintln!(
                "{}\nwatching {} for changes (Ctrl-C stops)",
                super::report(&e),
                args.dir.display()
            ),
        }
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_millis(300)) => {}
            }
            let now = newest_change(args);
            if now != last {
                last = now;
                eprintln!("--- changed; running again ---");
                break;
            }
        }
    }
}

/// Whether the outputs are the expected JSON lines, in order; the first difference otherwise.
pub fn compare_outputs(outputs: &[Value], expected: &str) -> Result<(), String> {
    let lines: Vec<(usize, &str)> = expected
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .collect();
    for (at, (number, line)) in lines.iter().enumerate() {
        let want: Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: not JSON: {e}", number + 1))?;
        match outputs.get(at) {
            Some(got) if *got == want => {}
            Some(got) => {
                return Err(format!(
                    "line {}: output {} differs\n  expected {want}\n  got      {got}",
                    number + 1,
                    at + 1
                ));
            }
            None => {
                return Err(format!(
                    "line {}: expected {want}, but the run gave only {} outputs",
                    number + 1,
                    outputs.len()
                ));
            }
        }
    }
    match outputs.get(lines.len()) {
        Some(extra) => Err(format!(
            "the run gave {} outputs, {} expected; the first unexpected: {extra}",
            outputs.len(),
            lines.len()
        )),
        None => Ok(()),
    }
}

async fn publish(path: &Path, global: &GlobalArgs) -> anyhow::Result<()> {
    let bytes = if path.is_dir() {
        valid(path)?.bundle
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    let contents = walle_proto::bundle::read_bundle(&bytes)
        .with_context(|| format!("{} is not a valid bundle", path.display()))?;
    let problems = validate::script_problems(&contents);
    if let Some(first) = problems.first() {
        bail!(
            "{} has a script that does not compile: {first}",
            path.display()
        );
    }
    let manifest = contents.manifest;
    let client = global.client()?;
    client
        .ensure_task(&manifest.name, &manifest.description)
        .await?;
    let version = client.upload_version(&manifest.name, bytes).await?;
    if global.format() == Format::Json {
        return print_json(&version);
    }
    println!(
        "published {} {} ({} bytes, sha256 {}); release it with `walle release create --task {} --version {}`",
        manifest.name,
        manifest.version,
        cell(&version["bundle_size"]),
        cell(&version["bundle_digest"]),
        manifest.name,
        manifest.version
    );
    Ok(())
}
