use serde_json::json;

use crate::{Limits, TaskCode, VmError, VmPool};

fn code(key: &str, source: &str) -> TaskCode {
    let limits = Limits {
        max_output_bytes: 1024,
        ..Limits::default()
    };
    TaskCode::python(key, source, limits)
}

/// Runs and returns only the records.
fn records(
    pool: &VmPool,
    key: &str,
    context: serde_json::Value,
) -> Result<Vec<serde_json::Value>, VmError> {
    pool.run(key, context).map(|out| out.records)
}

#[test]
fn runs_a_handler_with_context_and_returns_records() {
    let pool = VmPool::new(2).unwrap();
    pool.load(code(
        "t@1",
        "def run(ctx):\n    xs = ctx['xs']\n    return {'n': len(xs), 'sum': sum(xs), 'avg': sum(xs) / len(xs), 'ok': True, 'name': ctx['name'].upper(), 'none': None}\n",
    ))
    .unwrap();
    let out = records(&pool, "t@1", json!({"xs": [1, 2, 3, 4], "name": "walle"})).unwrap();
    assert_eq!(
        out,
        vec![json!({"n": 4, "sum": 10, "avg": 2.5, "ok": true, "name": "WALLE", "none": null})]
    );
}

#[test]
fn none_means_no_records_and_a_list_means_several() {
    let pool = VmPool::new(1).unwrap();
    pool.load(code(
        "t@1",
        "def run(ctx):\n    return [{'i': i} for i in range(ctx)] or None\n",
    ))
    .unwrap();
    assert_eq!(
        records(&pool, "t@1", json!(0)).unwrap(),
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        records(&pool, "t@1", json!(2)).unwrap(),
        vec![json!({"i": 0}), json!({"i": 1})]
    );
}

#[test]
fn each_task_has_its_own_interpreter_state() {
    let pool = VmPool::new(1).unwrap();
    let counter = "n = 0\ndef run(ctx):\n    global n\n    n += 1\n    return n\n";
    pool.load(code("a@1", counter)).unwrap();
    pool.load(code("b@1", counter)).unwrap();
    assert_eq!(records(&pool, "a@1", json!(null)).unwrap(), vec![json!(1)]);
    assert_eq!(records(&pool, "a@1", json!(null)).unwrap(), vec![json!(2)]);
    // b's module global is its own, even on the same worker thread.
    assert_eq!(records(&pool, "b@1", json!(null)).unwrap(), vec![json!(1)]);
}

#[test]
fn host_access_is_not_available() {
    let pool = VmPool::new(1).unwrap();
    for (name, body) in [
        ("import-os", "import os\n    return os.listdir('/')"),
        ("open", "return open('/etc/passwd').read()"),
        ("dunder-import", "return __import__('socket')"),
        ("subprocess", "import subprocess\n    return 1"),
    ] {
        let key = format!("{name}@1");
        pool.load(code(&key, &format!("def run(ctx):\n    {body}\n")))
            .unwrap();
        let err = records(&pool, &key, json!(null)).unwrap_err();
        assert!(matches!(err, VmError::Raised { .. }), "{name}: {err}");
    }
}

#[test]
fn errors_are_specific_and_the_worker_survives() {
    let pool = VmPool::new(1).unwrap();
    let err = pool
        .load(code("syntax@1", "def run(ctx) return 1\n"))
        .unwrap_err();
    assert!(matches!(err, VmError::Compile { .. }), "{err}");
    let err = pool.load(code("nohandler@1", "x = 1\n")).unwrap_err();
    assert!(matches!(err, VmError::NoHandler { .. }), "{err}");
    pool.load(code(
        "raise@1",
        "def run(ctx):\n    raise ValueError('bad input ' + str(ctx))\n",
    ))
    .unwrap();
    let err = records(&pool, "raise@1", json!(7)).unwrap_err();
    assert!(err.to_string().contains("ValueError: bad input 7"), "{err}");
    pool.load(code("obj@1", "def run(ctx):\n    return object()\n"))
        .unwrap();
    assert!(matches!(
        records(&pool, "obj@1", json!(null)),
        Err(VmError::BadResult { .. })
    ));
    pool.load(code("big@1", "def run(ctx):\n    return 'x' * 5000\n"))
        .unwrap();
    assert!(matches!(
        records(&pool, "big@1", json!(null)),
        Err(VmError::OutputTooLarge { .. })
    ));
    assert!(matches!(
        records(&pool, "never@1", json!(null)),
        Err(VmError::NotLoaded(_))
    ));
    let mut tiny = code("tiny@1", "def run(ctx):\n    return 1\n");
    tiny.limits.memory_bytes = 1024;
    assert!(matches!(pool.load(tiny), Err(VmError::BadLimits { .. })));
    pool.load(code("fine@1", "def run(ctx):\n    return ctx\n"))
        .unwrap();
    assert_eq!(
        records(&pool, "fine@1", json!("still here")).unwrap(),
        vec![json!("still here")]
    );
}
