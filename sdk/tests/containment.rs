//! Hostile tasks on a real device, released by a real cloud: a task that abuses native code
//! costs a benign task beside it no run and no run time; one that keeps getting the task VM
//! stuck is quarantined, reported and still refused after a restart; and the `walle-device`
//! binary restarts itself when the VM has lost too many threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use walle_device::{Agent, AgentStatus, DeviceConfig, ProfileConfig};
use walle_engine::onnx::pb;
use walle_pipeline::{Event, EventKind};
use walle_sdk::demo::Fleet;

mod support;
use support::{Process, free_port, poll_json};

// As in the walle-device binary: each task's allocations count in its memory budget.
#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A task folder `name` whose handler is `script`, fired by an item-page visit, with `extra`
/// manifest lines and the given files beside it.
fn task(root: &Path, name: &str, script: &str, extra: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\nhandler = \"run\"\n{extra}\n\
         [[triggers]]\nname = \"visit\"\npartition_by = [\"session\"]\nsteps = [\n    {{ event = \"enter\", page = \"item\" }},\n    {{ event = \"exit\", page = \"item\" }},\n]\n"
    );
    std::fs::write(dir.join("walle.toml"), manifest).unwrap();
    std::fs::write(dir.join("main.py"), script).unwrap();
    for (file, bytes) in files {
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    dir
}

const BENIGN: &str = "def run(ctx):\n    return {'session': ctx['matched'][0]['session']}\n";

/// A model whose one node expands `x` to a shape the script passes in: asked for 16,000²
/// floats (1 GB), nothing can check the size before the allocation, the task's VM worker parks
/// at the task's hard memory cap, and the VM loses it.
fn memory_bomb() -> Vec<u8> {
    let tensor =
        |name: &str, dims: &[i64], elem_type: pb::tensor_proto::DataType| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: elem_type as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| pb::tensor_shape_proto::Dimension {
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "bomb".into(),
            node: vec![pb::NodeProto {
                op_type: "Expand".into(),
                name: "y".into(),
                input: vec!["x".into(), "shape".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![
                tensor("x", &[1], pb::tensor_proto::DataType::Float),
                tensor("shape", &[2], pb::tensor_proto::DataType::Int64),
            ],
            output: vec![pb::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

const BOMB_SCRIPT: &str = "import walle\n\ndef run(ctx):\n    shape = walle.tensor([16000, 16000], dtype='i64')\n    return walle.nn.load('bomb').run({'x': walle.tensor([1.0]), 'shape': shape})\n";

fn bomb_task(root: &Path) -> PathBuf {
    task(
        root,
        "bomb",
        BOMB_SCRIPT,
        "models = [\"bomb.onnx\"]\n[limits]\ndeadline_ms = 300",
        &[("bomb.onnx", &memory_bomb())],
    )
}

fn visit(session: &str) -> Vec<Event> {
    let event = |n: i64, kind: EventKind| Event {
        id: format!("{session}-{n}"),
        ts: 1_000_000 + n * 1000,
        session: session.into(),
        page: "item".into(),
        event: kind,
        item: "sku-1".into(),
        args: Default::default(),
    };
    vec![event(0, EventKind::Enter), event(1, EventKind::Exit)]
}

/// Starts a device with one VM worker (the tasks share it) that never rolls versions back (so
/// the hostile ones keep being run).
async fn device(fleet: &Fleet, data_dir: &Path) -> Agent {
    Agent::start(DeviceConfig {
        cloud_url: fleet.cloud.grpc_url(),
        data_dir: data_dir.to_owned(),
        ingest_addr: None,
        vm_threads: 1,
        rollback_after_failures: 0,
        profile: ProfileConfig {
            device_id: "hostile-host".into(),
            ..walle_device::config::default_profile()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn release(fleet: &Fleet, dir: &Path, task: &str) -> String {
    fleet.publish(dir).await.unwrap();
    let release = fleet.client.create_release(task, "1.0.0").await.unwrap();
    release["id"].as_str().unwrap().to_owned()
}

/// The release's run statistics once `accept` takes them.
async fn runs_of(
    fleet: &Fleet,
    release_id: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = fleet.client.release_status(release_id).await.unwrap();
        let runs = status["stats"]["runs"].clone();
        if accept(&runs) {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "release {release_id}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn task_status<'a>(status: &'a AgentStatus, task: &str) -> &'a walle_device::TaskStatus {
    status
        .installed
        .iter()
        .find(|t| t.task == task)
        .unwrap_or_else(|| panic!("{task} is not installed: {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_abusing_native_code_costs_its_neighbour_no_run_and_no_run_time() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 0).await.unwrap();
    let benign = release(
        &fleet,
        &task(root.path(), "benign", BENIGN, "", &[]),
        "benign",
    )
    .await;
    let looping = "def run(ctx):\n    return sum(range(10**15))\n";
    let hostile_dir = task(
        root.path(),
        "hostile",
        looping,
        "[limits]\ndeadline_ms = 1000",
        &[],
    );
    let hostile = release(&fleet, &hostile_dir, "hostile").await;
    let agent = device(&fleet, &root.path().join("device")).await;
    agent
        .wait_for(TIMEOUT, |s| s.installed.len() == 2)
        .await
        .unwrap();
    for n in 0..5 {
        for event in visit(&format!("s{n}")) {
            agent.track(event).unwrap();
        }
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    assert_eq!(task_status(&status, "benign").runs.ok, 5, "{status:?}");
    assert_eq!(task_status(&status, "hostile").runs.failed, 5, "{status:?}");
    assert_eq!(status.vm.workers_abandoned, 0, "{status:?}");
    // At the cloud: the neighbour's durations are its own (microseconds of work, not the
    // second it waited behind the loop), and the waiting is reported apart.
    let runs = runs_of(&fleet, &benign, |r| r["duration_p99_ms"].is_i64()).await;
    assert!(runs["duration_p99_ms"].as_i64().unwrap() < 500, "{runs}");
    assert!(runs["queued_p99_ms"].as_i64().unwrap() >= 500, "{runs}");
    let runs = runs_of(&fleet, &hostile, |r| r["failures_by_kind"]["deadline"] == 5).await;
    assert!(runs["duration_p99_ms"].is_null(), "{runs}");
    agent.shutdown().await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_module_code_runs_to_its_deadline_holds_up_no_other_install() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 0).await.unwrap();
    // Named and released first, so a device installing one at a time would take it first.
    let slow_import = "x = sum(range(10**15))\n\ndef run(ctx):\n    return x\n";
    let dir = task(
        root.path(),
        "a-slow-import",
        slow_import,
        "[limits]\ndeadline_ms = 15000",
        &[],
    );
    release(&fleet, &dir, "a-slow-import").await;
    release(
        &fleet,
        &task(root.path(), "z-benign", BENIGN, "", &[]),
        "z-benign",
    )
    .await;
    let agent = Agent::start(DeviceConfig {
        cloud_url: fleet.cloud.grpc_url(),
        data_dir: root.path().join("device"),
        ingest_addr: None,
        vm_threads: 2,
        profile: ProfileConfig {
            device_id: "installer".into(),
            ..walle_device::config::default_profile()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    // Well before the slow import's 15 s are up, the other task is installed and runs.
    agent
        .wait_for(Duration::from_secs(10), |s| {
            s.installed.iter().any(|t| t.task == "z-benign")
        })
        .await
        .unwrap();
    for event in visit("s1") {
        agent.track(event).unwrap();
    }
    agent
        .wait_for(Duration::from_secs(10), |s| {
            s.installed
                .iter()
                .any(|t| t.task == "z-benign" && t.runs.ok == 1)
        })
        .await
        .unwrap();
    assert!(
        !agent
            .status()
            .installed
            .iter()
            .any(|t| t.task == "a-slow-import")
    );
    // (The slow import's load ends at its deadline; the runtime waits for it at the end.)
    drop(agent);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_getting_the_vm_stuck_is_quarantined_reported_and_refused_after_a_restart()
 {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 0).await.unwrap();
    release(
        &fleet,
        &task(root.path(), "benign", BENIGN, "", &[]),
        "benign",
    )
    .await;
    let bomb = release(&fleet, &bomb_task(root.path()), "bomb").await;
    let data_dir = root.path().join("device");
    let agent = device(&fleet, &data_dir).await;
    agent
        .wait_for(TIMEOUT, |s| s.installed.len() == 2)
        .await
        .unwrap();
    for n in 0..3 {
        for event in visit(&format!("s{n}")) {
            agent.track(event).unwrap();
        }
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    assert_eq!(task_status(&status, "benign").runs.ok, 3, "{status:?}");
    let bomb_runs = &task_status(&status, "bomb").runs;
    assert_eq!(bomb_runs.failed, 2, "{status:?}");
    assert!(
        status.vm.quarantined["bomb@1.0.0"].contains("stuck 2 times"),
        "{status:?}"
    );
    assert_eq!(status.vm.runs_refused, 1, "{status:?}");
    // Two parked threads are the default threshold: the agent asks to be restarted.
    assert_eq!(status.vm.lost_threads, 2, "{status:?}");
    assert!(
        agent
            .restart_requested()
            .is_some_and(|reason| reason.contains("lost 2 worker thread")),
        "{status:?}"
    );
    let runs = runs_of(&fleet, &bomb, |r| r["failures_by_kind"]["quarantined"] == 1).await;
    assert_eq!(runs["failures_by_kind"]["memory"], 2, "{runs}");
    agent.shutdown().await;

    // Started again on its data: the quarantine holds, nothing is lost, the neighbour runs.
    let agent = device(&fleet, &data_dir).await;
    agent
        .wait_for(TIMEOUT, |s| s.installed.iter().any(|t| t.task == "benign"))
        .await
        .unwrap();
    for event in visit("after-restart") {
        agent.track(event).unwrap();
    }
    let status = agent.flush(TIMEOUT).await.unwrap();
    assert!(
        status.vm.quarantined.contains_key("bomb@1.0.0"),
        "{status:?}"
    );
    assert_eq!(
        (status.vm.lost_threads, status.vm.workers_abandoned),
        (0, 0),
        "{status:?}"
    );
    assert_eq!(task_status(&status, "benign").runs.ok, 1, "{status:?}");
    assert!(
        !status
            .installed
            .iter()
            .any(|t| t.task == "bomb" && t.runs.ok + t.runs.failed > 0)
    );
    assert!(agent.restart_requested().is_none());
    agent.shutdown().await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_binary_restarts_itself_when_its_vm_has_lost_too_many_threads() {
    let root = tempfile::tempdir().unwrap();
    let (cloud_dir, device_dir) = (root.path().join("cloud"), root.path().join("device"));
    let (http_addr, grpc_addr, ingest_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let cloud_args = [
        "serve",
        "--data-dir",
        cloud_dir.to_str().unwrap(),
        "--http-addr",
        &http_addr,
        "--grpc-addr",
        &grpc_addr,
    ];
    let _cloud = Process::start(
        "walle-cloud",
        &cloud_args,
        None,
        &root.path().join("cloud.log"),
    );
    let http_url = format!("http://{http_addr}");
    poll_json(&format!("{http_url}/v1/health"), "the cloud", |_| true).await;
    let token = std::fs::read_to_string(cloud_dir.join("admin.token")).unwrap();
    let client = walle_sdk::client::ControlClient::new(&http_url, token.trim());
    for dir in [
        task(root.path(), "benign", BENIGN, "", &[]),
        bomb_task(root.path()),
    ] {
        let (manifest, bundle) = walle_proto::bundle::pack_dir(&dir).unwrap();
        client.ensure_task(&manifest.name, "").await.unwrap();
        client.upload_version(&manifest.name, bundle).await.unwrap();
        client
            .create_release(&manifest.name, "1.0.0")
            .await
            .unwrap();
    }
    // One VM worker, no rollback: the bomb is run until the VM quarantines it.
    let config = root.path().join("device.toml");
    std::fs::write(&config, "vm_threads = 1\nrollback_after_failures = 0\n").unwrap();
    let cloud_url = format!("http://{grpc_addr}");
    let device_args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--cloud",
        &cloud_url,
        "--data-dir",
        device_dir.to_str().unwrap(),
        "--device-id",
        "restarter",
        "--ingest-addr",
        &ingest_addr,
    ];
    let device_log = root.path().join("device.log");
    let mut device = Process::start("walle-device", &device_args, None, &device_log);
    let status_url = format!("http://{ingest_addr}/v1/status");
    let ingest = format!("http://{ingest_addr}/v1/events");
    poll_json(&status_url, "both tasks installed", |s| {
        s["installed"].as_array().is_some_and(|t| t.len() == 2)
    })
    .await;
    let visits = |sessions: &[&str]| -> String {
        let lines: Vec<String> = sessions
            .iter()
            .flat_map(|s| visit(s))
            .map(|e| serde_json::to_string(&e).unwrap())
            .collect();
        lines.join("\n")
    };
    let http = reqwest::Client::new();
    http.post(&ingest)
        .body(visits(&["a", "b", "c"]))
        .send()
        .await
        .unwrap();

    // Two parked workers later the agent asks for a restart, and the binary replaces itself
    // (the same process, a fresh image): nothing lost any more, the bomb still refused.
    let errors = device_log.with_extension("err");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&errors)
        .unwrap_or_default()
        .contains("walle-device: restarting: the task VM lost 2 worker thread")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no restart:\n{}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = poll_json(&status_url, "the restarted device", |s| {
        s["vm"]["quarantined"]["bomb@1.0.0"].is_string()
            && s["vm"]["workers_abandoned"] == 0
            && s["installed"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["task"] == "benign"))
    })
    .await;
    assert_eq!(status["vm"]["lost_threads"], 0, "{status}");
    assert!(
        device.child.try_wait().unwrap().is_none(),
        "the device exited"
    );
    http.post(&ingest)
        .body(visits(&["d"]))
        .send()
        .await
        .unwrap();
    poll_json(
        &status_url,
        "the benign task's run after the restart",
        |s| s["runs_ok"].as_u64() >= Some(1),
    )
    .await;
}
