//! Walle's device container: the agent that runs on each device.
//!
//! It registers with the cloud, keeps a notice stream open (push), syncs and fetches bundles
//! when told (pull), verifies each bundle's signature and digest and installs it atomically,
//! runs tasks in the sandboxed VM ([`walle_vm`]) when the on-device pipeline
//! ([`walle_pipeline`]) matches their triggers, and sends run reports and task outputs back.
//!
//! Use it as a library (`Agent::start(config)`, `agent.track(event)`) or through the
//! `walle-device` binary (`run`, `replay`, `status`). This crate must not decide what a device
//! should run: that is the cloud's job; it converges to what the cloud says.
//!
//! # Components and how data flows between them
//!
//! [`Agent::start`] builds the components, each owning its state, and wires them; they talk
//! through the handles and channels named on the arrows:
//!
//! ```text
//!  host app ── events ──► intake ── run requests ──► runner ── records, reports ──► uplink ──► cloud
//!  (track, ingest         ▲        (RunQueue)         │   (Outgoing)               ▲  ▲  (Report,
//!   endpoint, timers)     │                           │                            │  │   Upload)
//!                         │ triggers, features        │ rollback requests (mpsc)   │  │
//!                         │ (Triggers)                ▼                            │  │
//!                      install ◄────── calls ────── activation ── reports ─────────┘  │
//!   (verify, unpack, VM load, switch;     ▲         (session, sync,  (Outgoing)       │
//!    ActiveTasks, read by all)            │          download, rollback)              │
//!                                         │                  └── client (watch) ─────┘
//!  cloud ── notices, Sync, FetchBundle ───┘
//! ```
//!
//! - **intake** (`intake`): the ingest endpoint, the event store, the trigger matcher and
//!   feature windows, and the timers. It turns events into run requests on the run queue.
//! - **runner** (`runner`): the run queue and scheduler, the VM pool's runs, the run journal
//!   and the commit of each run's records, report and state; the VM's health; failure streaks,
//!   which become rollback requests to activation.
//! - **activation** (`activation`): the cloud session (register, notices, sync), bundle
//!   downloads, install failures, and local rollbacks; it installs through [`install`].
//! - **install** ([`install`]): everything that makes a version active, for sync and rollback
//!   alike: verified unpacking on disk, loading into the VM, the triggers' switch, the pointer,
//!   the table of active versions (`ActiveTasks`, read by all) and the bundle cache.
//! - **uplink** (`uplink`): the outbox (`Outgoing`: reports, task outputs and the
//!   run journal, in the device database) and the sender that empties it to the cloud.
//!
//! The rest are leaves every component may use: [`config`], [`credential`], [`db`], `cloud`
//! (the device-plane client), `backoff`, `random`, `clock`, `locks` (and the lock order), and
//! [`status`] (plain data). A component imports only what it sends to or calls, never what
//! feeds it; `tests/structure.rs` checks that the imports between components have no cycle.

mod activation;
pub mod agent;
pub mod backoff;
mod clock;
mod cloud;
pub mod config;
pub mod credential;
pub mod db;
pub mod install;
mod intake;
mod locks;
mod random;
mod runner;
pub mod status;
mod uplink;

pub use agent::Agent;
pub use config::{DeviceConfig, ProfileConfig, ProfileError};
pub use install::{cache, code};
pub use intake::endpoint as ingest;
pub use status::{AgentStatus, TaskRuns, TaskStatus, VmStatus};

use std::path::PathBuf;

/// Everything that can go wrong in the agent, with what and where.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("configuration: {0}")]
    Profile(config::ProfileError),
    /// A file or directory of the agent's own state could not be used.
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file of the agent's own state does not parse.
    #[error("{path} is corrupt: {source}")]
    CorruptFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot encode the {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("stored device token is not ASCII")]
    BadStoredToken,
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error(transparent)]
    EventStore(walle_pipeline::StoreError),
    #[error(transparent)]
    Outbox(#[from] walle_pipeline::OutboxError),
    #[error("device storage is full, event not accepted: {0}")]
    StorageFull(#[source] walle_pipeline::StoreError),
    #[error("event rejected: {0}")]
    BadEvent(#[from] walle_pipeline::EventError),
    #[error("task VM: {0}")]
    Vm(#[source] walle_vm::VmError),
    /// A blocking worker of the agent panicked or was cancelled.
    #[error("{what} failed: {source}")]
    Worker {
        what: &'static str,
        source: tokio::task::JoinError,
    },
    #[error("cloud connection: {0}")]
    Transport(String),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("cloud refused {0}: {1}")]
    Rpc(&'static str, tonic::Status),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl AgentError {
    /// A failed use of a file or directory of the agent's state.
    pub(crate) fn file<'a>(
        action: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
        move |source| AgentError::File {
            action,
            path: path.to_owned(),
            source,
        }
    }
}
