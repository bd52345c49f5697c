//! The `walle` binary against a live cloud and real devices, as an operator types it: login and
//! profiles, publish, preview with its salt, create, the release verbs, watch, devices, groups,
//! records, completion, and the errors a mistake gets.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use support::binary;
use walle_sdk::demo::Fleet;

struct Walle {
    config: PathBuf,
}

impl Walle {
    /// Runs `walle ARGS` with its own profiles file and no cloud in the environment.
    async fn run(&self, args: &[&str]) -> Output {
        let mut command = std::process::Command::new(binary("walle"));
        command
            .args(args)
            .env("WALLE_CONFIG", &self.config)
            .env("RUST_BACKTRACE", "1")
            .env_remove("WALLE_CLOUD")
            .env_remove("WALLE_TOKEN")
            .env_remove("WALLE_PROFILE")
            .stdin(std::process::Stdio::null());
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs a command that must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "walle {args:?} failed:\n{stderr}\n{stdout}"
        );
        stdout
    }

    /// Runs a command that must fail; its standard error, checked to be one report.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = texts(&out);
        assert!(!out.status.success(), "walle {args:?} succeeded:\n{stdout}");
        let reports = stderr.lines().filter(|l| l.starts_with("error: ")).count();
        assert_eq!(reports, 1, "one error report, not {reports}: {stderr}");
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("Caused by"),
            "{stderr}"
        );
        stderr
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&args).await).unwrap()
    }
}

/// The lines a child process writes to `stream`, as they come, through a reader thread.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            let _ = said.send(line);
        }
    });
    heard
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/ipv-feature")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_steers_the_control_plane_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 2).await.unwrap();
    let cloud = fleet.cloud.http_url();
    let token = fleet.cloud.admin_token.clone();
    let walle = Walle {
        config: root.path().join("walle").join("config.toml"),
    };

    // Before login: what to do next, once.
    let error = walle.fails(&["release", "ls"]).await;
    assert!(
        error.contains("walle login --cloud URL --token TOKEN"),
        "{error}"
    );
    let error = walle
        .fails(&["login", "--cloud", &cloud, "--token", "wrong"])
        .await;
    assert!(
        error.contains("HTTP 401") && error.contains("hint: the cloud refused the token"),
        "{error}"
    );
    let said = walle
        .ok(&[
            "login",
            "--cloud",
            &cloud,
            "--token",
            &token,
            "--profile",
            "local",
        ])
        .await;
    assert!(
        said.contains("as admin") && said.contains("profile \"local\""),
        "{said}"
    );
    assert!(walle.ok(&["profiles"]).await.contains(&cloud));

    let published = walle
        .ok(&["task", "publish", example().to_str().unwrap()])
        .await;
    assert!(
        published.starts_with("published ipv-feature 1.0.0"),
        "{published}"
    );
    assert!(walle.ok(&["task", "ls"]).await.contains("ipv-feature"));
    let versions = walle.json(&["task", "versions", "ipv-feature"]).await;
    assert_eq!(versions[0]["version"], "1.0.0", "{versions}");

    let policy = root.path().join("policy.json");
    std::fs::write(&policy, r#"{"stages": [50, 100]}"#).unwrap();
    let policy = policy.to_str().unwrap();
    let table = walle
        .ok(&[
            "release",
            "preview",
            "--task",
            "ipv-feature",
            "--version",
            "1.0.0",
            "--policy",
            policy,
        ])
        .await;
    assert!(table.starts_with("STAGE  PERCENT"), "{table}");
    let salt = table
        .split("--salt ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no salt in {table}"))
        .to_owned();
    let created = walle
        .json(&[
            "release",
            "create",
            "--task",
            "ipv-feature",
            "--version",
            "1.0.0",
            "--policy",
            policy,
            "--salt",
            &salt,
        ])
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    // The release takes the devices the (first) preview showed at its first stage.
    let first_preview: u64 = table
        .lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let status = walle.json(&["release", "status", &id]).await;
    assert_eq!(
        status["stats"]["targeted"].as_u64(),
        Some(first_preview),
        "{status} vs {table}"
    );

    let listed = walle.ok(&["release", "ls", "--task", "ipv-feature"]).await;
    assert!(
        listed.contains(&id) && listed.contains("1/2 (50%)"),
        "{listed}"
    );
    let paused = walle.ok(&["release", "pause", &id]).await;
    assert!(paused.contains("is now paused"), "{paused}");
    let error = walle.fails(&["release", "pause", &id]).await;
    assert!(
        error.contains("cannot pause now (it can: resume, abort, rollback)"),
        "{error}"
    );
    walle.ok(&["release", "resume", &id]).await;
    let advanced = walle.ok(&["release", "advance", &id]).await;
    assert!(
        advanced.contains("Moves to stage 2 of 2 (100%)"),
        "{advanced}"
    );
    let watched = walle.ok(&["release", "watch", &id]).await;
    assert!(watched.contains("2/2 installed"), "{watched}");
    assert!(
        watched.contains("installed on every targeted device"),
        "{watched}"
    );
    let status = walle.ok(&["release", "status", &id]).await;
    assert!(status.contains("installed 2 of 2 targeted"), "{status}");

    let devices = walle.json(&["devices", "ls"]).await;
    let device = devices["devices"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2, "{devices}");
    let shown = walle.ok(&["devices", "show", &device]).await;
    assert!(shown.contains("ipv-feature  1.0.0    installed"), "{shown}");

    walle
        .ok(&["groups", "create", "beta", "--description", "testers"])
        .await;
    let added = walle.ok(&["groups", "add", "beta", &device]).await;
    assert!(added.contains("group beta has 1 members"), "{added}");
    let group = walle.ok(&["groups", "show", "beta"]).await;
    assert!(
        group.contains(&device) && group.contains("no live release"),
        "{group}"
    );
    walle.ok(&["groups", "remove", "beta", &device]).await;
    walle.ok(&["groups", "delete", "beta"]).await;
    let error = walle.fails(&["groups", "show", "beta"]).await;
    assert!(error.contains("HTTP 404"), "{error}");

    // Records: a device sends some, `ls` lists them and `tail` follows new ones.
    let agent = &fleet.agents[0];
    let visit = |seed| walle_sdk::events::synthetic_stream(seed, 1, 1_000_000).0;
    for event in visit(7) {
        agent.track(event).unwrap();
    }
    agent
        .flush(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let records = walle
        .json(&["records", "ls", "--task", "ipv-feature"])
        .await;
    assert!(
        records.as_array().is_some_and(|r| !r.is_empty()),
        "{records}"
    );
    let mut tail = std::process::Command::new(binary("walle"))
        .args([
            "records",
            "tail",
            "--task",
            "ipv-feature",
            "-n",
            "1",
            "--interval",
            "0.2",
            "--output",
            "json",
        ])
        .env("WALLE_CONFIG", &walle.config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let heard = lines_of(stdout);
    let next_record = || {
        let line = heard
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("walle records tail printed nothing");
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let newest = next_record();
    assert_eq!(
        newest, records[0],
        "tail -n 1 starts with the newest record"
    );
    for event in visit(8) {
        agent.track(event).unwrap();
    }
    agent
        .flush(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let arrived = next_record();
    assert_eq!(arrived["task"], "ipv-feature", "{arrived}");
    assert_ne!(arrived["id"], newest["id"]);
    tail.kill().unwrap();
    tail.wait().unwrap();
    let completion = walle.ok(&["completion", "bash"]).await;
    assert!(
        completion.contains("walle__release") || completion.contains("release"),
        "{completion}"
    );

    // Abort asks first; without a terminal it needs --yes.
    let error = walle.fails(&["release", "abort", &id]).await;
    assert!(
        error.contains("add --yes to confirm") && error.contains("The release stops for good"),
        "{error}"
    );
    let aborted = walle.ok(&["release", "abort", &id, "--yes"]).await;
    assert!(aborted.contains("is now aborted"), "{aborted}");
    let error = walle.fails(&["release", "watch", &id]).await;
    assert!(error.contains("is aborted: aborted by operator"), "{error}");

    walle.ok(&["logout", "local"]).await;
    let error = walle.fails(&["task", "ls"]).await;
    assert!(error.contains("walle login"), "{error}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_author_starts_validates_and_tests_a_task_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let walle = Walle {
        config: root.path().join("config.toml"),
    };
    let dir = root.path().join("hello");
    let dir_text = dir.to_str().unwrap().to_owned();
    let events = dir.join("events.jsonl");
    let events_text = events.to_str().unwrap().to_owned();
    let created = walle.ok(&["task", "init", &dir_text]).await;
    assert!(created.contains("next: walle task test"), "{created}");
    let valid = walle.ok(&["task", "validate", &dir_text]).await;
    assert!(valid.starts_with("hello 0.1.0 is valid"), "{valid}");
    let expected = dir.join("expected.jsonl");
    let shown = walle
        .ok(&[
            "task",
            "test",
            &dir_text,
            "--events",
            &events_text,
            "--expect",
            expected.to_str().unwrap(),
        ])
        .await;
    assert!(
        shown.contains("run 1: item-page-view (2 matched, 3 in window)"),
        "{shown}"
    );
    assert!(
        shown.contains("  features {\"clicks\":1,\"dwell_ms\":3000}"),
        "{shown}"
    );
    let report = walle
        .json(&["task", "test", &dir_text, "--events", &events_text])
        .await;
    assert_eq!(
        report["firings"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert!(report["firings"][0]["run_ms"].is_number(), "{report}");

    // A refused event line fails the test unless allowed.
    let mut lines = std::fs::read_to_string(&events).unwrap();
    lines.push_str("not an event\n");
    let broken_events = root.path().join("broken.jsonl");
    std::fs::write(&broken_events, lines).unwrap();
    let broken = broken_events.to_str().unwrap();
    let error = walle
        .fails(&["task", "test", &dir_text, "--events", broken])
        .await;
    assert!(error.contains("1 of 9 event lines were refused"), "{error}");
    walle
        .ok(&[
            "task",
            "test",
            &dir_text,
            "--events",
            broken,
            "--allow-rejected",
        ])
        .await;

    // A syntax error is refused by validate, test and pack, with where it is.
    let script = dir.join("main.py");
    let good_script = std::fs::read_to_string(&script).unwrap();
    std::fs::write(
        &script,
        good_script.replace(
            "def run(ctx: \"walle.Context\") -> \"walle.JsonLike\":",
            "def run(ctx)",
        ),
    )
    .unwrap();
    for args in [
        vec!["task", "validate", dir_text.as_str()],
        vec!["task", "pack", dir_text.as_str(), "--out", "/dev/null"],
        vec![
            "task",
            "test",
            dir_text.as_str(),
            "--events",
            events_text.as_str(),
        ],
    ] {
        let error = walle.fails(&args).await;
        assert!(
            error.contains("main.py:") && error.contains("    def run(ctx)\n"),
            "{args:?}: {error}"
        );
    }

    // --watch runs again when a file changes.
    let mut watcher = std::process::Command::new(binary("walle"))
        .args([
            "task",
            "test",
            &dir_text,
            "--events",
            &events_text,
            "--watch",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = watcher.stderr.take().unwrap();
    let heard = lines_of(stderr);
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut lines = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(line) = heard.recv_timeout(std::time::Duration::from_millis(200)) {
                let found = line.contains(needle);
                lines.push(line);
                if found {
                    return;
                }
            }
        }
        panic!("no {needle:?} from walle task test --watch: {lines:?}");
    };
    wait_for("Expected `:`");
    std::fs::write(&script, &good_script).unwrap();
    wait_for("--- changed; running again ---");
    wait_for("passed; watching");
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_author_times_a_task_against_its_limits_and_a_gate() {
    let root = tempfile::tempdir().unwrap();
    let walle = Walle {
        config: root.path().join("config.toml"),
    };
    let dir = root.path().join("timed");
    let dir_text = dir.to_str().unwrap().to_owned();
    walle.ok(&["task", "init", &dir_text]).await;
    let events = dir.join("events.jsonl");
    let events = events.to_str().unwrap();
    let report = walle
        .json(&[
            "task", "bench", &dir_text, "--events", events, "--runs", "50",
        ])
        .await;
    assert_eq!(
        (report["runs"].as_u64(), report["firings"].as_u64()),
        (Some(50), Some(2)),
        "{report}"
    );
    let (p50, p99) = (
        report["p50_ms"].as_f64().unwrap(),
        report["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{report}");
    assert_eq!(
        report["deadline_ms"], 200,
        "the manifest's deadline: {report}"
    );
    assert_eq!(report["memory_limit_bytes"], 16_777_216, "{report}");
    assert!(
        report["peak_memory_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    let table = walle
        .ok(&[
            "task", "bench", &dir_text, "--events", events, "--runs", "20",
        ])
        .await;
    assert!(
        table.contains("run time  p50") && table.contains("of 16.0 MiB"),
        "{table}"
    );
    // A gate no run can meet fails the bench.
    let policy = root.path().join("strict.json");
    std::fs::write(&policy, r#"{"gate": {"max_run_p99_ms": 0.0001}}"#).unwrap();
    let error = walle
        .fails(&[
            "task",
            "bench",
            &dir_text,
            "--events",
            events,
            "--runs",
            "20",
            "--policy",
            policy.to_str().unwrap(),
        ])
        .await;
    assert!(
        error.contains("is over the gate's max_run_p99_ms"),
        "{error}"
    );
}
