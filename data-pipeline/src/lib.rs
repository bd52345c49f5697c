//! Walle's on-device stream processing.
//!
//! User-behaviour [`Event`]s come in from the host app; installed tasks declare trigger
//! [`PatternSpec`]s in their manifests; a [`TriggerSet`] matches the stream against every
//! installed pattern and yields a [`Firing`] (the matched events plus their window) for each
//! completed match, which the device container turns into a task run, with the task's
//! [`FeatureSpec`]s computed for that firing by a [`FeatureSet`].
//!
//! * [`event`]: the event model and its ingest validation.
//! * [`store`]: the event store, every accepted event append-only in the device's SQLite
//!   database (batched, bounded by age and bytes, queried by session, page and time); [`sqlite`]
//!   opens that database and versions each component's tables in it.
//! * [`pattern`]: the trigger-pattern language (sequences, conditions, contiguity,
//!   repetition, negation, `within`, after-match skip), its exact semantics and validation.
//! * [`matcher`]: the compiled matcher, all installed patterns in one index.
//! * [`feature`]: named features (count, sum, avg, … over match, count, tumbling, sliding and
//!   session windows) that tasks declare and receive when they trigger; a [`FeatureSet`] keeps
//!   every installed feature's windows up to date as events arrive.
//! * [`tasks`]: the two together as the device runs them: a [`TaskPipeline`] turns each event
//!   into [`TaskRun`]s, each a match plus its task's features.
//! * [`outbox`]: the tunnel outbox, what the device must deliver to the cloud, kept in the
//!   device database until acknowledged, in order.
//!
//! This crate must not know about networks, bundles or interpreters. The matcher's reference
//! implementation, written straight from the semantics in [`pattern`], lives with the tests
//! (`tests/reference/`), which check on random streams that the two agree.

mod cond;
pub mod event;
pub mod feature;
mod index;
pub mod matcher;
pub mod outbox;
pub mod pattern;
pub mod sqlite;
pub mod store;
pub mod tasks;

pub use event::{Event, EventError, EventKind};
pub use feature::{
    FeatureError, FeatureLimits, FeatureSet, FeatureSpec, FeatureStats, WindowSpec,
    validate_features,
};
pub use matcher::{Firing, TriggerSet};
pub use outbox::{Change, Item, NewItem, Outbox, OutboxConfig, OutboxError, QueueStats};
pub use pattern::{
    Condition, ConditionError, Contiguity, PatternError, PatternSpec, SkipPolicy, StepSpec,
    validate_patterns,
};
pub use store::{EventQuery, EventStore, Retention, StoreConfig, StoreError, StoreStats};
pub use tasks::{TaskPipeline, TaskRun};
