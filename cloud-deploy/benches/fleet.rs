//! Fleet benchmark: one cloud (SQLite, this machine) and N simulated devices over loopback gRPC.
//!
//! Measures
//! - registration rate (N devices);
//! - notice fan-out: release created → every one of N open Subscribe streams has the notice;
//! - Sync RPCs/s with C concurrent callers (each Sync evaluates every active release's policy
//!   for the device and returns a signed manifest);
//! - as the in-stack floor to compare with, authenticated empty `Report` RPCs/s on the same
//!   server and connections (auth lookup + no work): how far Sync is from the cheapest call.
//!
//! Run: `cargo bench -p walle-cloud --bench fleet -- [devices] [concurrency] [seconds]`
//! (defaults 10000 64 5). Prints one table; results go to bench/RESULTS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use walle_cloud::{Cloud, CloudConfig};
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::{
    DeviceProfile, RegisterRequest, ReportRequest, SubscribeRequest, SyncRequest,
};

/// Streams per HTTP/2 connection (servers commonly cap concurrent streams per connection).
const STREAMS_PER_CONNECTION: usize = 100;

fn authed<T>(message: T, token: &AsciiMetadataValue) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

fn profile(i: usize) -> DeviceProfile {
    DeviceProfile {
        device_id: format!("sim-{i:06}"),
        app_id: "com.example.shop".into(),
        app_version: format!("5.{}.0", i % 4),
        os: if i.is_multiple_of(2) {
            "android"
        } else {
            "ios"
        }
        .into(),
        os_version: "14".into(),
        hardware_tier: ["low", "mid", "high"][i % 3].into(),
        region: ["eu", "us", "ap"][i % 3].into(),
        ..Default::default()
    }
}

async fn publish(cloud: &Cloud, dir: &std::path::Path) {
    let http = reqwest::Client::new();
    let base = cloud.http_url();
    let token = &cloud.admin_token;
    http.post(format!("{base}/v1/tasks"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await
        .unwrap();
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("walle.toml"),
        "name = \"bench\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\n",
    )
    .unwrap();
    std::fs::write(task.join("main.py"), "def run(ctx):\n    return None\n").unwrap();
    let bundle = walle_proto::bundle::pack_dir(&task).unwrap().1;
    let response = http
        .post(format!("{base}/v1/tasks/bench/versions"))
        .bearer_auth(token)
        .body(bundle)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

async fn release(cloud: &Cloud, policy: serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/releases", cloud.http_url()))
        .bearer_auth(&cloud.admin_token)
        .json(&serde_json::json!({"task": "bench", "version": "1.0.0", "policy": policy}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// Calls `call` from `concurrency` tasks for `seconds`; returns calls per second.
async fn rate<F, Fut>(concurrency: usize, seconds: u64, call: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (call, done) = (call.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < deadline {
                    call(i).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += concurrency;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(10_000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    let seconds = args.get(2).copied().unwrap_or(5) as u64;
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(CloudConfig {
        data_dir: dir.path().to_owned(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        pace_window_ms: 0,
        ..CloudConfig::default()
    })
    .await
    .unwrap();
    publish(&cloud, dir.path()).await;

    let connections = devices.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let mut channels: Vec<Channel> = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(
            Channel::from_shared(cloud.grpc_url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let channels = Arc::new(channels);

    let started = Instant::now();
    let tokens: Vec<AsciiMetadataValue> = futures::stream::iter(0..devices)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            async move {
                let response = DevicePlaneClient::new(channel)
                    .register(RegisterRequest {
                        profile: Some(profile(i)),
                        enrollment_secret: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                format!("Bearer {}", response.device_token).parse().unwrap()
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    let register_rate = devices as f64 / started.elapsed().as_secs_f64();
    let tokens = Arc::new(tokens);

    // Open every stream and drain its HELLO.
    let mut streams = Vec::with_capacity(devices);
    for i in 0..devices {
        let mut client = DevicePlaneClient::new(channels[i % channels.len()].clone());
        let mut stream = client
            .subscribe(authed(SubscribeRequest {}, &tokens[i]))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    while cloud.connected_devices() < devices {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Fan-out: every stream receives the notice of one release.
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { stream.message().await.unwrap().unwrap() }))
        .collect();
    let started = Instant::now();
    release(
        &cloud,
        serde_json::json!({"target": {"app_version": ">=5.1"}, "stages": [50, 100]}),
    )
    .await;
    for r in receivers {
        r.await.unwrap();
    }
    let fan_out_secs = started.elapsed().as_secs_f64();

    let sync_rate = {
        let (channels, tokens) = (channels.clone(), tokens.clone());
        rate(concurrency, seconds, move |i| {
            let i = i % devices;
            let mut client = DevicePlaneClient::new(channels[i % channels.len()].clone());
            let request = authed(
                SyncRequest {
                    profile: Some(profile(i)),
                    installed: vec![],
                },
                &tokens[i],
            );
            async move {
                client.sync(request).await.unwrap();
            }
        })
        .await
    };
    let floor_rate = {
        let (channels, tokens) = (channels.clone(), tokens.clone());
        rate(concurrency, seconds, move |i| {
            let i = i % devices;
            let mut client = DevicePlaneClient::new(channels[i % channels.len()].clone());
            let request = authed(ReportRequest { events: vec![] }, &tokens[i]);
            async move {
                client.report(request).await.unwrap();
            }
        })
        .await
    };

    println!(
        "fleet benchmark: {devices} devices, {connections} HTTP/2 connections, {concurrency} concurrent callers, {seconds} s per rate"
    );
    println!("| measure | walle | in-stack floor (empty authenticated Report) |");
    println!("|---|---|---|");
    println!("| Register | {register_rate:.0} devices/s | |");
    println!(
        "| notice fan-out to {devices} open streams | {:.0} ms ({:.0} notices/s) | |",
        fan_out_secs * 1000.0,
        devices as f64 / fan_out_secs
    );
    println!(
        "| Sync (policy evaluation + signed manifest) | {sync_rate:.0} RPCs/s | {floor_rate:.0} RPCs/s ({:.2}x) |",
        sync_rate / floor_rate
    );
    cloud.shutdown().await;
}
