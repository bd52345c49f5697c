//! Checking a task folder before it leaves the author's machine: `walle task validate`, and what
//! `pack`, `publish` and `test` check first.
//!
//! In order: the manifest (line, column and field of a mistake), the bundle (files the manifest
//! names, sizes), every Python file's syntax (all of them, each with file:line:column), then the
//! task loaded in the device's VM (models, the handler, module-level code). A later step runs only
//! when the earlier ones found nothing, since it needs what they check.

use std::path::Path;

use serde::Serialize;
use walle_proto::bundle::{self, BundleContents, BundleError};
use walle_proto::manifest::{MANIFEST_FILE, ManifestError, Runtime, TaskManifest};

/// One thing wrong with a task folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file it is in, relative to the task folder.
    pub file: String,
    pub message: String,
    /// What to do about it, when there is something specific to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Messages that carry their own location start with the file name already.
        if self.message.starts_with(&self.file) {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.file, self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// What a valid folder holds.
#[derive(Debug, Clone)]
pub struct Valid {
    pub manifest: TaskManifest,
    /// The packed bundle, as `walle task pack` writes it.
    pub bundle: Vec<u8>,
}

/// Checks a task folder; the bundle when it is valid, every problem found otherwise.
pub fn validate(dir: &Path) -> Result<Valid, Vec<Problem>> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        vec![Problem {
            file: MANIFEST_FILE.into(),
            message: format!("cannot read {}: {e}", manifest_path.display()),
            hint: Some("a task folder holds a walle.toml; `walle task init NAME` makes one".into()),
        }]
    })?;
    let manifest = TaskManifest::parse(&text).map_err(|e| {
        // The parser stops at its first mistake; look at each part on its own for the others.
        // One mistake: the parser's report is the precise one (line, column, the line itself).
        let each = manifest_problems(&text);
        if each.len() <= 1 {
            vec![manifest_problem(&e)]
        } else {
            each
        }
    })?;
    let (_, packed) = bundle::pack_dir(dir).map_err(|e| vec![bundle_problem(&e)])?;
    let contents = bundle::read_bundle(&packed).map_err(|e| vec![bundle_problem(&e)])?;
    let problems = script_problems(&contents);
    if !problems.is_empty() {
        return Err(problems);
    }
    load_problem(&contents).map_err(|p| vec![p])?;
    Ok(Valid {
        manifest,
        bundle: packed,
    })
}

/// The manifest's mistakes, each part checked on its own so that one mistake does not hide the
/// next: every top-level field's type, each trigger, feature and timer, and `[limits]`. Empty
/// when the text is not TOML at all (the parser's own error says where) or when every part is
/// fine on its own (what is left is between parts, which the parser reports).
pub fn manifest_problems(text: &str) -> Vec<Problem> {
    use walle_pipeline::{FeatureSpec, PatternSpec};
    use walle_proto::manifest::{Limits, TimerSpec};
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let mut report = |path: String, key: &str, occurrence: usize, message: String| {
        let line = line_of(text, key, occurrence).map_or(String::new(), |l| format!("{l}:"));
        problems.push(Problem {
            file: MANIFEST_FILE.into(),
            message: format!("{MANIFEST_FILE}:{line} `{path}`: {message}"),
            hint: Some("docs/authoring.md#walletoml-reference lists every field".into()),
        });
    };
    for (key, value) in &table {
        match key.as_str() {
            "name" | "version" | "runtime" | "entry" | "handler" | "description" => {
                if !value.is_str() {
                    report(key.clone(), key, 0, format!("must be a string, not {}", value.type_str()));
                }
            }
            "models" => {
                if let Err(e) = value.clone().try_into::<Vec<String>>() {
                    report(key.clone(), key, 0, e.message().to_owned());
                }
            }
            "limits" => {
                // Field by field, so each mistake is named with its own path.
                let fields = value.as_table().cloned().unwrap_or_default();
                if !value.is_table() {
                    report(key.clone(), "limits", 0, format!("must be a table, not {}", value.type_str()));
                }
                for (field, limit) in fields {
                    let one = toml::Table::from_iter([(field.clone(), limit)]);
                    if let Err(e) = toml::Value::Table(one).try_into::<Limits>() {
                        report(format!("limits.{field}"), &field, 0, e.message().to_owned());
                    }
                }
            }
            "triggers" | "features" | "timers" => {
                let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
                for (at, item) in items.iter().enumerate() {
                    let header = format!("[[{key}]]");
                    let path = format!("{key}[{at}]");
                    let found = match key.as_str() {
                        "triggers" => item.clone().try_into::<PatternSpec>().map_err(|e| e.message().to_owned()).and_then(|t| {
                            walle_pipeline::validate_patterns(std::slice::from_ref(&t)).map_err(|e| e.to_string())
                        }),
                        "features" => item.clone().try_into::<FeatureSpec>().map_err(|e| e.message().to_owned()).and_then(|f| {
                            walle_pipeline::validate_features(std::slice::from_ref(&f)).map_err(|e| e.to_string())
                        }),
                        _ => item.clone().try_into::<TimerSpec>().map(drop).map_err(|e| e.message().to_owned()),
                    };
                    if let Err(message) = found {
                        report(path, &header, at, message);
                    }
                }
            }
            other => report(
                other.to_owned(),
                other,
                0,
                "unknown field (fields: name, version, runtime, entry, handler, description, models, triggers, features, timers, limits)".into(),
            ),
        }
    }
    problems
}

/// The 1-based line where `key = ` (or a `[table]` header) appears for the `occurrence`-th time.
fn line_of(text: &str, key: &str, occurrence: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim_start();
            if key.starts_with('[') {
                line.starts_with(key)
            } else {
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            }
        })
        .nth(occurrence)
        .map(|(at, _)| at + 1)
}

/// The syntax errors of every Python file in a bundle.
pub fn script_problems(contents: &BundleContents) -> Vec<Problem> {
    if contents.manifest.runtime != Runtime::Python {
        return Vec::new();
    }
    contents
        .files
        .iter()
        .filter(|(path, _)| path.ends_with(".py"))
        .filter_map(|(path, bytes)| {
            let source = match std::str::from_utf8(bytes) {
                Ok(source) => source,
                Err(e) => {
                    return Some(Problem {
                        file: path.clone(),
                        message: format!("not UTF-8 text: {e}"),
                        hint: None,
                    });
                }
            };
            walle_vm::check_python(source, path).err().map(|e| Problem {
                file: path.clone(),
                message: e.to_string(),
                hint: None,
            })
        })
        .collect()
}

/// Loads the task in a VM as a device would: models, handler, module-level code.
fn load_problem(contents: &BundleContents) -> Result<(), Problem> {
    crate::local::load_bundle(contents)
        .map(drop)
        .map_err(|message| Problem {
            file: contents.manifest.entry.clone(),
            message,
            hint: Some("this is what a device would report when installing the version".into()),
        })
}

fn manifest_problem(error: &ManifestError) -> Problem {
    let hint = match error {
        ManifestError::Syntax { .. } | ManifestError::MissingField(_) => {
            Some("docs/authoring.md#walletoml-reference lists every field".to_owned())
        }
        ManifestError::Trigger(_) => {
            Some("docs/authoring.md#triggers-and-patterns shows trigger steps".to_owned())
        }
        ManifestError::Feature(_) => {
            Some("docs/authoring.md#features-and-windows shows features".to_owned())
        }
        _ => None,
    };
    Problem {
        file: MANIFEST_FILE.into(),
        message: error.to_string(),
        hint,
    }
}

fn bundle_problem(error: &BundleError) -> Problem {
    match error {
        BundleError::Manifest(e) => manifest_problem(e),
        BundleError::MissingFile(path) => Problem {
            file: MANIFEST_FILE.into(),
            message: error.to_string(),
            hint: Some(format!(
                "create {path} in the task folder, or fix the `entry` or `models` that names it"
            )),
        },
        other => Problem {
            file: ".".into(),
            message: other.to_string(),
            hint: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const MANIFEST: &str =
        "name = \"t\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\n";

    #[test]
    fn every_script_with_a_syntax_error_is_named_with_its_line() {
        let dir = task(&[
            ("walle.toml", MANIFEST),
            ("main.py", "import lib.util\n\ndef run(ctx)\n    return 1\n"),
            ("lib/__init__.py", ""),
            ("lib/util.py", "x = [1,\n"),
        ]);
        let problems = validate(dir.path()).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("lib/util.py:1:"), "{shown:?}");
        assert!(
            shown[1].starts_with("main.py:3:") && shown[1].contains("def run(ctx)"),
            "{shown:?}"
        );
    }

    #[test]
    fn every_mistake_of_a_manifest_is_listed_not_only_the_first() {
        let manifest = format!(
            "{MANIFEST}handlr = \"run\"\n\n[[triggers]]\nname = \"a\"\nsteps = [{{ evnt = \"click\" }}]\n\n\
             [[triggers]]\nname = \"b\"\nsteps = [{{ event = \"leave\" }}]\n\n[limits]\ndeadline_ms = \"2s\"\n"
        );
        let dir = task(&[
            ("walle.toml", &manifest),
            ("main.py", "def run(ctx):\n    return 1\n"),
        ]);
        let problems = validate(dir.path()).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 4, "{shown:#?}");
        let all = shown.join("\n");
        for expected in [
            "walle.toml:5: `handlr`: unknown field",
            "walle.toml:7: `triggers[0]`: unknown field `evnt`",
            "walle.toml:11: `triggers[1]`: trigger `b` step 1 tests event type `leave`",
            "walle.toml:16: `limits.deadline_ms`: invalid type: string \"2s\", expected u64",
        ] {
            assert!(all.contains(expected), "no {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn manifest_bundle_and_load_problems_say_where_and_what_to_do() {
        let bad_field = task(&[(
            "walle.toml",
            &format!("{MANIFEST}[limits]\ndeadline_ms = \"2h\"\n"),
        )]);
        let problem = &validate(bad_field.path()).unwrap_err()[0];
        assert!(
            problem
                .to_string()
                .starts_with("walle.toml:6:15: `limits.deadline_ms`"),
            "{problem}"
        );
        assert!(
            problem
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("walletoml-reference")
        );
        let no_entry = task(&[("walle.toml", MANIFEST)]);
        let problem = &validate(no_entry.path()).unwrap_err()[0];
        assert!(
            problem
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("create main.py"),
            "{problem}"
        );
        let no_handler = task(&[
            ("walle.toml", MANIFEST),
            ("main.py", "def other(ctx):\n    return 1\n"),
        ]);
        let problem = &validate(no_handler.path()).unwrap_err()[0];
        assert!(problem.message.contains("run"), "{problem}");
        let good = task(&[
            ("walle.toml", MANIFEST),
            ("main.py", "def run(ctx):\n    return 1\n"),
        ]);
        let valid = validate(good.path()).unwrap();
        assert_eq!(valid.manifest.name, "t");
        assert!(!valid.bundle.is_empty());
    }
}
