//! Trigger patterns as task authors declare them in `walle.toml`, their validation, and their
//! compiled form.
//!
//! # The language
//!
//! ```toml
//! [[triggers]]
//! name = "considered-then-left"
//! partition_by = ["session", "item"]   # one match per session and item
//! within_ms = 600000                   # the whole match within 10 minutes of its first event
//! skip = "past_last_event"             # or "no_skip"
//! steps = [
//!     { event = "enter", page = "item" },
//!     { event = "click", where = [{ field = "args.action", in = ["cart", "like"] }], one_or_more = true },
//!     { event = "click", where = [{ field = "args.action", equals = "buy" }], not = true },
//!     { event = "exit", page = "item", contiguity = "strict" },
//! ]
//! ```
//!
//! A **step** states a condition on one event: the shorthand fields `event`, `page`, `item` and
//! `session` (each an equality) and a `where` list of `{ field, <op> = value }` with `op` one of
//! `equals`, `not_equals`, `in`, `prefix`, `lt`, `le`, `gt`, `ge`. Fields are `session`, `page`,
//! `event`, `item` and `args.<name>`. `equals`/`not_equals`/`in` take strings, numbers or
//! booleans and compare like JSON (a number never equals a string); `prefix` takes a string; the
//! numeric operators take numbers and only match JSON numbers in `args.*`. A missing field
//! matches no condition, not even `not_equals`. All conditions of a step must hold.
//!
//! Each step is **positive** (it consumes events into the match) or a **negation**
//! (`not = true`). A positive step matches exactly once by default, `times = n` times, or, with
//! `one_or_more = true`, one or more times.
//!
//! # Semantics
//!
//! Everything below happens per pattern and per **partition**: the events whose
//! `partition_by` fields are equal. Events of other partitions are invisible to a match, also
//! for contiguity.
//!
//! * **Runs.** Every event matching the first positive step starts a new run (a partial match).
//!   A run waiting for a step takes the first later event that matches it (skip-till-next-match:
//!   a run never branches, so one run yields at most one match).
//! * **Contiguity** (`relaxed` by default) applies to every event a step takes: `strict` means
//!   the event must be the very next event of the partition after the previous event the run
//!   took; if that next event does not match, the run dies. On the first step it only governs the
//!   step's own repetitions. `relaxed` lets any other events come in between.
//! * **`one_or_more`** is reluctant: while the loop is open, an event that the following
//!   positive step accepts goes to that step and closes the loop; otherwise an event matching
//!   the loop's condition extends the loop. A `strict` loop also closes at the first event of
//!   the partition that extends neither, and the run goes on waiting for the following step
//!   with that step's own contiguity. A one_or_more as the last positive step needs `within_ms`:
//!   it collects events until the window ends and the match fires then. `matched` keeps the
//!   last [`MAX_LOOP_EVENTS`] events of a loop.
//! * **Negation** forbids events between two positive steps: while a run waits for the first
//!   event of the step after the negation (before the loop's first event, or while the loop
//!   before it is open), an event of the partition matching the negation kills the run, unless
//!   that event is taken by the run (the positive step wins). A negation after the last positive
//!   step needs `within_ms`: the match completes when the window ends without such an event.
//! * **Time** is event time. The matcher's clock is the largest `ts` seen so far, or a later time
//!   given to `TriggerSet::advance_to`. A run that started with an event at `t` lives while the
//!   clock is at most `t + within_ms`; when the clock passes that, a run that only waits for time
//!   (trailing negation, trailing open loop) fires and every other run is dropped. The clock
//!   moves before an event is matched, so such firings come before the event's own. An event
//!   older than `clock - within_ms` cannot start a run.
//! * **After-match skip** (`skip`): with `past_last_event` (the default), when a run fires,
//!   every run of the same pattern and partition that started at or before the match's last
//!   event is dropped, so at most one match per event and no overlapping matches. With
//!   `no_skip` the other runs carry on, and one event may complete several runs and start a new
//!   one.
//! * A firing's `matched` holds the events the positive steps took, in order; its `window` holds
//!   every event of the partition from the match's first to its last matched event (the last
//!   `MAX_WINDOW_EVENTS` of them).
//!
//! Firings of one call come in this order: runs ended by time (by deadline, then pattern
//! install order, then run age), then runs completed by the event (by pattern install order,
//! then run age).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cond::{Cond, Field, Op, PartitionError, Pred, Scalar, partition_fields};

/// Fields of an event a pattern may partition by (conditions may also test `args.<name>`).
pub const MATCHABLE_FIELDS: [&str; 4] = ["session", "page", "event", "item"];
/// Most steps (positive and negated) one pattern may have.
pub const MAX_STEPS: usize = 32;
/// Largest `times`.
pub const MAX_TIMES: u32 = 16;
/// Most conditions (shorthand plus `where`) one step may have.
pub const MAX_CONDITIONS: usize = 16;
/// Most values in one `in` list.
pub const MAX_IN_VALUES: usize = 256;
/// Longest `within_ms`: one week.
pub const MAX_WITHIN_MS: u64 = 7 * 24 * 3600 * 1000;
/// Events of one `one_or_more` step kept in a firing's `matched` (the most recent ones).
pub const MAX_LOOP_EVENTS: usize = 64;

/// A named sequence of event conditions that fires a task when it matches (see the module docs
/// for the exact semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternSpec {
    /// Name of the trigger, unique within a task.
    pub name: String,
    /// Event fields whose values must be equal across all events of one match.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// The whole match must happen within this many milliseconds of its first event.
    #[serde(default)]
    pub within_ms: Option<u64>,
    /// What happens to the other runs of the pattern when one fires.
    #[serde(default, skip_serializing_if = "SkipPolicy::is_default")]
    pub skip: SkipPolicy,
    /// The steps, in order.
    pub steps: Vec<StepSpec>,
}

/// After-match skip policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipPolicy {
    /// Drop the pattern's other runs in the partition that started at or before the match's last
    /// event.
    #[default]
    PastLastEvent,
    /// Keep every other run.
    NoSkip,
}

impl SkipPolicy {
    fn is_default(&self) -> bool {
        *self == SkipPolicy::default()
    }
}

/// Whether a step's events may have other events of the partition in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contiguity {
    /// Other events may come in between.
    #[default]
    Relaxed,
    /// The step's event must immediately follow the run's previous event.
    Strict,
}

impl Contiguity {
    fn is_relaxed(&self) -> bool {
        *self == Contiguity::Relaxed
    }
}

/// One step: conditions on one event, plus how it repeats and joins the previous step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Shorthand for `{ field = "event", equals = ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Shorthand for `{ field = "page", equals = ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Shorthand for `{ field = "item", equals = ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Shorthand for `{ field = "session", equals = ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Further conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#where: Vec<Condition>,
    /// Relative to the run's previous event; relaxed by default.
    #[serde(default, skip_serializing_if = "Contiguity::is_relaxed")]
    pub contiguity: Contiguity,
    /// The step matches exactly this many events (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// The step matches one or more events.
    #[serde(default, skip_serializing_if = "is_false")]
    pub one_or_more: bool,
    /// The step is a negation: no event matching it may come here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub not: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One condition of a `where` list: a field and exactly one operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// `session`, `page`, `event`, `item` or `args.<name>`.
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#in: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub le: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ge: Option<Value>,
}

impl StepSpec {
    /// The shorthand (field, expected value) equalities this step tests.
    pub fn conditions(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("event", self.event.as_deref()),
            ("page", self.page.as_deref()),
            ("item", self.item.as_deref()),
            ("session", self.session.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.map(|v| (field, v)))
    }
}

/// Why a pattern is not acceptable. Every variant names the trigger, and the step (counted from
/// 1) where there is one.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatternError {
    #[error("trigger has an empty name")]
    EmptyName,
    #[error("trigger `{0}` is declared twice")]
    DuplicateName(String),
    #[error("trigger `{0}` has no steps")]
    NoSteps(String),
    #[error("trigger `{trigger}` has {count} steps, more than {max}")]
    TooManySteps {
        trigger: String,
        count: usize,
        max: usize,
    },
    #[error(
        "trigger `{trigger}` step {step} has no condition (give at least one of event, page, item, session, where)"
    )]
    EmptyStep { trigger: String, step: usize },
    #[error("trigger `{trigger}` step {step} has {count} conditions, more than {max}")]
    TooManyConditions {
        trigger: String,
        step: usize,
        count: usize,
        max: usize,
    },
    #[error(
        "trigger `{trigger}` step {step} tests event type `{value}`, which is not one of enter, exit, click, expose, scroll, custom"
    )]
    UnknownEventKind {
        trigger: String,
        step: usize,
        value: String,
    },
    #[error(
        "trigger `{trigger}` step {step} tests field `{field}`, which is not one of session, page, event, item, args.<name>"
    )]
    UnknownField {
        trigger: String,
        step: usize,
        field: String,
    },
    #[error(
        "trigger `{trigger}` step {step}: the condition on `{field}` needs exactly one operator (equals, not_equals, in, prefix, lt, le, gt, ge), it has {count}"
    )]
    OperatorCount {
        trigger: String,
        step: usize,
        field: String,
        count: usize,
    },
    #[error("trigger `{trigger}` step {step}: `{op}` on `{field}` needs {expected}, got {value}")]
    BadOperand {
        trigger: String,
        step: usize,
        field: String,
        op: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error(
        "trigger `{trigger}` step {step}: `{op}` compares numbers, but `{field}` is text (numeric comparisons work on args.<name>)"
    )]
    NumericOnText {
        trigger: String,
        step: usize,
        field: String,
        op: &'static str,
    },
    #[error(
        "trigger `{trigger}` step {step}: `in` on `{field}` needs 1 to {max} values, got {count}"
    )]
    InSize {
        trigger: String,
        step: usize,
        field: String,
        count: usize,
        max: usize,
    },
    #[error("trigger `{trigger}` step {step}: `times` must be between 1 and {max}, got {value}")]
    BadTimes {
        trigger: String,
        step: usize,
        value: u32,
        max: u32,
    },
    #[error("trigger `{trigger}` step {step} has both `times` and `one_or_more`; give one")]
    TimesAndOneOrMore { trigger: String, step: usize },
    #[error(
        "trigger `{trigger}` step {step} is a negation (`not = true`) and cannot also have `{what}`"
    )]
    NegationWith {
        trigger: String,
        step: usize,
        what: &'static str,
    },
    #[error(
        "trigger `{0}` starts with a negation; a pattern must start with a positive step (a negation forbids events between two steps)"
    )]
    StartsWithNegation(String),
    #[error(
        "trigger `{0}` ends with a negation but has no `within_ms`: without a time bound it could never complete"
    )]
    TrailingNegationWithoutWithin(String),
    #[error(
        "trigger `{0}` ends with a one_or_more step but has no `within_ms`: without a time bound it could never complete"
    )]
    TrailingLoopWithoutWithin(String),
    #[error(
        "trigger `{trigger}` partitions by `{field}`, which is not one of session, page, event, item"
    )]
    UnknownPartitionField { trigger: String, field: String },
    #[error("trigger `{trigger}` partitions by `{field}` twice")]
    DuplicatePartitionField { trigger: String, field: String },
    #[error("trigger `{0}` has `within_ms = 0`; leave it out for no time bound")]
    ZeroWithin(String),
    #[error("trigger `{trigger}` has `within_ms = {value}`, more than the {max} ms limit")]
    WithinTooLong {
        trigger: String,
        value: u64,
        max: u64,
    },
}

/// The event kinds a condition on `event` may name.
const EVENT_KINDS: [&str; 6] = ["enter", "exit", "click", "expose", "scroll", "custom"];

/// Checks a task's whole trigger list.
pub fn validate_patterns(patterns: &[PatternSpec]) -> Result<(), PatternError> {
    let mut seen = std::collections::HashSet::new();
    for pattern in patterns {
        pattern.validate()?;
        if !seen.insert(pattern.name.as_str()) {
            return Err(PatternError::DuplicateName(pattern.name.clone()));
        }
    }
    Ok(())
}

impl PatternSpec {
    /// Checks one pattern.
    pub fn validate(&self) -> Result<(), PatternError> {
        self.compile().map(|_| ())
    }

    /// Checks the pattern and turns it into the form the matcher runs.
    pub(crate) fn compile(&self) -> Result<Program, PatternError> {
        let trigger = || self.name.clone();
        if self.name.trim().is_empty() {
            return Err(PatternError::EmptyName);
        }
        if self.steps.is_empty() {
            return Err(PatternError::NoSteps(trigger()));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(PatternError::TooManySteps {
                trigger: trigger(),
                count: self.steps.len(),
                max: MAX_STEPS,
            });
        }
        match self.within_ms {
            Some(0) => return Err(PatternError::ZeroWithin(trigger())),
            Some(value) if value > MAX_WITHIN_MS => {
                return Err(PatternError::WithinTooLong {
                    trigger: trigger(),
                    value,
                    max: MAX_WITHIN_MS,
                });
            }
            _ => {}
        }
        let partition_by = partition_fields(&self.partition_by).map_err(|e| match e {
            PartitionError::Unknown(field) => PatternError::UnknownPartitionField {
                trigger: trigger(),
                field,
            },
            PartitionError::Duplicate(field) => PatternError::DuplicatePartitionField {
                trigger: trigger(),
                field,
            },
        })?;

        let mut conds: Vec<Cond> = Vec::new();
        let mut cond_keys: Vec<String> = Vec::new();
        let mut slot_of: HashMap<String, u8> = HashMap::new();
        let mut steps: Vec<PosStep> = Vec::new();
        let mut pending_negs = 0u64;
        for (index, spec) in self.steps.iter().enumerate() {
            let step = index + 1;
            let cond = step_cond(&self.name, step, spec)?;
            if spec.times.is_some() && spec.one_or_more {
                return Err(PatternError::TimesAndOneOrMore {
                    trigger: trigger(),
                    step,
                });
            }
            if let Some(value) = spec.times
                && !(1..=MAX_TIMES).contains(&value)
            {
                return Err(PatternError::BadTimes {
                    trigger: trigger(),
                    step,
                    value,
                    max: MAX_TIMES,
                });
            }
            if spec.not {
                let what = if spec.times.is_some() {
                    Some("times")
                } else if spec.one_or_more {
                    Some("one_or_more")
                } else if spec.contiguity == Contiguity::Strict {
                    Some("contiguity")
                } else {
                    None
                };
                if let Some(what) = what {
                    return Err(PatternError::NegationWith {
                        trigger: trigger(),
                        step,
                        what,
                    });
                }
                if steps.is_empty() {
                    return Err(PatternError::StartsWithNegation(trigger()));
                }
            }
            let key = cond.canonical();
            let slot = match slot_of.get(&key) {
                Some(&slot) => slot,
                None => {
                    // At most MAX_STEPS (32) distinct conditions, so a slot fits a u64 mask.
                    let slot = conds.len() as u8;
                    conds.push(cond);
                    cond_keys.push(key.clone());
                    slot_of.insert(key, slot);
                    slot
                }
            };
            if spec.not {
                pending_negs |= 1 << slot;
            } else {
                steps.push(PosStep {
                    slot,
                    min: spec.times.unwrap_or(1),
                    looped: spec.one_or_more,
                    strict: spec.contiguity == Contiguity::Strict,
                    negs_before: std::mem::take(&mut pending_negs),
                });
            }
        }
        if pending_negs != 0 && self.within_ms.is_none() {
            return Err(PatternError::TrailingNegationWithoutWithin(trigger()));
        }
        if steps.last().is_some_and(|s| s.looped) && self.within_ms.is_none() {
            return Err(PatternError::TrailingLoopWithoutWithin(trigger()));
        }
        Ok(Program {
            partition_by,
            within_ms: self.within_ms,
            skip: self.skip,
            conds,
            cond_keys,
            steps,
            trailing_negs: pending_negs,
        })
    }
}

/// Builds the condition of one step from its shorthand fields and `where` list.
fn step_cond(trigger: &str, step: usize, spec: &StepSpec) -> Result<Cond, PatternError> {
    let count = spec.conditions().count() + spec.r#where.len();
    if count == 0 {
        return Err(PatternError::EmptyStep {
            trigger: trigger.to_owned(),
            step,
        });
    }
    if count > MAX_CONDITIONS {
        return Err(PatternError::TooManyConditions {
            trigger: trigger.to_owned(),
            step,
            count,
            max: MAX_CONDITIONS,
        });
    }
    let mut preds = Vec::with_capacity(count);
    for (field, value) in spec.conditions() {
        preds.push(shorthand_pred(field, value).map_err(|e| e.in_trigger(trigger, step))?);
    }
    for condition in &spec.r#where {
        preds.push(condition.compile(trigger, step)?);
    }
    Ok(Cond { preds })
}

/// What is wrong with one condition, wherever it stands (a trigger step or a feature filter
/// adds where).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConditionError {
    #[error(
        "the condition tests field `{0}`, which is not one of session, page, event, item, args.<name>"
    )]
    UnknownField(String),
    #[error(
        "the condition on `{field}` needs exactly one operator (equals, not_equals, in, prefix, lt, le, gt, ge), it has {count}"
    )]
    OperatorCount { field: String, count: usize },
    #[error("`{op}` on `{field}` needs {expected}, got {value}")]
    BadOperand {
        field: String,
        op: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error(
        "`{op}` compares numbers, but `{field}` is text (numeric comparisons work on args.<name>)"
    )]
    NumericOnText { field: String, op: &'static str },
    #[error("`in` on `{field}` needs 1 to {max} values, got {count}")]
    InSize {
        field: String,
        count: usize,
        max: usize,
    },
    #[error(
        "the condition tests event type `{0}`, which is not one of enter, exit, click, expose, scroll, custom"
    )]
    UnknownEventKind(String),
}

impl ConditionError {
    /// The same mistake, reported at step `step` of trigger `trigger`.
    fn in_trigger(self, trigger: &str, step: usize) -> PatternError {
        let trigger = trigger.to_owned();
        match self {
            ConditionError::UnknownField(field) => PatternError::UnknownField {
                trigger,
                step,
                field,
            },
            ConditionError::OperatorCount { field, count } => PatternError::OperatorCount {
                trigger,
                step,
                field,
                count,
            },
            ConditionError::BadOperand {
                field,
                op,
                expected,
                value,
            } => PatternError::BadOperand {
                trigger,
                step,
                field,
                op,
                expected,
                value,
            },
            ConditionError::NumericOnText { field, op } => PatternError::NumericOnText {
                trigger,
                step,
                field,
                op,
            },
            ConditionError::InSize { field, count, max } => PatternError::InSize {
                trigger,
                step,
                field,
                count,
                max,
            },
            ConditionError::UnknownEventKind(value) => PatternError::UnknownEventKind {
                trigger,
                step,
                value,
            },
        }
    }
}

/// The checked predicate of the shorthand equality `field = value` (`event = "click"`).
pub(crate) fn shorthand_pred(field: &str, value: &str) -> Result<Pred, ConditionError> {
    Condition {
        field: field.to_owned(),
        equals: Some(Value::String(value.to_owned())),
        ..Default::default()
    }
    .to_pred()
}

impl Condition {
    fn compile(&self, trigger: &str, step: usize) -> Result<Pred, PatternError> {
        self.to_pred().map_err(|e| e.in_trigger(trigger, step))
    }

    /// Checks the condition and turns it into the predicate evaluated on events.
    pub(crate) fn to_pred(&self) -> Result<Pred, ConditionError> {
        let field = Field::parse(&self.field)
            .ok_or_else(|| ConditionError::UnknownField(self.field.clone()))?;
        let given = [
            self.equals.is_some(),
            self.not_equals.is_some(),
            self.r#in.is_some(),
            self.prefix.is_some(),
            self.lt.is_some(),
            self.le.is_some(),
            self.gt.is_some(),
            self.ge.is_some(),
        ]
        .into_iter()
        .filter(|&g| g)
        .count();
        if given != 1 {
            return Err(ConditionError::OperatorCount {
                field: self.field.clone(),
                count: given,
            });
        }
        let bad =
            |op: &'static str, expected: &'static str, value: &Value| ConditionError::BadOperand {
                field: self.field.clone(),
                op,
                expected,
                value: value.to_string(),
            };
        // A value `field` can hold: any scalar for args, text for the built-in fields, and one
        // of the six kinds for `event`.
        let scalar = |op: &'static str, value: &Value| -> Result<Scalar, ConditionError> {
            let s = Scalar::from_json(value)
                .ok_or_else(|| bad(op, "a string, number or boolean", value))?;
            if field.is_text() {
                let Scalar::Text(text) = &s else {
                    return Err(bad(op, "a string", value));
                };
                if field == Field::Event && !EVENT_KINDS.contains(&&**text) {
                    return Err(ConditionError::UnknownEventKind(text.to_string()));
                }
            }
            Ok(s)
        };
        let number = |op: &'static str, value: &Value| -> Result<f64, ConditionError> {
            if field.is_text() {
                return Err(ConditionError::NumericOnText {
                    field: self.field.clone(),
                    op,
                });
            }
            value.as_f64().ok_or_else(|| bad(op, "a number", value))
        };
        let op = if let Some(v) = &self.equals {
            Op::Equals(scalar("equals", v)?)
        } else if let Some(v) = &self.not_equals {
            Op::NotEquals(scalar("not_equals", v)?)
        } else if let Some(values) = &self.r#in {
            if values.is_empty() || values.len() > MAX_IN_VALUES {
                return Err(ConditionError::InSize {
                    field: self.field.clone(),
                    count: values.len(),
                    max: MAX_IN_VALUES,
                });
            }
            let mut set = Vec::with_capacity(values.len());
            for v in values {
                let s = scalar("in", v)?;
                if !set.contains(&s) {
                    set.push(s);
                }
            }
            Op::In(set)
        } else if let Some(p) = &self.prefix {
            if p.is_empty() {
                return Err(bad(
                    "prefix",
                    "a non-empty string",
                    &Value::String(p.clone()),
                ));
            }
            if field == Field::Event {
                return Err(bad(
                    "prefix",
                    "a field other than `event`",
                    &Value::String(p.clone()),
                ));
            }
            Op::Prefix(p.as_str().into())
        } else if let Some(v) = &self.lt {
            Op::Lt(number("lt", v)?)
        } else if let Some(v) = &self.le {
            Op::Le(number("le", v)?)
        } else if let Some(v) = &self.gt {
            Op::Gt(number("gt", v)?)
        } else if let Some(v) = &self.ge {
            Op::Ge(number("ge", v)?)
        } else {
            // `given == 1` above means one branch was taken.
            return Err(ConditionError::OperatorCount {
                field: self.field.clone(),
                count: 0,
            });
        };
        Ok(Pred { field, op })
    }
}

/// A pattern in the form the matcher runs: negations folded into the gaps they guard and each
/// distinct condition given a slot (a bit in a `u64` mask).
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub partition_by: Vec<Field>,
    pub within_ms: Option<u64>,
    pub skip: SkipPolicy,
    /// The pattern's distinct conditions; a step refers to one by its index (slot).
    pub conds: Vec<Cond>,
    /// `conds[i].canonical()`, to share conditions between patterns cheaply.
    pub cond_keys: Vec<String>,
    /// The positive steps, in order.
    pub steps: Vec<PosStep>,
    /// Slots of the negations after the last positive step.
    pub trailing_negs: u64,
}

/// A positive step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PosStep {
    /// Slot of the step's condition.
    pub slot: u8,
    /// Events the step needs (`times`, or 1 for `one_or_more`).
    pub min: u32,
    /// `one_or_more`: after `min` events the step keeps taking events until it closes.
    pub looped: bool,
    pub strict: bool,
    /// Slots of the negations between the previous positive step and this one.
    pub negs_before: u64,
}

impl PosStep {
    /// Bit of the step's condition in an event's slot mask.
    pub fn bit(&self) -> u64 {
        1 << self.slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(event: &str) -> StepSpec {
        StepSpec {
            event: Some(event.into()),
            ..Default::default()
        }
    }

    fn pattern(name: &str, steps: Vec<StepSpec>) -> PatternSpec {
        PatternSpec {
            name: name.into(),
            partition_by: vec![],
            within_ms: None,
            skip: SkipPolicy::default(),
            steps,
        }
    }

    fn toml_pattern(text: &str) -> PatternSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn accepts_a_sequence() {
        validate_patterns(&[pattern("p", vec![step("enter"), step("exit")])]).unwrap();
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            validate_patterns(&[pattern("p", vec![])]),
            Err(PatternError::NoSteps("p".into()))
        );
        assert_eq!(
            validate_patterns(&[pattern("p", vec![StepSpec::default()])]),
            Err(PatternError::EmptyStep {
                trigger: "p".into(),
                step: 1
            })
        );
        assert!(matches!(
            validate_patterns(&[pattern("p", vec![step("enter"), step("jump")])]),
            Err(PatternError::UnknownEventKind { step: 2, .. })
        ));
        let mut partitioned = pattern("p", vec![step("click")]);
        partitioned.partition_by = vec!["colour".into()];
        assert!(matches!(
            partitioned.validate(),
            Err(PatternError::UnknownPartitionField { field, .. }) if field == "colour"
        ));
        partitioned.partition_by = vec!["item".into(), "item".into()];
        assert!(matches!(
            partitioned.validate(),
            Err(PatternError::DuplicatePartitionField { .. })
        ));
        assert_eq!(
            validate_patterns(&[
                pattern("p", vec![step("click")]),
                pattern("p", vec![step("exit")])
            ]),
            Err(PatternError::DuplicateName("p".into()))
        );
    }

    #[test]
    fn parses_the_full_language_from_toml() {
        let p = toml_pattern(
            r#"
name = "t"
partition_by = ["session", "item"]
within_ms = 1000
skip = "no_skip"
steps = [
    { event = "enter", page = "item" },
    { event = "click", where = [{ field = "args.action", in = ["cart", "like"] }, { field = "args.price", gt = 100 }], one_or_more = true },
    { event = "click", where = [{ field = "args.action", equals = "buy" }], not = true },
    { where = [{ field = "page", prefix = "item" }], event = "exit", contiguity = "strict", times = 2 },
]
"#,
        );
        assert_eq!(p.skip, SkipPolicy::NoSkip);
        assert_eq!(p.steps[3].contiguity, Contiguity::Strict);
        let program = p.compile().unwrap();
        assert_eq!(program.steps.len(), 3);
        assert!(program.steps[1].looped);
        assert_eq!(program.steps[2].min, 2);
        assert_eq!(program.steps[2].negs_before, 1 << 2);
        assert_eq!(program.trailing_negs, 0);
        // Defaults are not written out, so existing manifests serialize as before.
        let plain = toml_pattern(
            r#"
name = "ipv"
steps = [{ event = "enter", page = "item" }]
"#,
        );
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(
            json,
            r#"{"name":"ipv","partition_by":[],"within_ms":null,"steps":[{"event":"enter","page":"item"}]}"#
        );
    }

    #[test]
    fn the_readme_and_module_examples_are_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("name = \"abandoned-cart\"").unwrap();
        let end = start + readme[start..].find("```").unwrap();
        toml_pattern(&readme[start..end]).validate().unwrap();
        let docs = include_str!("pattern.rs");
        let start = docs.find("//! name = \"considered-then-left\"").unwrap();
        let end = start + docs[start..].find("//! ```").unwrap();
        let text: String = docs[start..end]
            .lines()
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        toml_pattern(&text).validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<PatternSpec, _> =
            toml::from_str("name = \"t\"\nsteps = [{ event = \"enter\", repeat = 2 }]");
        assert!(r.is_err());
        let r: Result<PatternSpec, _> = toml::from_str(
            "name = \"t\"\nsteps = [{ where = [{ field = \"page\", startswith = \"x\" }] }]",
        );
        assert!(r.is_err());
    }

    fn err(text: &str) -> PatternError {
        toml_pattern(text).validate().unwrap_err()
    }

    #[test]
    fn rejects_nonsense_with_specific_errors() {
        use PatternError as E;
        type Expect = fn(&PatternError) -> bool;
        let cases: Vec<(&str, Expect)> = vec![
            (
                r#"name = "t"
steps = [{ event = "click", not = true }, { event = "exit" }]"#,
                |e| matches!(e, E::StartsWithNegation(_)),
            ),
            (
                r#"name = "t"
steps = [{ event = "click", not = true }]"#,
                |e| matches!(e, E::StartsWithNegation(_)),
            ),
            (
                r#"name = "t"
steps = [{ event = "enter" }, { event = "click", not = true }]"#,
                |e| matches!(e, E::TrailingNegationWithoutWithin(_)),
            ),
            (
                r#"name = "t"
steps = [{ event = "enter" }, { event = "click", one_or_more = true }]"#,
                |e| matches!(e, E::TrailingLoopWithoutWithin(_)),
            ),
            (
                r#"name = "t"
steps = [{ event = "click", times = 0 }]"#,
                |e| {
                    matches!(
                        e,
                        E::BadTimes {
                            value: 0,
                            step: 1,
                            ..
                        }
                    )
                },
            ),
            (
                r#"name = "t"
steps = [{ event = "enter" }, { event = "click", times = 2, one_or_more = true }]"#,
                |e| matches!(e, E::TimesAndOneOrMore { step: 2, .. }),
            ),
            (
                r#"name = "t"
steps = [{ event = "enter" }, { event = "click", not = true, times = 2 }, { event = "exit" }]"#,
                |e| matches!(e, E::NegationWith { what: "times", .. }),
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "args.price", gt = "cheap" }] }]"#,
                |e| {
                    matches!(
                        e,
                        E::BadOperand {
                            op: "gt",
                            expected: "a number",
                            ..
                        }
                    )
                },
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "page", lt = 3 }] }]"#,
                |e| matches!(e, E::NumericOnText { op: "lt", .. }),
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "page", equals = 3 }] }]"#,
                |e| {
                    matches!(
                        e,
                        E::BadOperand {
                            expected: "a string",
                            ..
                        }
                    )
                },
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "colour", equals = "red" }] }]"#,
                |e| matches!(e, E::UnknownField { field, .. } if field == "colour"),
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "page", equals = "a", prefix = "b" }] }]"#,
                |e| matches!(e, E::OperatorCount { count: 2, .. }),
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "page" }] }]"#,
                |e| matches!(e, E::OperatorCount { count: 0, .. }),
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "args.a", in = [] }] }]"#,
                |e| matches!(e, E::InSize { count: 0, .. }),
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "args.a", equals = [1] }] }]"#,
                |e| matches!(e, E::BadOperand { op: "equals", .. }),
            ),
            (
                r#"name = "t"
steps = [{ where = [{ field = "event", in = ["click", "fly"] }] }]"#,
                |e| matches!(e, E::UnknownEventKind { value, .. } if value == "fly"),
            ),
            (
                r#"name = "t"
within_ms = 999999999999
steps = [{ event = "click" }]"#,
                |e| matches!(e, E::WithinTooLong { .. }),
            ),
        ];
        for (text, expected) in cases {
            let e = err(text);
            assert!(expected(&e), "{text}\n=> {e}");
            assert!(e.to_string().contains("`t`"), "names the trigger: {e}");
        }
    }
}
