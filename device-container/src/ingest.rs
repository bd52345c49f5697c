//! The local ingest endpoint: lets another process on the device (the host app, or
//! `walle-device replay`) feed events over HTTP on loopback, and read the agent's status.
//!
//! - `POST /v1/events` — body: JSON events, one per line (JSONL). Answers how many were accepted
//!   and, for each rejected line, its number and the reason.
//! - `GET /v1/status` — the agent status as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::AgentError;
use crate::agent::{AgentStatus, Shared};

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

async fn ingest_events(State(shared): State<Arc<Shared>>, body: String) -> Json<IngestResult> {
    let mut result = IngestResult {
        accepted: 0,
        triggered: 0,
        rejected: Vec::new(),
    };
    for (index, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match shared.track_json(line) {
            Ok(fired) => {
                result.accepted += 1;
                result.triggered += fired;
            }
            Err(e) => result.rejected.push(RejectedLine {
                line: index + 1,
                error: e.to_string(),
            }),
        }
    }
    Json(result)
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<AgentStatus> {
    Json(shared.status())
}
