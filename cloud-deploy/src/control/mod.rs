//! The control plane: HTTP/JSON API for operators, the web console and the `walle` CLI.
//!
//! Every `/v1` route except `/v1/health` needs `Authorization: Bearer <operator token>`.

mod console;
mod devices;
mod records;
mod releases;
mod tasks;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::{AppState, CloudError, secrets};

/// The whole control-plane router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(tasks::routes(&state))
        .merge(releases::routes())
        .merge(devices::routes())
        .merge(records::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    Router::new()
        .nest("/v1", api)
        .route("/v1/health", get(health))
        .merge(console::routes())
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn require_operator(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if secrets::token_hash(token) == state.admin_token_hash => {
            next.run(request).await
        }
        Some(_) => CloudError::Unauthorized("operator token is not valid".into()).into_response(),
        None => CloudError::Unauthorized("missing `Authorization: Bearer <operator token>`".into())
            .into_response(),
    }
}

impl IntoResponse for CloudError {
    fn into_response(self) -> Response {
        let status = match &self {
            CloudError::Invalid(_) => StatusCode::BAD_REQUEST,
            CloudError::NotFound(_) => StatusCode::NOT_FOUND,
            CloudError::Conflict(_) => StatusCode::CONFLICT,
            CloudError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CloudError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "control plane call failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Turns a JSON body rejection into a 400 that says what was wrong.
fn bad_json(rejection: axum::extract::rejection::JsonRejection) -> CloudError {
    CloudError::Invalid(rejection.body_text())
}
