//! What an operator's tooling asks without a token: `/v1/health` (does every part this replica
//! depends on answer: the database, the bundle store and, when records go there, the JetStream
//! stream), `/v1/ready` (should a load balancer send it traffic) and `/metrics`
//! (Prometheus, see [`crate::metrics`]).
//!
//! Each probe is bounded by [`PROBE_TIMEOUT`], so a database or bucket that hangs makes the
//! answer a 503 naming it, never a request that hangs too. The verdicts are pure functions
//! ([`health_verdict`], [`readiness_verdict`]) of what the probes found.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bundles::BundleStore;
use crate::metrics::{self, Metrics, Snapshot};
use crate::notify::NoticeHub;
use crate::records_sink::RecordsSink;
use crate::store::Db;
use crate::{AppState, CloudError};

/// Longest a probe of the database or the bundle store may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The part of the cloud's state these routes read.
#[derive(Clone)]
pub(super) struct Probes {
    db: Db,
    bundles: BundleStore,
    records: RecordsSink,
    metrics: Metrics,
    hub: NoticeHub,
    transfers: Arc<Semaphore>,
    max_transfers: usize,
    stopping: watch::Receiver<bool>,
}

impl FromRef<AppState> for Probes {
    fn from_ref(state: &AppState) -> Probes {
        Probes {
            db: state.db.clone(),
            bundles: state.bundles.clone(),
            records: state.records.clone(),
            metrics: state.metrics.clone(),
            hub: state.hub.clone(),
            transfers: state.transfers.clone(),
            max_transfers: state.config.max_concurrent_transfers.max(1),
            stopping: state.stopping.clone(),
        }
    }
}

/// The routes documented in the OpenAPI document (below `/v1`); `/metrics` is served apart.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// What `/v1/health` found.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub(super) struct Health {
    /// `ok`, or `unavailable` when a part failed.
    status: String,
    /// `ok`, or why the database failed its probe (`SELECT 1`).
    database: String,
    /// `ok`, or why the bundle store failed its probe (listing the bundle prefix).
    bundle_store: String,
    /// `ok`, or why the records sink failed its probe (with the JetStream sink, looking up its
    /// stream; the database sink is the database). A failing sink does not make the replica
    /// unready: only uploads wait for it, and devices keep their records until it is back.
    records_sink: String,
    /// The failing parts (`database`, `bundle_store`, `records_sink`); empty when all is well.
    failing: Vec<String>,
    /// With a 503: what failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What `/v1/ready` found.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub(super) struct Readiness {
    /// `ready`, `stopping` (the replica is shutting down) or `unavailable` (its database does
    /// not answer).
    status: String,
    /// With a 503: why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Whether every part this replica depends on answers: its database, its bundle store and its
/// records sink.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Every part answers", body = Health),
        (status = 503, description = "A part failed; `failing` names it", body = Health),
    )
)]
async fn health(State(probes): State<Probes>) -> (StatusCode, Json<Health>) {
    let (database, bundle_store, records_sink) = tokio::join!(
        probe_database(&probes),
        bounded("bundle store", probes.bundles.check_reachable()),
        bounded("records sink", probes.records.check_reachable()),
    );
    let (status, body) = health_verdict(database, bundle_store, records_sink);
    (status, Json(body))
}

/// Whether this replica should get traffic: it has started, is not stopping, and its database
/// answers.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Readiness),
        (status = 503, description = "Stopping, or the database does not answer", body = Readiness),
    )
)]
async fn ready(State(probes): State<Probes>) -> (StatusCode, Json<Readiness>) {
    let stopping = *probes.stopping.borrow();
    let database = if stopping {
        Ok(())
    } else {
        probe_database(&probes).await
    };
    let (status, body) = readiness_verdict(stopping, database);
    (status, Json(body))
}

/// Every metric, in the Prometheus text format.
pub(super) async fn metrics(State(probes): State<Probes>) -> Response {
    // The probe feeds the latency histogram this scrape shows.
    let _ = probe_database(&probes).await;
    let releases_by_state = bounded("database", probes.db.count_releases_by_state())
        .await
        .ok();
    let snapshot = Snapshot {
        devices_connected: probes.hub.connected_devices(),
        transfers_in_flight: probes
            .max_transfers
            .saturating_sub(probes.transfers.available_permits()),
        releases_by_state,
    };
    match probes.metrics.encode(&snapshot) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Pings the database within the timeout; a successful round trip goes to the metrics.
async fn probe_database(probes: &Probes) -> Result<(), String> {
    let started = Instant::now();
    let answer = bounded("database", probes.db.ping()).await;
    probes.metrics.db_probe(answer.is_ok(), started.elapsed());
    answer
}

/// Runs a probe of `part` within [`PROBE_TIMEOUT`]; its error, or the timeout, in words.
async fn bounded<T>(
    part: &str,
    probe: impl Future<Output = Result<T, CloudError>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "{part}: no answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// The answer of `/v1/health` to what the probes found.
fn health_verdict(
    database: Result<(), String>,
    bundle_store: Result<(), String>,
    records_sink: Result<(), String>,
) -> (StatusCode, Health) {
    let parts = [
        ("database", database),
        ("bundle_store", bundle_store),
        ("records_sink", records_sink),
    ];
    let failing: Vec<String> = parts
        .iter()
        .filter(|(_, result)| result.is_err())
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let errors: Vec<String> = parts
        .iter()
        .filter_map(|(_, result)| result.as_ref().err().cloned())
        .collect();
    let [(_, database), (_, bundle_store), (_, records_sink)] = parts;
    let word = |result: Result<(), String>| result.err().unwrap_or_else(|| "ok".to_owned());
    let healthy = failing.is_empty();
    let body = Health {
        status: if healthy { "ok" } else { "unavailable" }.to_owned(),
        database: word(database),
        bundle_store: word(bundle_store),
        records_sink: word(records_sink),
        failing,
        error: (!healthy).then(|| errors.join("; ")),
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// The answer of `/v1/ready`: 503 while stopping, whatever the database says.
fn readiness_verdict(stopping: bool, database: Result<(), String>) -> (StatusCode, Readiness) {
    let (status, error) = match (stopping, database) {
        (true, _) => ("stopping", Some("the cloud is shutting down".to_owned())),
        (false, Err(e)) => ("unavailable", Some(e)),
        (false, Ok(())) => ("ready", None),
    };
    let code = if error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        Readiness {
            status: status.to_owned(),
            error,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_each_failing_part_and_answers_503() {
        let (status, body) = health_verdict(Ok(()), Ok(()), Ok(()));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"status": "ok", "database": "ok", "bundle_store": "ok",
                "records_sink": "ok", "failing": []})
        );
        let (status, body) = health_verdict(Ok(()), Err("bucket gone".into()), Ok(()));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.failing, ["bundle_store"]);
        assert_eq!(body.bundle_store, "bucket gone");
        assert_eq!(body.database, "ok");
        assert_eq!(body.error.as_deref(), Some("bucket gone"));
        let (status, body) = health_verdict(
            Err("database: refused".into()),
            Err("bundle storage: gone".into()),
            Ok(()),
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.failing, ["database", "bundle_store"]);
        assert_eq!(
            body.error.as_deref(),
            Some("database: refused; bundle storage: gone")
        );
        let (status, body) = health_verdict(Ok(()), Ok(()), Err("stream R: gone".into()));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.failing, ["records_sink"]);
        assert_eq!(body.records_sink, "stream R: gone");
    }

    #[test]
    fn a_stopping_replica_is_not_ready_whatever_its_database_says() {
        assert_eq!(readiness_verdict(false, Ok(())).0, StatusCode::OK);
        let (status, body) = readiness_verdict(true, Ok(()));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.status, "stopping");
        let (status, body) = readiness_verdict(false, Err("database: refused".into()));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.status, "unavailable");
        assert_eq!(body.error.as_deref(), Some("database: refused"));
    }
}
