//! The protobuf form of user-behaviour events (`walle/device/v1/event.proto`) and its conversion
//! to and from the pipeline's [`Event`], which validates it like the JSON form.

use serde_json::{Number, Value};
use walle_pipeline::{Event, EventError, EventKind};

use crate::v1;
use crate::v1::arg_value::Value as Arg;

/// Converts and validates an event in protobuf form.
pub fn from_proto(event: v1::Event) -> Result<Event, EventError> {
    let kind = kind_from_proto(event.event)?;
    let mut args = serde_json::Map::new();
    for (name, value) in event.args {
        let value = arg_from_proto(&name, value)?;
        args.insert(name, value);
    }
    let event = Event {
        id: event.id,
        ts: event.ts,
        session: event.session,
        page: event.page,
        event: kind,
        item: event.item,
        args,
    };
    event.validate()?;
    let size = serde_json::to_vec(&event)
        .map(|json| json.len())
        .unwrap_or(0);
    if size > walle_pipeline::event::MAX_EVENT_BYTES {
        return Err(EventError::TooLarge {
            size,
            max: walle_pipeline::event::MAX_EVENT_BYTES,
        });
    }
    Ok(event)
}

/// The protobuf form of a (valid) event.
pub fn to_proto(event: &Event) -> v1::Event {
    v1::Event {
        id: event.id.clone(),
        ts: event.ts,
        session: event.session.clone(),
        page: event.page.clone(),
        event: kind_to_proto(&event.event) as i32,
        item: event.item.clone(),
        args: event
            .args
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), arg_to_proto(value)?)))
            .collect(),
    }
}

fn kind_from_proto(kind: i32) -> Result<EventKind, EventError> {
    let malformed = || EventError::Malformed(format!("event kind {kind} is not one of 1..=6"));
    Ok(
        match v1::EventKind::try_from(kind).map_err(|_| malformed())? {
            v1::EventKind::Unspecified => return Err(malformed()),
            v1::EventKind::Enter => EventKind::Enter,
            v1::EventKind::Exit => EventKind::Exit,
            v1::EventKind::Click => EventKind::Click,
            v1::EventKind::Expose => EventKind::Expose,
            v1::EventKind::Scroll => EventKind::Scroll,
            v1::EventKind::Custom => EventKind::Custom,
        },
    )
}

fn kind_to_proto(kind: &EventKind) -> v1::EventKind {
    match kind {
        EventKind::Enter => v1::EventKind::Enter,
        EventKind::Exit => v1::EventKind::Exit,
        EventKind::Click => v1::EventKind::Click,
        EventKind::Expose => v1::EventKind::Expose,
        EventKind::Scroll => v1::EventKind::Scroll,
        EventKind::Custom => v1::EventKind::Custom,
    }
}

fn arg_from_proto(name: &str, value: v1::ArgValue) -> Result<Value, EventError> {
    let bad = |problem: &str| EventError::BadArg {
        name: name.chars().take(64).collect(),
        problem: problem.to_owned(),
    };
    match value.value {
        Some(Arg::Text(text)) => Ok(Value::String(text)),
        Some(Arg::Int(int)) => Ok(Value::from(int)),
        Some(Arg::Float(float)) => Number::from_f64(float)
            .map(Value::Number)
            .ok_or_else(|| bad("is not a finite number")),
        Some(Arg::Flag(flag)) => Ok(Value::Bool(flag)),
        None => Err(bad("has no value")),
    }
}

fn arg_to_proto(value: &Value) -> Option<v1::ArgValue> {
    let value = match value {
        Value::String(text) => Arg::Text(text.clone()),
        Value::Bool(flag) => Arg::Flag(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(int) => Arg::Int(int),
            None => Arg::Float(number.as_f64()?),
        },
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    };
    Some(v1::ArgValue { value: Some(value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_carry_the_same_event() {
        let event = Event::from_json(
            r#"{"id":"e1","ts":5,"session":"s","page":"item","event":"click","item":"sku",
                "args":{"action":"cart","price":9.5,"qty":2,"promo":true}}"#,
        )
        .unwrap();
        let proto = to_proto(&event);
        assert_eq!(proto.event, v1::EventKind::Click as i32);
        assert_eq!(from_proto(proto).unwrap(), event);
    }

    #[test]
    fn a_bad_protobuf_event_is_rejected_with_the_rule_it_broke() {
        let good = to_proto(
            &Event::from_json(r#"{"id":"e1","ts":5,"session":"s","page":"item","event":"click"}"#)
                .unwrap(),
        );
        let with = |change: &dyn Fn(&mut v1::Event)| {
            let mut event = good.clone();
            change(&mut event);
            from_proto(event).unwrap_err()
        };
        assert_eq!(with(&|e| e.event = 0).reason(), "malformed");
        assert_eq!(with(&|e| e.event = 99).reason(), "malformed");
        assert_eq!(with(&|e| e.id.clear()).reason(), "empty_field");
        assert_eq!(with(&|e| e.ts = -1).reason(), "negative_timestamp");
        let nan = with(&|e| {
            e.args.insert(
                "x".into(),
                v1::ArgValue {
                    value: Some(Arg::Float(f64::NAN)),
                },
            );
        });
        assert!(nan.to_string().contains("not a finite number"), "{nan}");
        let empty = with(&|e| {
            e.args.insert("x".into(), v1::ArgValue { value: None });
        });
        assert_eq!(empty.reason(), "bad_arg");
        let huge = with(&|e| {
            for i in 0..20 {
                e.args.insert(
                    format!("a{i}"),
                    v1::ArgValue {
                        value: Some(Arg::Text("x".repeat(1000))),
                    },
                );
            }
        });
        assert_eq!(huge.reason(), "too_large");
    }
}
