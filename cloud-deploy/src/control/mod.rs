//! The control plane: HTTP/JSON API for operators, the web console and the `walle` CLI.
//!
//! Every `/v1` route except `/v1/health`, `/v1/ready` and `/v1/openapi.json` needs
//! `Authorization: Bearer <operator token>` and the role [`crate::auth`] names for it; every
//! mutating call is written to the audit log. `/metrics` (Prometheus) needs no token either.
//! An unknown `/v1` route answers 404 with the same JSON error body as every other error.

mod admin;
mod console;
mod devices;
mod groups;
mod ops;
mod overview;
mod records;
mod releases;
mod tasks;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{Operator, Role, required_role};
use crate::store::auth::AuditRow;
use crate::store::now_ms;
use crate::{AppState, CloudError, secrets};

/// Every error response: what went wrong and where, in words.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// The document's frame: title, security scheme, and the 401/403 every operator call may give.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Walle cloud control plane",
        description = "Tasks, versions, releases, device groups, devices, records and admin. Every \
            call needs `Authorization: Bearer <operator token>` with the role `walle-cloud`'s \
            auth module names; mutations are audited. Served at `/v1/openapi.json`."
    ),
    security(("operator_token" = [])),
    components(schemas(crate::release::Action))
)]
struct ControlPlaneDoc;

struct OperatorAuth;

impl utoipa::Modify for OperatorAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |text: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(text)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut operation.responses.responses;
                responses
                    .entry("401".into())
                    .or_insert_with(|| error("missing or invalid operator token"));
                responses
                    .entry("403".into())
                    .or_insert_with(|| error("the token's role may not make this call"));
            }
        }
    }
}

/// The API's routers and its OpenAPI document, built from the same route lists so the two
/// cannot drift apart.
struct Api {
    /// The operator API, without its authentication layer.
    operator: Router<AppState>,
    /// The routes that need no token (health, readiness).
    public: Router<AppState>,
    doc: utoipa::openapi::OpenApi,
}

fn api() -> Api {
    let routes = OpenApiRouter::new()
        .merge(tasks::routes())
        .merge(releases::routes())
        .merge(devices::routes())
        .merge(groups::routes())
        .merge(records::routes())
        .merge(admin::routes())
        .merge(overview::routes());
    let (operator, mut doc) = OpenApiRouter::with_openapi(ControlPlaneDoc::openapi())
        .nest("/v1", routes)
        .split_for_parts();
    // After the routes are in: it adds to every operation.
    utoipa::Modify::modify(&OperatorAuth, &mut doc);
    let (public, mut public_doc) = OpenApiRouter::new()
        .nest("/v1", ops::routes())
        .split_for_parts();
    // An empty requirement list overrides the document's global operator token.
    for item in public_doc.paths.paths.values_mut() {
        if let Some(operation) = item.get.as_mut() {
            operation.security = Some(Vec::new());
        }
    }
    doc.merge(public_doc);
    Api {
        operator,
        public,
        doc,
    }
}

/// The control plane's OpenAPI document (also served at `/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().doc
}

/// The whole control-plane router.
pub fn router(state: AppState) -> Router {
    let Api {
        operator,
        public,
        doc,
    } = api();
    let operator = operator.route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_operator,
    ));
    let doc = std::sync::Arc::new(doc);
    Router::new()
        .merge(operator)
        .merge(public)
        .route("/metrics", get(ops::metrics))
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json((*doc).clone()) }
            }),
        )
        .merge(console::routes())
        .fallback(no_such_route)
        .with_state(state)
}

/// An unknown `/v1` route is an API error like any other (JSON body); elsewhere a bare 404.
async fn no_such_route(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path == "/v1" || path.starts_with("/v1/") {
        CloudError::NotFound(format!("no such route: {method} {path}")).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
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
    // Roles are keyed by the path below `/v1` (a nested router may already have stripped it).
    let full_path = request.uri().path();
    let path = full_path
        .strip_prefix("/v1")
        .unwrap_or(full_path)
        .to_owned();
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
