//! The author guide (`docs/authoring.md`) documents every field `walle.toml` accepts.
//!
//! The fields come from the manifest's own types, not from a list kept by hand: a value of every
//! type with every field set is serialized to JSON and its keys are collected, recursively. The
//! struct literals below name every field, so a field added to `TaskManifest`, `Limits`,
//! `TimerSpec`, `PatternSpec`, `StepSpec`, `Condition`, `FeatureSpec` or `WindowSpec` does not
//! compile here until it is set, and then must be documented. The same value, written back as
//! TOML, must get past the parser's schema (every struct refuses unknown fields), so every key
//! collected is one the parser accepts.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use walle_pipeline::{Condition, Contiguity, FeatureSpec, PatternSpec, SkipPolicy, StepSpec};
use walle_proto::manifest::{Limits, ManifestError, Runtime, TaskManifest, TimerSpec};

const GUIDE: &str = include_str!("../../docs/authoring.md");

/// A manifest with every field of every type in it set (and every flag and enum away from its
/// default, which serialization leaves out).
fn everything() -> TaskManifest {
    let base = TaskManifest::parse(
        "name = \"t\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\n",
    )
    .unwrap_or_else(|e| panic!("the base manifest parses: {e}"));
    let condition = Condition {
        field: "args.price".into(),
        equals: Some(json!(1)),
        not_equals: Some(json!(2)),
        r#in: Some(vec![json!(3)]),
        prefix: Some("a".into()),
        lt: Some(json!(4)),
        le: Some(json!(5)),
        gt: Some(json!(6)),
        ge: Some(json!(7)),
    };
    let step = StepSpec {
        event: Some("click".into()),
        page: Some("item".into()),
        item: Some("i".into()),
        session: Some("s".into()),
        r#where: vec![condition.clone()],
        contiguity: Contiguity::Strict,
        times: Some(2),
        one_or_more: true,
        not: true,
    };
    let trigger = PatternSpec {
        name: "p".into(),
        partition_by: vec!["session".into()],
        within_ms: Some(1000),
        skip: SkipPolicy::NoSkip,
        steps: vec![step],
    };
    let window = walle_pipeline::WindowSpec {
        r#match: true,
        count: Some(1),
        tumbling_ms: Some(1),
        sliding_ms: Some(1),
        slide_ms: Some(1),
        session_gap_ms: Some(1),
    };
    let feature = FeatureSpec {
        name: "f".into(),
        aggregate: "sum".into(),
        of: Some("args.price".into()),
        event: Some("click".into()),
        page: Some("item".into()),
        item: Some("i".into()),
        session: Some("s".into()),
        r#where: vec![condition],
        partition_by: vec!["session".into()],
        window: Some(window),
    };
    let timer = TimerSpec {
        name: "t".into(),
        every_ms: Some(60_000),
        cron: Some("0 3 * * *".into()),
    };
    let limits = Limits {
        max_output_bytes: 1,
        deadline_ms: Some(1),
        memory_bytes: Some(1),
        max_log_bytes: Some(1),
        max_queued_runs: Some(1),
    };
    TaskManifest {
        name: "t".into(),
        version: base.version,
        runtime: Runtime::Python,
        entry: "main.py".into(),
        handler: "run".into(),
        description: "d".into(),
        models: vec!["m.onnx".into()],
        triggers: vec![trigger],
        features: vec![feature],
        timers: vec![timer],
        limits,
    }
}

/// Every key of `value`, as `path → key` (`triggers[].steps[].where[].lt` → `lt`).
fn keys(value: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.insert(at.clone(), key.clone());
                keys(inner, &at, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                keys(item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// A JSON value as TOML: the top level as `key = value` lines, everything inside inline.
fn to_toml(manifest: &Value) -> String {
    fn inline(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let fields: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", inline(v)))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(inline).collect();
                format!("[{}]", items.join(", "))
            }
            // JSON strings, numbers and booleans are TOML as they are written.
            other => other.to_string(),
        }
    }
    let Value::Object(fields) = manifest else {
        panic!("a manifest serializes to an object: {manifest}");
    };
    fields
        .iter()
        .map(|(k, v)| format!("{k} = {}\n", inline(v)))
        .collect()
}

#[test]
fn every_manifest_field_the_parser_accepts_is_documented() {
    let value = serde_json::to_value(everything()).unwrap();
    let mut fields = BTreeMap::new();
    keys(&value, "", &mut fields);
    // Every collected key is one the parser reads: the value may break validation rules
    // (`every_ms` and `cron` together), but not the schema.
    match TaskManifest::parse(&to_toml(&value)) {
        Err(e @ ManifestError::Syntax { .. }) => {
            panic!("the parser refuses a collected field: {e}")
        }
        Err(ManifestError::MissingField(f)) => panic!("a required field was not collected: {f}"),
        _ => {}
    }
    assert!(fields.len() > 40, "too few fields collected: {fields:?}");
    let undocumented: Vec<&String> = fields
        .iter()
        .filter(|(_, key)| !GUIDE.contains(&format!("| `{key}` |")))
        .map(|(path, _)| path)
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/authoring.md has no reference-table row (| `name` | ...) for these walle.toml fields: {undocumented:?}"
    );
}

#[test]
fn the_field_collection_sees_a_field_that_is_missing() {
    let mut fields = BTreeMap::new();
    keys(
        &json!({"limits": {"deadline_ms": 1}, "triggers": [{"steps": [{"not": true}]}]}),
        "",
        &mut fields,
    );
    let paths: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "limits",
            "limits.deadline_ms",
            "triggers",
            "triggers[].steps",
            "triggers[].steps[].not"
        ]
    );
    let toml = to_toml(&json!({"name": "x", "limits": {"deadline_ms": 1}}));
    assert_eq!(toml, "limits = { deadline_ms = 1 }\nname = \"x\"\n");
}
