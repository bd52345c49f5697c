//! `/v1/devices`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::store::devices::DeviceRow;
use crate::{AppState, CloudError};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/devices", get(list_devices))
}

async fn list_devices(State(state): State<AppState>) -> Result<Json<Vec<DeviceRow>>, CloudError> {
    Ok(Json(state.db.list_devices().await?))
}
