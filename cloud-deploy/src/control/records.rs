//! `/v1/records`: what devices uploaded through the tunnel.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ErrorBody;
use crate::store::events::{RecordFilter, RecordRow};
use crate::{AppState, CloudError};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_records))
}

/// Lists tunnel records devices uploaded, newest first.
#[utoipa::path(get, path = "/records", tag = "records", params(RecordFilter), responses(
    (status = 200, body = Vec<RecordRow>),
    (status = 400, body = ErrorBody, description = "bad query"),
))]

async fn list_records(
    State(state): State<AppState>,
    filter: Result<Query<RecordFilter>, QueryRejection>,
) -> Result<Json<Vec<RecordRow>>, CloudError> {
    let Query(filter) = filter.map_err(|e| CloudError::Invalid(e.body_text()))?;
    Ok(Json(state.db.list_records(&filter).await?))
}
