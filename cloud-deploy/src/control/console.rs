//! Serves the web console's files: the copies built into the binary, or, when the configuration
//! names a `console_dir`, the files in that directory (for working on the console).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|state: State<AppState>| asset(state, Path("index.html".to_owned()))),
        )
        .route("/console/{file}", get(asset))
}

async fn asset(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such console asset").into_response();
    let Some(content_type) = walle_console::content_type(&file) else {
        return not_found();
    };
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    match &state.config.console_dir {
        Some(dir) => match tokio::fs::read(dir.join(&file)).await {
            Ok(body) => (headers, body).into_response(),
            Err(_) => not_found(),
        },
        None => match walle_console::asset(&file) {
            Some(asset) => (headers, asset.body).into_response(),
            None => not_found(),
        },
    }
}
