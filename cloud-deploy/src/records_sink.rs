//! The records sink: where the tunnel records devices upload (`Upload`) are kept.
//!
//! - [`RecordsSink::Database`], the embedded default: the metadata database's `tunnel_records`
//!   table, one row per (device id, record id); `/v1/records` lists and exports them.
//! - [`RecordsSink::JetStream`]: a NATS JetStream stream, for deployments whose downstream
//!   consumers read the records from there. The database then holds none, and `/v1/records`
//!   answers 409 saying where the records are.
//!
//! Both keep one promise: [`RecordsSink::append`] returns `Ok` only once every record of the
//! batch is durably stored — the database transaction committed, or JetStream acknowledged every
//! message — so the device plane acknowledges an `Upload` only then. Until that answer the device
//! keeps the records in its outbox and sends the same batch again, which is stored once: the
//! database by its primary key, JetStream by the message id within the stream's duplicate window.
//!
//! ## The JetStream sink
//!
//! Configured as `nats://HOST[:PORT]/STREAM` (a `user:password@` before the host is passed to the
//! server). At start the cloud connects and creates the stream if it is absent — subjects
//! `STREAM.>`, file storage, a [`DUPLICATE_WINDOW`] of 2 minutes — or checks that the existing one
//! takes the cloud's subjects; a server that cannot be reached fails the start, naming the URL.
//!
//! Each record is one message:
//! - subject `STREAM.records.TASK`, where TASK is the record's task name with `%`, `.`, `*`, `>`
//!   and whitespace written as `%XX` (task names are `a-z`, `0-9` and `-`, so in practice the
//!   name itself);
//! - header `Nats-Msg-Id` = `DEVICE:RECORD` (the device id with `%` and `:` written as `%XX`, then
//!   the record id): stable across retries, so JetStream stores a resent record once;
//! - headers `Walle-Device`, `Walle-Task`, `Walle-Version` (the plain values, for filtering
//!   without decoding the body);
//! - body: the record as JSON, the same object `/v1/records` lists in the database case:
//!   `{"id", "device_id", "task", "version", "seq", "created_at_ms", "received_at_ms",
//!   "payload"}` with `payload` the task's output as JSON.
//!
//! A message JetStream refuses, does not acknowledge within [`PUBLISH_ACK_TIMEOUT`], or cannot be
//! sent because the server is away fails the whole `append` with
//! [`SinkError::Publish`] (the device plane answers `UNAVAILABLE`); the records already
//! acknowledged are duplicates when the device resends the batch.
//!
//! Exactly once holds while a device resends within the stream's duplicate window: a device
//! that stays away longer (its cloud down for more than 2 minutes after storing a batch it never
//! answered) may store a record a second time, with the same `Nats-Msg-Id`, which consumers can
//! drop. An operator who wants a longer guarantee creates the stream beforehand with a longer
//! `duplicate_window`; the cloud keeps it as it is.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;
use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::CloudError;
use crate::store::events::{NewRecord, RecordRow};
use crate::store::{Db, now_ms};

/// How long JetStream remembers a message id: a batch resent within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the cloud waits for JetStream to acknowledge a message before failing the upload.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the cloud waits for the NATS server when it starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where records go, as configured: `database` or `nats://HOST[:PORT]/STREAM` (the flag, the
/// environment variable and the config file all use this text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RecordsSinkConfig {
    /// The metadata database (the embedded default).
    #[default]
    Database,
    /// A NATS JetStream stream.
    JetStream(JetStreamConfig),
}

/// A JetStream sink's server and stream.
#[derive(Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222` (with credentials if the URL had them).
    pub server: String,
    /// The stream's name, also the first token of its subjects.
    pub stream: String,
}

impl JetStreamConfig {
    /// The server URL without its password, for messages and logs.
    pub fn server_shown(&self) -> String {
        redact(&self.server)
    }

    /// The subject a record of `task` is published to.
    pub fn subject(&self, task: &str) -> String {
        format!("{}.records.{}", self.stream, escape(task, SUBJECT_SPECIAL))
    }
}

impl fmt::Debug for JetStreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamConfig")
            .field("server", &self.server_shown())
            .field("stream", &self.stream)
            .finish()
    }
}

/// Why a records-sink setting is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkUrlError {
    #[error("records sink {0:?} is neither `database` nor `nats://HOST[:PORT]/STREAM`")]
    UnknownKind(String),
    #[error("records sink {0:?} names no NATS server: write `nats://HOST[:PORT]/STREAM`")]
    NoHost(String),
    #[error(
        "records sink {0:?} names no stream: write `nats://HOST[:PORT]/STREAM`, e.g. \
         `nats://127.0.0.1:4222/WALLE_RECORDS`"
    )]
    NoStream(String),
    #[error("records sink {url:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort { url: String, port: String },
    #[error(
        "records sink {url:?}: stream name {stream:?} must be 1 to 64 characters \
         of A-Z, a-z, 0-9, `_` and `-` (it is also the first token of the stream's subjects)"
    )]
    BadStream { url: String, stream: String },
}

/// Longest stream name accepted (NATS allows more; subjects stay short this way). The
/// [`SinkUrlError::BadStream`] message says it too.
const MAX_STREAM_CHARS: usize = 64;

impl FromStr for RecordsSinkConfig {
    type Err = SinkUrlError;

    fn from_str(value: &str) -> Result<Self, SinkUrlError> {
        if value == "database" {
            return Ok(RecordsSinkConfig::Database);
        }
        let shown = redact(value);
        let Some(rest) = value.strip_prefix("nats://") else {
            return Err(SinkUrlError::UnknownKind(shown));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        // `[::1]:4222` or `host:4222`; the port is optional (NATS's default, 4222).
        let (host, port) = match host_port.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, after)) => (host, after.strip_prefix(':')),
                None => (host_port, None),
            },
            None => match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        if host.is_empty() {
            return Err(SinkUrlError::NoHost(shown));
        }
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(SinkUrlError::BadPort {
                url: shown,
                port: port.to_owned(),
            });
        }
        let stream = path.strip_suffix('/').unwrap_or(path);
        if stream.is_empty() {
            return Err(SinkUrlError::NoStream(shown));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if stream.chars().count() > MAX_STREAM_CHARS || !stream.chars().all(allowed) {
            return Err(SinkUrlError::BadStream {
                url: shown,
                stream: stream.to_owned(),
            });
        }
        Ok(RecordsSinkConfig::JetStream(JetStreamConfig {
            server: format!("nats://{authority}"),
            stream: stream.to_owned(),
        }))
    }
}

impl TryFrom<String> for RecordsSinkConfig {
    type Error = SinkUrlError;

    fn try_from(value: String) -> Result<Self, SinkUrlError> {
        value.parse()
    }
}

impl From<RecordsSinkConfig> for String {
    fn from(config: RecordsSinkConfig) -> String {
        match config {
            RecordsSinkConfig::Database => "database".into(),
            RecordsSinkConfig::JetStream(js) => format!("{}/{}", js.server, js.stream),
        }
    }
}

impl fmt::Display for RecordsSinkConfig {
    /// The setting as written, without a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordsSinkConfig::Database => f.write_str("database"),
            RecordsSinkConfig::JetStream(js) => write!(f, "{}/{}", js.server_shown(), js.stream),
        }
    }
}

/// What went wrong talking to the JetStream sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The NATS server cannot be reached (at start).
    #[error("cannot reach NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// The stream cannot be looked up or created (e.g. the server runs without JetStream).
    #[error("NATS at {url}: cannot get or create JetStream stream {stream}: {source}")]
    Stream {
        url: String,
        stream: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// The stream exists but does not take the subjects the cloud publishes to.
    #[error(
        "NATS at {url}: JetStream stream {stream} takes subjects {subjects:?}, not `{stream}.>` \
         where the cloud publishes records (`{stream}.records.<task>`)"
    )]
    StreamSubjects {
        url: String,
        stream: String,
        subjects: Vec<String>,
    },
    /// The stream cannot be looked up now (the health probe): the server is away, or the
    /// stream was deleted under the running cloud.
    #[error("NATS at {url}: JetStream stream {stream} does not answer: {source}")]
    Unreachable {
        url: String,
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// JetStream did not store a record: refused, not acknowledged in time, or unreachable.
    #[error("JetStream stream {stream} did not store record {record} of device {device}: {source}")]
    Publish {
        stream: String,
        device: String,
        record: String,
        #[source]
        source: jetstream::context::PublishError,
    },
}

/// Where this cloud puts the records devices upload (see the module doc).
#[derive(Clone)]
pub enum RecordsSink {
    /// The metadata database's `tunnel_records` table.
    Database(Db),
    /// A NATS JetStream stream (boxed: its connection state is much larger than a pool handle).
    JetStream(Box<JetStreamSink>),
}

/// A connection to the NATS server and the stream records go to.
#[derive(Clone)]
pub struct JetStreamSink {
    config: JetStreamConfig,
    context: jetstream::Context,
}

/// How a batch went: records newly stored, and records that were already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    pub stored: u32,
    pub duplicates: u32,
}

impl RecordsSink {
    /// Opens the configured sink: for JetStream, connects and makes sure the stream exists.
    pub async fn open(config: &RecordsSinkConfig, db: Db) -> Result<RecordsSink, CloudError> {
        match config {
            RecordsSinkConfig::Database => Ok(RecordsSink::Database(db)),
            RecordsSinkConfig::JetStream(js) => Ok(RecordsSink::JetStream(Box::new(
                JetStreamSink::open(js.clone()).await?,
            ))),
        }
    }

    /// Stores `records` of `device` once each; returns only when all are durably stored.
    pub async fn append(
        &self,
        device: &str,
        records: &[NewRecord],
    ) -> Result<Appended, CloudError> {
        match self {
            RecordsSink::Database(db) => {
                let (stored, duplicates) = db.insert_records(device, records).await?;
                Ok(Appended { stored, duplicates })
            }
            RecordsSink::JetStream(sink) => sink.append(device, records).await,
        }
    }

    /// Whether the sink would store a batch now (the health probe): for JetStream, its stream
    /// answers a lookup; the database sink is probed as the database.
    pub async fn check_reachable(&self) -> Result<(), CloudError> {
        match self {
            RecordsSink::Database(_) => Ok(()),
            RecordsSink::JetStream(sink) => sink.check_reachable().await,
        }
    }
}

impl JetStreamSink {
    /// Connects to the server and gets or creates the stream.
    pub async fn open(config: JetStreamConfig) -> Result<JetStreamSink, CloudError> {
        let url = config.server_shown();
        let client = async_nats::ConnectOptions::new()
            .name("walle-cloud")
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(|event| async move {
                tracing::warn!(%event, "NATS connection (records sink)");
            })
            .connect(config.server.as_str())
            .await
            .map_err(|source| SinkError::Connect {
                url: url.clone(),
                source,
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(PUBLISH_ACK_TIMEOUT)
            .backpressure_on_inflight(true)
            .build(client);
        let stream = context
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream.clone(),
                description: Some("Walle tunnel records (walle-cloud --records-sink)".into()),
                subjects: vec![format!("{}.>", config.stream)],
                storage: jetstream::stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|source| SinkError::Stream {
                url: url.clone(),
                stream: config.stream.clone(),
                source,
            })?;
        let info = stream.cached_info();
        let takes_ours = info.config.subjects.iter().any(|s| {
            s == ">"
                || *s == format!("{}.>", config.stream)
                || *s == format!("{}.records.>", config.stream)
        });
        if !takes_ours {
            return Err(SinkError::StreamSubjects {
                url,
                stream: config.stream.clone(),
                subjects: info.config.subjects.clone(),
            }
            .into());
        }
        if info.config.duplicate_window < DUPLICATE_WINDOW {
            tracing::warn!(stream = %config.stream, window = ?info.config.duplicate_window,
                "the records stream's duplicate window is shorter than 2 minutes: a batch a device resends later may be stored twice");
        }
        tracing::info!(server = %url, stream = %config.stream, messages = info.state.messages,
            "records go to JetStream");
        Ok(JetStreamSink { config, context })
    }

    /// Looks the stream up (one request to the server).
    async fn check_reachable(&self) -> Result<(), CloudError> {
        self.context
            .get_stream(&self.config.stream)
            .await
            .map_err(|source| SinkError::Unreachable {
                url: self.config.server_shown(),
                stream: self.config.stream.clone(),
                source,
            })?;
        Ok(())
    }

    /// The sink's server and stream.
    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Publishes every record, then waits for every acknowledgement.
    async fn append(&self, device: &str, records: &[NewRecord]) -> Result<Appended, CloudError> {
        let received_at_ms = now_ms();
        let failed = |record: &NewRecord| {
            let stream = self.config.stream.clone();
            let device = device.to_owned();
            let record = record.id.clone();
            move |source| SinkError::Publish {
                stream,
                device,
                record,
                source,
            }
        };
        // Publishing only queues a message; the acknowledgements are awaited together, so a
        // batch costs about one round trip, not one per record.
        let mut acks = Vec::with_capacity(records.len());
        for record in records {
            let (subject, headers, body) = message(&self.config, device, record, received_at_ms)?;
            let ack = self
                .context
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(failed(record))?;
            acks.push(ack.into_future());
        }
        let mut appended = Appended::default();
        for (record, ack) in records.iter().zip(futures::future::join_all(acks).await) {
            let ack = ack.map_err(failed(record))?;
            if ack.duplicate {
                appended.duplicates += 1;
            } else {
                appended.stored += 1;
            }
        }
        Ok(appended)
    }
}

/// The subject, headers and body of one record's message (see the module doc).
fn message(
    config: &JetStreamConfig,
    device: &str,
    record: &NewRecord,
    received_at_ms: i64,
) -> Result<(String, HeaderMap, Vec<u8>), CloudError> {
    let payload =
        serde_json::from_str(&record.payload).map_err(|source| CloudError::CorruptRecord {
            what: format!("payload of record {} of device {device}", record.id),
            source,
        })?;
    let row = RecordRow {
        id: record.id.clone(),
        device_id: device.to_owned(),
        task: record.task.clone(),
        version: record.version.clone(),
        seq: record.seq,
        created_at_ms: record.created_at_ms,
        received_at_ms,
        payload,
    };
    let body = serde_json::to_vec(&row).map_err(|source| CloudError::Encoding {
        what: "a tunnel record",
        source,
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("Nats-Msg-Id", message_id(device, &record.id)),
        ("Walle-Device", device.to_owned()),
        ("Walle-Task", record.task.clone()),
        ("Walle-Version", record.version.clone()),
    ] {
        // Ids passed the device plane's checks (no control characters), so this holds; a value
        // that still breaks the header syntax is refused, not sent.
        let value = HeaderValue::from_str(&value).map_err(|_| {
            CloudError::Invalid(format!(
                "record {} of device {device}: `{name}` cannot be a NATS header",
                record.id
            ))
        })?;
        headers.insert(name, value);
    }
    Ok((config.subject(&record.task), headers, body))
}

/// The JetStream message id of a device's record: `DEVICE:RECORD`, with `%` and `:` of the
/// device id escaped so two (device, record) pairs never share an id.
pub fn message_id(device: &str, record: &str) -> String {
    format!("{}:{record}", escape(device, &['%', ':']))
}

/// Characters that cannot appear in a subject token as they are.
const SUBJECT_SPECIAL: &[char] = &['%', '.', '*', '>'];

/// `text` with each of `special`, whitespace and control characters written as `%XX` (per
/// UTF-8 byte).
fn escape(text: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if special.contains(&c) || c.is_whitespace() || c.is_control() {
            let mut bytes = [0; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A NATS URL without its password (`nats://user:***@host`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{scheme}://{user}:***@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jetstream(server: &str, stream: &str) -> RecordsSinkConfig {
        RecordsSinkConfig::JetStream(JetStreamConfig {
            server: server.into(),
            stream: stream.into(),
        })
    }

    #[test]
    fn a_sink_setting_parses_or_says_what_is_missing() {
        assert_eq!("database".parse(), Ok(RecordsSinkConfig::Database));
        assert_eq!(
            "nats://127.0.0.1:4222/WALLE_RECORDS".parse(),
            Ok(jetstream("nats://127.0.0.1:4222", "WALLE_RECORDS"))
        );
        assert_eq!(
            "nats://nats.internal/records-eu/".parse(),
            Ok(jetstream("nats://nats.internal", "records-eu"))
        );
        assert_eq!(
            "nats://[::1]:4222/R".parse(),
            Ok(jetstream("nats://[::1]:4222", "R"))
        );
        for (setting, error) in [
            (
                "postgres://x/y",
                SinkUrlError::UnknownKind("postgres://x/y".into()),
            ),
            ("", SinkUrlError::UnknownKind(String::new())),
            (
                "nats://127.0.0.1:4222",
                SinkUrlError::NoStream("nats://127.0.0.1:4222".into()),
            ),
            (
                "nats://127.0.0.1:4222/",
                SinkUrlError::NoStream("nats://127.0.0.1:4222/".into()),
            ),
            ("nats:///S", SinkUrlError::NoHost("nats:///S".into())),
            (
                "nats://h:port/S",
                SinkUrlError::BadPort {
                    url: "nats://h:port/S".into(),
                    port: "port".into(),
                },
            ),
            (
                "nats://h:0/S",
                SinkUrlError::BadPort {
                    url: "nats://h:0/S".into(),
                    port: "0".into(),
                },
            ),
            (
                "nats://h/a.b",
                SinkUrlError::BadStream {
                    url: "nats://h/a.b".into(),
                    stream: "a.b".into(),
                },
            ),
            (
                "nats://h/a/b",
                SinkUrlError::BadStream {
                    url: "nats://h/a/b".into(),
                    stream: "a/b".into(),
                },
            ),
        ] {
            assert_eq!(
                setting.parse::<RecordsSinkConfig>(),
                Err(error),
                "{setting}"
            );
        }
        let message = "nats://h:4222".parse::<RecordsSinkConfig>().unwrap_err();
        assert!(message.to_string().contains("names no stream"), "{message}");
    }

    #[test]
    fn a_password_in_the_url_is_used_but_never_shown() {
        let config: RecordsSinkConfig = "nats://walle:s3cret@nats:4222/R".parse().unwrap();
        let RecordsSinkConfig::JetStream(js) = &config else {
            panic!("{config:?}");
        };
        assert_eq!(js.server, "nats://walle:s3cret@nats:4222");
        assert_eq!(config.to_string(), "nats://walle:***@nats:4222/R");
        assert!(!format!("{config:?}").contains("s3cret"));
        let e = "nats://walle:s3cret@nats:4222".parse::<RecordsSinkConfig>();
        assert!(!e.unwrap_err().to_string().contains("s3cret"));
        // The config file keeps what was written.
        assert_eq!(String::from(config), "nats://walle:s3cret@nats:4222/R");
    }

    #[test]
    fn the_setting_reads_from_toml_as_text() {
        #[derive(Deserialize)]
        struct File {
            records_sink: RecordsSinkConfig,
        }
        let file: File = toml::from_str("records_sink = \"nats://127.0.0.1:4222/R\"").unwrap();
        assert_eq!(file.records_sink, jetstream("nats://127.0.0.1:4222", "R"));
        let e = toml::from_str::<File>("records_sink = \"nats://127.0.0.1\"")
            .err()
            .unwrap();
        assert!(e.to_string().contains("names no stream"), "{e}");
    }

    #[test]
    fn subjects_and_message_ids_are_unambiguous() {
        let RecordsSinkConfig::JetStream(js) = jetstream("nats://h", "R") else {
            unreachable!()
        };
        assert_eq!(js.subject("ipv-feature"), "R.records.ipv-feature");
        assert_eq!(js.subject("a.b *>%"), "R.records.a%2Eb%20%2A%3E%25");
        assert_eq!(message_id("phone-1", "r-7"), "phone-1:r-7");
        // Device "a:b" record "c" and device "a" record "b:c" stay apart.
        assert_ne!(message_id("a:b", "c"), message_id("a", "b:c"));
        assert_eq!(message_id("a:b%", "c"), "a%3Ab%25:c");
    }

    #[test]
    fn a_records_message_carries_the_record_and_its_ids() {
        let RecordsSinkConfig::JetStream(js) = jetstream("nats://h", "R") else {
            unreachable!()
        };
        let record = NewRecord {
            id: "r1".into(),
            task: "ipv-feature".into(),
            version: "1.0.0".into(),
            seq: 3,
            created_at_ms: 1000,
            payload: r#"{"dwell_ms": 12}"#.into(),
        };
        let (subject, headers, body) = message(&js, "phone-1", &record, 2000).unwrap();
        assert_eq!(subject, "R.records.ipv-feature");
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("Nats-Msg-Id").as_deref(), Some("phone-1:r1"));
        assert_eq!(header("Walle-Device").as_deref(), Some("phone-1"));
        assert_eq!(header("Walle-Task").as_deref(), Some("ipv-feature"));
        assert_eq!(header("Walle-Version").as_deref(), Some("1.0.0"));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"id": "r1", "device_id": "phone-1", "task": "ipv-feature",
                "version": "1.0.0", "seq": 3, "created_at_ms": 1000, "received_at_ms": 2000,
                "payload": {"dwell_ms": 12}})
        );
    }
}
