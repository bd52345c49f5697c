//! Walle's task-authoring SDK and the `walle` CLI.
//!
//! - [`cli`]: the `walle` command line (arguments, profiles, tables and JSON, error reports).
//! - [`client`]: a typed client for the cloud's control-plane HTTP API (what `walle task
//!   publish` and `walle release …` use).
//! - [`local`]: run a task directory over a JSONL event file in the device's sandboxed VM,
//!   without a cloud (`walle task test`).
//! - [`validate`]: checking a task folder (manifest, bundle, script syntax, loading) before it
//!   leaves the author's machine (`walle task validate`, and first in pack, publish and test).
//! - [`demo`]: `walle demo`, a cloud and devices in one process, end to end.
//! - [`simulate`]: `walle fleet simulate`, many lightweight devices speaking the real device
//!   plane to a real cloud, for scale and fault tests.
//! - [`events`]: synthetic user-behaviour streams with independently computed expectations.
//!
//! Packing and manifest validation come from `walle_proto::bundle`, the same code the cloud
//! uses, so what passes `walle task pack` passes upload. This crate must not reach into the
//! cloud's storage: it speaks the public APIs only.

pub mod cli;
pub mod client;
pub mod demo;
pub mod events;
pub mod local;
pub mod simulate;
pub mod validate;
