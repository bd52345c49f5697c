//! A client of a running agent's ingest endpoint, over loopback HTTP or its Unix socket: what
//! `walle-device replay` and `walle-device status` use.

use std::fmt;
use std::path::PathBuf;

use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::IngestResult;

/// Where a running agent's ingest endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Its base URL, e.g. `http://127.0.0.1:7070`.
    Http(String),
    /// The path of its Unix socket.
    Socket(PathBuf),
}

/// Why a request to the ingest endpoint did not get a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {endpoint}: {reason}")]
    Unreachable { endpoint: Endpoint, reason: String },
    #[error("the agent at {endpoint} answered {status}: {body}")]
    Refused {
        endpoint: Endpoint,
        status: StatusCode,
        body: String,
    },
    #[error("the agent at {endpoint} answered something that is not {what}: {reason}")]
    BadAnswer {
        endpoint: Endpoint,
        what: &'static str,
        reason: String,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Http(url) => f.write_str(url),
            Endpoint::Socket(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Endpoint {
    /// Posts events (JSONL, or a protobuf `EventBatch` with `content_type` =
    /// [`super::PROTOBUF`]) and returns what the agent made of them.
    pub async fn post_events(
        &self,
        body: impl Into<Bytes>,
        content_type: Option<&str>,
    ) -> Result<IngestResult, ClientError> {
        let answer = self
            .request(Method::POST, "/v1/events", body.into(), content_type)
            .await?;
        self.json(&answer, "an ingest result")
    }

    /// The agent's status, as the JSON it sends.
    pub async fn status(&self) -> Result<serde_json::Value, ClientError> {
        let answer = self
            .request(Method::GET, "/v1/status", Bytes::new(), None)
            .await?;
        self.json(&answer, "JSON")
    }

    /// Sends one request; returns the body of a successful answer.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Bytes, ClientError> {
        let (status, answer) = match self {
            Endpoint::Http(base) => {
                let url = format!("{}{path}", base.trim_end_matches('/'));
                over_http(method, &url, body, content_type).await
            }
            Endpoint::Socket(socket) => over_socket(socket, method, path, body, content_type).await,
        }
        .map_err(|reason| ClientError::Unreachable {
            endpoint: self.clone(),
            reason,
        })?;
        if !status.is_success() {
            return Err(ClientError::Refused {
                endpoint: self.clone(),
                status,
                body: String::from_utf8_lossy(&answer).into_owned(),
            });
        }
        Ok(answer)
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        answer: &[u8],
        what: &'static str,
    ) -> Result<T, ClientError> {
        serde_json::from_slice(answer).map_err(|e| ClientError::BadAnswer {
            endpoint: self.clone(),
            what,
            reason: e.to_string(),
        })
    }
}

async fn over_http(
    method: Method,
    url: &str,
    body: Bytes,
    content_type: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    let mut request = reqwest::Client::new().request(method, url).body(body);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = request.send().await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    let answer = response.bytes().await.map_err(|e| error_chain(&e))?;
    Ok((status, answer))
}

/// One HTTP/1.1 request on a fresh connection to the Unix socket at `socket`.
async fn over_socket(
    socket: &std::path::Path,
    method: Method,
    path: &str,
    body: Bytes,
    content_type: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| error_chain(&e))?;
    // Drives the connection until the answer is read and `sender` dropped.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "ingest socket connection");
        }
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost");
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| error_chain(&e))?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(|e| error_chain(&e))?
        .to_bytes();
    Ok((status, answer))
}

/// An error and its sources, e.g. "error sending request: connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
