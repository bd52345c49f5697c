//! The local ingest endpoint: lets another process on the device (the host app, or
//! `walle-device replay`) feed events over HTTP, and read the agent's status. It listens on
//! loopback TCP (`ingest_addr`), on a Unix socket (`ingest_socket`, mode 0600 so that only the
//! agent's user may connect), or both; both serve the same routes:
//!
//! - `POST /v1/events` — body: JSON events, one per line (JSONL), or, with `Content-Type:
//!   application/x-protobuf`, one `walle.device.v1.EventBatch`. Answers how many were accepted
//!   and, for each rejected event, its line (or 1-based position in the batch) and the reason.
//! - `GET /v1/status` — the agent status as JSON.
//! - `GET /metrics` — the same status in the Prometheus text format ([`metrics`]).
//!
//! [`Endpoint`] is a client of either form.

mod client;
mod metrics;
mod socket;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use prost::Message;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use walle_proto::v1::EventBatch;

use super::Intake;
use crate::AgentError;
use crate::status::AgentStatus;

pub use client::{ClientError, Endpoint};

/// Content type of a protobuf `EventBatch` body.
pub const PROTOBUF: &str = "application/x-protobuf";
/// Largest request body the endpoint reads.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What `POST /v1/events` answers.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct IngestResult {
    pub accepted: usize,
    pub triggered: usize,
    pub rejected: Vec<RejectedLine>,
}

/// One line that was not accepted.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct RejectedLine {
    pub line: usize,
    pub error: String,
}

/// The agent's status, as the endpoint serves it.
pub(crate) type StatusSource = Arc<dyn Fn() -> AgentStatus + Send + Sync>;

/// What the endpoint's handlers hold: the intake to feed, and where status comes from.
#[derive(Clone)]
struct EndpointState {
    intake: Arc<Intake>,
    status: StatusSource,
}

/// Where the endpoint listens (from the device configuration).
pub(crate) struct Listen<'a> {
    pub addr: Option<SocketAddr>,
    pub socket: Option<&'a std::path::Path>,
}

/// Starts the configured endpoints (loopback TCP, Unix socket, both or neither); returns the
/// bound TCP address and the server tasks, which stop when `stop` turns true.
pub(crate) async fn start(
    listen: Listen<'_>,
    intake: Arc<Intake>,
    status: StatusSource,
    stop: watch::Receiver<bool>,
) -> Result<(Option<SocketAddr>, Vec<JoinHandle<()>>), AgentError> {
    let state = EndpointState { intake, status };
    // Both listeners first, so that a refusal of either leaves nothing listening.
    let unix = match listen.socket {
        Some(path) => Some(socket::bind(path).await?),
        None => None,
    };
    let tcp = match listen.addr {
        Some(addr) => Some(bind_tcp(addr).await?),
        None => None,
    };
    let mut servers = Vec::new();
    let mut bound = None;
    if let Some((listener, file)) = unix {
        tracing::info!(socket = %file.path().display(), "ingest endpoint listening");
        servers.push(spawn_server(
            listener,
            router(state.clone()),
            stop.clone(),
            Some(file),
        ));
    }
    if let Some((listener, addr)) = tcp {
        tracing::info!(%addr, "ingest endpoint listening");
        servers.push(spawn_server(listener, router(state), stop, None));
        bound = Some(addr);
    }
    Ok((bound, servers))
}

async fn bind_tcp(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), AgentError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Config(format!("cannot listen on ingest address {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| AgentError::Config(format!("ingest address {addr}: {e}")))?;
    Ok((listener, bound))
}

fn router(state: EndpointState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest_events))
        .route("/v1/status", get(status))
        .route("/metrics", get(prometheus_metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `app` on `listener` until `stop`; then removes the socket file, if any.
fn spawn_server<L>(
    listener: L,
    app: Router,
    mut stop: watch::Receiver<bool>,
    socket_file: Option<socket::SocketFile>,
) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "ingest endpoint failed");
        }
        drop(socket_file);
    })
}

async fn ingest_events(
    State(state): State<EndpointState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngestResult>, (StatusCode, String)> {
    let mut result = IngestResult {
        accepted: 0,
        triggered: 0,
        rejected: Vec::new(),
    };
    let mut record = |line: usize, tracked: Result<usize, AgentError>| match tracked {
        Ok(fired) => {
            result.accepted += 1;
            result.triggered += fired;
        }
        Err(e) => result.rejected.push(RejectedLine {
            line,
            error: e.to_string(),
        }),
    };
    if headers.get(header::CONTENT_TYPE) == Some(&HeaderValue::from_static(PROTOBUF)) {
        let batch = EventBatch::decode(body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("body is not a walle.device.v1.EventBatch: {e}"),
            )
        })?;
        for (index, event) in batch.events.into_iter().enumerate() {
            record(index + 1, state.intake.track_proto(event));
        }
    } else {
        let text = std::str::from_utf8(&body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not UTF-8: {e}")))?;
        for (index, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                record(index + 1, state.intake.track_json(line));
            }
        }
    }
    Ok(Json(result))
}

async fn status(State(state): State<EndpointState>) -> Json<AgentStatus> {
    Json((state.status)())
}

async fn prometheus_metrics(
    State(state): State<EndpointState>,
) -> Result<([(header::HeaderName, &'static str); 1], String), (StatusCode, String)> {
    let text = metrics::encode(&(state.status)()).map_err(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed".to_owned(),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use walle_proto::v1::{ArgValue, Event as ProtoEvent, EventBatch, EventKind, arg_value};

    use super::*;
    use crate::{Agent, DeviceConfig};

    async fn agent_with_ingest(dir: &std::path::Path) -> Agent {
        start_agent(dir, Some("127.0.0.1:0".parse().unwrap()), None)
            .await
            .unwrap()
    }

    async fn start_agent(
        dir: &std::path::Path,
        ingest_addr: Option<SocketAddr>,
        ingest_socket: Option<&std::path::Path>,
    ) -> Result<Agent, AgentError> {
        Agent::start(DeviceConfig {
            cloud_url: "http://127.0.0.1:9".into(),
            data_dir: dir.join("data"),
            ingest_addr,
            ingest_socket: ingest_socket.map(std::path::Path::to_owned),
            vm_threads: 1,
            ..DeviceConfig::default()
        })
        .await
    }

    fn proto_event(id: &str, kind: EventKind) -> ProtoEvent {
        ProtoEvent {
            id: id.into(),
            // Recent: the store's retention deletes events older than a week.
            ts: crate::clock::now_ms(),
            session: "s".into(),
            page: "item".into(),
            event: kind as i32,
            item: "sku".into(),
            args: [(
                "price".to_owned(),
                ArgValue {
                    value: Some(arg_value::Value::Float(9.5)),
                },
            )]
            .into(),
        }
    }

    #[tokio::test]
    async fn both_forms_are_ingested_and_rejections_are_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_ingest(dir.path()).await;
        let url = format!("http://{}/v1/events", agent.ingest_addr().unwrap());
        let http = reqwest::Client::new();
        let batch = EventBatch {
            events: vec![
                proto_event("p1", EventKind::Enter),
                proto_event("p2", EventKind::Unspecified),
                proto_event("", EventKind::Click),
            ],
        };
        let answer: IngestResult = http
            .post(&url)
            .header(header::CONTENT_TYPE, PROTOBUF)
            .body(batch.encode_to_vec())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer.accepted, 1);
        let lines: Vec<usize> = answer.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3]);
        let now = crate::clock::now_ms();
        let jsonl = format!(
            "{}\n{{oops\n{}",
            format_args!(
                r#"{{"id":"j1","ts":{now},"session":"s","page":"item","event":"exit","item":"sku"}}"#
            ),
            format_args!(
                r#"{{"id":"j2","ts":{now},"session":"s","page":"item","event":"click","args":{{"a":[1]}}}}"#
            ),
        );
        let answer: IngestResult = http
            .post(&url)
            .body(jsonl)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer.accepted, 1);
        assert!(
            answer.rejected[1].error.contains("is an array"),
            "{answer:?}"
        );
        let garbage = http
            .post(&url)
            .header(header::CONTENT_TYPE, PROTOBUF)
            .body(vec![0xff, 0xff, 0xff])
            .send()
            .await
            .unwrap();
        assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
        assert!(garbage.text().await.unwrap().contains("EventBatch"));

        let status = agent.status();
        assert_eq!((status.events_accepted, status.events_rejected), (2, 4));
        let by_reason: Vec<(&str, u64)> = status
            .events_rejected_by_reason
            .iter()
            .map(|(reason, count)| (reason.as_str(), *count))
            .collect();
        assert_eq!(
            by_reason,
            [("bad_arg", 1), ("empty_field", 1), ("malformed", 2)]
        );
        let stored = agent
            .events(&walle_pipeline::EventQuery::default())
            .unwrap();
        assert_eq!(stored[0].args["price"], 9.5, "{stored:?}");
        agent.shutdown().await;
    }

    fn mode(path: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn events_and_status_go_over_the_unix_socket_beside_loopback() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingest.sock");
        let loopback = Some("127.0.0.1:0".parse().unwrap());
        let agent = start_agent(dir.path(), loopback, Some(&path))
            .await
            .unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(mode(&path), 0o600, "only the agent's user may connect");

        let socket = Endpoint::Socket(path.clone());
        let now = crate::clock::now_ms();
        let jsonl = format!(
            "{}\n{{oops\n",
            format_args!(
                r#"{{"id":"j1","ts":{now},"session":"s","page":"item","event":"exit","item":"sku"}}"#
            ),
        );
        let answer = socket.post_events(jsonl, None).await.unwrap();
        assert_eq!(answer.accepted, 1);
        assert_eq!(answer.rejected[0].line, 2, "{answer:?}");
        let batch = EventBatch {
            events: vec![proto_event("p1", EventKind::Enter)],
        };
        let answer = socket
            .post_events(batch.encode_to_vec(), Some(PROTOBUF))
            .await
            .unwrap();
        assert_eq!((answer.accepted, answer.rejected.len()), (1, 0));
        let err = socket
            .post_events(vec![0xff, 0xff], Some(PROTOBUF))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused { status, .. } if *status == StatusCode::BAD_REQUEST),
            "{err}"
        );
        assert!(err.to_string().contains("EventBatch"), "{err}");

        let over_socket = socket.status().await.unwrap();
        assert_eq!(over_socket["events_accepted"], 2, "{over_socket}");
        assert_eq!(over_socket["events_rejected"], 1, "{over_socket}");
        let loopback = Endpoint::Http(format!("http://{}", agent.ingest_addr().unwrap()));
        let over_tcp = loopback.status().await.unwrap();
        assert_eq!(over_tcp["events_accepted"], 2, "{over_tcp}");

        agent.shutdown().await;
        assert!(!path.exists(), "the socket is removed at shutdown");
        let err = socket.status().await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("unix:"), "{err}");
    }

    #[tokio::test]
    async fn a_recorded_stream_is_replayed_over_the_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingest.sock");
        let agent = start_agent(dir.path(), None, Some(&path)).await.unwrap();
        assert_eq!(agent.ingest_addr(), None);
        let recorded = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/events/ipv-sample.jsonl"),
        )
        .unwrap();
        let socket = Endpoint::Socket(path.clone());
        let answer = socket.post_events(recorded, None).await.unwrap();
        // The sample has one bad line on purpose.
        assert_eq!(
            (answer.accepted, answer.rejected.len()),
            (9, 1),
            "{answer:?}"
        );
        assert!(answer.rejected[0].error.contains("teleport"), "{answer:?}");
        assert_eq!(agent.status().events_accepted, 9);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_at_the_path_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingest.sock");
        // Left behind by an agent that was killed: the file exists, nobody accepts on it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let agent = start_agent(dir.path(), None, Some(&path)).await.unwrap();
        let status = Endpoint::Socket(path.clone()).status().await.unwrap();
        assert_eq!(status["device_id"], agent.device_id());
        assert_eq!(mode(&path), 0o600);
        agent.shutdown().await;

        // A socket some process serves is not taken over.
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = start_agent(dir.path(), None, Some(&path))
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("another process is serving"),
            "{err}"
        );
        drop(live);
        std::fs::remove_file(&path).unwrap();

        std::fs::write(&path, "not mine").unwrap();
        let err = start_agent(dir.path(), None, Some(&path))
            .await
            .err()
            .unwrap();
        let expected = format!(
            "ingest socket {}: it exists and is not a socket (a regular file)",
            path.display()
        );
        assert!(err.to_string().contains(&expected), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not mine");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = start_agent(dir.path(), None, Some(&path))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("(a directory)"), "{err}");
        std::fs::remove_dir(&path).unwrap();

        // The loopback address is taken: nothing is left listening on the socket either.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = start_agent(dir.path(), Some(taken.local_addr().unwrap()), Some(&path))
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("cannot listen on ingest address"),
            "{err}"
        );
        assert!(!path.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != "data")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
