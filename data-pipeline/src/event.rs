//! The user-behaviour event: the one typed record every pipeline stage passes along.
//!
//! # Schema
//!
//! | field | type | rule |
//! |---|---|---|
//! | `id` | string | unique per device, 1–256 characters; an id seen before is stored once |
//! | `ts` | integer | Unix time in milliseconds, ≥ 0 (event time: windows and `within` use it) |
//! | `session` | string | 1–256 characters |
//! | `page` | string | 1–256 characters, e.g. `item`, `home` |
//! | `event` | enum | `enter`, `exit`, `click`, `expose`, `scroll` or `custom` |
//! | `item` | string | 0–256 characters; empty when the event concerns no item |
//! | `args` | map | at most 64 entries; names 1–64 characters; values are **typed scalars**: strings (≤ 1,024 characters), numbers (integers or floats) or booleans — no objects, arrays or nulls |
//!
//! An event is at most 16 KiB as JSON. Two forms carry it: JSON (one object per line in JSONL
//! streams, as above) and protobuf (`walle.device.v1.Event` in `walle-proto`, whose `ArgValue`
//! is a `oneof` of string, int64, double and bool; `walle_proto::event` converts). Both are
//! validated by [`Event::validate`], so a malformed event is rejected whole with an
//! [`EventError`] whose [`EventError::reason`] names the rule, and is never half-stored.

use serde::{Deserialize, Serialize};

/// Largest accepted event, serialized as JSON.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// Largest accepted length of any one string field (id, session, page, item, custom kind).
pub const MAX_FIELD_CHARS: usize = 256;
/// Most entries in `args`.
pub const MAX_ARGS: usize = 64;
/// Longest arg name.
pub const MAX_ARG_NAME_CHARS: usize = 64;
/// Longest string arg value.
pub const MAX_ARG_STRING_CHARS: usize = 1024;

/// What the user did.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Enter,
    Exit,
    Click,
    Expose,
    Scroll,
    /// An app-defined event; its name is in `args["name"]` or the page field.
    Custom,
}

impl EventKind {
    /// The kind with this lowercase name, if it is one.
    pub fn from_name(name: &str) -> Option<EventKind> {
        [
            EventKind::Enter,
            EventKind::Exit,
            EventKind::Click,
            EventKind::Expose,
            EventKind::Scroll,
            EventKind::Custom,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }

    /// The lowercase name used in JSON and in trigger conditions.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Enter => "enter",
            EventKind::Exit => "exit",
            EventKind::Click => "click",
            EventKind::Expose => "expose",
            EventKind::Scroll => "scroll",
            EventKind::Custom => "custom",
        }
    }
}

/// One user-behaviour event as the host app reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique id (per device) chosen by the host app.
    pub id: String,
    /// Unix time in milliseconds.
    pub ts: i64,
    /// App session the event belongs to.
    pub session: String,
    /// Page (screen) the event happened on, e.g. "item", "home".
    pub page: String,
    /// What happened.
    pub event: EventKind,
    /// Item (e.g. product id) the event concerns; empty when none.
    #[serde(default)]
    pub item: String,
    /// Typed scalar arguments (e.g. `{"action": "add_to_cart", "price": 9.5}`).
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// Why an event was rejected at ingest.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("event is not valid JSON for the event schema: {0}")]
    Malformed(String),
    #[error("event is {size} bytes, more than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("event field `{field}` is empty")]
    EmptyField { field: &'static str },
    #[error("event field `{field}` is {len} characters, more than {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("event timestamp {0} is negative")]
    NegativeTimestamp(i64),
    #[error("event has {count} args, more than {MAX_ARGS}")]
    TooManyArgs { count: usize },
    #[error("event arg {name:?} {problem}")]
    BadArg { name: String, problem: String },
}

impl EventError {
    /// The rule the event broke, as a stable snake_case label (for rejection counters).
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::Malformed(_) => "malformed",
            EventError::TooLarge { .. } => "too_large",
            EventError::EmptyField { .. } => "empty_field",
            EventError::FieldTooLong { .. } => "field_too_long",
            EventError::NegativeTimestamp(_) => "negative_timestamp",
            EventError::TooManyArgs { .. } => "too_many_args",
            EventError::BadArg { .. } => "bad_arg",
        }
    }
}

impl Event {
    /// Parses and validates one JSON event (one line of a JSONL stream).
    pub fn from_json(text: &str) -> Result<Event, EventError> {
        if text.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge {
                size: text.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        let event: Event =
            serde_json::from_str(text).map_err(|e| EventError::Malformed(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    /// Checks the invariants the rest of the pipeline relies on.
    pub fn validate(&self) -> Result<(), EventError> {
        for (field, value, may_be_empty) in [
            ("id", &self.id, false),
            ("session", &self.session, false),
            ("page", &self.page, false),
            ("item", &self.item, true),
        ] {
            if value.is_empty() && !may_be_empty {
                return Err(EventError::EmptyField { field });
            }
            let len = value.chars().count();
            if len > MAX_FIELD_CHARS {
                return Err(EventError::FieldTooLong {
                    field,
                    len,
                    max: MAX_FIELD_CHARS,
                });
            }
        }
        if self.ts < 0 {
            return Err(EventError::NegativeTimestamp(self.ts));
        }
        self.validate_args()
    }

    fn validate_args(&self) -> Result<(), EventError> {
        if self.args.len() > MAX_ARGS {
            return Err(EventError::TooManyArgs {
                count: self.args.len(),
            });
        }
        for (name, value) in &self.args {
            let bad = |problem: String| EventError::BadArg {
                name: name.chars().take(MAX_ARG_NAME_CHARS).collect(),
                problem,
            };
            let name_chars = name.chars().count();
            if name_chars == 0 || name_chars > MAX_ARG_NAME_CHARS {
                return Err(bad(format!(
                    "has a name of {name_chars} characters; names have 1 to {MAX_ARG_NAME_CHARS}"
                )));
            }
            let problem = match value {
                serde_json::Value::String(text) if text.chars().count() > MAX_ARG_STRING_CHARS => {
                    format!("is a string longer than {MAX_ARG_STRING_CHARS} characters")
                }
                serde_json::Value::String(_)
                | serde_json::Value::Number(_)
                | serde_json::Value::Bool(_) => continue,
                serde_json::Value::Null => "is null".to_owned(),
                serde_json::Value::Array(_) => "is an array".to_owned(),
                serde_json::Value::Object(_) => "is an object".to_owned(),
            };
            return Err(bad(format!(
                "{problem}; args hold strings, numbers and booleans"
            )));
        }
        Ok(())
    }

    /// The value of a matchable field by name, if the name is one.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "session" => Some(&self.session),
            "page" => Some(&self.page),
            "event" => Some(self.event.as_str()),
            "item" => Some(&self.item),
            _ => None,
        }
    }

    /// The event as a JSON value, as tasks see it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_event() {
        let e = Event::from_json(
            r#"{"id":"e1","ts":5,"session":"s","page":"item","event":"click","item":"sku","args":{"action":"add_to_cart"}}"#,
        )
        .unwrap();
        assert_eq!(e.event, EventKind::Click);
        assert_eq!(e.field("item"), Some("sku"));
        assert_eq!(e.args["action"], "add_to_cart");
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(matches!(
            Event::from_json("{not json"),
            Err(EventError::Malformed(_))
        ));
        assert!(matches!(
            Event::from_json(r#"{"id":"e1","ts":5,"session":"s","page":"p","event":"teleport"}"#),
            Err(EventError::Malformed(m)) if m.contains("teleport")
        ));
        assert_eq!(
            Event::from_json(r#"{"id":"","ts":5,"session":"s","page":"p","event":"click"}"#),
            Err(EventError::EmptyField { field: "id" })
        );
        assert_eq!(
            Event::from_json(r#"{"id":"a","ts":-1,"session":"s","page":"p","event":"click"}"#),
            Err(EventError::NegativeTimestamp(-1))
        );
        let huge = format!(
            r#"{{"id":"a","ts":1,"session":"s","page":"p","event":"click","args":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_EVENT_BYTES)
        );
        assert!(matches!(
            Event::from_json(&huge),
            Err(EventError::TooLarge { .. })
        ));
    }

    #[test]
    fn args_are_typed_scalars() {
        let with_args = |args: &str| {
            Event::from_json(&format!(
                r#"{{"id":"a","ts":1,"session":"s","page":"p","event":"click","args":{args}}}"#
            ))
        };
        let good = with_args(r#"{"action":"cart","price":9.5,"qty":2,"promo":false}"#).unwrap();
        assert_eq!(good.args["qty"], 2);
        for (args, problem) in [
            (r#"{"nested":{"a":1}}"#, "is an object"),
            (r#"{"list":[1,2]}"#, "is an array"),
            (r#"{"nothing":null}"#, "is null"),
            (r#"{"":1}"#, "has a name of 0 characters"),
        ] {
            let error = with_args(args).unwrap_err();
            assert_eq!(error.reason(), "bad_arg");
            assert!(error.to_string().contains(problem), "{error}");
        }
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(MAX_ARG_STRING_CHARS + 1));
        assert!(
            with_args(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than")
        );
        let many: Vec<String> = (0..=MAX_ARGS).map(|i| format!(r#""a{i}":1"#)).collect();
        assert_eq!(
            with_args(&format!("{{{}}}", many.join(","))).unwrap_err(),
            EventError::TooManyArgs {
                count: MAX_ARGS + 1
            }
        );
    }
}
