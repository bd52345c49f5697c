//! The sandbox's module table: whitelisted modules work, everything else is refused, and a task's
//! own bundled modules are importable.

mod common;

use common::{handler, quick, records, with_module};
use serde_json::json;
use walle_vm::{TASK_IMPORTS, VmError, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

#[test]
fn whitelisted_modules_work() {
    let pool = VmPool::new(1).unwrap();
    let body = r#"
    import json, math, re, collections, itertools, functools, heapq, bisect, random, time
    from collections import Counter, OrderedDict, defaultdict, deque, namedtuple
    from collections.abc import Mapping
    Point = namedtuple('Point', 'x y')
    h = []
    for v in [5, 1, 3]:
        heapq.heappush(h, v)
    @functools.lru_cache(maxsize=None)
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)
    r = random.Random(42)
    random.seed('walle')
    t0 = time.monotonic()
    return {
        'json': json.loads(json.dumps({'a': [1, 2.5, None]})),
        'math': math.sqrt(16) + math.floor(2.7),
        're': re.match(r'(\w+)@(\w+)', 'ada@walle').group(2),
        'counter': Counter('abca').most_common(1)[0][0],
        'ordered': list(OrderedDict(b=1, a=2)),
        'default': defaultdict(int)['x'],
        'deque': list(deque([1, 2, 3], maxlen=2)),
        'point': Point(1, 2).y,
        'mapping': isinstance({}, Mapping),
        'islice': list(itertools.islice(itertools.count(), 3)),
        'reduce': functools.reduce(lambda a, b: a * b, [1, 2, 3, 4]),
        'fib': fib(30),
        'heap': [heapq.heappop(h) for _ in range(3)],
        'bisect': bisect.bisect([1, 3, 5], 4),
        'random': 0.0 <= r.random() < 1.0 and r.randint(1, 6) in range(1, 7),
        'choice': random.choice('ab') in 'ab',
        'clock': time.perf_counter() >= 0 and time.monotonic() >= t0 and time.time() > 1.7e9,
        'no_sleep': not hasattr(time, 'sleep'),
    }"#;
    pool.load(handler("stdlib@1", body, quick())).unwrap();
    assert_eq!(
        records(&pool, "stdlib@1", json!(null)),
        vec![json!({
            "json": {"a": [1, 2.5, null]}, "math": 6.0, "re": "walle", "counter": "a",
            "ordered": ["b", "a"], "default": 0, "deque": [2, 3], "point": 2, "mapping": true,
            "islice": [0, 1, 2], "reduce": 24, "fib": 832040, "heap": [1, 3, 5], "bisect": 2,
            "random": true, "choice": true, "clock": true, "no_sleep": true,
        })]
    );
}

#[test]
fn seeded_random_is_deterministic() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import random\n    a = random.Random(7)\n    b = random.Random(7)\n    return [a.random() == b.random(), a.sample(range(100), 3) == b.sample(range(100), 3)]";
    pool.load(handler("rng@1", body, quick())).unwrap();
    assert_eq!(
        records(&pool, "rng@1", json!(null)),
        vec![json!(true), json!(true)]
    );
}

#[test]
fn everything_else_is_refused_with_an_import_error() {
    let pool = VmPool::new(1).unwrap();
    let refused = [
        "os",
        "sys",
        "io",
        "_io",
        "socket",
        "subprocess",
        "ctypes",
        "signal",
        "_thread",
        "threading",
        "importlib",
        "marshal",
        "gc",
        "posix",
        "atexit",
        "builtins",
        "enum",
        "_frozen_importlib",
        "encodings",
        "abc",
        "types",
    ];
    for name in refused {
        let key = format!("import-{name}@1");
        pool.load(handler(
            &key,
            &format!("    import {name}\n    return 1"),
            quick(),
        ))
        .unwrap();
        let err = pool.run(&key, json!(null)).unwrap_err();
        let VmError::Raised { traceback, .. } = &err else {
            panic!("{name}: {err}");
        };
        assert!(traceback.contains("ImportError"), "{name}: {traceback}");
        assert!(
            traceback.contains("not allowed in a Walle task"),
            "{name}: {traceback}"
        );
        assert!(
            traceback.contains(TASK_IMPORTS.join(", ").as_str()),
            "{name}: {traceback}"
        );
    }
}

#[test]
fn bundled_modules_are_importable_and_nothing_else_from_disk() {
    let pool = VmPool::new(1).unwrap();
    let code = handler(
        "bundle@1",
        "    import helper\n    from pkg import util\n    from pkg.sub import deep\n    import pkg\n    return [helper.double(ctx), util.NAME, deep(), pkg.VERSION, pkg.sibling_name()]",
        quick(),
    );
    let code = with_module(
        code,
        "helper",
        "helper.py",
        "import json\ndef double(x):\n    return json.loads(json.dumps(x)) * 2\n",
    );
    let code = with_module(
        code,
        "pkg",
        "pkg/__init__.py",
        "VERSION = 3\ndef sibling_name():\n    from . import util\n    return util.NAME\n",
    );
    let code = with_module(code, "pkg.util", "pkg/util.py", "NAME = 'util'\n");
    let code = with_module(
        code,
        "pkg.sub",
        "pkg/sub.py",
        "from .util import NAME\ndef deep():\n    return NAME + '!'\n",
    );
    pool.load(code).unwrap();
    assert_eq!(
        records(&pool, "bundle@1", json!(21)),
        vec![
            json!(42),
            json!("util"),
            json!("util!"),
            json!(3),
            json!("util")
        ]
    );
    // A module that is not in the bundle is not found anywhere else.
    pool.load(handler(
        "missing@1",
        "    import not_in_bundle\n    return 1",
        quick(),
    ))
    .unwrap();
    let err = pool.run("missing@1", json!(null)).unwrap_err();
    assert!(
        err.to_string().contains("not allowed in a Walle task"),
        "{err}"
    );
    // A bundled module is as sandboxed as the entry script.
    let code = handler("evil-helper@1", "    import evil\n    return 1", quick());
    let code = with_module(code, "evil", "evil.py", "import os\n");
    pool.load(code).unwrap();
    let err = pool.run("evil-helper@1", json!(null)).unwrap_err();
    assert!(
        err.to_string().contains("import of 'os' is not allowed"),
        "{err}"
    );
}

#[test]
fn bundled_modules_are_per_task() {
    let pool = VmPool::new(1).unwrap();
    let a = with_module(
        handler("a@1", "    import helper\n    return helper.WHO", quick()),
        "helper",
        "helper.py",
        "WHO = 'a'\n",
    );
    let b = with_module(
        handler("b@1", "    import helper\n    return helper.WHO", quick()),
        "helper",
        "helper.py",
        "WHO = 'b'\n",
    );
    pool.load(a).unwrap();
    pool.load(b).unwrap();
    assert_eq!(records(&pool, "a@1", json!(null)), vec![json!("a")]);
    assert_eq!(records(&pool, "b@1", json!(null)), vec![json!("b")]);
}
