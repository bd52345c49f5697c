//! Walle's on-device stream processing.
//!
//! User-behaviour [`Event`]s come in from the host app; installed tasks declare trigger
//! [`PatternSpec`]s in their manifests; a [`TriggerSet`] matches the stream against every
//! installed pattern and yields a [`Firing`] (the matched events plus their window) for each
//! completed match, which the device container turns into a task run.
//!
//! This crate holds the event model, pattern language and matching. It must not know about
//! networks, bundles or interpreters: it is pure data in, decisions out.

pub mod event;
pub mod matcher;
pub mod pattern;

pub use event::{Event, EventError, EventKind};
pub use matcher::{Firing, TriggerSet};
pub use pattern::{PatternError, PatternSpec, StepSpec, validate_patterns};
