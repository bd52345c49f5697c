//! Walle's device container: the agent that runs on each device.
//!
//! It registers with the cloud, keeps a notice stream open (push), syncs and fetches bundles
//! when told (pull), verifies each bundle's signature and digest and installs it atomically
//! ([`install`]), runs tasks in the sandboxed VM ([`walle_vm`]) when the on-device pipeline
//! ([`walle_pipeline`]) matches their triggers, and sends run reports and task outputs back.
//!
//! Use it as a library (`Agent::start(config)`, `agent.track(event)`) or through the
//! `walle-device` binary (`run`, `replay`, `status`). This crate must not decide what a device
//! should run: that is the cloud's job; it converges to what the cloud says.

pub mod agent;
mod backoff;
pub mod cache;
pub mod code;
pub mod config;
mod connection;
pub mod credential;
pub mod db;
mod download;
mod health;
pub mod ingest;
pub mod install;
mod random;
mod rollback;
mod runner;
mod scheduler;
mod timers;
mod uplink;

pub use agent::{Agent, AgentStatus, TaskStatus, VmStatus};
pub use config::{DeviceConfig, ProfileConfig, ProfileError};

/// Everything that can go wrong in the agent, with what and where.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("configuration: {0}")]
    Profile(config::ProfileError),
    #[error("device state: {0}")]
    State(String),
    #[error("device storage is full, event not accepted: {0}")]
    StorageFull(String),
    #[error("event rejected: {0}")]
    BadEvent(#[from] walle_pipeline::EventError),
    #[error("task VM: {0}")]
    Vm(walle_vm::VmError),
    #[error("cloud connection: {0}")]
    Transport(String),
    #[error("cloud refused {0}: {1}")]
    Rpc(&'static str, tonic::Status),
    #[error("timed out: {0}")]
    Timeout(String),
}
