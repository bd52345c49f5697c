//! The control plane: HTTP/JSON API for operators, the web console and the `walle` CLI.
//!
//! Every `/v1` route except `/v1/health` needs `Authorization: Bearer <operator token>` and the
//! role [`crate::auth`] names for it; every mutating call is written to the audit log.

mod admin;
mod console;
mod devices;
mod groups;
mod records;
mod releases;
mod tasks;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use axum::http::Method;

use crate::auth::{Operator, Role, required_role};
use crate::store::auth::AuditRow;
use crate::store::now_ms;
use crate::{AppState, CloudError, secrets};

/// The whole control-plane router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(tasks::routes())
        .merge(releases::routes())
        .merge(devices::routes())
        .merge(groups::routes())
        .merge(records::routes())
        .merge(admin::routes())
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

/// Authenticates the operator, checks the route's role, and audits every mutating call.
async fn require_operator(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = presented else {
        return CloudError::Unauthorized("missing `Authorization: Bearer <operator token>`".into())
            .into_response();
    };
    let operator = match authenticate(&state, &token).await {
        Ok(Some(operator)) => operator,
        Ok(None) => {
            return CloudError::Unauthorized("operator token is not valid".into()).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let method = request.method().clone();
    // Inside the nested `/v1` router the path is relative to it.
    let path = request.uri().path().to_owned();
    let needed = required_role(&method, &path);
    let response = if operator.role < needed {
        CloudError::Forbidden(format!(
            "{} has role {}; {method} /v1{path} needs {}",
            operator.name,
            operator.role.as_str(),
            needed.as_str()
        ))
        .into_response()
    } else {
        request.extensions_mut().insert(operator.clone());
        next.run(request).await
    };
    if method != Method::GET && method != Method::HEAD {
        record_audit(&state, &operator, &method, &path, response.status()).await;
    }
    response
}

async fn authenticate(state: &AppState, token: &str) -> Result<Option<Operator>, CloudError> {
    let hash = secrets::token_hash(token);
    if hash == state.admin_token_hash {
        return Ok(Some(Operator {
            id: "bootstrap-admin".into(),
            name: "bootstrap admin".into(),
            role: Role::Admin,
        }));
    }
    Ok(state.db.token_by_hash(&hash).await?.and_then(|row| {
        Some(Operator {
            role: Role::parse(&row.role)?,
            id: row.id,
            name: row.name,
        })
    }))
}

async fn record_audit(
    state: &AppState,
    operator: &Operator,
    method: &Method,
    path: &str,
    status: StatusCode,
) {
    let entry = AuditRow {
        id: format!(
            "aud_{}",
            hex::encode(secrets::random_bytes::<8>().unwrap_or_default())
        ),
        at_ms: now_ms(),
        actor: format!("{} ({})", operator.name, operator.id),
        role: operator.role.as_str().to_owned(),
        method: method.to_string(),
        path: format!("/v1{path}"),
        status: i64::from(status.as_u16()),
    };
    if let Err(e) = state.db.audit(&entry).await {
        tracing::error!(error = %e, ?entry, "audit log write failed");
    }
}

impl IntoResponse for CloudError {
    fn into_response(self) -> Response {
        let status = match &self {
            CloudError::Invalid(_) => StatusCode::BAD_REQUEST,
            CloudError::NotFound(_) => StatusCode::NOT_FOUND,
            CloudError::Conflict(_) => StatusCode::CONFLICT,
            CloudError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CloudError::Forbidden(_) => StatusCode::FORBIDDEN,
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
