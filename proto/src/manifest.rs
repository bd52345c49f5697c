//! `walle.toml`, the task manifest, and the signed release manifest built from it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use walle_pipeline::{FeatureSpec, PatternSpec};

use crate::cron::CronSchedule;

/// File name of the manifest at the root of every task directory and bundle.
pub const MANIFEST_FILE: &str = "walle.toml";
/// Largest accepted task name.
pub const MAX_NAME_CHARS: usize = 64;
/// Default cap on one run's output (all records it uploads), in bytes.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024;

/// How a task's script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Python,
    Wasm,
}

/// Per-run limits a task declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest total size of the records one run may upload.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Wall-clock milliseconds one run may take (the VM's default when absent).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Bytes the task's interpreter may hold (the VM's default when absent).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Largest log one run may keep (the VM's default when absent).
    #[serde(default)]
    pub max_log_bytes: Option<u64>,
    /// Runs of this task that may wait on a device (the device's per-task limit when absent,
    /// and never more); runs past it are dropped and counted.
    #[serde(default)]
    pub max_queued_runs: Option<u32>,
}

fn default_max_output_bytes() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            deadline_ms: None,
            memory_bytes: None,
            max_log_bytes: None,
            max_queued_runs: None,
        }
    }
}

/// A validated task manifest (`walle.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskManifest {
    /// Task name: lowercase letters, digits and `-`, starting with a letter.
    pub name: String,
    /// Semantic version of this task version.
    pub version: semver::Version,
    pub runtime: Runtime,
    /// Path of the entry script inside the bundle.
    pub entry: String,
    /// Function in the entry script called with the trigger context.
    pub handler: String,
    pub description: String,
    /// Paths of models inside the bundle: ONNX (`walle.nn`) and GGUF language models (`.gguf`,
    /// `walle.llm`).
    pub models: Vec<String>,
    pub triggers: Vec<PatternSpec>,
    /// Named features computed for each firing and handed to the task (`[[features]]`); not
    /// written out when empty, so manifests without features serialize (and sign) as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureSpec>,
    /// Periodic runs without an event (`[[timers]]`); not written out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<TimerSpec>,
    pub limits: Limits,
}

/// A timer that runs the task with no event, either every `every_ms` milliseconds or at each
/// minute that matches `cron` (five fields, UTC; see [`crate::cron`]); exactly one of the two.
/// The run's context has `trigger` = the timer's name, empty `matched` and `window`, and the
/// features. Absent fields are not written out, so interval timers serialize (and sign) as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
}

/// When a timer fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerSchedule {
    /// Every period, counted from when the task version was installed or the device started.
    Every(Duration),
    /// At the start of each matching minute (UTC).
    Cron(CronSchedule),
}

impl TimerSpec {
    /// The timer's schedule, checked: exactly one of `every_ms` and `cron`, the period in
    /// range, the cron expression valid. The error says what is wrong, without the timer's name.
    pub fn schedule(&self) -> Result<TimerSchedule, String> {
        match (self.every_ms, &self.cron) {
            (Some(every_ms), None) if (MIN_TIMER_MS..=MAX_TIMER_MS).contains(&every_ms) => {
                Ok(TimerSchedule::Every(Duration::from_millis(every_ms)))
            }
            (Some(every_ms), None) => Err(format!(
                "`every_ms` must be between {MIN_TIMER_MS} and {MAX_TIMER_MS}, got {every_ms}"
            )),
            (None, Some(cron)) => CronSchedule::parse(cron)
                .map(TimerSchedule::Cron)
                .map_err(|e| format!("cron {cron:?}: {e}")),
            (Some(_), Some(_)) => {
                Err("give either `every_ms` or `cron`, not both".into())
            }
            (None, None) => Err(
                "give when it fires: `every_ms = <milliseconds>` or `cron = \"<min hour day month weekday>\"`"
                    .into(),
            ),
        }
    }
}

/// Shortest timer period.
pub const MIN_TIMER_MS: u64 = 1000;
/// Longest timer period: a week.
pub const MAX_TIMER_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most timers per task.
pub const MAX_TIMERS: usize = 16;

/// `walle.toml` as written, before validation; every field optional so that a missing one is
/// reported by name rather than as a parse error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<String>,
    version: Option<String>,
    runtime: Option<String>,
    entry: Option<String>,
    handler: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    triggers: Vec<PatternSpec>,
    #[serde(default)]
    features: Vec<FeatureSpec>,
    #[serde(default)]
    timers: Vec<TimerSpec>,
    #[serde(default)]
    limits: Limits,
}

/// Why a manifest is not acceptable. Each variant names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("walle.toml:{line}:{column}: {field}{message}\n{excerpt}")]
    Syntax {
        /// 1-based line and column of the mistake (0 when the parser gave no position).
        line: usize,
        column: usize,
        /// Where in the manifest, e.g. "`limits.deadline_ms`: " (empty when unknown).
        field: String,
        message: String,
        /// The line and a caret under the column.
        excerpt: String,
    },
    #[error("walle.toml is not UTF-8 text")]
    NotUtf8,
    #[error("walle.toml: missing required field `{0}`")]
    MissingField(&'static str),
    #[error(
        "walle.toml: `name` {0:?} is not a valid task name (1-64 chars of a-z, 0-9 and '-', starting with a letter)"
    )]
    BadName(String),
    #[error("walle.toml: `version` {value:?} is not semver: {reason}")]
    BadVersion { value: String, reason: String },
    #[error("walle.toml: unknown `runtime` {0:?} (expected \"python\" or \"wasm\")")]
    UnknownRuntime(String),
    #[error("walle.toml: `{field}` path {path:?} must be relative, inside the bundle")]
    BadPath { field: &'static str, path: String },
    #[error("walle.toml: `handler` {0:?} is not a valid function name")]
    BadHandler(String),
    #[error("walle.toml: `limits.max_output_bytes` must be between 1 and {max}, got {value}")]
    BadLimit { value: u64, max: u64 },
    #[error("walle.toml: `limits.max_queued_runs` must be at least 1")]
    NoQueuedRuns,
    #[error("walle.toml: invalid trigger: {0}")]
    Trigger(#[from] walle_pipeline::PatternError),
    #[error("walle.toml: invalid feature: {0}")]
    Feature(#[from] walle_pipeline::FeatureError),
    #[error("walle.toml: timers[{index}] {name:?}: {reason}")]
    Timer {
        /// Position in `[[timers]]`, from 0.
        index: usize,
        name: String,
        reason: String,
    },
}

/// Largest output cap a manifest may ask for: the cloud's limit on one tunnel record, so that a
/// run within its limit always produces sendable records.
pub const MAX_OUTPUT_CAP: u64 = 1024 * 1024;

/// A TOML or schema error with where it is: line, column, the field's dotted path (from the
/// line's key and the table header above it) and the line itself.
fn syntax_error(error: &toml::de::Error, text: &str) -> ManifestError {
    let message = error.message().trim_end().to_owned();
    let Some(span) = error.span() else {
        return ManifestError::Syntax {
            line: 0,
            column: 0,
            field: String::new(),
            message,
            excerpt: String::new(),
        };
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before[line_start..].chars().count() + 1;
    let source_line = text.lines().nth(line - 1).unwrap_or("");
    let field = field_path(text, line - 1)
        .map(|path| format!("`{path}`: "))
        .unwrap_or_default();
    let excerpt = format!("    {source_line}\n    {}^", " ".repeat(column - 1));
    ManifestError::Syntax {
        line,
        column,
        field,
        message,
        excerpt,
    }
}

/// The dotted path of the key set on line `index` (0-based), under the nearest table header.
fn field_path(text: &str, index: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let key = lines.get(index)?.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('#') || key.starts_with('{') {
        return None;
    }
    let table = lines[..index].iter().rev().find_map(|line| {
        let line = line.trim();
        let name = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
        name.or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
    });
    Some(match table {
        Some(table) => format!("{}.{key}", table.trim()),
        None => key.to_owned(),
    })
}

impl TaskManifest {
    /// Parses and validates the text of a `walle.toml`.
    pub fn parse(text: &str) -> Result<TaskManifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| syntax_error(&e, text))?;
        let name = raw.name.ok_or(ManifestError::MissingField("name"))?;
        if !is_valid_task_name(&name) {
            return Err(ManifestError::BadName(name));
        }
        let version_text = raw.version.ok_or(ManifestError::MissingField("version"))?;
        let version =
            semver::Version::parse(&version_text).map_err(|e| ManifestError::BadVersion {
                value: version_text.clone(),
                reason: e.to_string(),
            })?;
        let runtime = match raw
            .runtime
            .ok_or(ManifestError::MissingField("runtime"))?
            .as_str()
        {
            "python" => Runtime::Python,
            "wasm" => Runtime::Wasm,
            other => return Err(ManifestError::UnknownRuntime(other.to_owned())),
        };
        let entry = raw.entry.ok_or(ManifestError::MissingField("entry"))?;
        check_relative_path("entry", &entry)?;
        for model in &raw.models {
            check_relative_path("models", model)?;
        }
        let handler = raw.handler.unwrap_or_else(|| "run".to_owned());
        if !is_identifier(&handler) {
            return Err(ManifestError::BadHandler(handler));
        }
        let max = raw.limits.max_output_bytes;
        if max == 0 || max > MAX_OUTPUT_CAP {
            return Err(ManifestError::BadLimit {
                value: max,
                max: MAX_OUTPUT_CAP,
            });
        }
        if raw.limits.max_queued_runs == Some(0) {
            return Err(ManifestError::NoQueuedRuns);
        }
        walle_pipeline::validate_patterns(&raw.triggers)?;
        walle_pipeline::validate_features(&raw.features)?;
        validate_timers(&raw.timers)?;
        Ok(TaskManifest {
            name,
            version,
            runtime,
            entry,
            handler,
            description: raw.description,
            models: raw.models,
            triggers: raw.triggers,
            features: raw.features,
            timers: raw.timers,
            limits: raw.limits,
        })
    }

    /// Paths the bundle must contain for this manifest to make sense.
    pub fn required_files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.entry.as_str()).chain(self.models.iter().map(String::as_str))
    }
}

fn validate_timers(timers: &[TimerSpec]) -> Result<(), ManifestError> {
    let bad = |index: usize, timer: &TimerSpec, reason: String| ManifestError::Timer {
        index,
        name: timer.name.clone(),
        reason,
    };
    if let Some(extra) = timers.get(MAX_TIMERS) {
        return Err(bad(
            MAX_TIMERS,
            extra,
            format!("a task has at most {MAX_TIMERS} timers"),
        ));
    }
    for (index, timer) in timers.iter().enumerate() {
        if timer.name.is_empty() || timer.name.len() > MAX_NAME_CHARS {
            return Err(bad(
                index,
                timer,
                format!("names have 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
        if timers[..index].iter().any(|t| t.name == timer.name) {
            return Err(bad(index, timer, "the name is used twice".into()));
        }
        timer
            .schedule()
            .map_err(|reason| bad(index, timer, reason))?;
    }
    Ok(())
}

/// Whether `name` is a valid task name.
pub fn is_valid_task_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_NAME_CHARS
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `path` is a safe relative path inside a bundle: no root, no `..`, no empty parts.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn check_relative_path(field: &'static str, path: &str) -> Result<(), ManifestError> {
    if is_safe_relative_path(path) {
        Ok(())
    } else {
        Err(ManifestError::BadPath {
            field,
            path: path.to_owned(),
        })
    }
}

/// What the cloud signs for a task version: the manifest plus the bundle's identity. Devices
/// trust nothing in it until the signature over its exact JSON bytes verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub task: TaskManifest,
    /// sha256 of the bundle file, lowercase hex.
    pub bundle_digest: String,
    /// Size of the bundle file in bytes.
    pub bundle_size: u64,
}

impl ReleaseManifest {
    /// The exact bytes that get signed.
    pub fn to_signed_bytes(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "ipv-feature"
version = "1.2.3"
runtime = "python"
entry = "main.py"

[[triggers]]
name = "item-page-view"
partition_by = ["session", "item"]
steps = [{ event = "enter", page = "item" }, { event = "exit", page = "item" }]
"#;

    #[test]
    fn parses_a_good_manifest_with_defaults() {
        let m = TaskManifest::parse(GOOD).unwrap();
        assert_eq!(m.name, "ipv-feature");
        assert_eq!(m.version, semver::Version::new(1, 2, 3));
        assert_eq!(m.runtime, Runtime::Python);
        assert_eq!(m.handler, "run");
        assert_eq!(m.limits.max_output_bytes, DEFAULT_MAX_OUTPUT_BYTES);
        assert_eq!(m.triggers[0].steps.len(), 2);
    }

    #[test]
    fn declared_run_limits_are_read_and_unknown_ones_refused() {
        let limits =
            "\n[limits]\ndeadline_ms = 250\nmemory_bytes = 16777216\nmax_log_bytes = 100\n";
        let m = TaskManifest::parse(&format!("{GOOD}{limits}")).unwrap();
        assert_eq!(m.limits.deadline_ms, Some(250));
        assert_eq!(m.limits.memory_bytes, Some(16 << 20));
        assert_eq!(m.limits.max_log_bytes, Some(100));
        let queued = TaskManifest::parse(&format!("{GOOD}\n[limits]\nmax_queued_runs = 8\n"));
        assert_eq!(queued.unwrap().limits.max_queued_runs, Some(8));
        let none = TaskManifest::parse(&format!("{GOOD}\n[limits]\nmax_queued_runs = 0\n"));
        assert!(matches!(none, Err(ManifestError::NoQueuedRuns)), "{none:?}");
        assert_eq!(TaskManifest::parse(GOOD).unwrap().limits.deadline_ms, None);
        let typo = format!("{GOOD}\n[limits]\ndeadline = 250\n");
        assert!(
            TaskManifest::parse(&typo).is_err(),
            "an unknown limit is an error"
        );
    }

    #[test]
    fn features_are_read_and_validated() {
        let features = r#"
[[features]]
name = "dwell_ms"
aggregate = "duration"

[[features]]
name = "add_to_cart"
aggregate = "count"
event = "click"
where = [{ field = "args.action", equals = "add_to_cart" }]
partition_by = ["session", "item"]
window = { sliding_ms = 600000, slide_ms = 60000 }
"#;
        let m = TaskManifest::parse(&format!("{GOOD}{features}")).unwrap();
        assert_eq!(m.features.len(), 2);
        assert_eq!(m.features[1].partition_by, ["session", "item"]);
        assert!(TaskManifest::parse(GOOD).unwrap().features.is_empty());
        // A manifest without features serializes as before: no `features` key.
        let json = serde_json::to_string(&TaskManifest::parse(GOOD).unwrap()).unwrap();
        assert!(!json.contains("features"), "{json}");
        let back: TaskManifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);

        let bad = features.replace("\"duration\"", "\"median\"");
        let err = TaskManifest::parse(&format!("{GOOD}{bad}")).unwrap_err();
        assert!(
            matches!(
                &err,
                ManifestError::Feature(walle_pipeline::FeatureError::UnknownAggregate { feature, .. })
                    if feature == "dwell_ms"
            ),
            "{err}"
        );
        assert!(err.to_string().contains("invalid feature"), "{err}");
        let typo = features.replace("partition_by", "partition");
        assert!(TaskManifest::parse(&format!("{GOOD}{typo}")).is_err());
        let zero = features.replace("slide_ms = 60000", "slide_ms = 0");
        let err = TaskManifest::parse(&format!("{GOOD}{zero}")).unwrap_err();
        assert!(err.to_string().contains("slide_ms"), "{err}");
    }

    #[test]
    fn timers_run_every_period_or_on_a_cron_schedule() {
        let timers = r#"
[[timers]]
name = "hourly"
every_ms = 3600000

[[timers]]
name = "nightly"
cron = "0 3 * * *"
"#;
        let m = TaskManifest::parse(&format!("{GOOD}{timers}")).unwrap();
        assert_eq!(
            m.timers[0].schedule(),
            Ok(TimerSchedule::Every(Duration::from_secs(3600)))
        );
        assert_eq!(
            m.timers[1].schedule(),
            Ok(TimerSchedule::Cron(
                CronSchedule::parse("0 3 * * *").unwrap()
            ))
        );
        // An interval timer serializes (and so signs) as before cron existed.
        let json = serde_json::to_string(&m.timers).unwrap();
        assert_eq!(
            json,
            r#"[{"name":"hourly","every_ms":3600000},{"name":"nightly","cron":"0 3 * * *"}]"#
        );
        let back: TaskManifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn timer_mistakes_name_the_timer_and_what_is_wrong() {
        let timer = |body: &str| {
            format!(
                "{GOOD}\n[[timers]]\nname = \"a\"\nevery_ms = 60000\n[[timers]]\nname = \"nightly\"\n{body}"
            )
        };
        let cases = [
            (
                timer("cron = \"61 * * * *\""),
                r#"walle.toml: timers[1] "nightly": cron "61 * * * *": minute 61 is out of range 0-59"#,
            ),
            (
                timer("cron = \"0 3 * *\""),
                r#"walle.toml: timers[1] "nightly": cron "0 3 * *": expected 5 fields (minute hour day-of-month month day-of-week), got 4"#,
            ),
            (
                timer("cron = \"0 3 * * *\"\nevery_ms = 60000"),
                r#"walle.toml: timers[1] "nightly": give either `every_ms` or `cron`, not both"#,
            ),
            (
                timer(""),
                r#"walle.toml: timers[1] "nightly": give when it fires: `every_ms = <milliseconds>` or `cron = "<min hour day month weekday>"`"#,
            ),
            (
                timer("every_ms = 10"),
                r#"walle.toml: timers[1] "nightly": `every_ms` must be between 1000 and 604800000, got 10"#,
            ),
            (
                timer("cron = \"0 0 30 feb *\""),
                r#"walle.toml: timers[1] "nightly": cron "0 0 30 feb *": it never fires: none of its months has any of its days of the month"#,
            ),
        ];
        for (text, expected) in cases {
            let err = TaskManifest::parse(&text).unwrap_err().to_string();
            assert_eq!(err, expected);
        }
        let typo = timer("cron = \"0 3 * * *\"\ntimezone = \"UTC\"");
        let err = TaskManifest::parse(&typo).unwrap_err().to_string();
        assert!(err.contains("unknown field `timezone`"), "{err}");
    }

    #[test]
    fn a_schema_mistake_says_line_column_field_and_shows_the_line() {
        let text = format!("{GOOD}\n[limits]\ndeadline_ms = \"2h\"\n");
        let error = TaskManifest::parse(&text).unwrap_err();
        let ManifestError::Syntax {
            line,
            column,
            ref field,
            ..
        } = error
        else {
            panic!("{error}")
        };
        assert_eq!((line, column), (13, 15), "{error}");
        assert_eq!(field, "`limits.deadline_ms`: ");
        let shown = error.to_string();
        assert!(
            shown
                .starts_with("walle.toml:13:15: `limits.deadline_ms`: invalid type: string \"2h\""),
            "{shown}"
        );
        assert!(
            shown.ends_with("    deadline_ms = \"2h\"\n                  ^"),
            "{shown}"
        );
        let unknown =
            TaskManifest::parse(&format!("{GOOD}\n[limits]\ntimeout_ms = 5\n")).unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("walle.toml:13:1: `limits.timeout_ms`: unknown field `timeout_ms`"),
            "{unknown}"
        );
        let broken = TaskManifest::parse("name = \"x\"\nversion = \n").unwrap_err();
        assert!(broken.to_string().starts_with("walle.toml:2:"), "{broken}");
    }

    #[test]
    fn missing_fields_are_named() {
        for field in ["name", "version", "runtime", "entry"] {
            // Drop the top-level line only (the trigger has a `name` too).
            let line = GOOD
                .lines()
                .find(|l| l.starts_with(&format!("{field} =")))
                .unwrap();
            let text = GOOD.replacen(line, "", 1);
            let err = TaskManifest::parse(&text).unwrap_err();
            assert!(
                matches!(err, ManifestError::MissingField(f) if f == field),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn bad_semver_is_reported_with_the_value() {
        let err = TaskManifest::parse(&GOOD.replace("1.2.3", "1.2")).unwrap_err();
        assert!(matches!(&err, ManifestError::BadVersion { value, .. } if value == "1.2"));
        assert!(err.to_string().contains("not semver"), "{err}");
    }

    #[test]
    fn unknown_runtime_is_reported() {
        let err = TaskManifest::parse(&GOOD.replace("\"python\"", "\"lua\"")).unwrap_err();
        assert!(
            matches!(&err, ManifestError::UnknownRuntime(r) if r == "lua"),
            "{err}"
        );
    }

    #[test]
    fn other_mistakes_are_specific() {
        let cases = [
            (GOOD.replace("ipv-feature", "IPV"), "not a valid task name"),
            (GOOD.replace("main.py", "../main.py"), "must be relative"),
            (
                format!("{GOOD}\nflavour = \"x\""),
                "unknown field `flavour`",
            ),
            (GOOD.replace("\"exit\"", "\"leave\""), "invalid trigger"),
            (
                format!("{GOOD}\n[limits]\nmax_output_bytes = 0"),
                "max_output_bytes",
            ),
            (format!("handler = \"no-dash\"\n{GOOD}"), "handler"),
            (
                format!("{GOOD}\n[[timers]]\nname = \"t\"\nevery_ms = 10"),
                "`every_ms` must be between",
            ),
            (
                format!(
                    "{GOOD}\n[[timers]]\nname = \"t\"\nevery_ms = 60000\n[[timers]]\nname = \"t\"\nevery_ms = 60000"
                ),
                "used twice",
            ),
        ];
        for (text, expected) in cases {
            let err = TaskManifest::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }

    #[test]
    fn safe_paths() {
        assert!(is_safe_relative_path("a/b.py"));
        for bad in ["", "/etc/passwd", "a/../b", "./a", "a//b", "a\\b"] {
            assert!(!is_safe_relative_path(bad), "{bad}");
        }
    }
}
