//! `walle release …`: list, preview, create, status, the operator verbs and watch.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::GlobalArgs;
use super::output::{Format, Table, bar, cell, percent, print_json, time};
use super::task::show;
use crate::client::{ControlClient, encode};

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// List releases, newest first.
    Ls {
        /// Only releases of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only releases in this state.
        #[arg(long, value_parser = ["active", "paused", "aborted", "superseded"])]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show, per stage, how many registered devices would run which version.
    Preview {
        #[arg(long)]
        task: String,
        #[arg(long)]
        version: String,
        /// JSON policy file: target, stages, gate, abort, priority, pace (see docs/authoring.md).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Release a published task version (to every device at once unless a policy says otherwise).
    Create {
        #[arg(long)]
        task: String,
        #[arg(long)]
        version: String,
        /// JSON policy file.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The bucket salt a preview printed: the release then takes exactly the previewed devices.
        #[arg(long)]
        salt: Option<String>,
    },
    /// Show a release: state, stage, progress per stage, health, and what each action would do.
    Status { id: String },
    /// Move to the next stage now.
    Advance { id: String },
    /// Stop offering the version; devices keep what they run.
    Pause { id: String },
    /// Offer the version again at the current stage.
    Resume { id: String },
    /// Stop for good: devices running the version go back to what they had before.
    Abort {
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Same as abort, recorded as a rollback.
    Rollback {
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Follow a release live until it is fully installed at its last stage (exit 0) or aborted
    /// or superseded (exit 1).
    Watch { id: String },
}

/// Runs a `walle release` command.
pub async fn run(command: ReleaseCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let format = global.format();
    let client = global.client()?;
    match command {
        ReleaseCommand::Ls { task, state, limit } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(task) = &task {
                query.append_pair("task", task);
            }
            if let Some(state) = &state {
                query.append_pair("state", state);
            }
            let page = client.get(&format!("/releases?{}", query.finish())).await?;
            show(
                format,
                &page,
                &[
                    "ID", "TASK", "VERSION", "STATE", "STAGE", "CREATED", "REASON",
                ],
                |r| {
                    vec![
                        cell(&r["id"]),
                        cell(&r["task"]),
                        cell(&r["version"]),
                        cell(&r["state"]),
                        stage_label(r),
                        time(&r["created_at_ms"]),
                        cell(&r["state_reason"]),
                    ]
                },
            )
        }
        ReleaseCommand::Preview {
            task,
            version,
            policy,
        } => {
            let body = json!({"task": task, "version": version, "policy": read_policy(policy.as_deref())?});
            let preview = client.post("/releases/preview", body).await?;
            print_preview(format, &preview, &task, &version)
        }
        ReleaseCommand::Create {
            task,
            version,
            policy,
            salt,
        } => {
            let mut body = json!({"task": task, "version": version, "policy": read_policy(policy.as_deref())?});
            if let Some(salt) = salt {
                body["salt"] = json!(salt);
            }
            let release = client.post("/releases", body).await?;
            if format == Format::Json {
                return print_json(&release);
            }
            let id = cell(&release["id"]);
            println!(
                "created release {id} of {task} {version}; follow it with `walle release watch {id}`"
            );
            Ok(())
        }
        ReleaseCommand::Status { id } => {
            let status = client.get(&format!("/releases/{}", encode(&id))).await?;
            if format == Format::Json {
                return print_json(&status);
            }
            println!("{}", describe(&status));
            Ok(())
        }
        ReleaseCommand::Advance { id } => act(&client, format, &id, "advance", true).await,
        ReleaseCommand::Pause { id } => act(&client, format, &id, "pause", true).await,
        ReleaseCommand::Resume { id } => act(&client, format, &id, "resume", true).await,
        ReleaseCommand::Abort { id, yes } => act(&client, format, &id, "abort", yes).await,
        ReleaseCommand::Rollback { id, yes } => act(&client, format, &id, "rollback", yes).await,
        ReleaseCommand::Watch { id } => watch(&client, format, &id).await,
    }
}

/// Reads a policy file (JSON); no file is the default policy (everyone, at once).
pub fn read_policy(path: Option<&Path>) -> anyhow::Result<Value> {
    let Some(path) = path else {
        return Ok(json!({}));
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn stage_label(release: &Value) -> String {
    let stages = release["policy"]["stages"].as_array().map_or(1, Vec::len);
    let stage = release["stage"].as_u64().unwrap_or(0) as usize;
    let percent = release["policy"]["stages"][stage].as_f64().unwrap_or(100.0);
    format!("{}/{stages} ({percent}%)", stage + 1)
}

fn print_preview(format: Format, preview: &Value, task: &str, version: &str) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(preview);
    }
    let stages = preview["stages"].as_array().cloned().unwrap_or_default();
    let mut labels: Vec<String> = stages
        .iter()
        .filter_map(|s| s["versions"].as_object())
        .flat_map(|versions| versions.keys().cloned())
        .collect();
    labels.sort();
    labels.dedup();
    let mut headers = vec!["STAGE", "PERCENT"];
    headers.extend(labels.iter().map(String::as_str));
    let mut table = Table::new(&headers);
    for stage in &stages {
        let mut row = vec![
            (stage["stage"].as_u64().unwrap_or(0) + 1).to_string(),
            format!("{}%", cell(&stage["percent"])),
        ];
        row.extend(
            labels
                .iter()
                .map(|l| stage["versions"][l].as_u64().unwrap_or(0).to_string()),
        );
        table.row(row);
    }
    println!("{}", table.render());
    println!(
        "Devices per version at each stage (\"none\": the task is not installed). Start exactly this with\n  walle release create --task {task} --version {version} --salt {} [--policy FILE]",
        cell(&preview["salt"])
    );
    let (devices, outside) = (
        count(&preview["devices"]),
        count(&preview["outside_target"]),
    );
    if outside > 0 {
        println!(
            "{outside} of {devices} registered devices do not match the policy's target and never get {version} (`walle devices ls` shows their profiles)."
        );
    }
    if devices == 0 {
        println!("No device is registered yet: the figures are all zero.");
    }
    Ok(())
}

/// A release's status for people: what it is doing, per stage, its health and its actions.
pub fn describe(status: &Value) -> String {
    let stats = &status["stats"];
    let mut text = format!(
        "release {}: {} {} — {} at stage {}{}\n",
        cell(&status["id"]),
        cell(&status["task"]),
        cell(&status["version"]),
        cell(&status["state"]),
        stage_label(status),
        match status["state_reason"].as_str() {
            Some(reason) if !reason.is_empty() => format!(" ({reason})"),
            _ => String::new(),
        }
    );
    let (targeted, installed) = (count(&stats["targeted"]), count(&stats["installed"]));
    text.push_str(&format!(
        "installed {installed} of {targeted} targeted {} {}; still running it outside the target: {}\n",
        bar(installed, targeted, 30),
        percent(&stats["coverage"]),
        count(&stats["still_running"]),
    ));
    text.push_str(&format!(
        "notified {}, synced {}; devices failed {} (install {}), rolled back {}; runs ok {} / failed {}; run p50 {} ms, p99 {} ms\n\n",
        cell(&stats["notified"]),
        cell(&stats["synced"]),
        cell(&stats["failed_devices"]),
        cell(&stats["install_failed"]),
        cell(&stats["rolled_back"]),
        cell(&stats["runs_ok"]),
        cell(&stats["runs_failed"]),
        cell(&stats["runs"]["duration_p50_ms"]),
        cell(&stats["runs"]["duration_p99_ms"]),
    ));
    let mut stages = Table::new(&[
        "STAGE",
        "PERCENT",
        "TARGETED",
        "INSTALLED",
        "INSTALL-FAILED",
        "FAILED-DEVICES",
        "ROLLED-BACK",
    ]);
    for stage in stats["stages"].as_array().into_iter().flatten() {
        stages.row(vec![
            (stage["stage"].as_u64().unwrap_or(0) + 1).to_string(),
            format!("{}%", cell(&stage["percent"])),
            cell(&stage["targeted"]),
            cell(&stage["installed"]),
            cell(&stage["install_failed"]),
            cell(&stage["failed_devices"]),
            cell(&stage["rolled_back"]),
        ]);
    }
    text.push_str(&stages.render());
    let actions = status["actions"].as_array().cloned().unwrap_or_default();
    if !actions.is_empty() {
        text.push_str("\n\nactions:");
        for action in actions {
            text.push_str(&format!(
                "\n  {:<9}{}",
                cell(&action["action"]),
                cell(&action["effect"])
            ));
        }
    }
    text
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

async fn act(
    client: &ControlClient,
    format: Format,
    id: &str,
    action: &str,
    confirmed: bool,
) -> anyhow::Result<()> {
    let path = format!("/releases/{}", encode(id));
    let status = client.get(&path).await?;
    let effect = status["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["action"] == action)
        .map(|a| cell(&a["effect"]));
    let Some(effect) = effect else {
        let allowed: Vec<String> = status["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| cell(&a["action"]))
            .collect();
        bail!(
            "release {id} is {} at stage {}: it cannot {action} now (it can: {})",
            cell(&status["state"]),
            stage_label(&status),
            if allowed.is_empty() {
                "nothing".to_owned()
            } else {
                allowed.join(", ")
            }
        );
    };
    if !confirmed && !confirm(&format!("{effect}\n{action} release {id}?"))? {
        bail!("not confirmed; nothing changed");
    }
    let release = client.post(&format!("{path}/{action}"), json!({})).await?;
    if format == Format::Json {
        return print_json(&release);
    }
    println!("{effect}");
    println!(
        "release {id} is now {} at stage {}",
        cell(&release["state"]),
        stage_label(&release)
    );
    Ok(())
}

/// Asks on the terminal; without one the command must be confirmed with --yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("{question}\nnot asked: standard input is not a terminal; add --yes to confirm");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Whether a watched release is over: `Some(true)` fully installed at its last stage,
/// `Some(false)` aborted or superseded.
pub fn watch_outcome(status: &Value) -> Option<bool> {
    match status["state"].as_str() {
        Some("aborted" | "superseded") => return Some(false),
        Some("active") => {}
        _ => return None,
    }
    let last = status["policy"]["stages"]
        .as_array()
        .map_or(0, |s| s.len().saturating_sub(1));
    let stats = &status["stats"];
    let done = status["stage"].as_u64() == Some(last as u64)
        && count(&stats["targeted"]) > 0
        && count(&stats["installed"]) == count(&stats["targeted"]);
    done.then_some(true)
}

async fn watch(client: &ControlClient, format: Format, id: &str) -> anyhow::Result<()> {
    let mut live = client.release_live(id).await?;
    let interactive = format == Format::Table && std::io::stdout().is_terminal();
    while let Some(status) = live.next().await? {
        let stats = &status["stats"];
        match format {
            Format::Json => println!("{}", serde_json::to_string(&status)?),
            Format::Table => {
                let line = format!(
                    "{} stage {} {} {}/{} installed {}, failed devices {}",
                    cell(&status["state"]),
                    stage_label(&status),
                    bar(count(&stats["installed"]), count(&stats["targeted"]), 30),
                    count(&stats["installed"]),
                    count(&stats["targeted"]),
                    percent(&stats["coverage"]),
                    stats["stages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| count(&s["failed_devices"]))
                        .sum::<u64>(),
                );
                if interactive {
                    print!("\r\x1b[2K{line}");
                    std::io::stdout().flush().ok();
                } else {
                    println!("{line}");
                }
            }
        }
        match watch_outcome(&status) {
            Some(true) => {
                if interactive {
                    println!();
                }
                if format == Format::Table {
                    println!(
                        "release {id} is installed on every targeted device at its last stage"
                    );
                }
                return Ok(());
            }
            Some(false) => {
                if interactive {
                    println!();
                }
                bail!(
                    "release {id} is {}: {}",
                    cell(&status["state"]),
                    cell(&status["state_reason"])
                );
            }
            None => {}
        }
    }
    bail!("the cloud ended the live stream of release {id} (it is shutting down?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, stage: u64, targeted: u64, installed: u64) -> Value {
        json!({
            "id": "rel_1", "task": "t", "version": "2.0.0", "state": state, "state_reason": "",
            "stage": stage, "policy": {"stages": [10.0, 100.0]},
            "stats": {"targeted": targeted, "installed": installed, "coverage": 0.5,
                      "stages": [{"stage": 0, "percent": 10.0, "targeted": 1, "installed": 1}]},
            "actions": [{"action": "pause", "effect": "No device gets 2.0.0 any more", "devices": 1}]
        })
    }

    #[test]
    fn watch_ends_when_installed_at_the_last_stage_or_aborted() {
        assert_eq!(
            watch_outcome(&status("active", 0, 10, 10)),
            None,
            "not the last stage"
        );
        assert_eq!(watch_outcome(&status("active", 1, 10, 9)), None);
        assert_eq!(watch_outcome(&status("active", 1, 10, 10)), Some(true));
        assert_eq!(
            watch_outcome(&status("active", 1, 0, 0)),
            None,
            "nothing targeted yet"
        );
        assert_eq!(watch_outcome(&status("paused", 1, 10, 10)), None);
        assert_eq!(watch_outcome(&status("aborted", 0, 0, 0)), Some(false));
    }

    #[test]
    fn a_status_reads_as_sentences_a_stage_table_and_the_actions() {
        let text = describe(&status("active", 0, 10, 5));
        assert!(
            text.starts_with("release rel_1: t 2.0.0 — active at stage 1/2 (10%)"),
            "{text}"
        );
        assert!(text.contains("installed 5 of 10 targeted"), "{text}");
        assert!(text.contains("STAGE  PERCENT  TARGETED"), "{text}");
        assert!(
            text.contains("pause    No device gets 2.0.0 any more"),
            "{text}"
        );
    }
}
