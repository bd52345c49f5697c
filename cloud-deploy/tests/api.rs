//! The cloud's two planes at their boundaries, over real HTTP and gRPC on loopback: auth, input
//! validation with specific errors, idempotent uploads, resumable bundle fetches, persistence.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
mod common;

use common::Backend;
use walle_cloud::Cloud;
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::{
    DeviceProfile, FetchBundleRequest, RegisterRequest, ReportRequest, SubscribeRequest,
    SyncRequest, TaskEvent, TunnelRecord, UploadRequest, desired_task, notice, task_event,
};

fn task_dir(root: &Path, name: &str, version: &str, script: &str) -> std::path::PathBuf {
    let dir = root.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("walle.toml"),
        format!("name = \"{name}\"\nversion = \"{version}\"\nruntime = \"python\"\nentry = \"main.py\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("main.py"), script).unwrap();
    dir
}

fn bundle(root: &Path, name: &str, version: &str) -> Vec<u8> {
    walle_proto::bundle::pack_dir(&task_dir(
        root,
        name,
        version,
        "def run(ctx):\n    return ctx\n",
    ))
    .unwrap()
    .1
}

struct Http {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Http {
    fn new(cloud: &Cloud) -> Http {
        Http {
            base: cloud.http_url(),
            token: cloud.admin_token.clone(),
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.bearer_auth(&self.token).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).body(body))
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

async fn control_plane_requires_an_operator_token(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend.start(dir.path(), |_| {}).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/v1/health", cloud.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let anonymous = client
        .get(format!("{}/v1/tasks", cloud.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = client
        .post(format!("{}/v1/tasks", cloud.http_url()))
        .bearer_auth("wlo_not-the-token")
        .json(&json!({"name": "sneaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let http = Http::new(&cloud);
    assert_eq!(http.get("/v1/tasks").await, (StatusCode::OK, json!([])));
    let console = client
        .get(format!("{}/console/", cloud.http_url()))
        .send()
        .await
        .unwrap();
    assert!(console.text().await.unwrap().contains("Walle console"));
    cloud.shutdown().await;
}

async fn bad_uploads_and_requests_get_specific_errors_and_store_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend
        .start(dir.path(), |c| c.max_bundle_bytes = 64 * 1024)
        .await;
    let http = Http::new(&cloud);

    let (status, body) = http
        .post_json("/v1/tasks", json!({"name": "Bad Name"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("not a valid task name"), "{body}");
    let (status, body) = http
        .post_json("/v1/tasks", json!({"name": "t", "colour": "red"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("colour"), "{body}");
    assert_eq!(
        http.post_json("/v1/tasks", json!({"name": "t"})).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        http.post_json("/v1/tasks", json!({"name": "t"})).await.0,
        StatusCode::CONFLICT
    );

    let (status, body) = http
        .post_bytes("/v1/tasks/t/versions", b"not a bundle".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("tar+zstd"), "{body}");

    let bad_semver = task_dir(dir.path(), "t", "1.0", "def run(ctx): pass\n");
    let tar = {
        // Pack by hand: pack_dir itself refuses invalid manifests.
        let mut builder = tar::Builder::new(Vec::new());
        for file in ["walle.toml", "main.py"] {
            builder
                .append_path_with_name(bad_semver.join(file), file)
                .unwrap();
        }
        zstd::encode_all(builder.into_inner().unwrap().as_slice(), 1).unwrap()
    };
    let (status, body) = http.post_bytes("/v1/tasks/t/versions", tar).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).contains("`version` \"1.0\" is not semver"),
        "{body}"
    );

    let (status, body) = http
        .post_bytes("/v1/tasks/t/versions", bundle(dir.path(), "other", "1.0.0"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("uploaded to task \"t\""), "{body}");
    let (status, _) = http
        .post_bytes(
            "/v1/tasks/missing/versions",
            bundle(dir.path(), "missing", "1.0.0"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = http
        .post_bytes("/v1/tasks/t/versions", vec![7u8; 100 * 1024])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    assert_eq!(
        http.get("/v1/tasks/t/versions").await,
        (StatusCode::OK, json!([]))
    );
    let (status, _) = http
        .post_bytes("/v1/tasks/t/versions", bundle(dir.path(), "t", "1.0.0"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = http
        .post_bytes("/v1/tasks/t/versions", bundle(dir.path(), "t", "1.0.0"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, body) = http
        .post_json("/v1/releases", json!({"task": "t", "version": "9.9.9"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = http
        .post_json("/v1/releases", json!({"task": "t", "version": "latest"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("not semver"), "{body}");
    assert_eq!(http.get("/v1/releases").await, (StatusCode::OK, json!([])));
    assert_eq!(
        http.get("/v1/releases/rel_nope").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = http.get("/v1/records?limit=lots").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    cloud.shutdown().await;
}

type Client = DevicePlaneClient<tonic::transport::Channel>;

fn profile(id: &str) -> DeviceProfile {
    DeviceProfile {
        device_id: id.into(),
        app_id: "com.example".into(),
        app_version: "1.0.0".into(),
        ..Default::default()
    }
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = AsciiMetadataValue::try_from(format!("Bearer {token}")).unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

async fn register(
    client: &mut Client,
    id: &str,
    secret: &str,
) -> Result<walle_proto::v1::RegisterResponse, tonic::Status> {
    client
        .register(RegisterRequest {
            profile: Some(profile(id)),
            enrollment_secret: secret.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn device_plane_authenticates_validates_and_stores_records_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend
        .start(dir.path(), |c| c.open_enrollment = false)
        .await;
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let unregistered = register(&mut client, "d1", "").await.unwrap_err();
    assert_eq!(unregistered.code(), Code::PermissionDenied);
    assert!(
        unregistered.message().contains("not registered"),
        "{unregistered}"
    );
    let (status, app) = Http::new(&cloud)
        .post_json("/v1/apps", json!({"app_id": "com.example"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let secret = app["enrollment_secret"].as_str().unwrap().to_owned();

    assert_eq!(
        register(&mut client, "d1", "wrong")
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let no_profile = client
        .register(RegisterRequest {
            profile: None,
            enrollment_secret: secret.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_profile.code(), Code::InvalidArgument);
    assert!(no_profile.message().contains("profile"));
    let empty_id = register(&mut client, "", &secret).await.unwrap_err();
    assert!(
        empty_id.message().contains("profile.device_id"),
        "{empty_id}"
    );
    let registered = register(&mut client, "d1", &secret).await.unwrap();
    let token = registered.device_token;

    let anonymous = client.subscribe(SubscribeRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let forged = client
        .sync(authed(SyncRequest::default(), "wld_forged"))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);

    let mut notices = client
        .subscribe(authed(SubscribeRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    let hello = notices.message().await.unwrap().unwrap();
    assert_eq!(hello.kind, notice::Kind::Hello as i32);

    let record = |id: &str, payload: &[u8]| TunnelRecord {
        id: id.into(),
        task: "t".into(),
        version: "1.0.0".into(),
        created_at_ms: 1,
        payload: payload.to_vec(),
        seq: 0,
    };
    // A bad record is refused on its own, with why; the good one in the same batch is stored.
    let mixed = client
        .upload(authed(
            UploadRequest {
                records: vec![record("r1", br#"{"ok":1}"#), record("r2", b"{not json")],
                ..UploadRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((mixed.stored, mixed.duplicates), (1, 0));
    assert_eq!(mixed.rejected.len(), 1);
    assert_eq!(
        (mixed.rejected[0].index, mixed.rejected[0].id.as_str()),
        (1, "r2")
    );
    assert!(
        mixed.rejected[0].reason.contains("records[1].payload"),
        "{mixed:?}"
    );
    let upload = || UploadRequest {
        records: vec![record("r1", br#"{"ok":1}"#), record("r2", br#"{"ok":2}"#)],
        ..UploadRequest::default()
    };
    let first = client
        .upload(authed(upload(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.stored, first.duplicates), (1, 1));
    let again = client
        .upload(authed(upload(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.stored, again.duplicates), (0, 2));
    let http = Http::new(&cloud);
    let (_, records) = http.get("/v1/records?device=d1").await;
    assert_eq!(records.as_array().unwrap().len(), 2, "{records}");

    let event = |kind: i32| TaskEvent {
        id: "e1".into(),
        kind,
        task: "t".into(),
        version: "1.0.0".into(),
        ..Default::default()
    };
    let unknown_kind = client
        .report(authed(
            ReportRequest {
                events: vec![event(42)],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown_kind.accepted, 0);
    assert!(
        unknown_kind.rejected[0].reason.contains("events[0].kind"),
        "{unknown_kind:?}"
    );
    let report = || ReportRequest {
        events: vec![event(task_event::Kind::RunOk as i32)],
    };
    assert_eq!(
        client
            .report(authed(report(), &token))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        1
    );
    assert_eq!(
        client
            .report(authed(report(), &token))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        0
    );

    let bad_digest = client
        .fetch_bundle(authed(
            FetchBundleRequest {
                digest: "../../etc".into(),
                offset: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_digest.code(), Code::InvalidArgument);
    let unknown = client
        .fetch_bundle(authed(
            FetchBundleRequest {
                digest: "a".repeat(64),
                offset: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // App isolation: the device id cannot be taken over by another app, a device cannot move
    // to another app through Sync, and bundles it was not handed are not served to it.
    let (_, other_app) = http
        .post_json("/v1/apps", json!({"app_id": "com.other"}))
        .await;
    let mut other = profile("d1");
    other.app_id = "com.other".into();
    let hijack = client
        .register(RegisterRequest {
            profile: Some(other.clone()),
            enrollment_secret: other_app["enrollment_secret"].as_str().unwrap().to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack}");
    assert!(hijack.message().contains("another app"), "{hijack}");
    let moved = client
        .sync(authed(
            SyncRequest {
                profile: Some(other),
                installed: vec![],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert!(moved.message().contains("app_id"), "{moved}");
    http.post_json("/v1/tasks", json!({"name": "private"}))
        .await;
    let (_, version) = http
        .post_bytes(
            "/v1/tasks/private/versions",
            bundle(dir.path(), "private", "1.0.0"),
        )
        .await;
    let not_handed = client
        .fetch_bundle(authed(
            FetchBundleRequest {
                digest: version["bundle_digest"].as_str().unwrap().to_owned(),
                offset: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_handed.code(), Code::NotFound, "{not_handed}");
    drop(notices);
    cloud.shutdown().await;
}

async fn releases_push_notices_and_sync_serves_verifiable_manifests_and_resumable_bundles(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend.start(dir.path(), |_| {}).await;
    let http = Http::new(&cloud);
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let registered = register(&mut client, "d1", "").await.unwrap();
    let token = registered.device_token.clone();
    let mut notices = client
        .subscribe(authed(SubscribeRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    notices.message().await.unwrap().unwrap();

    http.post_json("/v1/tasks", json!({"name": "t"})).await;
    // Big enough (incompressible) to span several chunks.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let payload: String = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let dir_with_data = task_dir(dir.path(), "t", "1.0.0", "def run(ctx):\n    return ctx\n");
    std::fs::write(dir_with_data.join("data.txt"), payload).unwrap();
    let bytes = walle_proto::bundle::pack_dir(&dir_with_data).unwrap().1;
    let (status, version) = http.post_bytes("/v1/tasks/t/versions", bytes.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    let (status, release) = http
        .post_json("/v1/releases", json!({"task": "t", "version": "1.0.0"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let pushed = notices.message().await.unwrap().unwrap();
    assert_eq!(pushed.kind, notice::Kind::TaskChanged as i32);
    assert_eq!(pushed.task, "t");
    assert_eq!(pushed.release_id, release["id"].as_str().unwrap());

    let sync = client
        .sync(authed(
            SyncRequest {
                profile: Some(profile("d1")),
                installed: vec![],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sync.desired.len(), 1);
    let desired = &sync.desired[0];
    assert_eq!(desired.action, desired_task::Action::Install as i32);
    let manifest = walle_proto::signing::verify(
        desired.manifest.as_ref().unwrap(),
        &registered.publisher_keys,
    )
    .unwrap();
    assert_eq!(
        manifest.bundle_digest,
        walle_proto::bundle::digest_hex(&bytes)
    );
    assert_eq!(manifest.bundle_size, bytes.len() as u64);

    let fetch = |offset: u64| FetchBundleRequest {
        digest: manifest.bundle_digest.clone(),
        offset,
    };
    let mut stream = client
        .fetch_bundle(authed(fetch(0), &token))
        .await
        .unwrap()
        .into_inner();
    let mut whole = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.offset, whole.len() as u64);
        whole.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert_eq!(whole, bytes);
    assert!(chunks > 1, "expected a chunked stream");
    let resume_at = bytes.len() as u64 - 1000;
    let mut stream = client
        .fetch_bundle(authed(fetch(resume_at), &token))
        .await
        .unwrap()
        .into_inner();
    let mut tail = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        tail.extend_from_slice(&chunk.data);
    }
    assert_eq!(tail, &bytes[resume_at as usize..]);
    let past_end = client
        .fetch_bundle(authed(fetch(bytes.len() as u64 + 1), &token))
        .await
        .unwrap_err();
    assert_eq!(past_end.code(), Code::OutOfRange);

    // A task the device has but no release wants any more is removed.
    let sync = client
        .sync(authed(
            SyncRequest {
                profile: None,
                installed: vec![walle_proto::v1::InstalledTask {
                    task: "gone".into(),
                    version: "0.1.0".into(),
                    bundle_digest: String::new(),
                }],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        sync.desired
            .iter()
            .any(|d| d.task == "gone" && d.action == desired_task::Action::Remove as i32)
    );
    drop(notices);
    cloud.shutdown().await;
}

async fn a_restarted_cloud_keeps_its_key_tasks_and_releases(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend.start(dir.path(), |_| {}).await;
    let http = Http::new(&cloud);
    http.post_json("/v1/tasks", json!({"name": "t"})).await;
    http.post_bytes("/v1/tasks/t/versions", bundle(dir.path(), "t", "1.0.0"))
        .await;
    http.post_json("/v1/releases", json!({"task": "t", "version": "1.0.0"}))
        .await;
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let before = register(&mut client, "d1", "").await.unwrap();
    let token = cloud.admin_token.clone();
    cloud.shutdown().await;

    let cloud = backend.start(dir.path(), |_| {}).await;
    assert_eq!(cloud.admin_token, token);
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let sync = client
        .sync(authed(SyncRequest::default(), &before.device_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sync.desired.len(), 1);
    walle_proto::signing::verify(
        sync.desired[0].manifest.as_ref().unwrap(),
        &before.publisher_keys,
    )
    .unwrap();
    let (_, releases) = Http::new(&cloud).get("/v1/releases").await;
    assert_eq!(releases[0]["state"], "active");
    cloud.shutdown().await;
}

async fn roles_limit_operators_and_every_mutation_is_audited(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend.start(dir.path(), |_| {}).await;
    let admin = Http::new(&cloud);
    let mut tokens = std::collections::HashMap::new();
    for role in ["viewer", "developer", "release-manager"] {
        let (status, body) = admin
            .post_json(
                "/v1/tokens",
                json!({"name": format!("{role} bot"), "role": role}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tokens.insert(
            role,
            (
                body["id"].as_str().unwrap().to_owned(),
                body["token"].as_str().unwrap().to_owned(),
            ),
        );
    }
    let (status, body) = admin
        .post_json("/v1/tokens", json!({"name": "x", "role": "god"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("role"), "{body}");
    let as_role = |role: &str| Http {
        base: cloud.http_url(),
        token: tokens[role].1.clone(),
        client: reqwest::Client::new(),
    };

    let viewer = as_role("viewer");
    assert_eq!(viewer.get("/v1/tasks").await.0, StatusCode::OK);
    let (status, body) = viewer.post_json("/v1/tasks", json!({"name": "t"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("needs developer"), "{body}");
    assert_eq!(viewer.get("/v1/audit").await.0, StatusCode::FORBIDDEN);
    // What each token may do, as the console asks before it shows a button.
    let (status, me) = viewer.get("/v1/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({"id": tokens["viewer"].0, "name": "viewer bot", "role": "viewer", "may": []})
    );
    let (_, me) = as_role("release-manager").get("/v1/me").await;
    assert_eq!(
        me["may"],
        json!([
            "upload_version",
            "preview_release",
            "create_release",
            "act_release",
            "manage_groups"
        ])
    );
    assert_eq!(admin.get("/v1/me").await.1["role"], "admin");

    let developer = as_role("developer");
    assert_eq!(
        developer
            .post_json("/v1/tasks", json!({"name": "t"}))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, _) = developer
        .post_bytes("/v1/tasks/t/versions", bundle(dir.path(), "t", "1.0.0"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let release = json!({"task": "t", "version": "1.0.0"});
    assert_eq!(
        developer.post_json("/v1/releases", release.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        developer
            .post_json("/v1/tokens", json!({"name": "me", "role": "admin"}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    let manager = as_role("release-manager");
    assert_eq!(
        manager.post_json("/v1/releases", release).await.0,
        StatusCode::CREATED
    );

    let (status, _) = admin
        .post_json(
            &format!("/v1/tokens/{}/revoke", tokens["developer"].0),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        developer.get("/v1/tasks").await.0,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );

    let (status, audit) = admin.get("/v1/audit").await;
    assert_eq!(status, StatusCode::OK);
    let entries: Vec<(String, String, i64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_i64().unwrap(),
            )
        })
        .collect();
    let has = |actor: &str, path: &str, status: i64| {
        entries
            .iter()
            .any(|(a, p, s)| a.starts_with(actor) && p == path && *s == status)
    };
    assert!(has("viewer bot", "/v1/tasks", 403), "{entries:?}");
    assert!(has("developer bot", "/v1/tasks", 201), "{entries:?}");
    assert!(
        has("developer bot", "/v1/tasks/t/versions", 201),
        "{entries:?}"
    );
    assert!(has("developer bot", "/v1/releases", 403), "{entries:?}");
    assert!(
        has("release-manager bot", "/v1/releases", 201),
        "{entries:?}"
    );
    assert!(has("bootstrap admin", "/v1/tokens", 400), "{entries:?}");
    assert!(entries.iter().all(|(_, p, _)| !p.is_empty()));
    assert!(
        !entries.iter().any(|(_, p, _)| p == "/v1/audit"),
        "reads are not audited"
    );
    cloud.shutdown().await;
}

async fn bundle_transfers_are_capped_and_excess_devices_told_when_to_come_back(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend
        .start(dir.path(), |c| {
            c.max_concurrent_transfers = 1;
            c.transfer_retry_ms = 700;
        })
        .await;
    let http = Http::new(&cloud);
    http.post_json("/v1/tasks", json!({"name": "t"})).await;
    let task = task_dir(dir.path(), "t", "1.0.0", "def run(ctx):\n    return ctx\n");
    // Incompressible and larger than the HTTP/2 windows (the client's stream window is 2 MiB),
    // so the transfer cannot be buffered whole and stays open while unread.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..8_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(task.join("weights.bin"), noise).unwrap();
    let bytes = walle_proto::bundle::pack_dir(&task).unwrap().1;
    let (_, version) = http.post_bytes("/v1/tasks/t/versions", bytes).await;
    let digest = version["bundle_digest"].as_str().unwrap().to_owned();
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let token = register(&mut client, "d1", "").await.unwrap().device_token;
    // Bundles are served only to devices a release handed them to.
    http.post_json("/v1/releases", json!({"task": "t", "version": "1.0.0"}))
        .await;
    client
        .sync(authed(
            SyncRequest {
                profile: Some(profile("d1")),
                installed: vec![],
            },
            &token,
        ))
        .await
        .unwrap();
    let fetch = || {
        authed(
            FetchBundleRequest {
                digest: digest.clone(),
                offset: 0,
            },
            &token,
        )
    };

    let mut first = client.fetch_bundle(fetch()).await.unwrap().into_inner();
    first.message().await.unwrap().unwrap();
    let refused = client.fetch_bundle(fetch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    let hint: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((700..1400).contains(&hint), "hint {hint} ms");

    // The slot frees when the first transfer goes away.
    drop(first);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match client.fetch_bundle(fetch()).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(status) => panic!("{status}"),
        }
    }
    cloud.shutdown().await;
}

/// A device's outbox item number `seq`, of `task`, produced at `1000 + seq`.
fn outbox_record(seq: i64, task: &str) -> TunnelRecord {
    TunnelRecord {
        id: format!("r{seq}"),
        task: task.into(),
        version: "1.0.0".into(),
        created_at_ms: 1000 + seq,
        payload: json!({ "n": seq }).to_string().into_bytes(),
        seq,
    }
}

fn compressed(records: Vec<TunnelRecord>) -> UploadRequest {
    UploadRequest {
        records: Vec::new(),
        zstd_batch: walle_proto::tunnel::compress(records),
    }
}

/// JSON Lines export of `query` (status, content type, parsed lines).
async fn export(http: &Http, query: &str) -> (StatusCode, String, Vec<Value>) {
    let response = http
        .client
        .get(format!("{}/v1/records/export?{query}", http.base))
        .bearer_auth(&http.token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let lines = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    (status, content_type, lines)
}

fn seqs(records: &[Value]) -> Vec<i64> {
    records.iter().map(|r| r["seq"].as_i64().unwrap()).collect()
}

async fn tunnel_batches_arrive_compressed_in_order_and_export_as_jsonl(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = backend.start(dir.path(), |_| {}).await;
    let mut client = DevicePlaneClient::connect(cloud.grpc_url()).await.unwrap();
    let token = register(&mut client, "d1", "").await.unwrap().device_token;
    let upload = |request: UploadRequest| {
        let mut client = client.clone();
        let token = token.clone();
        async move { client.upload(authed(request, &token)).await }
    };
    let task_of = |seq: i64| if seq % 2 == 1 { "odd" } else { "even" };
    let first: Vec<TunnelRecord> = (1..=3).map(|n| outbox_record(n, task_of(n))).collect();
    let answer = upload(compressed(first.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.stored, answer.duplicates), (3, 0));
    // The next batch, and the first one again uncompressed (a device that lost the answer).
    let second = (4..=6).map(|n| outbox_record(n, task_of(n))).collect();
    let answer = upload(compressed(second)).await.unwrap().into_inner();
    assert_eq!((answer.stored, answer.duplicates), (3, 0));
    let again = UploadRequest {
        records: first.clone(),
        ..UploadRequest::default()
    };
    let answer = upload(again).await.unwrap().into_inner();
    assert_eq!((answer.stored, answer.duplicates), (0, 3));

    // Hostile batches are refused as a whole with the reason, and store nothing.
    let bomb = UploadRequest {
        zstd_batch: zstd::bulk::compress(&vec![0u8; 9 << 20], 3).unwrap(),
        ..UploadRequest::default()
    };
    let garbage = UploadRequest {
        zstd_batch: b"not zstd at all".to_vec(),
        ..UploadRequest::default()
    };
    let both = UploadRequest {
        records: vec![outbox_record(7, "odd")],
        zstd_batch: walle_proto::tunnel::compress(vec![outbox_record(8, "even")]),
    };
    for (request, reason) in [
        (bomb, "decompresses to more than"),
        (garbage, "not valid zstd"),
        (both, "not both"),
    ] {
        let refused = upload(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains(reason), "{refused}");
    }

    let http = Http::new(&cloud);
    let (_, odd) = http.get("/v1/records?task=odd").await;
    assert_eq!(
        seqs(odd.as_array().unwrap()),
        [5, 3, 1],
        "newest first: {odd}"
    );
    assert_eq!(odd[0]["payload"], json!({"n": 5}));
    let (_, window) = http.get("/v1/records?from_ms=1002&to_ms=1005").await;
    let mut in_window = seqs(window.as_array().unwrap());
    in_window.sort();
    assert_eq!(in_window, [2, 3, 4]);
    let (_, other_version) = http.get("/v1/records?version=2.0.0").await;
    assert_eq!(other_version, json!([]));
    let (status, body) = http.get("/v1/records?colour=blue").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, content_type, lines) = export(&http, "task=even").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/x-ndjson");
    assert_eq!(seqs(&lines), [2, 4, 6], "in the order produced");
    assert!(
        lines
            .iter()
            .all(|r| r["device_id"] == "d1" && r["task"] == "even")
    );

    // An export longer than one page comes out whole and in order.
    for batch in 0..3 {
        let records = (0..500)
            .map(|i| outbox_record(100 + batch * 500 + i, "bulk"))
            .collect();
        assert_eq!(
            upload(compressed(records))
                .await
                .unwrap()
                .into_inner()
                .stored,
            500
        );
    }
    let (_, _, bulk) = export(&http, "task=bulk&device=d1").await;
    assert_eq!(seqs(&bulk), (100..1600).collect::<Vec<_>>());
    let (status, _, _) = export(&http, "").await;
    assert_eq!(status, StatusCode::OK);
    cloud.shutdown().await;
}

on_both_backends!(
    tunnel_batches_arrive_compressed_in_order_and_export_as_jsonl,
    bundle_transfers_are_capped_and_excess_devices_told_when_to_come_back,
    roles_limit_operators_and_every_mutation_is_audited,
    control_plane_requires_an_operator_token,
    bad_uploads_and_requests_get_specific_errors_and_store_nothing,
    device_plane_authenticates_validates_and_stores_records_once,
    releases_push_notices_and_sync_serves_verifiable_manifests_and_resumable_bundles,
    a_restarted_cloud_keeps_its_key_tasks_and_releases,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_planes_serve_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_pem = certified.cert.pem();
    let tls = walle_cloud::tls::TlsFiles {
        cert_pem: dir.path().join("cert.pem"),
        key_pem: dir.path().join("key.pem"),
    };
    std::fs::write(&tls.cert_pem, &cert_pem).unwrap();
    std::fs::write(&tls.key_pem, certified.signing_key.serialize_pem()).unwrap();
    let cloud = Backend::sqlite()
        .start(&dir.path().join("data"), |c| c.tls = Some(tls.clone()))
        .await;
    assert!(cloud.http_url().starts_with("https://") && cloud.grpc_url().starts_with("https://"));

    // Control plane: HTTPS with the certificate trusted works; plain HTTP and untrusted do not.
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let health = trusting
        .get(format!("{}/v1/health", cloud.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let plain = reqwest::get(format!("http://{}/v1/health", cloud.http_addr)).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    assert!(
        reqwest::get(format!("{}/v1/health", cloud.http_url()))
            .await
            .is_err(),
        "untrusted certificate accepted"
    );

    // Device plane: gRPC over TLS with the certificate trusted works; plain does not.
    let tls_config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem.as_bytes()));
    let channel = tonic::transport::Endpoint::from_shared(cloud.grpc_url())
        .unwrap()
        .tls_config(tls_config)
        .unwrap()
        .connect()
        .await
        .unwrap();
    register(&mut DevicePlaneClient::new(channel), "tls-device", "")
        .await
        .unwrap();
    let plain = async {
        let mut client = DevicePlaneClient::connect(format!("http://{}", cloud.grpc_addr))
            .await
            .ok()?;
        register(&mut client, "plain-device", "").await.ok()
    };
    assert!(
        plain.await.is_none(),
        "plain gRPC accepted by a TLS device plane"
    );
    cloud.shutdown().await;

    // A key that does not match fails the start with the file named.
    std::fs::write(
        &tls.key_pem,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = Cloud::start(walle_cloud::CloudConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        tls: Some(tls.clone()),
        ..Default::default()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("cert.pem"), "{err}");
}

/// Deterministic incompressible bytes (xorshift), so a bundle really is as large as its files.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_live_in_s3_when_configured_and_uploads_stream_under_the_size_limit() {
    let s3 = common::S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();

    // A bucket that does not exist fails the start, naming where it looked.
    let mut missing = s3.store_config("");
    if let walle_cloud::bundles::BundleStoreConfig::S3(c) = &mut missing {
        c.bucket = "no-such-bucket".into();
    }
    let err = Cloud::start(walle_cloud::CloudConfig {
        data_dir: dir.path().join("refused"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        bundle_store: missing,
        ..Default::default()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("s3://no-such-bucket"), "{err}");

    let limit: u64 = 24 * 1024 * 1024;
    let cloud = Backend::sqlite()
        .start(&dir.path().join("data"), |c| {
            c.bundle_store = s3.store_config("walle/test");
            c.max_bundle_bytes = limit;
        })
        .await;
    let http = Http::new(&cloud);
    http.post_json("/v1/tasks", json!({"name": "big"})).await;

    // A bundle larger than one multipart part goes up in parts and reads back byte for byte.
    let task = task_dir(dir.path(), "big", "1.0.0", "def run(ctx):\n    return 1\n");
    std::fs::write(task.join("weights.bin"), noise(19 * 1024 * 1024, 7)).unwrap();
    let bytes = walle_proto::bundle::pack_dir(&task).unwrap().1;
    assert!(bytes.len() > 16 * 1024 * 1024 && (bytes.len() as u64) < limit);
    let (status, row) = http
        .post_bytes("/v1/tasks/big/versions", bytes.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{row}");
    let digest = walle_proto::bundle::digest_hex(&bytes);
    assert_eq!(row["bundle_digest"], digest.as_str());
    let key = format!("walle/test/bundles/sha256/{digest}");
    assert_eq!(s3.keys().await, vec![key.clone()]);
    let stored = reqwest::get(format!("{}/{}/{key}", s3.endpoint, s3.bucket))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(stored == bytes, "the stored object differs from the upload");
    assert!(
        !dir.path().join("data/objects/bundles").exists(),
        "bundles went to the local disk, not the bucket"
    );

    // An upload that never ends is refused while still arriving: the server cannot have waited
    // for (or buffered) the whole body.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let feeder = tokio::spawn(async move {
        // An endless body: only the server's refusal ends this request.
        let chunk = vec![0u8; 256 * 1024];
        while sender.send(Ok(chunk.clone())).await.is_ok() {}
    });
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        http.send(
            http.client
                .post(format!("{}/v1/tasks/big/versions", http.base))
                .body(body),
        ),
    )
    .await
    .expect("the server waited for the end of an oversized upload");
    assert_eq!(refused.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", refused.1);
    assert!(error_of(&refused.1).contains("limit"), "{}", refused.1);
    feeder.abort();
    assert_eq!(s3.keys().await, vec![key], "nothing new stored");
    let leftovers = std::fs::read_dir(dir.path().join("data/uploads"))
        .unwrap()
        .count();
    assert_eq!(
        leftovers, 0,
        "the spooled part of the refused upload was kept"
    );
    cloud.shutdown().await;
}

/// Every operation of the control plane: what the OpenAPI document must list.
const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/v1/apps"),
    ("POST", "/v1/apps"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/devices"),
    ("GET", "/v1/devices/{id}"),
    ("GET", "/v1/groups"),
    ("POST", "/v1/groups"),
    ("DELETE", "/v1/groups/{name}"),
    ("GET", "/v1/groups/{name}"),
    ("POST", "/v1/groups/{name}/members"),
    ("GET", "/v1/health"),
    ("GET", "/v1/me"),
    ("GET", "/v1/overview"),
    ("GET", "/v1/ready"),
    ("GET", "/v1/records"),
    ("GET", "/v1/records/export"),
    ("GET", "/v1/releases"),
    ("POST", "/v1/releases"),
    ("POST", "/v1/releases/preview"),
    ("GET", "/v1/releases/{id}"),
    ("GET", "/v1/releases/{id}/coverage"),
    ("GET", "/v1/releases/{id}/failures"),
    ("GET", "/v1/releases/{id}/live"),
    ("POST", "/v1/releases/{id}/{action}"),
    ("GET", "/v1/tasks"),
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks/{name}/versions"),
    ("POST", "/v1/tasks/{name}/versions"),
    ("GET", "/v1/tasks/{name}/versions/{version}"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("POST", "/v1/tokens/{id}/revoke"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes_and_fuzzing_finds_no_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Backend::sqlite()
        .start(&dir.path().join("data"), |_| {})
        .await;
    let doc_url = format!("{}/v1/openapi.json", cloud.http_url());
    let doc: Value = reqwest::get(&doc_url).await.unwrap().json().await.unwrap();
    assert_eq!(
        doc,
        serde_json::to_value(walle_cloud::control::openapi()).unwrap()
    );
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if let Some(operation) = item.get(method) {
                documented.push((method.to_uppercase(), path.clone()));
                // Public operations say so with an empty requirement list, and cannot be
                // refused a token; every other one can.
                let public = operation.get("security") == Some(&json!([]));
                assert_eq!(
                    public,
                    ["/v1/health", "/v1/ready"].contains(&path.as_str()),
                    "{method} {path}"
                );
                assert_eq!(
                    operation["responses"].get("401").is_some(),
                    !public,
                    "{method} {path}"
                );
            }
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Each documented operation is served: a handler answers (success, or an error with a JSON
    // body), never the router's bare 404 or 405.
    let http = Http::new(&cloud);
    for (method, path) in &documented {
        let url = format!("{}{}", http.base, path)
            .replace("{name}", "x")
            .replace("{id}", "x")
            .replace("{version}", "1.0.0")
            .replace("{action}", "pause");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = http.send(http.client.request(method.clone(), url)).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            status.is_success() || body.get("error").is_some(),
            "{method} {path}: {status} {body}"
        );
    }
    let (status, body) = http.get("/v1/not-a-route").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "no such route: GET /v1/not-a-route"})
        )
    );

    // A property-based run from the document (schemathesis, installed by scripts/setup.sh):
    // examples, boundary values, random and stateful sequences. It must find no 5xx, and every
    // response must match the document (status codes, content types, schemas). The one check
    // left out, "schema-valid requests are accepted", cannot hold: the schema cannot say what a
    // valid bundle or an existing task is.
    let schemathesis = common::python_tool("schemathesis");
    let auth = format!("Authorization: Bearer {}", cloud.admin_token);
    let workdir = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&schemathesis)
            .args(["run", &doc_url, "-H", &auth])
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--max-examples", "25", "--seed", "20261121"])
            .args(["--generation-database", "none", "--no-color"])
            .current_dir(workdir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {schemathesis} ({e}); run scripts/setup.sh, which installs it")
            })
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    cloud.shutdown().await;
}
