//! `/v1/tokens`, `/v1/apps` and `/v1/audit`: what admins manage.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::bad_json;
use crate::auth::Role;
use crate::store::auth::{AppRow, AuditRow, TokenRow};
use crate::{AppState, CloudError, secrets};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/apps", get(list_apps).post(create_app))
        .route("/audit", get(list_audit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
}

/// A new token: the only time the secret is shown.
#[derive(Serialize)]
struct CreatedToken {
    #[serde(flatten)]
    row: TokenRow,
    token: String,
}

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

async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenRow>>, CloudError> {
    Ok(Json(state.db.list_tokens().await?))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    app_id: String,
}

/// A newly registered app: the only time its enrollment secret is shown.
#[derive(Serialize)]
struct CreatedApp {
    #[serde(flatten)]
    row: AppRow,
    enrollment_secret: String,
}

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

async fn list_apps(State(state): State<AppState>) -> Result<Json<Vec<AppRow>>, CloudError> {
    Ok(Json(state.db.list_apps().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn list_audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditRow>>, CloudError> {
    let Query(query) = query.map_err(|e| CloudError::Invalid(e.body_text()))?;
    Ok(Json(state.db.list_audit(query.limit.unwrap_or(100)).await?))
}
