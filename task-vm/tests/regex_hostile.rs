//! Hostile regular expressions, in the style of `hostile.rs`: a catastrophic pattern either runs
//! in linear time (no backtracking features: the `regex` crate's automata) or fails at once with
//! the regex budget's `RuntimeError`; a slow but finite loop over matches is stopped by the
//! deadline; meanwhile a neighbour task keeps running and no worker is ever abandoned.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{handler, records, spawn_run, wait};
use serde_json::{Value, json};
use walle_vm::{Limits, RunOutput, VmError, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

/// As `hostile.rs`: generous for a debug build on a busy machine.
fn limits() -> Limits {
    Limits {
        deadline: Duration::from_secs(2),
        memory_bytes: 64 * 1024 * 1024,
        ..Limits::default()
    }
}

const NEIGHBOUR: &str = "    t = 0\n    for i in range(20000):\n        t += i\n    return t";

/// The message of the regex budget's error.
const BACKTRACKED: &str = "RuntimeError: regular expression backtracked more than";
const TASK_LIMIT: &str = "a Walle task's limit";

/// Runs `body` as a task next to a busy neighbour on another worker and returns its outcome,
/// after checking the neighbour's result, that the hostile task's worker still runs code and
/// that no worker was abandoned (a native call that never returned would have been).
fn contain(name: &str, body: &str) -> Result<RunOutput, VmError> {
    let pool = Arc::new(VmPool::new(2).unwrap());
    let key = format!("{name}@1");
    pool.load(handler(&key, body, limits())).unwrap();
    pool.load(handler("neighbour@1", NEIGHBOUR, Limits::default()))
        .unwrap();
    pool.load(handler("after@1", "    return 'ok'", Limits::default()))
        .unwrap();
    let hostile = spawn_run(&pool, &key);
    let neighbour = spawn_run(&pool, "neighbour@1");
    assert_eq!(
        wait(&neighbour).unwrap().records,
        vec![json!(199990000)],
        "{name}"
    );
    let outcome = wait(&hostile);
    assert_eq!(
        records(&pool, "after@1", json!(null)),
        vec![json!("ok")],
        "{name}"
    );
    let health = pool.health();
    assert_eq!(
        (health.abandoned_total, health.lost_threads),
        (0, 0),
        "{name}: a worker was abandoned"
    );
    outcome
}

fn raised(err: &VmError, text: &str) -> bool {
    matches!(err, VmError::Raised { traceback, .. } if traceback.contains(text))
}

#[test]
fn classic_catastrophic_patterns_run_in_linear_time() {
    // Without backreferences or lookaround these never backtrack at all.
    let body = r#"
    import re
    found = []
    for pattern, text in [(r'(a+)+b', 'a' * 40), (r'(a|a)*c', 'a' * 40),
                          (r'(x+x+)+y', 'x' * 40), (r'(a+)+b', 'a' * 200000),
                          (r'^(\w+\s?)*$', 'word ' * 20000 + '!')]:
        found.append([re.match(pattern, text), re.search(pattern, text), len(re.findall(pattern, text))])
    return found"#;
    let out = contain("linear", body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.records, vec![json!([null, null, 0]); 5]);
}

#[test]
fn catastrophic_backtracking_fails_with_the_limit() {
    for (name, pattern, text) in [
        ("alternation-backref", r"(a|a)*\1c", "'a' * 40 + 'b'"),
        ("nested-plus-backref", r"(x+x+)+y\1", "'x' * 40"),
        ("backref-bomb", r"^(a*)*\1$", "'a' * 40 + 'b'"),
        ("words-backref", r"^(\w+\s?)*\1$", "'a' * 30 + '!'"),
        ("optional-group-backref", r"(?:(a)|a)*\1b", "'a' * 40"),
    ] {
        let body = format!("    import re\n    return re.search(r'{pattern}', {text})");
        let err = contain(name, &body).expect_err(name);
        assert!(raised(&err, BACKTRACKED), "{name}: {err}");
        assert!(raised(&err, TASK_LIMIT), "{name}: {err}");
    }
}

#[test]
fn the_limit_is_an_ordinary_exception() {
    let body = r#"
    import re
    try:
        re.fullmatch(r'(a|a)*\1c', 'a' * 40 + 'b')
    except RuntimeError as e:
        return ['caught', 'backtracked' in str(e), re.sub(r'(\w)\1', r'<\1\1>', 'aabcc')]"#;
    let out = contain("caught", body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.records,
        vec![json!("caught"), json!(true), json!("<aa>b<cc>")]
    );
}

#[test]
fn a_slow_findall_over_a_long_string_stops_at_the_deadline() {
    // Every start position scans the rest of the string: quadratic, as in CPython, but each
    // native call is small and the deadline is checked between them.
    for (name, call) in [
        ("findall", "re.findall(r'(?=.*foo)\\w', 'x' * 500000)"),
        ("sub", "re.sub(r'(?<=x)(?=.*y)', '-', 'x' * 500000)"),
        ("split", "re.split(r'(?=.*y),', 'x,' * 250000)"),
        (
            "finditer",
            "[m.span() for m in re.finditer(r'(?=.*foo)\\w', 'x' * 500000)]",
        ),
    ] {
        let body = format!("    import re\n    return len({call})");
        let err = contain(name, &body).expect_err(name);
        assert!(
            matches!(err, VmError::DeadlineExceeded { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_repeated_lookahead_that_rescans_the_string_is_refused_on_long_strings() {
    let body = "    import re\n    return re.match(r'(?:(?=.*a)a)+b', 'a' * 100000)";
    let err = contain("rescan", body).expect_err("rescan");
    assert!(
        raised(&err, "RuntimeError: regular expression repeats a lookahead"),
        "{err}"
    );
    // On a short string it is an ordinary (quadratic) search.
    let body = "    import re\n    return re.match(r'(?:(?=.*a)a)+', 'a' * 1000).end()";
    let out = contain("rescan-short", body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.records, vec![Value::from(1000)]);
}

#[test]
fn a_task_cannot_patch_the_regex_types_other_tasks_use() {
    // The native types are shared by the interpreters of a worker thread, like the built-in
    // types: they refuse new attributes and cannot be instantiated from Python.
    let pool = VmPool::new(1).unwrap();
    let patcher = r#"
    import re
    refused = []
    regex = re.compile('a')._regex
    for cls in [type(regex), type(regex.scanner('a', 0, 1))]:
        try:
            cls.search = lambda *args: 'pwned'
        except TypeError:
            refused.append('set')
        try:
            cls()
        except TypeError:
            refused.append('new')
    re.search = lambda *args: 'mine only'
    return [refused, re.search('a', 'a')]"#;
    pool.load(handler("patcher@1", patcher, limits())).unwrap();
    let other = "    import re\n    return re.search('a', 'ba').span()";
    pool.load(handler("other@1", other, limits())).unwrap();
    assert_eq!(
        records(&pool, "patcher@1", json!(null)),
        vec![json!(["set", "new", "set", "new"]), json!("mine only")]
    );
    assert_eq!(
        records(&pool, "other@1", json!(null)),
        vec![json!(1), json!(2)]
    );
}

#[test]
fn rustpythons_unbounded_sre_is_gone() {
    // Neither by import nor through the import system's own frames.
    let body = r#"
    import re
    sys = re.enum.sys
    found = []
    for load in [lambda: __import__('_sre'), lambda: sys.modules['_frozen_importlib'].__import__('_sre')]:
        try:
            load()
            found.append('LOADED')
        except ImportError:
            found.append('refused')
    found.append('_sre' in sys.modules)
    return found"#;
    let out = contain("no-sre", body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.records,
        vec![json!("refused"), json!("refused"), json!(false)]
    );
}
