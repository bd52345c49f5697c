//! Walle's `re` against CPython's: every case of `regex_conformance/corpus.py` runs through
//! `regex_conformance/runner.py` in a sandboxed task and in the machine's `python3` (CPython
//! 3.11, the reference; `WALLE_TEST_PYTHON` names another binary), and the results must be
//! equal, except for the few differences the `regex` module documents, which are listed in
//! [`KNOWN_DIFFERENCES`] and must still differ. Without CPython 3.11 the test fails, saying so.

mod common;

use std::process::Command;
use std::time::Duration;

use common::task;
use serde_json::Value;
use walle_vm::{Limits, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

const CORPUS: &str = include_str!("regex_conformance/corpus.py");
const RUNNER: &str = include_str!("regex_conformance/runner.py");

/// Cases (CPython's `repr` of them) whose results differ on purpose; each is a difference the
/// module doc of `task-vm/src/regex` lists.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "('search', '(a|)*', 0, 'aa')",
        "a group repeated until it matches empty: CPython reports the empty last iteration",
    ),
    (
        "('search', '\\\\B', 0, '')",
        "\\B matches in an empty string",
    ),
    (
        "('search', 'i', 2, '\u{130}')",
        "case folding: CPython lowercases \u{130} to i",
    ),
    (
        "('findall', '\\\\b\\\\w+\\\\b', 0, 'x\u{b2} e\u{301}')",
        "\\b uses the regex crate's word characters, \\w CPython's",
    ),
    (
        "('search', '\u{fffd}', 0, '\\ud800')",
        "the engine sees a lone surrogate as U+FFFD",
    ),
    (
        "('match', '', 0, 'abc', 2, 1)",
        "match() with pos > endpos never matches",
    ),
];

fn source() -> String {
    format!("{CORPUS}\n{RUNNER}\n")
}

/// The CPython to compare with: `$WALLE_TEST_PYTHON`, else `python3`.
fn cpython() -> String {
    std::env::var("WALLE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// The results CPython gives.
fn cpython_results() -> Vec<Value> {
    let python = cpython();
    let version = Command::new(&python)
        .arg("-c")
        .arg("import sys; print('%d.%d' % sys.version_info[:2])")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the conformance test needs CPython 3.11 as `{python}` (or set WALLE_TEST_PYTHON): {e}"
            )
        });
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert_eq!(
        version, "3.11",
        "the conformance test compares with CPython 3.11, but `{python}` is {version}; \
         set WALLE_TEST_PYTHON to a python3.11"
    );
    let script = format!(
        "{}\nimport json, sys\nsys.stdout.write(json.dumps(results()))\n",
        source()
    );
    let output = Command::new(&python)
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}`: {e}"));
    assert!(
        output.status.success(),
        "{python} failed on the corpus:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Array(results)) => results,
        other => panic!("{python} printed no result list: {other:?}"),
    }
}

/// The results a Walle task gives.
fn walle_results() -> Vec<Value> {
    let pool = VmPool::new(1).unwrap();
    let limits = Limits {
        deadline: Duration::from_secs(600),
        memory_bytes: 1024 * 1024 * 1024,
        max_output_bytes: 64 * 1024 * 1024,
        ..Limits::default()
    };
    let script = format!(
        "{}\ndef run(ctx):\n    return {{'results': results()}}\n",
        source()
    );
    pool.load(task("conformance@1", &script, limits)).unwrap();
    let out = pool
        .run("conformance@1", Value::Null)
        .unwrap_or_else(|e| panic!("the corpus failed in a Walle task: {e}"));
    match out.records.as_slice() {
        [Value::Object(record)] => match record.get("results") {
            Some(Value::Array(results)) => results.clone(),
            other => panic!("no results from the task: {other:?}"),
        },
        other => panic!("unexpected records: {other:?}"),
    }
}

#[test]
fn walle_re_answers_as_cpython_does() {
    let expected = cpython_results();
    let actual = walle_results();
    assert_eq!(expected.len(), actual.len(), "case counts differ");
    assert!(
        expected.len() >= 300,
        "the corpus shrank to {}",
        expected.len()
    );
    let mut unexpected = Vec::new();
    let mut fixed = Vec::new();
    for (want, got) in expected.iter().zip(&actual) {
        let case = want["case"].as_str().unwrap_or("?");
        let known = KNOWN_DIFFERENCES.iter().any(|(c, _)| *c == case);
        let same = want["result"] == got["result"];
        if !same && !known {
            unexpected.push(format!(
                "{case}\n  CPython: {}\n  Walle:   {}",
                want["result"], got["result"]
            ));
        }
        if same && known {
            fixed.push(case.to_owned());
        }
    }
    eprintln!(
        "{} cases, {} known differences",
        expected.len(),
        KNOWN_DIFFERENCES.len()
    );
    assert!(
        unexpected.is_empty(),
        "{} of {} cases differ from CPython:\n{}",
        unexpected.len(),
        expected.len(),
        unexpected.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "known differences that no longer differ (remove them from the list and the doc): {fixed:?}"
    );
}
