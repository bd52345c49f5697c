//! Conditions on one event, in the checked form the matcher evaluates and indexes.
//!
//! [`crate::pattern`] turns what a task author wrote (shorthand fields and `where` lists) into a
//! [`Cond`]: a conjunction of [`Pred`]s, each one field and one operator. Type errors (a numeric
//! comparison on `page`, an unknown event kind) are caught there, so evaluation here never fails:
//! a field that is missing or of the wrong JSON type simply does not match.

use serde_json::Value;

use crate::event::Event;

/// A field of an event a condition can test.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Field {
    Session,
    Page,
    Event,
    Item,
    /// `args.<name>`: a top-level key of the event's free-form arguments.
    Arg(Box<str>),
}

impl Field {
    /// Parses a field name as written in a pattern (`page`, `args.price`).
    pub(crate) fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "session" => Field::Session,
            "page" => Field::Page,
            "event" => Field::Event,
            "item" => Field::Item,
            _ => {
                let arg = name.strip_prefix("args.")?;
                if arg.is_empty() {
                    return None;
                }
                Field::Arg(arg.into())
            }
        })
    }

    /// Whether the field always holds text (the four built-in fields do; `args.*` may hold any
    /// JSON value).
    pub(crate) fn is_text(&self) -> bool {
        !matches!(self, Field::Arg(_))
    }

    /// The field's value in `event`.
    pub(crate) fn get<'e>(&self, event: &'e Event) -> FieldValue<'e> {
        match self {
            Field::Session => FieldValue::Text(&event.session),
            Field::Page => FieldValue::Text(&event.page),
            Field::Event => FieldValue::Text(event.event.as_str()),
            Field::Item => FieldValue::Text(&event.item),
            Field::Arg(name) => match event.args.get(&**name) {
                Some(Value::String(s)) => FieldValue::Text(s),
                Some(Value::Number(n)) => {
                    n.as_f64().map_or(FieldValue::Missing, FieldValue::Number)
                }
                Some(Value::Bool(b)) => FieldValue::Bool(*b),
                // Null, arrays and objects equal nothing a condition can name.
                Some(_) | None => FieldValue::Missing,
            },
        }
    }
}

/// Why a `partition_by` list is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartitionError {
    /// Not one of the fields a partition may use.
    Unknown(String),
    /// Named twice.
    Duplicate(String),
}

/// The fields of a `partition_by` list (triggers and features share its rules: the four
/// built-in fields, each at most once).
pub(crate) fn partition_fields(names: &[String]) -> Result<Vec<Field>, PartitionError> {
    let mut fields = Vec::with_capacity(names.len());
    for name in names {
        let field = match name.as_str() {
            "session" => Field::Session,
            "page" => Field::Page,
            "event" => Field::Event,
            "item" => Field::Item,
            _ => return Err(PartitionError::Unknown(name.clone())),
        };
        if fields.contains(&field) {
            return Err(PartitionError::Duplicate(name.clone()));
        }
        fields.push(field);
    }
    Ok(fields)
}

/// A field's value in one event, reduced to what conditions compare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FieldValue<'e> {
    Text(&'e str),
    Number(f64),
    Bool(bool),
    Missing,
}

/// A constant a condition compares with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Text(Box<str>),
    Number(f64),
    Bool(bool),
}

impl Scalar {
    /// The scalar a JSON value denotes, if it is one.
    pub(crate) fn from_json(value: &Value) -> Option<Scalar> {
        match value {
            Value::String(s) => Some(Scalar::Text(s.as_str().into())),
            // `+ 0.0` folds -0 into 0 so that equal numbers share one index key.
            Value::Number(n) => n.as_f64().map(|x| Scalar::Number(x + 0.0)),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }

    fn equals(&self, value: FieldValue<'_>) -> bool {
        match (self, value) {
            (Scalar::Text(a), FieldValue::Text(b)) => **a == *b,
            (Scalar::Number(a), FieldValue::Number(b)) => *a == b,
            (Scalar::Bool(a), FieldValue::Bool(b)) => *a == b,
            _ => false,
        }
    }
}

/// What a predicate does with its field's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Equals(Scalar),
    NotEquals(Scalar),
    In(Vec<Scalar>),
    Prefix(Box<str>),
    Lt(f64),
    Le(f64),
    Gt(f64),
    Ge(f64),
}

/// One field tested by one operator.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pred {
    pub field: Field,
    pub op: Op,
}

impl Pred {
    /// Whether `event` satisfies the predicate. A missing field satisfies nothing, not even
    /// `not_equals`.
    pub(crate) fn eval(&self, event: &Event) -> bool {
        let value = self.field.get(event);
        if value == FieldValue::Missing {
            return false;
        }
        match &self.op {
            Op::Equals(s) => s.equals(value),
            Op::NotEquals(s) => !s.equals(value),
            Op::In(set) => set.iter().any(|s| s.equals(value)),
            Op::Prefix(p) => matches!(value, FieldValue::Text(t) if t.starts_with(&**p)),
            Op::Lt(bound) => matches!(value, FieldValue::Number(x) if x < *bound),
            Op::Le(bound) => matches!(value, FieldValue::Number(x) if x <= *bound),
            Op::Gt(bound) => matches!(value, FieldValue::Number(x) if x > *bound),
            Op::Ge(bound) => matches!(value, FieldValue::Number(x) if x >= *bound),
        }
    }
}

/// A conjunction of predicates: what one step of a pattern requires of an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cond {
    pub preds: Vec<Pred>,
}

impl Cond {
    /// Whether `event` satisfies every predicate.
    pub(crate) fn eval(&self, event: &Event) -> bool {
        self.preds.iter().all(|p| p.eval(event))
    }

    /// A text form equal for equal conditions, used to share one index entry between patterns.
    pub(crate) fn canonical(&self) -> String {
        let mut preds: Vec<String> = self.preds.iter().map(|p| format!("{p:?}")).collect();
        preds.sort();
        preds.dedup();
        preds.join("&")
    }
}

/// Writes the event's partition values (length-prefixed, so no two tuples collide) to `key`.
pub(crate) fn encode_key(fields: &[Field], event: &Event, key: &mut Vec<u8>) {
    key.clear();
    for field in fields {
        let value = match field {
            Field::Session => event.session.as_str(),
            Field::Page => event.page.as_str(),
            Field::Event => event.event.as_str(),
            Field::Item => event.item.as_str(),
            // Validation allows only the four built-in fields as partition fields.
            Field::Arg(_) => "",
        };
        key.extend_from_slice(&(value.len() as u32).to_le_bytes());
        key.extend_from_slice(value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn event(args: Value) -> Event {
        Event {
            id: "e".into(),
            ts: 0,
            session: "s".into(),
            page: "item/42".into(),
            event: EventKind::Click,
            item: "42".into(),
            args: match args {
                Value::Object(map) => map,
                _ => Default::default(),
            },
        }
    }

    fn pred(field: &str, op: Op) -> Pred {
        Pred {
            field: Field::parse(field).unwrap(),
            op,
        }
    }

    #[test]
    fn operators_compare_as_documented() {
        let e = event(serde_json::json!({"price": 150, "action": "cart", "vip": true, "n": null}));
        let yes = [
            pred("page", Op::Prefix("item/".into())),
            pred("args.price", Op::Gt(100.0)),
            pred("args.price", Op::Ge(150.0)),
            pred("args.price", Op::Le(150.0)),
            pred("args.price", Op::Equals(Scalar::Number(150.0))),
            pred(
                "args.action",
                Op::In(vec![
                    Scalar::Text("buy".into()),
                    Scalar::Text("cart".into()),
                ]),
            ),
            pred("args.action", Op::NotEquals(Scalar::Text("buy".into()))),
            pred("args.vip", Op::Equals(Scalar::Bool(true))),
            pred("event", Op::Equals(Scalar::Text("click".into()))),
        ];
        for p in yes {
            assert!(p.eval(&e), "{p:?}");
        }
        let no = [
            pred("page", Op::Prefix("home".into())),
            pred("args.price", Op::Lt(100.0)),
            // A number never equals its text.
            pred("args.price", Op::Equals(Scalar::Text("150".into()))),
            // Comparisons on text, null or missing fields are false, `not_equals` included.
            pred("args.action", Op::Gt(1.0)),
            pred("args.n", Op::NotEquals(Scalar::Number(1.0))),
            pred("args.missing", Op::NotEquals(Scalar::Number(1.0))),
        ];
        for p in no {
            assert!(!p.eval(&e), "{p:?}");
        }
    }

    #[test]
    fn field_names() {
        assert_eq!(Field::parse("args.x"), Some(Field::Arg("x".into())));
        assert_eq!(Field::parse("args."), None);
        assert_eq!(Field::parse("colour"), None);
    }
}
