//! `walle task init`: a new task folder that passes `walle task test` as created.
//!
//! Python tasks get a commented `walle.toml`, `main.py`, sample events (`events.jsonl`), the
//! outputs those events must give (`expected.jsonl`: the task's test, run by `walle task test
//! --expect`), and the `walle` module's type stubs in `typings/` (pyright's and Pylance's default
//! stub path; `.mypy.ini` points mypy there). Packing leaves the stubs out. WASM tasks get the
//! run counter's module (`main.wat`) instead of `main.py`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The `walle` module's stubs, as shipped to editors.
pub const STUBS: &str = include_str!("../../stubs/walle/__init__.pyi");

const PYTHON_MANIFEST: &str = r#"# {name}: a Walle task. Reference: docs/authoring.md ("walle.toml reference").
name = "{name}"
version = "0.1.0"
runtime = "python"
# The script and the function the device calls with the trigger's context.
entry = "main.py"
handler = "run"
description = "Counts what a user did on each item page they visited"

# When the task runs: an item page is entered, then left, in one session, within 30 minutes.
[[triggers]]
name = "item-page-view"
partition_by = ["session", "item"]
within_ms = 1800000
steps = [
    { event = "enter", page = "item" },
    { event = "exit", page = "item" },
]

# What the device computes for each run, over the visit (ctx["features"]).
[[features]]
name = "dwell_ms"
aggregate = "duration"

[[features]]
name = "clicks"
aggregate = "count"
event = "click"

# Per run: at most 4 KB of uploads, 200 ms, 16 MiB of interpreter memory.
[limits]
max_output_bytes = 4096
deadline_ms = 200
memory_bytes = 16777216
"#;

const PYTHON_SCRIPT: &str = r#""""{name}: one record per item-page visit, with its dwell time and clicks.

`walle task test . --events events.jsonl --expect expected.jsonl` runs it on this machine in the
device's VM; `walle task publish .` uploads it.
"""

import walle


# Annotations name stub-only types, so they are quoted (the VM has no `typing` to evaluate them).
def run(ctx: "walle.Context") -> "walle.JsonLike":
    enter = ctx["matched"][0]
    features = ctx["features"]
    walle.log("visit of", enter["item"])
    return {
        "item": enter["item"],
        "session": enter["session"],
        "dwell_ms": features["dwell_ms"],
        "clicks": features["clicks"],
    }
"#;

const SAMPLE_EVENTS: &str = r#"{"id":"e1","ts":1716000000000,"session":"s1","page":"home","event":"enter"}
{"id":"e2","ts":1716000001000,"session":"s1","page":"item","event":"enter","item":"sku-1"}
{"id":"e3","ts":1716000002500,"session":"s1","page":"item","event":"click","item":"sku-1","args":{"action":"zoom"}}
{"id":"e4","ts":1716000004000,"session":"s1","page":"item","event":"exit","item":"sku-1"}
{"id":"e5","ts":1716000005000,"session":"s1","page":"item","event":"enter","item":"sku-2"}
{"id":"e6","ts":1716000005500,"session":"s1","page":"item","event":"click","item":"sku-2"}
{"id":"e7","ts":1716000006000,"session":"s1","page":"item","event":"click","item":"sku-2"}
{"id":"e8","ts":1716000009000,"session":"s1","page":"item","event":"exit","item":"sku-2"}
"#;

const PYTHON_EXPECTED: &str = r#"{"item":"sku-1","session":"s1","dwell_ms":3000,"clicks":1}
{"item":"sku-2","session":"s1","dwell_ms":4000,"clicks":2}
"#;

const WASM_MANIFEST: &str = r#"# {name}: a Walle task in WebAssembly. Reference: docs/authoring.md; the guest ABI (the
# `walle` imports) is documented in task-vm/src/wasm.rs.
name = "{name}"
version = "0.1.0"
runtime = "wasm"
entry = "main.wat"
handler = "run"
description = "Counts its runs and uploads the count"

# When the task runs: an item page is entered, then left, in one session, within 30 minutes.
[[triggers]]
name = "item-page-view"
partition_by = ["session", "item"]
within_ms = 1800000
steps = [
    { event = "enter", page = "item" },
    { event = "exit", page = "item" },
]

[limits]
max_output_bytes = 1024
"#;

const WASM_MODULE: &str = include_str!("../../../examples/tasks/wasm-counter/main.wat");

const MYPY_INI: &str = "[mypy]\nmypy_path = typings\n";

/// An example task to start from (`examples/tasks/`), renamed after the new folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// Item-page-view features: dwell time and actions per visit, windows over the session.
    IpvFeature,
    /// Re-ranks the feed items a user was shown with an ONNX model (`make_model.py` writes it).
    Rerank,
    /// Predicts the next query category with an ONNX model (`make_model.py` writes it).
    Intent,
    /// The WebAssembly run counter.
    WasmCounter,
}

impl Template {
    /// The example's files (path, text).
    fn files(self) -> &'static [(&'static str, &'static str)] {
        macro_rules! example {
            ($name:literal: $($file:literal),+) => {
                &[$(($file, include_str!(concat!("../../../examples/tasks/", $name, "/", $file)))),+]
            };
        }
        match self {
            Template::IpvFeature => {
                example!("ipv-feature": "walle.toml", "main.py", "events.jsonl")
            }
            Template::Rerank => {
                example!("rerank": "walle.toml", "main.py", "events.jsonl", "make_model.py")
            }
            Template::Intent => {
                example!("intent": "walle.toml", "main.py", "events.jsonl", "make_model.py")
            }
            Template::WasmCounter => {
                example!("wasm-counter": "walle.toml", "main.wat", "events.jsonl")
            }
        }
    }
}

/// The runtime of a new task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    Python,
    Wasm,
}

/// Writes a new task folder `dir/` named after its last component, from `template` or else the
/// basic task of `runtime`; returns the files written.
pub fn init(
    dir: &Path,
    runtime: Runtime,
    template: Option<Template>,
) -> anyhow::Result<Vec<PathBuf>> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no name to give the task", dir.display()))?;
    let files = match template {
        Some(template) => from_example(name, template),
        None => files(name, runtime),
    };
    // The manifest goes through the parser that packing and the cloud use, so a bad name is
    // refused with the parser's own words before anything is written.
    let manifest = files
        .iter()
        .find(|(path, _)| *path == walle_proto::manifest::MANIFEST_FILE)
        .map(|(_, text)| text.as_str())
        .unwrap_or_default();
    walle_proto::manifest::TaskManifest::parse(manifest)
        .with_context(|| format!("{name:?} cannot name a task"))?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: choose a new folder",
            dir.display()
        );
    }
    let mut written = Vec::new();
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// An example's files with the task renamed; Python ones get the stubs too.
fn from_example(name: &str, template: Template) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = template
        .files()
        .iter()
        .map(|&(path, text)| {
            let text = if path == walle_proto::manifest::MANIFEST_FILE {
                rename(text, name)
            } else {
                text.to_owned()
            };
            (path, text)
        })
        .collect();
    if out.iter().any(|(path, _)| path.ends_with(".py")) {
        out.push(("typings/walle/__init__.pyi", STUBS.to_owned()));
        out.push((".mypy.ini", MYPY_INI.to_owned()));
    }
    out
}

/// The manifest with its top-level `name` (the first `name = ` line) set to `name`.
fn rename(manifest: &str, name: &str) -> String {
    let mut renamed = false;
    let lines: Vec<String> = manifest
        .lines()
        .map(|line| {
            if !renamed && line.starts_with("name = ") {
                renamed = true;
                format!("name = \"{name}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

fn files(name: &str, runtime: Runtime) -> Vec<(&'static str, String)> {
    let fill = |template: &str| template.replace("{name}", name);
    match runtime {
        Runtime::Python => vec![
            (walle_proto::manifest::MANIFEST_FILE, fill(PYTHON_MANIFEST)),
            ("main.py", fill(PYTHON_SCRIPT)),
            ("events.jsonl", SAMPLE_EVENTS.to_owned()),
            ("expected.jsonl", PYTHON_EXPECTED.to_owned()),
            ("typings/walle/__init__.pyi", STUBS.to_owned()),
            (".mypy.ini", MYPY_INI.to_owned()),
        ],
        Runtime::Wasm => vec![
            (walle_proto::manifest::MANIFEST_FILE, fill(WASM_MANIFEST)),
            ("main.wat", WASM_MODULE.to_owned()),
            ("events.jsonl", SAMPLE_EVENTS.to_owned()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::task::compare_outputs;

    fn run(dir: &Path) -> crate::local::LocalRun {
        let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        let lines: Vec<String> = events.lines().map(str::to_owned).collect();
        crate::local::run_task(dir, &lines, &[]).unwrap()
    }

    #[test]
    fn a_new_python_task_passes_its_own_test_and_packs_without_the_stubs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("my-task");
        let written = init(&dir, Runtime::Python, None).unwrap();
        assert_eq!(written.len(), 6);
        let run = run(&dir);
        assert!(
            run.failures.is_empty() && run.rejected.is_empty(),
            "{:?} {:?}",
            run.failures,
            run.rejected
        );
        assert_eq!(run.fired, 2);
        let expected = std::fs::read_to_string(dir.join("expected.jsonl")).unwrap();
        assert_eq!(compare_outputs(&run.outputs, &expected), Ok(()));
        let (manifest, bundle) = walle_proto::bundle::pack_dir(&dir).unwrap();
        assert_eq!(manifest.name, "my-task");
        let packed = walle_proto::bundle::read_bundle(&bundle).unwrap();
        let paths: Vec<&str> = packed.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["events.jsonl", "expected.jsonl", "main.py", "walle.toml"]
        );
        assert!(dir.join("typings/walle/__init__.pyi").exists());
        // A second init into the same folder changes nothing.
        let error = init(&dir, Runtime::Python, None).unwrap_err().to_string();
        assert!(error.contains("is not empty"), "{error}");
    }

    #[test]
    fn a_new_wasm_task_runs_and_a_bad_name_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("counter");
        init(&dir, Runtime::Wasm, None).unwrap();
        let run = run(&dir);
        assert!(run.failures.is_empty(), "{:?}", run.failures);
        assert_eq!((run.fired, run.outputs.len()), (2, 2));
        let error = format!(
            "{:#}",
            init(&root.path().join("My Task"), Runtime::Python, None).unwrap_err()
        );
        assert!(error.contains("\"My Task\" cannot name a task"), "{error}");
        assert!(!root.path().join("My Task").exists());
    }

    #[test]
    fn an_example_template_is_renamed_and_runs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("my-ipv");
        init(&dir, Runtime::Python, Some(Template::IpvFeature)).unwrap();
        let manifest = std::fs::read_to_string(dir.join("walle.toml")).unwrap();
        assert!(
            manifest.contains("name = \"my-ipv\"")
                && manifest.contains("name = \"item-page-view\"")
        );
        let ipv = run(&dir);
        assert!(
            ipv.failures.is_empty() && ipv.fired > 0,
            "{:?}",
            ipv.failures
        );
        assert!(dir.join("typings/walle/__init__.pyi").exists());
        let rerank = root.path().join("my-rerank");
        init(&rerank, Runtime::Python, Some(Template::Rerank)).unwrap();
        assert!(rerank.join("make_model.py").exists());
        let wasm = root.path().join("my-counter");
        init(&wasm, Runtime::Python, Some(Template::WasmCounter)).unwrap();
        assert!(!wasm.join("typings").exists());
        assert_eq!(run(&wasm).outputs.len(), 3);
    }

    #[test]
    fn an_expectation_names_the_first_difference() {
        let outputs = vec![serde_json::json!({"a": 1}), serde_json::json!({"a": 2})];
        assert_eq!(compare_outputs(&outputs, "{\"a\":1}\n{\"a\": 2}\n"), Ok(()));
        let wrong = compare_outputs(&outputs, "{\"a\":1}\n{\"a\":3}\n").unwrap_err();
        assert!(wrong.contains("line 2: output 2 differs"), "{wrong}");
        let short = compare_outputs(&outputs, "{\"a\":1}\n").unwrap_err();
        assert!(
            short.contains("the run gave 2 outputs, 1 expected"),
            "{short}"
        );
        let long = compare_outputs(&outputs, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").unwrap_err();
        assert!(long.contains("only 2 outputs"), "{long}");
        let bad = compare_outputs(&outputs, "nope\n").unwrap_err();
        assert!(bad.contains("line 1: not JSON"), "{bad}");
    }
}
