//! Trigger patterns as task authors declare them in `walle.toml`, and their validation.

use serde::{Deserialize, Serialize};

/// Fields of an event a pattern may test or partition by.
pub const MATCHABLE_FIELDS: [&str; 4] = ["session", "page", "event", "item"];

/// A named sequence of event conditions that fires a task when it matches.
///
/// Steps match in order with relaxed contiguity: unrelated events may come between them. A match
/// is tracked per partition (`partition_by`), so "enter item A … exit item A" does not pair an
/// enter of item A with an exit of item B.
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
    /// The conditions, in order.
    pub steps: Vec<StepSpec>,
}

/// One step: every given field must equal the given value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl StepSpec {
    /// The (field, expected value) pairs this step tests.
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

/// Why a pattern is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatternError {
    #[error("trigger has an empty name")]
    EmptyName,
    #[error("trigger `{0}` is declared twice")]
    DuplicateName(String),
    #[error("trigger `{0}` has no steps")]
    NoSteps(String),
    #[error(
        "trigger `{trigger}` step {step} has no condition (give at least one of event, page, item, session)"
    )]
    EmptyStep { trigger: String, step: usize },
    #[error(
        "trigger `{trigger}` step {step} tests event type `{value}`, which is not one of enter, exit, click, expose, scroll, custom"
    )]
    UnknownEventKind {
        trigger: String,
        step: usize,
        value: String,
    },
    #[error(
        "trigger `{trigger}` partitions by `{field}`, which is not one of session, page, event, item"
    )]
    UnknownPartitionField { trigger: String, field: String },
    #[error("trigger `{0}` has `within_ms = 0`; leave it out for no time bound")]
    ZeroWithin(String),
}

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
        if self.name.trim().is_empty() {
            return Err(PatternError::EmptyName);
        }
        if self.steps.is_empty() {
            return Err(PatternError::NoSteps(self.name.clone()));
        }
        if self.within_ms == Some(0) {
            return Err(PatternError::ZeroWithin(self.name.clone()));
        }
        for field in &self.partition_by {
            if !MATCHABLE_FIELDS.contains(&field.as_str()) {
                return Err(PatternError::UnknownPartitionField {
                    trigger: self.name.clone(),
                    field: field.clone(),
                });
            }
        }
        for (index, step) in self.steps.iter().enumerate() {
            let step_no = index + 1;
            if step.conditions().next().is_none() {
                return Err(PatternError::EmptyStep {
                    trigger: self.name.clone(),
                    step: step_no,
                });
            }
            if let Some(kind) = &step.event
                && !EVENT_KINDS.contains(&kind.as_str())
            {
                return Err(PatternError::UnknownEventKind {
                    trigger: self.name.clone(),
                    step: step_no,
                    value: kind.clone(),
                });
            }
        }
        Ok(())
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
            steps,
        }
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
        assert_eq!(
            validate_patterns(&[pattern("p", vec![step("a")]), pattern("p", vec![step("b")])])
                .map_err(|e| matches!(e, PatternError::UnknownEventKind { .. })),
            Err(true)
        );
        let mut partitioned = pattern("p", vec![step("click")]);
        partitioned.partition_by = vec!["colour".into()];
        assert!(matches!(
            partitioned.validate(),
            Err(PatternError::UnknownPartitionField { field, .. }) if field == "colour"
        ));
        assert_eq!(
            validate_patterns(&[
                pattern("p", vec![step("click")]),
                pattern("p", vec![step("exit")])
            ]),
            Err(PatternError::DuplicateName("p".into()))
        );
    }
}
