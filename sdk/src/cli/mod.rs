//! The `walle` command line: its arguments, where it finds the cloud, and how it reports.
//!
//! - [`task`]: the author's loop — pack, test locally, publish, list tasks and versions;
//! - [`init`]: `walle task init`, a new task folder with its test and the module's stubs;
//! - [`release`]: releases — list, preview, create, status, the operator verbs, watch;
//! - [`fleet`]: devices and device groups;
//! - [`simulate`]: `walle fleet simulate`, a simulated fleet against a real cloud;
//! - [`records`]: what tasks uploaded through the tunnel;
//! - [`profile`]: `walle login` and the saved profiles;
//! - [`output`]: tables for people, JSON (`--output json`) for scripts.
//!
//! Errors print once, on one line per cause, with what to do next; no backtrace.

pub mod fleet;
pub mod init;
pub mod output;
pub mod profile;
pub mod records;
pub mod release;
pub mod simulate;
pub mod task;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};

use crate::client::{ClientError, ControlClient};
use crate::demo;
use output::Format;
use profile::Config;

/// The `walle` command line.
#[derive(Parser)]
#[command(
    name = "walle",
    version,
    about = "Walle: write, test, publish and release on-device ML tasks",
    after_help = "Start with `walle task init NAME`, or `walle demo` to see a cloud and devices at work."
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(clap::Args, Clone)]
pub struct GlobalArgs {
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Saved profile to use (see `walle login`) [default: the last one logged in to].
    #[arg(long, global = true, env = "WALLE_PROFILE")]
    profile: Option<String>,
    /// Control-plane URL of the cloud (overrides the profile).
    #[arg(long, global = true, env = "WALLE_CLOUD")]
    cloud: Option<String>,
    /// Operator token (overrides the profile).
    #[arg(long, global = true, env = "WALLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate to trust for an https:// cloud (overrides the profile).
    #[arg(long, global = true, env = "WALLE_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl GlobalArgs {
    /// A client for the cloud the flags, the environment or the profile name.
    pub fn client(&self) -> anyhow::Result<ControlClient> {
        let saved = match (&self.cloud, &self.token) {
            (Some(cloud), Some(token)) => profile::Profile {
                cloud: cloud.clone(),
                token: token.clone(),
                ca_cert: self.ca_cert.clone(),
            },
            _ => {
                let path = profile::config_path()?;
                let config = Config::load(&path)?;
                let mut saved = config.pick(self.profile.as_deref(), &path)?.clone();
                if let Some(cloud) = &self.cloud {
                    saved.cloud = cloud.clone();
                }
                if let Some(token) = &self.token {
                    saved.token = token.clone();
                }
                if self.ca_cert.is_some() {
                    saved.ca_cert = self.ca_cert.clone();
                }
                saved
            }
        };
        saved.client()
    }

    /// The chosen output format.
    pub fn format(&self) -> Format {
        self.output
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write, test and publish tasks.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Release task versions to the fleet and steer them.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Registered devices.
    #[command(subcommand)]
    Devices(fleet::DevicesCommand),
    /// Named device groups that releases can target.
    #[command(subcommand)]
    Groups(fleet::GroupsCommand),
    /// Simulated device fleets, for scale and fault tests of a cloud.
    #[command(subcommand)]
    Fleet(simulate::FleetCommand),
    /// Read what tasks uploaded through the tunnel.
    #[command(subcommand)]
    Records(records::RecordsCommand),
    /// Save a cloud and a token as a profile: `walle login --cloud URL --token TOKEN`.
    ///
    /// The token is checked against the cloud first. `--profile NAME` names the profile
    /// (default "default"), `--ca-cert FILE` trusts a certificate; later commands use the
    /// profile logged in to last unless --profile names another.
    Login,
    /// Forget a saved profile.
    Logout {
        /// The profile [default: the default one].
        name: Option<String>,
    },
    /// List the saved profiles.
    Profiles,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `walle completion bash > ~/.local/share/bash-completion/completions/walle`;
    /// zsh: `walle completion zsh > "${fpath[1]}/_walle"`; fish:
    /// `walle completion fish > ~/.config/fish/completions/walle.fish`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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

/// Parses the command line, runs the command and reports an error once; the process's exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", report(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error as the user reads it: what failed and why on one line, then what to do next.
pub fn report(error: &anyhow::Error) -> String {
    // Causes joined by ": ", each once (some errors repeat their source in their own message).
    let mut text = "error: ".to_owned();
    for (at, cause) in error.chain().enumerate() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if at > 0 {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    if let Some(hint) = hint(error) {
        text.push_str("\nhint: ");
        text.push_str(&hint);
    }
    text
}

fn hint(error: &anyhow::Error) -> Option<String> {
    let client = error
        .chain()
        .find_map(|e| e.downcast_ref::<ClientError>())?;
    match client {
        ClientError::Unreachable { url, .. } => Some(format!(
            "is the cloud running at {url}? Check --cloud or the profile (`walle profiles`)."
        )),
        ClientError::Api { status: 401, .. } => Some(
            "the cloud refused the token: `walle login --cloud URL --token TOKEN` saves a valid one."
                .into(),
        ),
        ClientError::Api { status: 403, .. } => Some(
            "this token's role may not do that: ask an admin for a token with a higher role.".into(),
        ),
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Task(command) => task::run(command, &global).await,
        Command::Release(command) => release::run(command, &global).await,
        Command::Devices(command) => fleet::run_devices(command, &global).await,
        Command::Groups(command) => fleet::run_groups(command, &global).await,
        Command::Records(command) => records::run(command, &global).await,
        Command::Fleet(command) => simulate::run(command, &global).await,
        Command::Login => login(&global).await,
        Command::Logout { name } => logout(name),
        Command::Profiles => profiles(global.format()),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "walle", &mut std::io::stdout());
            Ok(())
        }
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

async fn login(global: &GlobalArgs) -> anyhow::Result<()> {
    let (Some(cloud), Some(token)) = (&global.cloud, &global.token) else {
        bail!(
            "`walle login` needs --cloud URL and --token TOKEN (the operator token; `walle-cloud serve` keeps the admin token in <data-dir>/admin.token)"
        );
    };
    let name = global
        .profile
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let saved = profile::Profile {
        cloud: cloud.trim_end_matches('/').to_owned(),
        token: token.clone(),
        ca_cert: global
            .ca_cert
            .as_ref()
            .map(|path| {
                std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
            })
            .transpose()?,
    };
    let me = saved
        .client()?
        .get("/me")
        .await
        .with_context(|| format!("checking the token against {}", saved.cloud))?;
    let path = profile::config_path()?;
    let mut config = Config::load(&path)?;
    config.profiles.insert(name.clone(), saved.clone());
    config.default = Some(name.clone());
    config.save(&path)?;
    println!(
        "Logged in to {} as {} (profile {name:?}, saved in {}).",
        saved.cloud,
        output::cell(&me["role"]),
        path.display()
    );
    Ok(())
}

fn logout(name: Option<String>) -> anyhow::Result<()> {
    let path = profile::config_path()?;
    let mut config = Config::load(&path)?;
    let Some(name) = name.or_else(|| config.default.clone()) else {
        bail!("no profile to log out of ({} has none)", path.display());
    };
    if config.profiles.remove(&name).is_none() {
        bail!("no profile {name:?} in {}", path.display());
    }
    if config.default.as_deref() == Some(name.as_str()) {
        config.default = config.profiles.keys().next().cloned();
    }
    config.save(&path)?;
    println!("Logged out of profile {name:?}.");
    Ok(())
}

fn profiles(format: Format) -> anyhow::Result<()> {
    let path = profile::config_path()?;
    let config = Config::load(&path)?;
    if format == Format::Json {
        let listed: Vec<serde_json::Value> = config
            .profiles
            .iter()
            .map(|(name, p)| {
                serde_json::json!({
                    "name": name,
                    "cloud": p.cloud,
                    "ca_cert": p.ca_cert,
                    "default": config.default.as_deref() == Some(name.as_str()),
                })
            })
            .collect();
        return output::print_json(&serde_json::Value::Array(listed));
    }
    let mut table = output::Table::new(&["PROFILE", "CLOUD", "DEFAULT"]);
    for (name, p) in &config.profiles {
        let default = config.default.as_deref() == Some(name.as_str());
        table.row(vec![
            name.clone(),
            p.cloud.clone(),
            if default { "*" } else { "" }.into(),
        ]);
    }
    println!("{}", table.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_gives_each_cause_once_and_a_hint() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io).context("reading policy.json");
        assert_eq!(report(&error), "error: reading policy.json: no such file");
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {source}")]
        struct Repeats {
            source: std::io::Error,
        }
        let repeated = anyhow::Error::new(Repeats {
            source: std::io::Error::other("inner"),
        });
        assert_eq!(report(&repeated), "error: outer: inner");
        let refused = anyhow::Error::new(ClientError::Api {
            method: "GET",
            path: "/me".into(),
            status: 401,
            message: "bad token".into(),
        });
        let text = report(&refused);
        assert!(
            text.starts_with("error: GET /me failed with HTTP 401: bad token\nhint: "),
            "{text}"
        );
    }
}
