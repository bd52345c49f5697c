//! `walle devices …` and `walle groups …`: the registered fleet and its named groups.

use clap::Subcommand;
use serde_json::{Value, json};

use super::GlobalArgs;
use super::output::{Format, Table, cell, print_json, time};
use super::task::show;
use crate::client::encode;

#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Search registered devices by id prefix and profile fields, a page at a time.
    Ls(Box<DeviceSearchArgs>),
    /// One device: profile, what it runs, groups, recent reports and failures.
    Show { id: String },
}

/// What `walle devices ls` searches for.
#[derive(clap::Args)]
pub struct DeviceSearchArgs {
    /// Devices whose id starts with this.
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    app_id: Option<String>,
    #[arg(long)]
    app_version: Option<String>,
    #[arg(long)]
    os: Option<String>,
    #[arg(long)]
    os_version: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    hardware_tier: Option<String>,
    #[arg(long)]
    region: Option<String>,
    /// Only members of this group.
    #[arg(long)]
    group: Option<String>,
    /// The next page: the device id the previous page ended with.
    #[arg(long)]
    after: Option<String>,
    /// At most this many (1-1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Subcommand)]
pub enum GroupsCommand {
    /// List the groups.
    Ls,
    /// One group: its members and the live releases that target it.
    Show { name: String },
    /// Create an empty group.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Add devices to a group.
    Add {
        name: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Remove devices from a group.
    Remove {
        name: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Delete a group (releases that target it must be finished first).
    Delete { name: String },
}

/// Runs a `walle devices` command.
pub async fn run_devices(command: DevicesCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = global.client()?;
    match command {
        DevicesCommand::Ls(search) => {
            let DeviceSearchArgs {
                id,
                app_id,
                app_version,
                os,
                os_version,
                model,
                hardware_tier,
                region,
                group,
                after,
                limit,
            } = *search;
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            let filters = [
                ("q", id),
                ("app_id", app_id),
                ("app_version", app_version),
                ("os", os),
                ("os_version", os_version),
                ("model", model),
                ("hardware_tier", hardware_tier),
                ("region", region),
                ("group", group),
                ("after", after),
            ];
            for (name, value) in filters {
                if let Some(value) = value {
                    query.append_pair(name, &value);
                }
            }
            let page = client.get(&format!("/devices?{}", query.finish())).await?;
            if global.format() == Format::Json {
                return print_json(&page);
            }
            let mut table = Table::new(&[
                "ID",
                "APP",
                "APP-VERSION",
                "OS",
                "MODEL",
                "TIER",
                "REGION",
                "ONLINE",
                "LAST-SEEN",
            ]);
            for d in page["devices"].as_array().into_iter().flatten() {
                let p = &d["profile"];
                table.row(vec![
                    cell(&d["id"]),
                    cell(&d["app_id"]),
                    cell(&p["app_version"]),
                    format!("{} {}", cell(&p["os"]), cell(&p["os_version"])),
                    cell(&p["model"]),
                    cell(&p["hardware_tier"]),
                    cell(&p["region"]),
                    if d["online"] == true { "yes" } else { "no" }.into(),
                    time(&d["last_seen_ms"]),
                ]);
            }
            println!("{}", table.render());
            if let Some(next) = page["next"].as_str() {
                println!("more: add --after {next}");
            }
            Ok(())
        }
        DevicesCommand::Show { id } => {
            let device = client.get(&format!("/devices/{}", encode(&id))).await?;
            if global.format() == Format::Json {
                return print_json(&device);
            }
            println!("{}", describe_device(&device));
            Ok(())
        }
    }
}

fn describe_device(device: &Value) -> String {
    let p = &device["profile"];
    let mut text = format!(
        "device {} ({}): app {} {}, {} {}, model {}, tier {}, region {}, tags {}\n\
         groups: {}\nlast seen {}\n\n",
        cell(&device["id"]),
        if device["online"] == true {
            "online"
        } else {
            "offline"
        },
        cell(&device["app_id"]),
        cell(&p["app_version"]),
        cell(&p["os"]),
        cell(&p["os_version"]),
        cell(&p["model"]),
        cell(&p["hardware_tier"]),
        cell(&p["region"]),
        cell(&p["tags"]),
        cell(&device["groups"]),
        time(&device["last_seen_ms"]),
    );
    let mut tasks = Table::new(&["TASK", "VERSION", "STATE", "UPDATED", "DETAIL"]);
    for t in device["tasks"].as_array().into_iter().flatten() {
        tasks.row(vec![
            cell(&t["task"]),
            cell(&t["version"]),
            cell(&t["state"]),
            time(&t["updated_at_ms"]),
            cell(&t["detail"]),
        ]);
    }
    text.push_str(&tasks.render());
    let failures = device["failures"].as_array().cloned().unwrap_or_default();
    if !failures.is_empty() {
        text.push_str("\n\nrecent failures:");
        for f in failures.iter().take(10) {
            text.push_str(&format!(
                "\n  {} {} {}@{} ({}): {}",
                time(&f["at_ms"]),
                cell(&f["kind"]),
                cell(&f["task"]),
                cell(&f["version"]),
                cell(&f["failure"]),
                cell(&f["detail"]).lines().next().unwrap_or("-"),
            ));
        }
    }
    text
}

/// Runs a `walle groups` command.
pub async fn run_groups(command: GroupsCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = global.client()?;
    let format = global.format();
    match command {
        GroupsCommand::Ls => {
            let groups = client.get("/groups").await?;
            show(
                format,
                &groups,
                &["NAME", "MEMBERS", "DESCRIPTION", "CREATED"],
                |g| {
                    vec![
                        cell(&g["name"]),
                        cell(&g["members"]),
                        cell(&g["description"]),
                        time(&g["created_at_ms"]),
                    ]
                },
            )
        }
        GroupsCommand::Show { name } => {
            let group = client.get(&format!("/groups/{}", encode(&name))).await?;
            if format == Format::Json {
                return print_json(&group);
            }
            println!(
                "group {} ({} members): {}\nmembers: {}",
                cell(&group["name"]),
                cell(&group["members"]),
                cell(&group["description"]),
                cell(&group["devices"])
            );
            let releases: Vec<String> = group["releases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{} ({} {}, {})",
                        cell(&r["id"]),
                        cell(&r["task"]),
                        cell(&r["version"]),
                        cell(&r["state"])
                    )
                })
                .collect();
            println!(
                "targeted by: {}",
                if releases.is_empty() {
                    "no live release".to_owned()
                } else {
                    releases.join(", ")
                }
            );
            Ok(())
        }
        GroupsCommand::Create { name, description } => {
            let group = client
                .post("/groups", json!({"name": name, "description": description}))
                .await?;
            done(format, &group, &format!("created group {name}"))
        }
        GroupsCommand::Add { name, devices } => {
            let path = format!("/groups/{}/members", encode(&name));
            let group = client.post(&path, json!({"add": devices})).await?;
            done(
                format,
                &group,
                &format!("group {name} has {} members", cell(&group["members"])),
            )
        }
        GroupsCommand::Remove { name, devices } => {
            let path = format!("/groups/{}/members", encode(&name));
            let group = client.post(&path, json!({"remove": devices})).await?;
            done(
                format,
                &group,
                &format!("group {name} has {} members", cell(&group["members"])),
            )
        }
        GroupsCommand::Delete { name } => {
            client.delete(&format!("/groups/{}", encode(&name))).await?;
            done(
                format,
                &json!({"deleted": name}),
                &format!("deleted group {name}"),
            )
        }
    }
}

fn done(format: Format, answer: &Value, message: &str) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(answer),
        Format::Table => {
            println!("{message}");
            Ok(())
        }
    }
}
