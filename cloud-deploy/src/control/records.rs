//! `/v1/records`: what devices uploaded through the tunnel, listed as JSON or exported as JSONL.
//! With the JetStream records sink the records are in the stream, not the database, and both
//! answer 409 saying where to read them.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::stream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ErrorBody;
use crate::records_sink::RecordsSinkConfig;
use crate::store::events::{RecordCursor, RecordFilter, RecordRow};
use crate::{AppState, CloudError};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_records))
        .routes(routes!(export_records))
}

/// Lists tunnel records devices uploaded, newest first.
#[utoipa::path(get, path = "/records", tag = "records", params(RecordFilter), responses(
    (status = 200, body = Vec<RecordRow>),
    (status = 400, body = ErrorBody, description = "bad query"),
    (status = 409, body = ErrorBody, description = "records go to a NATS JetStream stream"),
))]
async fn list_records(
    State(state): State<AppState>,
    filter: Result<Query<RecordFilter>, QueryRejection>,
) -> Result<Json<Vec<RecordRow>>, CloudError> {
    in_database(&state.config.records_sink)?;
    let Query(filter) = filter.map_err(|e| CloudError::Invalid(e.body_text()))?;
    Ok(Json(state.db.list_records(&filter).await?))
}

/// Exports every matching record as JSON Lines (one record object per line, the same fields as
/// the listing), in the order the cloud received them; one device's records of a task come in
/// the order the task produced them. `limit` is ignored. The body streams page by page, so an
/// export of millions of records does not sit in memory.
#[utoipa::path(get, path = "/records/export", tag = "records", params(RecordFilter), responses(
    (status = 200, content_type = "application/x-ndjson", body = String,
        description = "one JSON record per line"),
    (status = 400, body = ErrorBody, description = "bad query"),
    (status = 409, body = ErrorBody, description = "records go to a NATS JetStream stream"),
))]
async fn export_records(
    State(state): State<AppState>,
    filter: Result<Query<RecordFilter>, QueryRejection>,
) -> Result<Response, CloudError> {
    in_database(&state.config.records_sink)?;
    let Query(filter) = filter.map_err(|e| CloudError::Invalid(e.body_text()))?;
    // The first page is read before answering, so a failing database gives an error status
    // rather than a 200 with a cut-off body.
    let first = state.db.export_records(&filter, None).await?;
    let pages = stream::try_unfold(
        (state, filter, Some(first), None::<RecordCursor>),
        |(state, filter, page, after)| async move {
            let page = match page {
                Some(page) => page,
                None => state.db.export_records(&filter, after.as_ref()).await?,
            };
            let Some(last) = page.last() else {
                return Ok::<_, CloudError>(None);
            };
            let after = Some(last.cursor());
            Ok(Some((jsonl(&page), (state, filter, None, after))))
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(pages),
    )
        .into_response())
}

/// Refuses to list records the database does not hold, saying where they are instead.
fn in_database(sink: &RecordsSinkConfig) -> Result<(), CloudError> {
    match sink {
        RecordsSinkConfig::Database => Ok(()),
        RecordsSinkConfig::JetStream(js) => Err(CloudError::Conflict(format!(
            "this cloud sends tunnel records to the NATS JetStream stream {stream} at {server} \
             (subjects {stream}.records.<task>), not to its database: read them there, e.g. \
             `nats stream view {stream}` or a JetStream consumer",
            stream = js.stream,
            server = js.server_shown(),
        ))),
    }
}

/// Records as JSON Lines.
fn jsonl(records: &[RecordRow]) -> String {
    let mut text = String::new();
    for record in records {
        // A RecordRow always serializes: its fields are strings, integers and a JSON value.
        if let Ok(line) = serde_json::to_string(record) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}
