//! A typed client for the cloud's control-plane HTTP API.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cloud at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{method} {path} failed with HTTP {status}: {message}")]
    Api {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("cannot use the CA certificate: {source}")]
    Tls { source: reqwest::Error },
    #[error("cannot write the answer: {source}")]
    Output { source: std::io::Error },
    #[error("GET {path}: the live stream failed: {message}")]
    Stream { path: String, message: String },
    #[error("{method} {path}: unexpected answer: {source}")]
    Decode {
        method: &'static str,
        path: String,
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status of an API error, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Which tunnel records to list or export; absent fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    pub task: Option<String>,
    pub device: Option<String>,
    pub version: Option<String>,
    /// Produced at or after this Unix time (ms).
    pub from_ms: Option<i64>,
    /// Produced before this Unix time (ms).
    pub to_ms: Option<i64>,
}

impl RecordQuery {
    /// Records of one task, optionally of one device.
    pub fn task(task: &str, device: Option<&str>) -> RecordQuery {
        RecordQuery {
            task: Some(task.to_owned()),
            device: device.map(str::to_owned),
            ..RecordQuery::default()
        }
    }

    /// The filters as a URL query string.
    fn encoded(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let texts = [
            ("task", self.task.clone()),
            ("device", self.device.clone()),
            ("version", self.version.clone()),
            ("from_ms", self.from_ms.map(|t| t.to_string())),
            ("to_ms", self.to_ms.map(|t| t.to_string())),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                query.append_pair(name, &value);
            }
        }
        query.finish()
    }
}

/// Control-plane client authenticated with an operator token.
#[derive(Clone)]
pub struct ControlClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ControlClient {
    /// A client for the control plane at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: &str) -> ControlClient {
        ControlClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// A client for an `https://` control plane whose certificate is (or is signed by) `ca_pem`.
    pub fn with_ca_cert(
        base: &str,
        token: &str,
        ca_pem: &[u8],
    ) -> Result<ControlClient, ClientError> {
        let tls = |source| ClientError::Tls { source };
        let certificate = reqwest::Certificate::from_pem(ca_pem).map_err(tls)?;
        let http = reqwest::Client::builder()
            .add_root_certificate(certificate)
            .build()
            .map_err(tls)?;
        Ok(ControlClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<reqwest::Body>,
        json_body: Option<Value>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body, json_body).await?;
        response.json().await.map_err(|source| ClientError::Decode {
            method,
            path: path.to_owned(),
            source,
        })
    }

    /// Sends a call and returns the response if its status is a success.
    async fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<reqwest::Body>,
        json_body: Option<Value>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}/v1{path}", self.base);
        let mut request = match method {
            "POST" => self.http.post(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.get(&url),
        }
        .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body);
        }
        if let Some(json_body) = json_body {
            request = request.json(&json_body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            return Err(ClientError::Api {
                method,
                path: path.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(response)
    }

    /// `GET /v1{path}` (path and query already encoded: see [`encode`]).
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None, None).await
    }

    /// `POST /v1{path}` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.call("POST", path, None, Some(body)).await
    }

    /// `DELETE /v1{path}`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send("DELETE", path, None, None).await.map(drop)
    }

    /// The live progress of a release: one status per change, as the server pushes them
    /// (`GET /v1/releases/{id}/live`, Server-Sent Events), until the release ends.
    pub async fn release_live(&self, id: &str) -> Result<LiveStatuses, ClientError> {
        let path = format!("/releases/{}/live", encode(id));
        let response = self.send("GET", &path, None, None).await?;
        Ok(LiveStatuses {
            response,
            path,
            buffer: String::new(),
        })
    }

    /// Creates a task.
    pub async fn create_task(&self, name: &str, description: &str) -> Result<Value, ClientError> {
        let body = json!({ "name": name, "description": description });
        self.call("POST", "/tasks", None, Some(body)).await
    }

    /// Creates a task unless it exists already.
    pub async fn ensure_task(&self, name: &str, description: &str) -> Result<(), ClientError> {
        match self.create_task(name, description).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Uploads a bundle as a new version of `task`.
    pub async fn upload_version(&self, task: &str, bundle: Vec<u8>) -> Result<Value, ClientError> {
        self.call(
            "POST",
            &format!("/tasks/{task}/versions"),
            Some(bundle.into()),
            None,
        )
        .await
    }

    /// Releases `task@version` to every device at once (the default policy).
    pub async fn create_release(&self, task: &str, version: &str) -> Result<Value, ClientError> {
        self.create_release_with(task, version, json!({})).await
    }

    /// Releases `task@version` under a policy (targeting, stages, gate, abort rule, priority).
    pub async fn create_release_with(
        &self,
        task: &str,
        version: &str,
        policy: Value,
    ) -> Result<Value, ClientError> {
        let body = json!({ "task": task, "version": version, "policy": policy });
        self.call("POST", "/releases", None, Some(body)).await
    }

    /// Per stage, how many registered devices would run which version under this policy.
    pub async fn preview_release(
        &self,
        task: &str,
        version: &str,
        policy: Value,
    ) -> Result<Value, ClientError> {
        let body = json!({ "task": task, "version": version, "policy": policy });
        self.call("POST", "/releases/preview", None, Some(body))
            .await
    }

    /// Applies an operator action: pause, resume, advance, abort or rollback.
    pub async fn release_action(&self, id: &str, action: &str) -> Result<Value, ClientError> {
        self.call("POST", &format!("/releases/{id}/{action}"), None, None)
            .await
    }

    /// A release with its fleet statistics.
    pub async fn release_status(&self, id: &str) -> Result<Value, ClientError> {
        self.call("GET", &format!("/releases/{id}"), None, None)
            .await
    }

    /// All registered devices (profiles, not what they run: see [`Client::device`]), walking
    /// the server's pages.
    pub async fn devices(&self) -> Result<Vec<Value>, ClientError> {
        let mut all = Vec::new();
        let mut path = "/devices?limit=1000".to_owned();
        loop {
            let page: Value = self.call("GET", &path, None, None).await?;
            if let Some(devices) = page["devices"].as_array() {
                all.extend(devices.iter().cloned());
            }
            match page["next"].as_str() {
                Some(next) => path = format!("/devices?limit=1000&after={}", encode(next)),
                None => return Ok(all),
            }
        }
    }

    /// One device: profile, what it runs, groups, recent reports and failures.
    pub async fn device(&self, id: &str) -> Result<Value, ClientError> {
        self.call("GET", &format!("/devices/{}", encode(id)), None, None)
            .await
    }

    /// Received tunnel records matching `query`, newest first (at most 1,000).
    pub async fn records(&self, query: &RecordQuery) -> Result<Vec<Value>, ClientError> {
        let path = format!("/records?limit=1000&{}", query.encoded());
        self.call("GET", &path, None, None).await
    }

    /// Writes every record matching `query` to `out` as JSON Lines, in the order the cloud
    /// received them, streaming; returns the bytes written.
    pub async fn export_records(
        &self,
        query: &RecordQuery,
        out: &mut impl std::io::Write,
    ) -> Result<u64, ClientError> {
        let path = format!("/records/export?{}", query.encoded());
        let mut response = self.send("GET", &path, None, None).await?;
        let mut written = 0;
        let failed = |source| ClientError::Decode {
            method: "GET",
            path: path.clone(),
            source,
        };
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            out.write_all(&chunk)
                .map_err(|source| ClientError::Output { source })?;
            written += chunk.len() as u64;
        }
        Ok(written)
    }
}

/// A release's statuses as the server pushes them.
pub struct LiveStatuses {
    response: reqwest::Response,
    path: String,
    buffer: String,
}

impl LiveStatuses {
    /// The next status; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let kind = event.lines().find_map(|line| line.strip_prefix("event:"));
                if kind.map(str::trim) == Some("error") {
                    return Err(ClientError::Stream {
                        path: self.path.clone(),
                        message: data,
                    });
                }
                return serde_json::from_str(&data).map(Some).map_err(|source| {
                    ClientError::Stream {
                        path: self.path.clone(),
                        message: source.to_string(),
                    }
                });
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|source| ClientError::Decode {
                    method: "GET",
                    path: self.path.clone(),
                    source,
                })?;
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }
}

/// `text` escaped for a URL path segment or query value.
pub fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
