//! Hostile scripts: each is contained with a clear error while a neighbour task keeps running on
//! another worker, and the hostile task's worker stays usable.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{handler, records, spawn_run, wait};
use serde_json::json;
use walle_vm::{Limits, VmError, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

/// Generous for a debug build on a busy machine; runaway scripts take this long to fail.
fn limits() -> Limits {
    Limits {
        deadline: Duration::from_secs(2),
        memory_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    }
}

const NEIGHBOUR: &str = "    t = 0\n    for i in range(20000):\n        t += i\n    return t";

/// Loads `body` as a task, runs it next to a busy neighbour, checks the neighbour's result and
/// returns the hostile run's error; then checks the hostile task's worker still runs code.
fn contain(name: &str, body: &str) -> VmError {
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
    let err = match wait(&hostile) {
        Ok(out) => panic!("{name}: hostile script succeeded with {out:?}"),
        Err(e) => e,
    };
    // "after" was placed on the hostile task's worker (least loaded after the neighbour).
    assert_eq!(
        records(&pool, "after@1", json!(null)),
        vec![json!("ok")],
        "{name}"
    );
    err
}

fn raised(err: &VmError, exception: &str) -> bool {
    matches!(err, VmError::Raised { traceback, .. } if traceback.contains(exception))
}

#[test]
fn infinite_loop() {
    let err = contain("loop", "    while True:\n        pass");
    assert!(matches!(err, VmError::DeadlineExceeded { .. }), "{err}");
}

#[test]
fn infinite_loop_in_finally() {
    let body = "    try:\n        while True:\n            pass\n    finally:\n        while True:\n            pass";
    let err = contain("finally-loop", body);
    assert!(matches!(err, VmError::DeadlineExceeded { .. }), "{err}");
}

#[test]
fn exception_raised_in_finally() {
    let body = "    try:\n        raise ValueError('first')\n    finally:\n        raise RuntimeError('from finally')";
    let err = contain("finally-raise", body);
    assert!(raised(&err, "RuntimeError: from finally"), "{err}");
}

#[test]
fn deep_python_recursion() {
    let err = contain("recursion", "    def f():\n        f()\n    f()");
    assert!(raised(&err, "RecursionError"), "{err}");
}

#[test]
fn deep_recursion_in_native_repr() {
    let body = "    l = []\n    for i in range(100000):\n        l = [l]\n    return len(repr(l))";
    let err = contain("nested-repr", body);
    assert!(raised(&err, "RecursionError"), "{err}");
}

#[test]
fn huge_string() {
    let err = contain("huge-string", "    s = 'x' * (10**10)\n    return len(s)");
    assert!(matches!(err, VmError::MemoryExceeded { .. }), "{err}");
}

#[test]
fn ever_growing_list() {
    let err = contain(
        "grow",
        "    l = []\n    while True:\n        l.append('y' * 1000)",
    );
    assert!(matches!(err, VmError::MemoryExceeded { .. }), "{err}");
}

#[test]
fn import_os() {
    let err = contain("import-os", "    import os\n    return os.listdir('/')");
    assert!(
        raised(&err, "ImportError: import of 'os' is not allowed"),
        "{err}"
    );
}

#[test]
fn open_a_file() {
    let err = contain("open", "    return open('/etc/passwd').read()");
    assert!(
        raised(&err, "PermissionError: open() is not available"),
        "{err}"
    );
}

#[test]
fn dunder_import() {
    let err = contain("dunder-import", "    return __import__('os').getcwd()");
    assert!(raised(&err, "import of 'os' is not allowed"), "{err}");
}

#[test]
fn builtins_tricks() {
    // Reaching the original import machinery through builtins or loaded modules finds only
    // host-free modules: the VM was built without any.
    let body = r#"
    b = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
    found = []
    try:
        b['__import__']('subprocess')
    except ImportError:
        found.append('gate')
    import collections
    sys = collections._sys
    for name in ['posix', 'nt', '_socket', '_posixsubprocess', 'fcntl', '_signal', 'marshal', 'gc', 'os']:
        try:
            sys.modules['_frozen_importlib'].__import__(name)
            found.append('LOADED ' + name)
        except ImportError:
            pass
    try:
        sys.modules['_io'].open('/etc/passwd')
        found.append('OPENED')
    except Exception as e:
        found.append(type(e).__name__)
    for name in ['setrecursionlimit', 'settrace', 'executable', 'argv']:
        if hasattr(sys, name):
            found.append('HAS ' + name)
    raise RuntimeError(repr(found))"#;
    let err = contain("builtins", body);
    let VmError::Raised { traceback, .. } = &err else {
        panic!("{err}");
    };
    assert!(traceback.contains("'gate'"), "{traceback}");
    assert!(!traceback.contains("LOADED"), "{traceback}");
    assert!(!traceback.contains("OPENED"), "{traceback}");
    assert!(!traceback.contains("HAS "), "{traceback}");
}

#[test]
fn subclass_walk_finds_nothing_host_ish() {
    let body = r#"
    seen, todo = set(), [().__class__.__bases__[0]]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        try:
            todo.extend(type.__subclasses__(cls))
        except TypeError:
            pass
    names = sorted({c.__module__ + '.' + c.__qualname__ for c in seen})
    # sys._SandboxStdio (it would write to the host's stdout) must be out of reach (and has no methods).
    for cls in seen:
        if cls.__name__ == '_SandboxStdio':
            for make in [lambda: cls(), lambda: object.__new__(cls)]:
                try:
                    stdio = make()
                except TypeError:
                    continue
                for use in [lambda: stdio.write('leak'), lambda: stdio.readline()]:
                    try:
                        use()
                        names.append('USED SandboxStdio')
                    except AttributeError:
                        pass
    raise RuntimeError('\n'.join(names))"#;
    let err = contain("subclasses", body);
    let VmError::Raised { traceback, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        traceback.contains("builtins.object"),
        "walk found nothing: {traceback}"
    );
    for host in [
        "FileIO",
        "Popen",
        "socket",
        "USED SandboxStdio",
        "DirEntry",
        "ScandirIterator",
        "mmap",
        "WindowsConsoleIO",
        "posix",
        "CDLL",
        "_wrap_close",
        "_IOBase",
        "BytesIO",
        "HASH",
        "ast.AST",
        "_SandboxStdio",
    ] {
        assert!(!traceback.contains(host), "{host} reachable:\n{traceback}");
    }
}

#[test]
fn log_flood() {
    let err = contain("log-flood", "    while True:\n        print('spam' * 100)");
    assert!(matches!(err, VmError::DeadlineExceeded { .. }), "{err}");
}

#[test]
fn huge_return_value() {
    let err = contain("huge-return", "    return ['x' * 1000] * 10000");
    assert!(matches!(err, VmError::OutputTooLarge { .. }), "{err}");
}

#[test]
fn a_task_cannot_reach_another_tasks_objects_on_the_same_worker() {
    let pool = VmPool::new(1).unwrap();
    let victim = "class Secret:\n    token = 'hunter2'\n    def peek(self):\n        return state\nstate = {'k': 'v'}\ndef run(ctx):\n    return state['k']\n";
    pool.load(common::task("victim@1", victim, limits()))
        .unwrap();
    let thief = r#"
    found = []
    todo = [object]
    while todo:
        cls = todo.pop()
        for sub in type.__subclasses__(cls):
            if sub.__name__ == 'Secret':
                sub.peek.__globals__['state']['k'] = 'pwned'
                found.append(sub.token)
            todo.append(sub)
    class Mine:
        pass
    class Child(Mine):
        pass
    return [found, [c.__name__ for c in Mine.__subclasses__()]]"#;
    pool.load(handler("thief@1", thief, limits())).unwrap();
    assert_eq!(
        records(&pool, "thief@1", json!(null)),
        vec![json!([]), json!(["Child"])]
    );
    assert_eq!(records(&pool, "victim@1", json!(null)), vec![json!("v")]);
}

#[test]
fn patching_builtins_or_builtin_types_does_not_reach_other_tasks() {
    let pool = VmPool::new(1).unwrap();
    let body = r#"
    import itertools, collections, json, functools
    b = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
    b['len'] = lambda x: 42
    refused = []
    for target in [int, str, object, type, list, itertools.count, collections.deque,
                   functools.partial, type(iter([])), type(json.scanner.make_scanner)]:
        for attempt in [lambda: setattr(target, 'walle_was_here', 1),
                        lambda: type.__setattr__(target, 'walle_was_here', 1),
                        lambda: setattr(target, '__next__', lambda self: 42),
                        lambda: delattr(target, '__repr__'),
                        lambda: type.__delattr__(target, '__repr__')]:
            try:
                attempt()
                refused.append('CHANGED ' + target.__name__)
            except (TypeError, AttributeError):
                pass
    return [len([1]), refused]"#;
    pool.load(handler("patcher@1", body, limits())).unwrap();
    pool.load(handler(
        "other@1",
        "    import itertools\n    c = itertools.count(5)\n    return [len([1]), hasattr(int, 'walle_was_here'), hasattr(itertools.count, 'walle_was_here'), next(c)]",
        limits(),
    ))
    .unwrap();
    assert_eq!(
        records(&pool, "patcher@1", json!(null)),
        vec![json!(42), json!([])]
    );
    assert_eq!(
        records(&pool, "other@1", json!(null)),
        vec![json!(1), json!(false), json!(false), json!(5)]
    );
}

#[test]
fn compile_and_exec_take_text_not_paths() {
    // A file name given to compile() is only a label; nothing is read from it.
    let body = "    code = compile('x = 40 + 2', '/etc/passwd', 'exec')\n    ns = {}\n    exec(code, ns)\n    raise RuntimeError(str(ns['x']) + ' ' + code.co_filename)";
    let err = contain("compile", body);
    assert!(raised(&err, "RuntimeError: 42 /etc/passwd"), "{err}");
}
