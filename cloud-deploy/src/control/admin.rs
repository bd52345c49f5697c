//! `/v1/tokens`, `/v1/apps` and `/v1/audit`: what admins manage.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ErrorBody, bad_json};
use crate::auth::Role;
use crate::store::auth::{AppRow, AuditFilter, AuditRow, TokenRow};
use crate::{AppState, CloudError, secrets};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_apps, create_app))
        .routes(routes!(list_audit))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// viewer, developer, release-manager or admin.
    #[schema(pattern = "^(viewer|developer|release-manager|admin)$")]
    role: String,
}

/// A new token: the only time the secret is shown.
#[derive(Serialize, utoipa::ToSchema)]
struct CreatedToken {
    #[serde(flatten)]
    row: TokenRow,
    token: String,
}

/// Creates an API token with a role; the response is the only time the token is shown.
#[utoipa::path(post, path = "/tokens", tag = "admin", request_body = NewToken, responses(
    (status = 201, body = CreatedToken),
    (status = 400, body = ErrorBody, description = "invalid name or role"),
))]
async fn create_token(
    State(state): State<AppState>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), CloudError> {
    let Json(new) = body.map_err(bad_json)?;
    let role = Role::parse(&new.role).ok_or_else(|| {
        CloudError::Invalid(format!(
            "role: {:?} is not one of viewer, developer, release-manager, admin",
            new.role
        ))
    })?;
    if new.name.trim().is_empty() || new.name.chars().count() > 128 {
        return Err(CloudError::Invalid("name: give 1 to 128 characters".into()));
    }
    let token = secrets::new_token("wlo")?;
    let id = format!("tok_{}", hex::encode(secrets::random_bytes::<6>()?));
    let row = state
        .db
        .create_token(
            &id,
            new.name.trim(),
            role.as_str(),
            &secrets::token_hash(&token),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { row, token })))
}

/// Lists API tokens (never the tokens themselves).
#[utoipa::path(get, path = "/tokens", tag = "admin", responses((status = 200, body = Vec<TokenRow>)))]
async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenRow>>, CloudError> {
    Ok(Json(state.db.list_tokens().await?))
}

/// Revokes an API token.
#[utoipa::path(post, path = "/tokens/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "token id")),
    responses(
        (status = 204, description = "revoked"),
        (status = 404, body = ErrorBody, description = "no such valid token"),
    ))]
async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, CloudError> {
    if state.db.revoke_token(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(CloudError::NotFound(format!("no valid token {id:?}")))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewApp {
    #[schema(min_length = 1, max_length = 128)]
    app_id: String,
}

/// A newly registered app: the only time its enrollment secret is shown.
#[derive(Serialize, utoipa::ToSchema)]
struct CreatedApp {
    #[serde(flatten)]
    row: AppRow,
    enrollment_secret: String,
}

/// Registers a host app; its devices must then enroll with the returned secret (shown once).
#[utoipa::path(post, path = "/apps", tag = "admin", request_body = NewApp, responses(
    (status = 201, body = CreatedApp),
    (status = 400, body = ErrorBody, description = "invalid app id"),
    (status = 409, body = ErrorBody, description = "the app is registered"),
))]
async fn create_app(
    State(state): State<AppState>,
    body: Result<Json<NewApp>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedApp>), CloudError> {
    let Json(new) = body.map_err(bad_json)?;
    let id = new.app_id.trim();
    if id.is_empty() || id.chars().count() > 128 || id.chars().any(char::is_control) {
        return Err(CloudError::Invalid(
            "app_id: give 1 to 128 printable characters".into(),
        ));
    }
    let secret = secrets::new_token("wle")?;
    let row = state
        .db
        .create_app(id, &secrets::token_hash(&secret))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApp {
            row,
            enrollment_secret: secret,
        }),
    ))
}

/// Lists registered apps.
#[utoipa::path(get, path = "/apps", tag = "admin", responses((status = 200, body = Vec<AppRow>)))]
async fn list_apps(State(state): State<AppState>) -> Result<Json<Vec<AppRow>>, CloudError> {
    Ok(Json(state.db.list_apps().await?))
}

/// Lists the audit log: every mutating control-plane call, who made it and its outcome.
#[utoipa::path(get, path = "/audit", tag = "admin", params(AuditFilter), responses(
    (status = 200, body = Vec<AuditRow>),
    (status = 400, body = ErrorBody, description = "bad query"),
))]

async fn list_audit(
    State(state): State<AppState>,
    filter: Result<Query<AuditFilter>, QueryRejection>,
) -> Result<Json<Vec<AuditRow>>, CloudError> {
    let Query(filter) = filter.map_err(|e| CloudError::Invalid(e.body_text()))?;
    Ok(Json(state.db.list_audit(&filter).await?))
}
