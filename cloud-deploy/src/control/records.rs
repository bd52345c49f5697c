//! `/v1/records`: what devices uploaded through the tunnel.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};

use crate::store::events::{RecordFilter, RecordRow};
use crate::{AppState, CloudError};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/records", get(list_records))
}

async fn list_records(
    State(state): State<AppState>,
    filter: Result<Query<RecordFilter>, QueryRejection>,
) -> Result<Json<Vec<RecordRow>>, CloudError> {
    let Query(filter) = filter.map_err(|e| CloudError::Invalid(e.body_text()))?;
    Ok(Json(state.db.list_records(&filter).await?))
}
