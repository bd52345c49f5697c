//! The local ingest endpoint: lets another process on the device (the host app, or
//! `walle-device replay`) feed events over HTTP on loopback, and read the agent's status.
//!
//! - `POST /v1/events` — body: JSON events, one per line (JSONL), or, with `Content-Type:
//!   application/x-protobuf`, one `walle.device.v1.EventBatch`. Answers how many were accepted
//!   and, for each rejected event, its line (or 1-based position in the batch) and the reason.
//! - `GET /v1/status` — the agent status as JSON.

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

use crate::AgentError;
use crate::agent::{AgentStatus, Shared};

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

pub(crate) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), AgentError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Config(format!("cannot listen on ingest address {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| AgentError::Config(format!("ingest address: {e}")))?;
    let app = Router::new()
        .route("/v1/events", post(ingest_events))
        .route("/v1/status", get(status))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared);
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "ingest endpoint failed");
        }
    });
    tracing::info!(%bound, "ingest endpoint listening");
    Ok((bound, server))
}

async fn ingest_events(
    State(shared): State<Arc<Shared>>,
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
            record(index + 1, shared.track_proto(event));
        }
    } else {
        let text = std::str::from_utf8(&body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not UTF-8: {e}")))?;
        for (index, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                record(index + 1, shared.track_json(line));
            }
        }
    }
    Ok(Json(result))
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<AgentStatus> {
    Json(shared.status())
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use walle_proto::v1::{ArgValue, Event as ProtoEvent, EventBatch, EventKind, arg_value};

    use super::*;
    use crate::{Agent, DeviceConfig};

    async fn agent_with_ingest(dir: &std::path::Path) -> Agent {
        Agent::start(DeviceConfig {
            cloud_url: "http://127.0.0.1:9".into(),
            data_dir: dir.to_owned(),
            ingest_addr: Some("127.0.0.1:0".parse().unwrap()),
            vm_threads: 1,
            ..DeviceConfig::default()
        })
        .await
        .unwrap()
    }

    fn proto_event(id: &str, kind: EventKind) -> ProtoEvent {
        ProtoEvent {
            id: id.into(),
            // Recent: the store's retention deletes events older than a week.
            ts: crate::agent::now_ms(),
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
        let now = crate::agent::now_ms();
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
}
