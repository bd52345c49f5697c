//! Features as task authors declare them in `walle.toml` (`[[features]]`), their validation,
//! and their compiled form. The language and its semantics are in the [module docs](super).

use serde::{Deserialize, Serialize};

use crate::cond::{Cond, Field, PartitionError, partition_fields};
use crate::pattern::{Condition, ConditionError, MAX_CONDITIONS, shorthand_pred};

/// Most features one task may declare.
pub const MAX_FEATURES: usize = 64;
/// Longest feature name.
pub const MAX_NAME_CHARS: usize = 64;
/// Largest `window.count`.
pub const MAX_COUNT_EVENTS: u32 = 1024;
/// Longest time window (`tumbling_ms`, `sliding_ms`, `session_gap_ms`): one week.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most panes a hopping window may have (`sliding_ms / slide_ms`).
pub const MAX_PANES: u64 = 256;

/// A named value computed over a window of the event stream and handed to the task when one of
/// its triggers fires (see the [module docs](super) for the exact semantics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Key of the value in the task's `ctx["features"]`, unique within the task.
    pub name: String,
    /// `count`, `sum`, `avg`, `min`, `max`, `first`, `last`, `distinct_count` or `duration`.
    pub aggregate: String,
    /// The field aggregated: `ts`, `session`, `page`, `event`, `item` or `args.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
    /// Shorthand for `{ field = "event", equals = ... }` in `where`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Shorthand for `{ field = "page", equals = ... }` in `where`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Shorthand for `{ field = "item", equals = ... }` in `where`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Shorthand for `{ field = "session", equals = ... }` in `where`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Conditions an event must meet to enter the feature's windows (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#where: Vec<Condition>,
    /// Event fields whose values define the feature's partitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// The window; the firing's own window when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
}

/// Which events a feature aggregates: exactly one kind (`slide_ms` only with `sliding_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// The firing's own window (the same as leaving `window` out).
    #[serde(default, skip_serializing_if = "is_false")]
    pub r#match: bool,
    /// The last `count` events of the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The aligned window of this many milliseconds containing the trigger time, so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling_ms: Option<u64>,
    /// The last this many milliseconds before the trigger time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_ms: Option<u64>,
    /// With `sliding_ms`: the window moves in hops of this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide_ms: Option<u64>,
    /// The partition's current activity session: events no more than this far apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_gap_ms: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a feature is not acceptable. Every variant names the feature.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeatureError {
    #[error("feature has an empty name")]
    EmptyName,
    #[error(
        "feature name {0:?} is not valid (1-{max} characters of a-z, A-Z, 0-9, '_' and '-', starting with a letter or '_')",
        max = MAX_NAME_CHARS
    )]
    BadName(String),
    #[error("feature `{0}` is declared twice")]
    DuplicateName(String),
    #[error("a task declares {count} features, more than {max}")]
    TooMany { count: usize, max: usize },
    #[error(
        "feature `{feature}` has aggregate `{value}`, which is not one of count, sum, avg, min, max, first, last, distinct_count, duration"
    )]
    UnknownAggregate { feature: String, value: String },
    #[error("feature `{feature}`: `{aggregate}` needs `of`, the field it aggregates")]
    MissingOf {
        feature: String,
        aggregate: &'static str,
    },
    #[error("feature `{feature}`: `{aggregate}` aggregates no field; leave `of` out")]
    OfNotAllowed {
        feature: String,
        aggregate: &'static str,
    },
    #[error(
        "feature `{feature}` aggregates `{field}`, which is not one of ts, session, page, event, item, args.<name>"
    )]
    UnknownOf { feature: String, field: String },
    #[error(
        "feature `{feature}`: `{aggregate}` needs numbers, but `{field}` is text (use ts or args.<name>)"
    )]
    NumericOfText {
        feature: String,
        aggregate: &'static str,
        field: String,
    },
    #[error("feature `{feature}`: {error}")]
    Condition {
        feature: String,
        #[source]
        error: ConditionError,
    },
    #[error("feature `{feature}` has {count} conditions, more than {max}")]
    TooManyConditions {
        feature: String,
        count: usize,
        max: usize,
    },
    #[error(
        "feature `{feature}` partitions by `{field}`, which is not one of session, page, event, item"
    )]
    UnknownPartitionField { feature: String, field: String },
    #[error("feature `{feature}` partitions by `{field}` twice")]
    DuplicatePartitionField { feature: String, field: String },
    #[error(
        "feature `{feature}`: `window` must name exactly one of match, count, tumbling_ms, sliding_ms, session_gap_ms; it names {count}"
    )]
    WindowKinds { feature: String, count: usize },
    #[error("feature `{feature}`: `window.slide_ms` goes with `sliding_ms` only")]
    SlideWithoutSliding { feature: String },
    #[error("feature `{feature}`: `window.{what}` must be between 1 and {max}, got {value}")]
    WindowSize {
        feature: String,
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error(
        "feature `{feature}`: `window.slide_ms` {slide} does not divide `sliding_ms` {sliding} (a window is a whole number of hops)"
    )]
    SlideNotDivisor {
        feature: String,
        sliding: u64,
        slide: u64,
    },
    #[error(
        "feature `{feature}`: the window is {panes} hops of `slide_ms`, more than {max}; make the hop longer"
    )]
    TooManyPanes {
        feature: String,
        panes: u64,
        max: u64,
    },
}

/// What a feature computes over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Aggregate {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    DistinctCount,
    Duration,
}

impl Aggregate {
    const ALL: [Aggregate; 9] = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::First,
        Aggregate::Last,
        Aggregate::DistinctCount,
        Aggregate::Duration,
    ];

    /// The name used in `walle.toml`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::First => "first",
            Aggregate::Last => "last",
            Aggregate::DistinctCount => "distinct_count",
            Aggregate::Duration => "duration",
        }
    }

    fn numeric(self) -> bool {
        matches!(
            self,
            Aggregate::Sum | Aggregate::Avg | Aggregate::Min | Aggregate::Max
        )
    }
}

/// The field a feature aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Of {
    Ts,
    Field(Field),
}

/// A window in checked form; times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Window {
    Match,
    Count(usize),
    /// Tumbling (`slide == size`) and hopping windows: `size / slide` panes of `slide`.
    Panes {
        size: i64,
        slide: i64,
    },
    Sliding(i64),
    Session(i64),
}

/// A feature in the form the [`super::FeatureSet`] runs.
#[derive(Debug, Clone)]
pub(crate) struct Feature {
    pub aggregate: Aggregate,
    pub of: Option<Of>,
    /// Every condition of the filter; empty lets every event in.
    pub filter: Cond,
    /// `filter.canonical()`, to share index entries and state.
    pub filter_key: String,
    pub partition_by: Vec<Field>,
    pub window: Window,
}

impl Feature {
    /// A text equal for features that compute the same thing (the name aside), so that tasks
    /// declaring the same feature share one state.
    pub(crate) fn state_key(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}|{:?}|{}",
            self.aggregate, self.of, self.partition_by, self.window, self.filter_key
        )
    }
}

/// Checks a task's whole feature list.
pub fn validate_features(features: &[FeatureSpec]) -> Result<(), FeatureError> {
    compile_all(features).map(|_| ())
}

/// Checks a task's features and compiles them, in order.
pub(crate) fn compile_all(features: &[FeatureSpec]) -> Result<Vec<Feature>, FeatureError> {
    if features.len() > MAX_FEATURES {
        return Err(FeatureError::TooMany {
            count: features.len(),
            max: MAX_FEATURES,
        });
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(features.len());
    for spec in features {
        out.push(spec.compile()?);
        if !seen.insert(spec.name.as_str()) {
            return Err(FeatureError::DuplicateName(spec.name.clone()));
        }
    }
    Ok(out)
}

impl FeatureSpec {
    /// Checks one feature.
    pub fn validate(&self) -> Result<(), FeatureError> {
        self.compile().map(|_| ())
    }

    /// Checks the feature and turns it into the form the feature set runs.
    pub(crate) fn compile(&self) -> Result<Feature, FeatureError> {
        let feature = || self.name.clone();
        if self.name.is_empty() {
            return Err(FeatureError::EmptyName);
        }
        if !is_valid_name(&self.name) {
            return Err(FeatureError::BadName(self.name.clone()));
        }
        let aggregate = Aggregate::ALL
            .into_iter()
            .find(|a| a.as_str() == self.aggregate)
            .ok_or_else(|| FeatureError::UnknownAggregate {
                feature: feature(),
                value: self.aggregate.clone(),
            })?;
        let of = match (&self.of, aggregate) {
            (None, Aggregate::Count | Aggregate::Duration) => None,
            (None, _) => {
                return Err(FeatureError::MissingOf {
                    feature: feature(),
                    aggregate: aggregate.as_str(),
                });
            }
            (Some(_), Aggregate::Duration) => {
                return Err(FeatureError::OfNotAllowed {
                    feature: feature(),
                    aggregate: aggregate.as_str(),
                });
            }
            (Some(name), _) => {
                let of = if name == "ts" {
                    Of::Ts
                } else {
                    Of::Field(Field::parse(name).ok_or_else(|| FeatureError::UnknownOf {
                        feature: feature(),
                        field: name.clone(),
                    })?)
                };
                if aggregate.numeric() && matches!(&of, Of::Field(f) if f.is_text()) {
                    return Err(FeatureError::NumericOfText {
                        feature: feature(),
                        aggregate: aggregate.as_str(),
                        field: name.clone(),
                    });
                }
                Some(of)
            }
        };
        let filter = self.filter()?;
        let filter_key = filter.canonical();
        let partition_by = partition_fields(&self.partition_by).map_err(|e| match e {
            PartitionError::Unknown(field) => FeatureError::UnknownPartitionField {
                feature: feature(),
                field,
            },
            PartitionError::Duplicate(field) => FeatureError::DuplicatePartitionField {
                feature: feature(),
                field,
            },
        })?;
        let window = match &self.window {
            None => Window::Match,
            Some(spec) => spec.compile(&self.name)?,
        };
        Ok(Feature {
            aggregate,
            of,
            filter,
            filter_key,
            partition_by,
            window,
        })
    }

    /// The shorthand equalities (`event`, `page`, `item`, `session`) that are given.
    fn shorthand(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("event", self.event.as_deref()),
            ("page", self.page.as_deref()),
            ("item", self.item.as_deref()),
            ("session", self.session.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.map(|v| (field, v)))
    }

    fn filter(&self) -> Result<Cond, FeatureError> {
        let count = self.shorthand().count() + self.r#where.len();
        if count > MAX_CONDITIONS {
            return Err(FeatureError::TooManyConditions {
                feature: self.name.clone(),
                count,
                max: MAX_CONDITIONS,
            });
        }
        let in_feature = |error| FeatureError::Condition {
            feature: self.name.clone(),
            error,
        };
        let mut preds = Vec::with_capacity(count);
        for (field, value) in self.shorthand() {
            preds.push(shorthand_pred(field, value).map_err(in_feature)?);
        }
        for condition in &self.r#where {
            preds.push(condition.to_pred().map_err(in_feature)?);
        }
        Ok(Cond { preds })
    }
}

impl WindowSpec {
    fn compile(&self, feature: &str) -> Result<Window, FeatureError> {
        let kinds = usize::from(self.r#match)
            + usize::from(self.count.is_some())
            + usize::from(self.tumbling_ms.is_some())
            + usize::from(self.sliding_ms.is_some())
            + usize::from(self.session_gap_ms.is_some());
        if kinds != 1 {
            return Err(FeatureError::WindowKinds {
                feature: feature.to_owned(),
                count: kinds,
            });
        }
        if self.slide_ms.is_some() && self.sliding_ms.is_none() {
            return Err(FeatureError::SlideWithoutSliding {
                feature: feature.to_owned(),
            });
        }
        let size = |what: &'static str, value: u64, max: u64| {
            if (1..=max).contains(&value) {
                Ok(value)
            } else {
                Err(FeatureError::WindowSize {
                    feature: feature.to_owned(),
                    what,
                    value,
                    max,
                })
            }
        };
        // Sizes are checked against MAX_WINDOW_MS first, so the casts to i64 are exact.
        Ok(if self.r#match {
            Window::Match
        } else if let Some(n) = self.count {
            Window::Count(size("count", u64::from(n), u64::from(MAX_COUNT_EVENTS))? as usize)
        } else if let Some(ms) = self.tumbling_ms {
            let ms = size("tumbling_ms", ms, MAX_WINDOW_MS)? as i64;
            Window::Panes {
                size: ms,
                slide: ms,
            }
        } else if let Some(ms) = self.sliding_ms {
            let ms = size("sliding_ms", ms, MAX_WINDOW_MS)?;
            match self.slide_ms {
                None => Window::Sliding(ms as i64),
                Some(slide) => {
                    let slide = size("slide_ms", slide, ms)?;
                    if ms % slide != 0 {
                        return Err(FeatureError::SlideNotDivisor {
                            feature: feature.to_owned(),
                            sliding: ms,
                            slide,
                        });
                    }
                    if ms / slide > MAX_PANES {
                        return Err(FeatureError::TooManyPanes {
                            feature: feature.to_owned(),
                            panes: ms / slide,
                            max: MAX_PANES,
                        });
                    }
                    Window::Panes {
                        size: ms as i64,
                        slide: slide as i64,
                    }
                }
            }
        } else if let Some(ms) = self.session_gap_ms {
            Window::Session(size("session_gap_ms", ms, MAX_WINDOW_MS)? as i64)
        } else {
            // `kinds == 1` above means one branch was taken.
            return Err(FeatureError::WindowKinds {
                feature: feature.to_owned(),
                count: 0,
            });
        })
    }
}

/// Whether `name` is a valid feature name.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= MAX_NAME_CHARS
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(text: &str) -> FeatureSpec {
        toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> FeatureError {
        feature(text).validate().unwrap_err()
    }

    #[test]
    fn compiles_every_window_kind() {
        let cases = [
            ("", Window::Match),
            ("window = { match = true }", Window::Match),
            ("window = { count = 50 }", Window::Count(50)),
            (
                "window = { tumbling_ms = 3600000 }",
                Window::Panes {
                    size: 3_600_000,
                    slide: 3_600_000,
                },
            ),
            ("window = { sliding_ms = 600000 }", Window::Sliding(600_000)),
            (
                "window = { sliding_ms = 600000, slide_ms = 60000 }",
                Window::Panes {
                    size: 600_000,
                    slide: 60_000,
                },
            ),
            (
                "window = { session_gap_ms = 300000 }",
                Window::Session(300_000),
            ),
        ];
        for (window, expected) in cases {
            let f = feature(&format!("name = \"f\"\naggregate = \"count\"\n{window}"));
            assert_eq!(f.compile().unwrap().window, expected, "{window}");
        }
    }

    #[test]
    fn compiles_filters_partitions_and_fields() {
        let f = feature(
            r#"
name = "add_to_cart"
aggregate = "sum"
of = "args.price"
event = "click"
where = [{ field = "args.action", equals = "add_to_cart" }]
partition_by = ["session", "item"]
window = { sliding_ms = 600000 }
"#,
        )
        .compile()
        .unwrap();
        assert_eq!(f.aggregate, Aggregate::Sum);
        assert_eq!(f.of, Some(Of::Field(Field::Arg("price".into()))));
        assert_eq!(f.filter.preds.len(), 2);
        assert_eq!(f.partition_by, [Field::Session, Field::Item]);
        let ts = feature("name = \"t\"\naggregate = \"max\"\nof = \"ts\"")
            .compile()
            .unwrap();
        assert_eq!(ts.of, Some(Of::Ts));
        assert!(ts.filter.preds.is_empty(), "no filter lets every event in");
        // Features that differ only in name share state; any other difference separates them.
        let a = feature("name = \"a\"\naggregate = \"count\"\nevent = \"click\"");
        let b = FeatureSpec {
            name: "b".into(),
            ..a.clone()
        };
        let c = FeatureSpec {
            event: Some("exit".into()),
            ..a.clone()
        };
        let key = |f: &FeatureSpec| f.compile().unwrap().state_key();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
    }

    #[test]
    fn defaults_are_not_written_out() {
        let f = feature("name = \"clicks\"\naggregate = \"count\"\nevent = \"click\"");
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"name":"clicks","aggregate":"count","event":"click"}"#
        );
        let back: FeatureSpec = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "name = \"f\"\naggregate = \"count\"\ncolour = 1",
            "name = \"f\"\naggregate = \"count\"\nwindow = { hopping_ms = 5 }",
            "name = \"f\"\naggregate = \"count\"\nwhere = [{ field = \"page\", like = \"x\" }]",
        ] {
            assert!(toml::from_str::<FeatureSpec>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn rejects_nonsense_with_specific_errors() {
        use FeatureError as E;
        type Expect = fn(&FeatureError) -> bool;
        let cases: Vec<(&str, Expect)> = vec![
            (
                "aggregate = \"median\"",
                |e| matches!(e, E::UnknownAggregate { value, .. } if value == "median"),
            ),
            ("aggregate = \"sum\"", |e| {
                matches!(
                    e,
                    E::MissingOf {
                        aggregate: "sum",
                        ..
                    }
                )
            }),
            ("aggregate = \"duration\"\nof = \"ts\"", |e| {
                matches!(e, E::OfNotAllowed { .. })
            }),
            (
                "aggregate = \"last\"\nof = \"price\"",
                |e| matches!(e, E::UnknownOf { field, .. } if field == "price"),
            ),
            ("aggregate = \"avg\"\nof = \"page\"", |e| {
                matches!(
                    e,
                    E::NumericOfText {
                        aggregate: "avg",
                        ..
                    }
                )
            }),
            (
                "aggregate = \"count\"\nevent = \"jump\"",
                |e| matches!(e, E::Condition { error: ConditionError::UnknownEventKind(k), .. } if k == "jump"),
            ),
            (
                "aggregate = \"count\"\nwhere = [{ field = \"page\", gt = 3 }]",
                |e| {
                    matches!(
                        e,
                        E::Condition {
                            error: ConditionError::NumericOnText { .. },
                            ..
                        }
                    )
                },
            ),
            ("aggregate = \"count\"\npartition_by = [\"colour\"]", |e| {
                matches!(e, E::UnknownPartitionField { .. })
            }),
            (
                "aggregate = \"count\"\npartition_by = [\"item\", \"item\"]",
                |e| matches!(e, E::DuplicatePartitionField { .. }),
            ),
            ("aggregate = \"count\"\nwindow = {}", |e| {
                matches!(e, E::WindowKinds { count: 0, .. })
            }),
            (
                "aggregate = \"count\"\nwindow = { count = 5, tumbling_ms = 10 }",
                |e| matches!(e, E::WindowKinds { count: 2, .. }),
            ),
            ("aggregate = \"count\"\nwindow = { count = 0 }", |e| {
                matches!(
                    e,
                    E::WindowSize {
                        what: "count",
                        value: 0,
                        ..
                    }
                )
            }),
            ("aggregate = \"count\"\nwindow = { count = 5000 }", |e| {
                matches!(e, E::WindowSize { what: "count", .. })
            }),
            ("aggregate = \"count\"\nwindow = { tumbling_ms = 0 }", |e| {
                matches!(
                    e,
                    E::WindowSize {
                        what: "tumbling_ms",
                        ..
                    }
                )
            }),
            (
                "aggregate = \"count\"\nwindow = { sliding_ms = 999999999999 }",
                |e| {
                    matches!(
                        e,
                        E::WindowSize {
                            what: "sliding_ms",
                            ..
                        }
                    )
                },
            ),
            (
                "aggregate = \"count\"\nwindow = { session_gap_ms = 0 }",
                |e| {
                    matches!(
                        e,
                        E::WindowSize {
                            what: "session_gap_ms",
                            ..
                        }
                    )
                },
            ),
            (
                "aggregate = \"count\"\nwindow = { tumbling_ms = 10, slide_ms = 5 }",
                |e| matches!(e, E::SlideWithoutSliding { .. }),
            ),
            (
                "aggregate = \"count\"\nwindow = { sliding_ms = 10, slide_ms = 20 }",
                |e| {
                    matches!(
                        e,
                        E::WindowSize {
                            what: "slide_ms",
                            ..
                        }
                    )
                },
            ),
            (
                "aggregate = \"count\"\nwindow = { sliding_ms = 10, slide_ms = 3 }",
                |e| matches!(e, E::SlideNotDivisor { .. }),
            ),
            (
                "aggregate = \"count\"\nwindow = { sliding_ms = 100000, slide_ms = 10 }",
                |e| matches!(e, E::TooManyPanes { panes: 10000, .. }),
            ),
        ];
        for (text, expected) in cases {
            let e = err(&format!("name = \"f\"\n{text}"));
            assert!(expected(&e), "{text}\n=> {e:?}");
            assert!(e.to_string().contains("`f`"), "names the feature: {e}");
        }
    }

    #[test]
    fn names_and_lists_are_checked() {
        let ok = feature("name = \"dwell_ms\"\naggregate = \"duration\"");
        let named = |name: &str| FeatureSpec {
            name: name.into(),
            ..ok.clone()
        };
        assert_eq!(named("").validate(), Err(FeatureError::EmptyName));
        for bad in ["1x", "a b", "a.b", &"x".repeat(65)] {
            assert!(
                matches!(named(bad).validate(), Err(FeatureError::BadName(_))),
                "{bad}"
            );
        }
        assert_eq!(
            validate_features(&[ok.clone(), ok.clone()]),
            Err(FeatureError::DuplicateName("dwell_ms".into()))
        );
        let many: Vec<FeatureSpec> = (0..=MAX_FEATURES)
            .map(|i| named(&format!("f{i}")))
            .collect();
        assert!(matches!(
            validate_features(&many),
            Err(FeatureError::TooMany { .. })
        ));
        validate_features(&many[..MAX_FEATURES]).unwrap();
    }
}
