//! `/v1/devices`.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::store::devices::DeviceRow;
use crate::{AppState, CloudError};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_devices))
}

/// Lists registered devices with their profiles and what they run.
#[utoipa::path(get, path = "/devices", tag = "devices", responses((status = 200, body = Vec<DeviceRow>)))]

async fn list_devices(State(state): State<AppState>) -> Result<Json<Vec<DeviceRow>>, CloudError> {
    Ok(Json(state.db.list_devices().await?))
}
