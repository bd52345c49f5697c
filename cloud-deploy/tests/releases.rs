//! Release policies over real gRPC and HTTP, with simulated devices: targeting (late joiners,
//! profile changes), sticky stages, priority, customised versions, health-gated auto-advance,
//! auto-abort with rollback, gating and aborting on run latency, operator actions and preview.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;
use walle_cloud::release::policy::bucket;
mod common;

use common::Backend;
use walle_cloud::Cloud;
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::{
    DeviceProfile, FetchBundleRequest, InstalledTask, RegisterRequest, ReportRequest,
    SubscribeRequest, SyncRequest, TaskEvent, desired_task, notice, task_event,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A cloud whose controller and pace window are fast enough for tests.
async fn start(backend: &Backend, dir: &Path) -> Cloud {
    start_with(backend, dir, |_| {}).await
}

async fn start_with(
    backend: &Backend,
    dir: &Path,
    configure: impl FnOnce(&mut walle_cloud::CloudConfig),
) -> Cloud {
    backend
        .start(dir, |c| {
            c.controller_interval_ms = 30;
            c.coverage_sample_ms = 30;
            c.pace_window_ms = 0;
            configure(c);
        })
        .await
}

/// The control plane as an operator uses it.
struct Operator {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Operator {
    fn new(cloud: &Cloud) -> Operator {
        Operator {
            base: cloud.http_url(),
            token: cloud.admin_token.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.http.post(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.bearer_auth(&self.token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates task `t` (once) and uploads `version`.
    async fn publish(&self, root: &Path, version: &str) {
        self.call("POST", "/v1/tasks", Some(json!({"name": "t"})))
            .await;
        let dir = root.join(format!("t-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("walle.toml"),
            format!(
                "name = \"t\"\nversion = \"{version}\"\nruntime = \"python\"\nentry = \"main.py\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("main.py"), "def run(ctx):\n    return None\n").unwrap();
        let bytes = walle_proto::bundle::pack_dir(&dir).unwrap().1;
        let response = self
            .http
            .post(format!("{}/v1/tasks/t/versions", self.base))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            201,
            "{}",
            response.text().await.unwrap()
        );
    }

    async fn release(&self, version: &str, policy: Value) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/v1/releases",
                Some(json!({"task": "t", "version": version, "policy": policy})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// The first `status` event of a release's live stream.
    async fn first_live_event(&self, id: &str) -> Value {
        let mut response = self
            .http
            .get(format!("{}/v1/releases/{id}/live", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{response:?}"
        );
        let mut text = String::new();
        while !text.contains("\n\n") {
            let chunk = tokio::time::timeout(TIMEOUT, response.chunk())
                .await
                .expect("the live stream sent nothing")
                .unwrap()
                .expect("the live stream ended");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        let event = text.split("\n\n").next().unwrap();
        assert!(event.starts_with("event: status\n"), "{event}");
        let data: String = event
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .collect();
        serde_json::from_str(&data).unwrap()
    }

    async fn status(&self, id: &str) -> Value {
        self.call("GET", &format!("/v1/releases/{id}"), None)
            .await
            .1
    }

    /// Polls the release until `condition` holds.
    async fn wait_release(&self, id: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let status = self.status(id).await;
            if condition(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "release never reached the condition: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A device simulated with a raw gRPC client: it syncs, "installs" what it is told and reports.
struct SimDevice {
    token: AsciiMetadataValue,
    client: DevicePlaneClient<tonic::transport::Channel>,
    profile: DeviceProfile,
    installed: Option<(String, String)>,
    /// Bundle digest of the version last handed by Sync.
    desired_digest: String,
    /// Run events reported so far, for unique event ids.
    runs_reported: u64,
}

impl SimDevice {
    async fn register(cloud: &Cloud, id: &str, tier: &str) -> SimDevice {
        let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
        let profile = DeviceProfile {
            device_id: id.into(),
            app_id: "shop".into(),
            app_version: "5.0.0".into(),
            hardware_tier: tier.into(),
            ..Default::default()
        };
        let response = client
            .register(RegisterRequest {
                profile: Some(profile.clone()),
                enrollment_secret: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        SimDevice {
            token: format!("Bearer {}", response.device_token).parse().unwrap(),
            client,
            profile,
            installed: None,
            desired_digest: String::new(),
            runs_reported: 0,
        }
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        request
    }

    /// Syncs and returns (version, release id) the cloud wants for task `t`, if any.
    async fn desired(&mut self) -> Option<(String, String)> {
        let installed = self
            .installed
            .iter()
            .map(|(version, _)| InstalledTask {
                task: "t".into(),
                version: version.clone(),
                bundle_digest: String::new(),
            })
            .collect();
        let request = self.authed(SyncRequest {
            profile: Some(self.profile.clone()),
            installed,
        });
        let response = self.client.sync(request).await.unwrap().into_inner();
        let desired = response
            .desired
            .into_iter()
            .find(|d| d.task == "t" && d.action == desired_task::Action::Install as i32)?;
        let manifest: Value =
            serde_json::from_slice(&desired.manifest.unwrap().manifest_json).unwrap();
        self.desired_digest = manifest["bundle_digest"].as_str().unwrap().to_owned();
        Some((
            manifest["task"]["version"].as_str().unwrap().to_owned(),
            desired.release_id,
        ))
    }

    async fn report(&mut self, kind: task_event::Kind, version: &str, release_id: &str) {
        let event = TaskEvent {
            id: format!(
                "{}-{}-{kind:?}-{release_id}",
                self.profile.device_id, version
            ),
            kind: kind as i32,
            task: "t".into(),
            version: version.into(),
            release_id: release_id.into(),
            at_ms: 1,
            detail: format!("KeyError: 'x' on {}", self.profile.device_id),
            ..Default::default()
        };
        let request = self.authed(ReportRequest {
            events: vec![event],
        });
        self.client.report(request).await.unwrap();
    }

    /// Reports one successful run of `version` from `release_id` per duration (ms).
    /// Reports successful runs of these durations, each having waited three times as long for
    /// a VM worker first (which gates and aborts must not count).
    async fn report_runs(&mut self, version: &str, release_id: &str, durations_ms: &[u64]) {
        let mut events = Vec::with_capacity(durations_ms.len());
        for &duration_ms in durations_ms {
            self.runs_reported += 1;
            events.push(TaskEvent {
                id: format!("{}-run-{}", self.profile.device_id, self.runs_reported),
                kind: task_event::Kind::RunOk as i32,
                task: "t".into(),
                version: version.into(),
                release_id: release_id.into(),
                at_ms: 1,
                duration_ms,
                queued_ms: 3 * duration_ms,
                ..Default::default()
            });
        }
        let request = self.authed(ReportRequest { events });
        let response = self.client.report(request).await.unwrap().into_inner();
        assert_eq!(
            response.accepted as usize,
            durations_ms.len(),
            "{response:?}"
        );
    }

    /// Opens the notice stream and checks that it starts with HELLO.
    async fn subscribe(&self) -> tonic::Streaming<walle_proto::v1::Notice> {
        let mut notices = self
            .client
            .clone()
            .subscribe(self.authed(SubscribeRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            next_notice(&mut notices).await.kind,
            notice::Kind::Hello as i32
        );
        notices
    }

    /// Downloads the bundle last handed by Sync and checks it against the signed digest.
    async fn fetch_desired_bundle(&mut self) -> Vec<u8> {
        let request = self.authed(FetchBundleRequest {
            digest: self.desired_digest.clone(),
            offset: 0,
        });
        let mut stream = self
            .client
            .fetch_bundle(request)
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            bytes.extend_from_slice(&chunk.data);
        }
        assert_eq!(walle_proto::bundle::digest_hex(&bytes), self.desired_digest);
        bytes
    }

    /// Syncs, installs whatever is desired and reports it; returns the version now installed.
    async fn converge(&mut self) -> Option<String> {
        match self.desired().await {
            Some((version, release)) => {
                if self.installed.as_ref().map(|(v, _)| v) != Some(&version) {
                    self.report(task_event::Kind::Installed, &version, &release)
                        .await;
                    self.installed = Some((version.clone(), release));
                }
                Some(version)
            }
            None => {
                self.installed = None;
                None
            }
        }
    }
}

async fn fleet(cloud: &Cloud, n: usize, tier: &str) -> Vec<SimDevice> {
    let mut devices = Vec::with_capacity(n);
    for i in 0..n {
        devices.push(SimDevice::register(cloud, &format!("device-{i}"), tier).await);
    }
    devices
}

async fn staged_release_is_sticky_and_advances_on_health(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    op.publish(dir.path(), "1.0.0").await;
    op.publish(dir.path(), "2.0.0").await;
    let base = op.release("1.0.0", json!({})).await;
    let mut devices = fleet(&cloud, 40, "mid").await;
    for d in &mut devices {
        assert_eq!(d.converge().await.as_deref(), Some("1.0.0"));
    }
    let mut watcher = devices[0]
        .client
        .clone()
        .subscribe(devices[0].authed(SubscribeRequest {}))
        .await
        .unwrap()
        .into_inner();
    watcher.message().await.unwrap();

    let staged = op
        .release(
            "2.0.0",
            json!({"stages": [25, 100], "gate": {"auto_advance": true, "min_devices": 3, "min_success_rate": 1.0}}),
        )
        .await;
    assert_eq!(
        watcher.message().await.unwrap().unwrap().kind,
        notice::Kind::TaskChanged as i32
    );
    // Before any device reported, the stage says what it waits for, with the figures.
    let waiting = op.wait_release(&staged, |s| s["state_reason"] != "").await;
    assert_eq!(
        waiting["state_reason"],
        "held at stage 1 of 2 (25%): waiting for 3 reporting devices (0 so far)",
        "{waiting}"
    );
    let mut in_first_stage = Vec::new();
    for (i, d) in devices.iter_mut().enumerate() {
        let expected_in = bucket(&format!("device-{i}"), &staged) < 2500;
        let got = d.desired().await.map(|(v, _)| v);
        assert_eq!(got.as_deref() == Some("2.0.0"), expected_in, "device-{i}");
        if expected_in {
            in_first_stage.push(i);
        }
    }
    assert!(
        in_first_stage.len() >= 3,
        "need 3 devices in the first stage, got {in_first_stage:?}"
    );
    // Only two report so far: the gate (3 devices) holds.
    for &i in &in_first_stage[..2] {
        devices[i].converge().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(op.status(&staged).await["stage"], 0);
    devices[in_first_stage[2]].converge().await;
    op.wait_release(&staged, |s| s["stage"] == 1).await;
    assert_eq!(watcher.message().await.unwrap().unwrap().release_id, staged);
    for d in &mut devices {
        assert_eq!(
            d.converge().await.as_deref(),
            Some("2.0.0"),
            "stage 2 is 100 %"
        );
    }
    // The full release superseded the base release.
    assert_eq!(op.status(&base).await["state"], "superseded");
    let status = op.status(&staged).await;
    assert_eq!(status["stats"]["installed"], 40, "{status}");
    assert_eq!(status["stats"]["targeted"], 40, "{status}");
    assert_eq!(
        status["stats"]["synced"], 40,
        "every device pulled it once: {status}"
    );
    assert_eq!(
        status["stats"]["notified"], 2,
        "created + advanced, one subscriber: {status}"
    );
    // Per stage: the first stage's cohort and the devices that joined at 100 %.
    let later: Vec<usize> = (0..40).filter(|i| !in_first_stage.contains(i)).collect();
    devices[in_first_stage[0]]
        .report(task_event::Kind::RunOk, "2.0.0", &staged)
        .await;
    devices[later[0]]
        .report(task_event::Kind::RunFailed, "2.0.0", &staged)
        .await;
    let stages = op.status(&staged).await["stats"]["stages"].clone();
    let first = in_first_stage.len();
    for (stage, cohort, runs_ok, runs_failed) in [(0, first, 1, 0), (1, 40 - first, 0, 1)] {
        let s = &stages[stage];
        assert_eq!(s["targeted"], cohort, "stage {stage}: {stages}");
        assert_eq!(s["synced"], cohort, "stage {stage}: {stages}");
        assert_eq!(s["installed"], cohort, "stage {stage}: {stages}");
        assert_eq!(s["notified"], 1, "stage {stage}: {stages}");
        assert_eq!(s["runs_ok"], runs_ok, "stage {stage}: {stages}");
        assert_eq!(s["runs_failed"], runs_failed, "stage {stage}: {stages}");
        assert_eq!(s["failed_devices"], runs_failed, "stage {stage}: {stages}");
    }
    assert_eq!(stages[1]["percent"], 100.0);
    // The coverage series shows both stages and ends fully installed.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let series = loop {
        let (_, series) = op
            .call("GET", &format!("/v1/releases/{staged}/coverage"), None)
            .await;
        let last = series
            .as_array()
            .and_then(|s| s.last())
            .cloned()
            .unwrap_or_default();
        if last["installed"] == 40 && last["targeted"] == 40 {
            break series;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "coverage never reached 40: {series}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let samples = series.as_array().unwrap();
    assert!(samples.iter().any(|s| s["stage"] == 0), "{series}");
    assert!(
        samples
            .windows(2)
            .all(|w| w[0]["at_ms"].as_i64() < w[1]["at_ms"].as_i64())
    );
    cloud.shutdown().await;
}

async fn failures_abort_the_release_and_roll_devices_back(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    op.publish(dir.path(), "1.0.0").await;
    op.publish(dir.path(), "2.0.0").await;
    let base = op.release("1.0.0", json!({})).await;
    let mut devices = fleet(&cloud, 4, "mid").await;
    for d in &mut devices {
        d.converge().await;
    }
    let bad = op
        .release(
            "2.0.0",
            json!({"abort": {"max_failure_rate": 0.5, "min_executed": 4, "kinds": ["run"]}}),
        )
        .await;
    assert_eq!(op.status(&base).await["state"], "superseded");
    for d in &mut devices {
        assert_eq!(d.converge().await.as_deref(), Some("2.0.0"));
    }
    // The actions an active release allows, each with what it would do to how many devices.
    let active = op.status(&bad).await;
    let actions: Vec<&str> = active["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["pause", "abort", "rollback"], "{active}");
    let abort = &active["actions"][1];
    assert_eq!(abort["devices"], 4, "{active}");
    assert!(
        abort["effect"]
            .as_str()
            .unwrap()
            .contains("The 4 devices running 2.0.0 go back"),
        "{active}"
    );
    // The live stream's first event is the same status.
    let live = op.first_live_event(&bad).await;
    assert_eq!(live["id"], bad.as_str());
    assert_eq!(live["stats"]["installed"], 4, "{live}");
    assert!(live["coverage"].is_array(), "{live}");
    // One run failure in four devices: 25 % < 50 %, no abort.
    devices[0]
        .report(task_event::Kind::RunFailed, "2.0.0", &bad)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(op.status(&bad).await["state"], "active");
    devices[1]
        .report(task_event::Kind::RunFailed, "2.0.0", &bad)
        .await;
    let aborted = op.wait_release(&bad, |s| s["state"] == "aborted").await;
    assert!(
        aborted["state_reason"].as_str().unwrap().contains("2 of 4"),
        "{aborted}"
    );
    assert_eq!(
        aborted["actions"],
        json!([]),
        "an aborted release allows nothing"
    );
    let stats = &aborted["stats"];
    assert!(
        stats["installed"].as_u64() <= stats["targeted"].as_u64(),
        "{aborted}"
    );
    // Why each device failed: per release (with the stage cohort) and per device.
    let (code, failures) = op
        .call("GET", &format!("/v1/releases/{bad}/failures"), None)
        .await;
    assert_eq!(code, 200, "{failures}");
    let mut failed: Vec<&str> = failures
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["device_id"].as_str().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, ["device-0", "device-1"], "{failures}");
    assert_eq!(failures[0]["kind"], "run_failed", "{failures}");
    assert_eq!(failures[0]["stage"], 0, "{failures}");
    assert!(
        failures[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("KeyError: 'x' on device-"),
        "{failures}"
    );
    let (code, body) = op
        .call(
            "GET",
            &format!("/v1/releases/{bad}/failures?kind=crash"),
            None,
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let (_, device) = op.call("GET", "/v1/devices/device-1", None).await;
    assert_eq!(
        device["failures"][0]["detail"], "KeyError: 'x' on device-1",
        "{device}"
    );
    assert_eq!(
        device["failures"][0]["release_id"],
        bad.as_str(),
        "{device}"
    );
    assert_eq!(device["tasks"][0]["version"], "2.0.0", "{device}");
    assert_eq!(op.call("GET", "/v1/devices/nobody", None).await.0, 404);
    let (_, overview) = op.call("GET", "/v1/overview", None).await;
    assert_eq!(overview["devices"]["registered"], 4, "{overview}");
    assert_eq!(
        overview["recent_failures"].as_array().unwrap().len(),
        2,
        "{overview}"
    );
    let restored = op.status(&base).await;
    assert_eq!(
        restored["state"], "active",
        "the previous release is restored"
    );
    assert_eq!(
        restored["state_reason"],
        format!("restored: {bad} was aborted"),
        "{restored}"
    );
    for d in &mut devices {
        assert_eq!(d.converge().await.as_deref(), Some("1.0.0"), "rolled back");
    }
    cloud.shutdown().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits until the controller has judged release `id` on everything reported before `after_ms`.
/// The controller samples coverage right after each tick, so the second sample taken after that
/// moment follows a whole tick.
async fn wait_for_ticks_after(op: &Operator, id: &str, after_ms: i64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, series) = op
            .call("GET", &format!("/v1/releases/{id}/coverage"), None)
            .await;
        let later = series
            .as_array()
            .map(|s| {
                s.iter()
                    .filter(|x| x["at_ms"].as_i64() > Some(after_ms))
                    .count()
            })
            .unwrap_or(0);
        if later >= 2 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller never ticked: {series}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn slow_runs_hold_the_stage_until_the_p99_is_within_the_gate(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    op.publish(dir.path(), "1.0.0").await;
    op.publish(dir.path(), "2.0.0").await;
    let base = op.release("1.0.0", json!({})).await;
    let mut devices = fleet(&cloud, 20, "mid").await;
    for d in &mut devices {
        d.converge().await;
    }
    // Slow runs of the previous version: they must not count towards the new release's p99.
    devices[0].report_runs("1.0.0", &base, &[5_000; 20]).await;
    let staged = op
        .release(
            "2.0.0",
            json!({"stages": [50, 100], "gate": {"auto_advance": true, "min_devices": 1, "max_run_p99_ms": 500}}),
        )
        .await;
    let mut first_stage = Vec::new();
    for (i, d) in devices.iter_mut().enumerate() {
        if d.converge().await.as_deref() == Some("2.0.0") {
            first_stage.push(i);
        }
    }
    let first = *first_stage.first().expect("no device in the 50 % stage");
    let mut durations = vec![100; 8];
    durations.extend([900, 900]);
    devices[first]
        .report_runs("2.0.0", &staged, &durations)
        .await;
    let held = op
        .wait_release(&staged, |s| {
            s["state_reason"]
                .as_str()
                .is_some_and(|r| r.contains("p99 900"))
        })
        .await;
    assert_eq!(
        held["state_reason"], "held at stage 1 of 2 (50%): run p99 900 ms > 500 ms over 10 runs",
        "{held}"
    );
    assert_eq!(
        (&held["state"], &held["stage"]),
        (&json!("active"), &json!(0))
    );
    assert_eq!(held["stats"]["runs"]["duration_p99_ms"], 900, "{held}");
    // The time runs waited for a worker is reported apart and judged by nothing.
    assert_eq!(held["stats"]["runs"]["queued_p99_ms"], 2_700, "{held}");
    let previous = op.status(&base).await;
    assert_eq!(
        previous["stats"]["runs"]["duration_p99_ms"], 5_000,
        "{previous}"
    );
    // Fast runs bring the p99 under the limit: the stage advances and the reason goes.
    devices[first]
        .report_runs("2.0.0", &staged, &[100; 200])
        .await;
    let advanced = op.wait_release(&staged, |s| s["stage"] == 1).await;
    assert_eq!(advanced["state_reason"], "", "{advanced}");
    assert_eq!(
        advanced["stats"]["runs"]["duration_p99_ms"], 100,
        "{advanced}"
    );
    cloud.shutdown().await;
}

async fn slow_runs_abort_the_release_once_enough_were_reported(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    op.publish(dir.path(), "1.0.0").await;
    op.publish(dir.path(), "2.0.0").await;
    let base = op.release("1.0.0", json!({})).await;
    let mut devices = fleet(&cloud, 4, "mid").await;
    for d in &mut devices {
        d.converge().await;
    }
    let slow = op
        .release(
            "2.0.0",
            json!({"abort": {"max_run_p99_ms": 500, "min_runs": 20}}),
        )
        .await;
    for d in &mut devices {
        assert_eq!(d.converge().await.as_deref(), Some("2.0.0"));
    }
    // 19 slow runs on one device are fewer than min_runs: the release goes on.
    devices[0].report_runs("2.0.0", &slow, &[900; 19]).await;
    wait_for_ticks_after(&op, &slow, now_ms()).await;
    let status = op.status(&slow).await;
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["stats"]["runs"]["duration_p99_ms"], 900, "{status}");
    devices[1].report_runs("2.0.0", &slow, &[900]).await;
    let aborted = op.wait_release(&slow, |s| s["state"] == "aborted").await;
    assert_eq!(
        aborted["state_reason"], "auto-abort: run p99 900 ms > 500 ms over 20 runs",
        "{aborted}"
    );
    assert_eq!(
        op.status(&base).await["state"],
        "active",
        "the previous release is restored"
    );
    for d in &mut devices {
        assert_eq!(d.converge().await.as_deref(), Some("1.0.0"), "rolled back");
    }
    cloud.shutdown().await;
}

async fn targeting_priority_customised_versions_and_late_joiners(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    for v in ["1.0.0", "2.0.0", "2.1.0", "3.0.0"] {
        op.publish(dir.path(), v).await;
    }
    // A larger model for high-tier devices, a smaller one for the rest, at the same time.
    op.release("2.0.0", json!({"target": {"hardware_tier": ["high"]}}))
        .await;
    op.release(
        "2.1.0",
        json!({"target": {"not": {"hardware_tier": ["high"]}}}),
    )
    .await;
    let mut high = SimDevice::register(&cloud, "h1", "high").await;
    let mut low = SimDevice::register(&cloud, "l1", "low").await;
    assert_eq!(high.converge().await.as_deref(), Some("2.0.0"));
    assert_eq!(low.converge().await.as_deref(), Some("2.1.0"));
    // A device registering after the releases, and one whose profile changes, follow targeting.
    let mut late = SimDevice::register(&cloud, "late", "high").await;
    assert_eq!(late.converge().await.as_deref(), Some("2.0.0"));
    low.profile.hardware_tier = "high".into();
    assert_eq!(low.converge().await.as_deref(), Some("2.0.0"));
    // The cloud keeps the changed profile (preview and statistics read the stored one).
    let (_, stored) = op.call("GET", "/v1/devices/l1", None).await;
    assert_eq!(stored["profile"]["hardware_tier"], "high", "{stored}");
    let (_, found) = op
        .call("GET", "/v1/devices?hardware_tier=high&q=l", None)
        .await;
    assert_eq!(found["devices"][0]["id"], "l1", "{found}");
    // Pages: `next` only when another page follows.
    let (_, page) = op.call("GET", "/v1/devices?limit=2", None).await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 2, "{page}");
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, rest) = op
        .call("GET", &format!("/v1/devices?limit=1000&after={next}"), None)
        .await;
    let listed = 2 + rest["devices"].as_array().unwrap().len();
    assert_eq!(rest["next"], Value::Null, "{rest}");
    let (_, last) = op
        .call("GET", &format!("/v1/devices?limit={}", listed), None)
        .await;
    assert_eq!(
        last["next"],
        Value::Null,
        "an exactly full last page: {last}"
    );
    low.profile.app_version = "4.0.0".into();
    // Priority beats newness: an urgent release for old app versions wins over both.
    let urgent = op
        .release(
            "1.0.0",
            json!({"priority": 10, "target": {"app_version": "<5"}}),
        )
        .await;
    assert_eq!(low.converge().await.as_deref(), Some("1.0.0"));
    assert_eq!(high.converge().await.as_deref(), Some("2.0.0"));
    // A newer release of equal priority wins over an older one.
    let newest = op
        .release(
            "3.0.0",
            json!({"target": {"device_ids": ["h1"]}, "stages": [50, 100]}),
        )
        .await;
    let expected = if bucket("h1", &newest) < 5000 {
        "3.0.0"
    } else {
        "2.0.0"
    };
    assert_eq!(high.converge().await.as_deref(), Some(expected));

    // Paused: devices that run it keep it, no one else gets it.
    let (code, _) = op
        .call("POST", &format!("/v1/releases/{urgent}/pause"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        low.converge().await.as_deref(),
        Some("1.0.0"),
        "keeps the paused version"
    );
    let mut another = SimDevice::register(&cloud, "old-app", "low").await;
    another.profile.app_version = "4.1.0".into();
    assert_eq!(
        another.converge().await.as_deref(),
        Some("2.1.0"),
        "paused release takes no one new"
    );
    let (code, _) = op
        .call("POST", &format!("/v1/releases/{urgent}/resume"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(another.converge().await.as_deref(), Some("1.0.0"));
    cloud.shutdown().await;
}

async fn operator_actions_preview_and_invalid_policies(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    op.publish(dir.path(), "1.0.0").await;
    op.publish(dir.path(), "2.0.0").await;
    op.release("1.0.0", json!({})).await;
    let mut devices = fleet(&cloud, 30, "mid").await;
    for d in &mut devices {
        d.converge().await;
    }

    let (code, preview) = op
        .call(
            "POST",
            "/v1/releases/preview",
            Some(json!({"task": "t", "version": "2.0.0", "policy": {"stages": [10, 100]}})),
        )
        .await;
    assert_eq!(code, 200, "{preview}");
    let salt = preview["salt"].as_str().unwrap().to_owned();
    let stages = &preview["stages"];
    let first = (0..30)
        .filter(|i| bucket(&format!("device-{i}"), &salt) < 1000)
        .count();
    assert_eq!(
        stages[0]["versions"]["2.0.0"].as_u64().unwrap_or(0) as usize,
        first,
        "{preview}"
    );
    assert_eq!(
        stages[0]["versions"]["1.0.0"].as_u64().unwrap_or(0) as usize,
        30 - first,
        "{preview}"
    );
    assert_eq!(stages[1]["versions"]["2.0.0"], 30, "{preview}");
    assert_eq!(
        (
            preview["devices"].as_u64(),
            preview["outside_target"].as_u64()
        ),
        (Some(30), Some(0)),
        "{preview}"
    );
    // A target no device matches says so, instead of only showing nobody getting the version.
    let (code, nobody) = op
        .call(
            "POST",
            "/v1/releases/preview",
            Some(json!({"task": "t", "version": "2.0.0", "policy": {"target": {"region": ["nowhere"]}}})),
        )
        .await;
    assert_eq!(
        (code, nobody["outside_target"].as_u64()),
        (200, Some(30)),
        "{nobody}"
    );
    assert_eq!(
        nobody["stages"][0]["versions"].get("2.0.0"),
        None,
        "{nobody}"
    );
    // The release started with the preview's salt takes exactly the previewed devices, stage by
    // stage; a second preview with that salt shows the same.
    let (code, again) = op
        .call(
            "POST",
            "/v1/releases/preview",
            Some(json!({"task": "t", "version": "2.0.0", "policy": {"stages": [10, 100]}, "salt": salt})),
        )
        .await;
    assert_eq!((code, &again["stages"]), (200, stages), "{again}");
    let (code, created) = op
        .call(
            "POST",
            "/v1/releases",
            Some(json!({"task": "t", "version": "2.0.0", "policy": {"stages": [10, 100]}, "salt": salt})),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let previewed = created["id"].as_str().unwrap().to_owned();
    for stage in 0..2 {
        let (_, status) = op
            .call("GET", &format!("/v1/releases/{previewed}"), None)
            .await;
        // A stage the preview gives nobody lists no count for the version (10 % of 30 devices
        // is none about one time in 25).
        assert_eq!(
            status["stats"]["targeted"].as_u64(),
            Some(stages[stage]["versions"]["2.0.0"].as_u64().unwrap_or(0)),
            "stage {stage}: {status}"
        );
        op.call("POST", &format!("/v1/releases/{previewed}/advance"), None)
            .await;
    }
    let (code, body) = op
        .call("POST", &format!("/v1/releases/{previewed}/abort"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = op
        .call(
            "POST",
            "/v1/releases",
            Some(json!({"task": "t", "version": "2.0.0", "salt": "not hex!"})),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("salt:"),
        "{body}"
    );

    let id = op.release("2.0.0", json!({"stages": [10, 50, 100]})).await;
    let post = |action: &str| format!("/v1/releases/{id}/{action}");
    assert_eq!(
        op.call("POST", &post("resume"), None).await.0,
        409,
        "resume of an active release"
    );
    assert_eq!(op.call("POST", &post("advance"), None).await.1["stage"], 1);
    assert_eq!(op.call("POST", &post("advance"), None).await.1["stage"], 2);
    let (code, body) = op.call("POST", &post("advance"), None).await;
    assert_eq!(code, 409, "advance past the last stage: {body}");
    assert_eq!(op.call("POST", &post("dance"), None).await.0, 404);
    for d in &mut devices {
        assert_eq!(d.converge().await.as_deref(), Some("2.0.0"));
    }
    let (code, body) = op.call("POST", &post("rollback"), None).await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("aborted")),
        "{body}"
    );
    for d in &mut devices {
        assert_eq!(d.converge().await.as_deref(), Some("1.0.0"));
    }
    assert_eq!(
        op.call("POST", &post("abort"), None).await.0,
        409,
        "already aborted"
    );

    for (policy, field) in [
        (json!({"stages": [50, 10]}), "policy.stages[1]"),
        (json!({"stages": [10, 120]}), "policy.stages[1]"),
        (
            json!({"gate": {"min_success_rate": 2}}),
            "policy.gate.min_success_rate",
        ),
        (
            json!({"target": {"app_version": "five"}}),
            "policy.target.app_version",
        ),
        (
            json!({"abort": {"max_failure_rate": 0.5, "min_executed": 1, "kinds": ["crash"]}}),
            "crash",
        ),
        (json!({"stagez": [1]}), "stagez"),
        (
            json!({"gate": {"max_run_p99_ms": 0}}),
            "policy.gate.max_run_p99_ms",
        ),
        (
            json!({"abort": {"max_run_p99_ms": -5}}),
            "policy.abort.max_run_p99_ms",
        ),
        (
            json!({"abort": {"max_run_p99_ms": 500, "min_runs": 0}}),
            "policy.abort.min_runs",
        ),
    ] {
        let (code, body) = op
            .call(
                "POST",
                "/v1/releases",
                Some(json!({"task": "t", "version": "2.0.0", "policy": policy})),
            )
            .await;
        assert_eq!(code, 400, "{policy}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(field),
            "{policy}: {body}"
        );
    }
    let (_, releases) = op.call("GET", "/v1/releases", None).await;
    assert_eq!(
        releases.as_array().unwrap().len(),
        3,
        "invalid policies created nothing"
    );
    cloud.shutdown().await;
}

async fn pausing_a_full_release_hands_devices_back_and_forged_reports_do_not_count(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    op.publish(dir.path(), "1.0.0").await;
    op.publish(dir.path(), "2.0.0").await;
    let base = op.release("1.0.0", json!({})).await;
    let mut old = SimDevice::register(&cloud, "old", "mid").await;
    assert_eq!(old.converge().await.as_deref(), Some("1.0.0"));
    let next = op
        .release(
            "2.0.0",
            json!({"abort": {"max_failed_devices": 1, "kinds": ["install", "run"]}}),
        )
        .await;
    assert_eq!(op.status(&base).await["state"], "superseded");
    let mut upgraded = SimDevice::register(&cloud, "upgraded", "mid").await;
    assert_eq!(upgraded.converge().await.as_deref(), Some("2.0.0"));

    // A device that was never handed `next` reports failures for it: they must not count.
    let mut forger = SimDevice::register(&cloud, "forger", "mid").await;
    forger
        .report(task_event::Kind::RunFailed, "2.0.0", &next)
        .await;
    forger
        .report(task_event::Kind::InstallFailed, "2.0.0", &next)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = op.status(&next).await;
    assert_eq!(
        status["state"], "active",
        "a forged report aborted the release: {status}"
    );
    assert_eq!(status["stats"]["failed_devices"], 0, "{status}");

    // Pausing the full release: devices that run it keep it, everyone else goes back to `base`
    // instead of losing the task.
    let (code, _) = op
        .call("POST", &format!("/v1/releases/{next}/pause"), None)
        .await;
    assert_eq!(code, 200);
    let restored = op.status(&base).await;
    assert_eq!(
        restored["state"], "active",
        "pause restores the superseded release"
    );
    assert_eq!(
        restored["state_reason"],
        format!("restored: {next} was paused"),
        "{restored}"
    );
    assert_eq!(upgraded.converge().await.as_deref(), Some("2.0.0"));
    assert_eq!(forger.converge().await.as_deref(), Some("1.0.0"));
    let mut newcomer = SimDevice::register(&cloud, "newcomer", "mid").await;
    assert_eq!(newcomer.converge().await.as_deref(), Some("1.0.0"));
    // Resuming takes everyone to `next` again.
    let (code, _) = op
        .call("POST", &format!("/v1/releases/{next}/resume"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(op.status(&base).await["state"], "superseded");
    for d in [&mut old, &mut newcomer, &mut forger] {
        assert_eq!(d.converge().await.as_deref(), Some("2.0.0"));
    }

    // Undoing a full release restores what it superseded in the state it had: a release an
    // operator paused comes back paused, not resumed.
    let act = |id: &str, action: &str| format!("/v1/releases/{id}/{action}");
    assert_eq!(op.call("POST", &act(&next, "rollback"), None).await.0, 200);
    assert_eq!(old.converge().await.as_deref(), Some("1.0.0"));
    assert_eq!(op.call("POST", &act(&base, "pause"), None).await.0, 200);
    op.publish(dir.path(), "3.0.0").await;
    let third = op.release("3.0.0", json!({})).await;
    assert_eq!(op.status(&base).await["state"], "superseded");
    assert_eq!(op.call("POST", &act(&third, "rollback"), None).await.0, 200);
    assert_eq!(op.status(&base).await["state"], "paused");
    assert_eq!(
        old.converge().await.as_deref(),
        Some("1.0.0"),
        "keeps what it ran"
    );
    let mut after = SimDevice::register(&cloud, "after", "mid").await;
    assert_eq!(
        after.converge().await,
        None,
        "a paused release takes no new devices"
    );
    cloud.shutdown().await;
}

async fn device_groups_target_releases_and_membership_changes_apply_at_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let op = Operator::new(&cloud);
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        op.publish(dir.path(), v).await;
    }
    let (code, body) = op
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "qa", "description": "test phones"})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, _) = op
        .call("POST", "/v1/groups", Some(json!({"name": "qa"})))
        .await;
    assert_eq!(code, 409);
    let (code, body) = op
        .call("POST", "/v1/groups", Some(json!({"name": "Q A"})))
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = op
        .call(
            "POST",
            "/v1/releases",
            Some(json!({"task": "t", "version": "2.0.0", "policy": {"target": {"group": "nope"}}})),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("\"nope\""),
        "{body}"
    );
    let (code, body) = op
        .call("POST", "/v1/groups/qa/members", Some(json!({"add": [""]})))
        .await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("add[0]"), "{body}");

    op.release("1.0.0", json!({})).await;
    let mut g1 = SimDevice::register(&cloud, "g1", "mid").await;
    let mut g2 = SimDevice::register(&cloud, "g2", "mid").await;
    let (code, body) = op
        .call(
            "POST",
            "/v1/groups/qa/members",
            Some(json!({"add": ["g1", "not-yet"]})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["devices"], json!(["g1", "not-yet"]));
    op.release("2.0.0", json!({"target": {"group": "qa"}}))
        .await;
    assert_eq!(g1.converge().await.as_deref(), Some("2.0.0"));
    assert_eq!(g2.converge().await.as_deref(), Some("1.0.0"));

    // Joining the group reaches the device at once: it is told to sync.
    let mut notices = g2
        .client
        .clone()
        .subscribe(g2.authed(SubscribeRequest {}))
        .await
        .unwrap()
        .into_inner();
    notices.message().await.unwrap();
    op.call(
        "POST",
        "/v1/groups/qa/members",
        Some(json!({"add": ["g2"], "remove": ["g1"]})),
    )
    .await;
    let pushed = tokio::time::timeout(TIMEOUT, notices.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pushed.kind, notice::Kind::TaskChanged as i32);
    assert_eq!(g2.converge().await.as_deref(), Some("2.0.0"));
    assert_eq!(
        g1.converge().await.as_deref(),
        Some("1.0.0"),
        "left the group"
    );
    // A device listed before it ever registered is included when it does.
    let mut late = SimDevice::register(&cloud, "not-yet", "mid").await;
    assert_eq!(late.converge().await.as_deref(), Some("2.0.0"));
    // Preview reads membership too.
    let (code, preview) = op
        .call(
            "POST",
            "/v1/releases/preview",
            Some(json!({"task": "t", "version": "3.0.0", "policy": {"target": {"group": "qa"}}})),
        )
        .await;
    assert_eq!(code, 200, "{preview}");
    assert_eq!(
        preview["stages"][0]["versions"],
        json!({"3.0.0": 2, "1.0.0": 1}),
        "{preview}"
    );

    // A group in use cannot be deleted; listing shows its size.
    let (code, body) = op.call("DELETE", "/v1/groups/qa", None).await;
    assert_eq!(code, 409, "{body}");
    let (_, groups) = op.call("GET", "/v1/groups", None).await;
    assert_eq!(groups[0]["members"], 2, "{groups}");
    op.call("POST", "/v1/groups", Some(json!({"name": "unused"})))
        .await;
    assert_eq!(op.call("DELETE", "/v1/groups/unused", None).await.0, 204);
    assert_eq!(op.call("GET", "/v1/groups/unused", None).await.0, 404);
    cloud.shutdown().await;
}

on_both_backends!(
    device_groups_target_releases_and_membership_changes_apply_at_once,
    pausing_a_full_release_hands_devices_back_and_forged_reports_do_not_count,
    staged_release_is_sticky_and_advances_on_health,
    failures_abort_the_release_and_roll_devices_back,
    slow_runs_hold_the_stage_until_the_p99_is_within_the_gate,
    slow_runs_abort_the_release_once_enough_were_reported,
    targeting_priority_customised_versions_and_late_joiners,
    operator_actions_preview_and_invalid_policies,
);

/// Waits until exactly one of the replicas runs the controller, checking it never is both.
async fn single_controller(replicas: &[&Cloud]) -> usize {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let holders: Vec<usize> = (0..replicas.len())
            .filter(|&i| replicas[i].is_controller())
            .collect();
        assert!(
            holders.len() <= 1,
            "two replicas run the controller at once"
        );
        if let [holder] = holders[..] {
            return holder;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica took the controller lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_behave_as_one_service() {
    let backend = Backend::postgres().await;
    // Replicas share the database, the bundle bucket (a real S3-compatible server) and the
    // publisher key + operator token (a mounted secret in production) — nothing else.
    let s3 = common::S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let replica = |data_dir: std::path::PathBuf| {
        let store = s3.store_config("replicas");
        let backend = &backend;
        async move { start_with(backend, &data_dir, |c| c.bundle_store = store).await }
    };
    let a = replica(dir_a.clone()).await;
    std::fs::create_dir_all(&dir_b).unwrap();
    for secret in ["publisher.key", "admin.token"] {
        std::fs::copy(dir_a.join(secret), dir_b.join(secret)).unwrap();
    }
    let b = replica(dir_b.clone()).await;
    let holder = single_controller(&[&a, &b]).await;
    for _ in 0..20 {
        assert_eq!(
            single_controller(&[&a, &b]).await,
            holder,
            "the lease must not flap"
        );
    }

    // A device on replica B hears about a release created through replica A.
    let mut device = SimDevice::register(&b, "device-on-b", "mid").await;
    let mut notices = device.subscribe().await;
    let op_a = Operator::new(&a);
    op_a.publish(dir.path(), "1.0.0").await;
    op_a.publish(dir.path(), "2.0.0").await;
    let first = op_a.release("1.0.0", json!({})).await;
    let pushed = tokio::time::timeout(TIMEOUT, notices.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (pushed.kind, pushed.release_id.as_str()),
        (notice::Kind::TaskChanged as i32, first.as_str())
    );
    assert_eq!(device.converge().await.as_deref(), Some("1.0.0"));
    // Uploaded through A, downloaded through B: the bundle came from the shared bucket.
    device.fetch_desired_bundle().await;
    let keys = s3.keys().await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("replicas/bundles/sha256/")),
        "{keys:?}"
    );

    // The controller replica goes away: the other takes over and keeps gating releases.
    let (survivor, gone, gone_dir) = if holder == 0 {
        (b, a, dir_a)
    } else {
        (a, b, dir_b)
    };
    gone.shutdown().await;
    single_controller(&[&survivor]).await;
    let op = Operator::new(&survivor);
    let doomed = op
        .release(
            "2.0.0",
            json!({"abort": {"max_failed_devices": 1, "kinds": ["run"]}}),
        )
        .await;
    assert_eq!(device.converge().await.as_deref(), Some("2.0.0"));
    device
        .report(task_event::Kind::RunFailed, "2.0.0", &doomed)
        .await;
    let aborted = op.wait_release(&doomed, |s| s["state"] == "aborted").await;
    assert!(
        aborted["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("auto-abort"),
        "{aborted}"
    );
    assert_eq!(
        device.converge().await.as_deref(),
        Some("1.0.0"),
        "rolled back by the survivor"
    );

    // A restarted replica picks up where the releases are.
    let restarted = replica(gone_dir).await;
    let (_, releases) = Operator::new(&restarted)
        .call("GET", "/v1/releases", None)
        .await;
    let states: Vec<(&str, &str)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&(doomed.as_str(), "aborted")), "{states:?}");
    assert!(states.contains(&(first.as_str(), "active")), "{states:?}");
    single_controller(&[&survivor, &restarted]).await;
    restarted.shutdown().await;
    survivor.shutdown().await;
}

/// On PostgreSQL a release change's notice is part of its transaction: whoever commits it (here
/// a bare SQL update, as a replica that died right after its commit leaves it), every replica's
/// devices hear of it; a change rolled back sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_release_change_reaches_every_replica_even_if_its_writer_dies() {
    let backend = Backend::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let replica = |data_dir: std::path::PathBuf| {
        let backend = &backend;
        async move {
            start_with(backend, &data_dir, |c| {
                c.sync_interval_secs = 60;
                c.pace_window_ms = 777;
            })
            .await
        }
    };
    let a = replica(dir_a.clone()).await;
    std::fs::create_dir_all(&dir_b).unwrap();
    for secret in ["publisher.key", "admin.token"] {
        std::fs::copy(dir_a.join(secret), dir_b.join(secret)).unwrap();
    }
    let b = replica(dir_b).await;

    let device = SimDevice::register(&b, "device-on-b", "mid").await;
    let mut notices = device.subscribe().await;
    let op = Operator::new(&a);
    op.publish(dir.path(), "1.0.0").await;
    op.publish(dir.path(), "2.0.0").await;
    let old = op
        .release(
            "1.0.0",
            json!({"stages": [50, 100], "pace_window_ms": 1234}),
        )
        .await;
    let created = next_notice(&mut notices).await;
    assert_eq!(
        (created.release_id.as_str(), created.pace_window_ms),
        (old.as_str(), 1234),
        "a release created on A reaches B's device with its own pace window"
    );
    let fresh = op.release("2.0.0", json!({"stages": [50, 100]})).await;
    let created = next_notice(&mut notices).await;
    assert_eq!(created.release_id, fresh);

    let db = sqlx::AnyPool::connect(&backend.database_url().unwrap())
        .await
        .unwrap();
    // Rolled back: no notice.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE releases SET stage = 1, changed_at_ms = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(&old)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Committed by a writer that publishes nothing itself.
    sqlx::query(
        "UPDATE releases SET stage = 1, stage_started_at_ms = $1, changed_at_ms = $1 WHERE id = $2",
    )
    .bind(now_ms())
    .bind(&fresh)
    .execute(&db)
    .await
    .unwrap();
    let advanced = next_notice(&mut notices).await;
    assert_eq!(
        (
            advanced.kind,
            advanced.release_id.as_str(),
            advanced.pace_window_ms
        ),
        (notice::Kind::TaskChanged as i32, fresh.as_str(), 777),
        "the committed change, not the rolled-back one, with the cloud's default pace"
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn next_notice(
    notices: &mut tonic::Streaming<walle_proto::v1::Notice>,
) -> walle_proto::v1::Notice {
    tokio::time::timeout(TIMEOUT, notices.message())
        .await
        .expect("a notice in time")
        .unwrap()
        .expect("the stream stays open")
}

/// A device that registers again gets a new token, and its old one stops working at once on
/// that replica, even though its calls had put the old one in the replica's token cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_again_retires_the_old_token_at_once() {
    let backend = Backend::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&backend, dir.path()).await;
    let mut before = SimDevice::register(&cloud, "re-enrolled", "mid").await;
    before.desired().await;
    before.desired().await;
    let mut after = SimDevice::register(&cloud, "re-enrolled", "mid").await;
    assert_ne!(before.token, after.token);
    let refused = before
        .client
        .clone()
        .sync(before.authed(SyncRequest::default()))
        .await
        .expect_err("the old token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    after.desired().await;
    cloud.shutdown().await;
}
