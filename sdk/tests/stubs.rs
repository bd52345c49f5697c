//! The Python stubs of the `walle` host module (`sdk/stubs/walle/__init__.pyi`) against the module
//! itself: a script in the real task VM lists every public name of `walle` (its `__all__`, its
//! public globals, and the members of each class and namespace object), and every one of them
//! must be declared in the stubs, and every name the stubs declare must exist, each of the same
//! kind (function, class, object).
//!
//! The stubs also declare names that exist only for type checkers (`TypeAlias`es, `TypedDict`s,
//! `Protocol`s: `walle.Context`, `walle.Json`, …); those must *not* exist in the module, so that a
//! script cannot come to depend on them at run time.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use walle_vm::{Limits, TaskCode, VmPool};

// As in the walle binaries: each task's allocations count in its memory budget.
#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

const STUB: &str = include_str!("../stubs/walle/__init__.pyi");

/// Lists the `walle` module's public names from inside the VM. A class's members are the names in
/// its own namespace, dunder methods included (they are what `t + 1` or `key in walle.state`
/// type-check against), without the ones Python adds to every class.
const COLLECT: &str = r#"
import walle

AUTOMATIC = ("__module__", "__qualname__", "__doc__", "__slots__", "__dict__", "__weakref__",
             "__firstlineno__", "__static_attributes__", "__annotations__")


def members(cls):
    names = []
    for name in vars(cls):
        dunder = name.startswith("__") and name.endswith("__")
        if name not in AUTOMATIC and (dunder or not name.startswith("_")):
            names.append(name)
    return sorted(names)


def describe(value):
    if isinstance(value, type):
        return {"kind": "class", "type": value.__name__, "members": members(value)}
    if callable(value):
        return {"kind": "function"}
    return {"kind": "object", "type": type(value).__name__, "members": members(type(value))}


def run(ctx):
    names = {}
    for name in dir(walle):
        if not name.startswith("_"):
            names[name] = describe(getattr(walle, name))
    return {"all": list(walle.__all__), "names": names}
"#;

/// What the module holds, as the VM reports it.
fn module_names() -> Value {
    let pool = VmPool::new(1).expect("a VM pool");
    let limits = Limits {
        max_output_bytes: 1 << 20,
        ..Limits::default()
    };
    pool.load(TaskCode::python("stubs@1.0.0", COLLECT, limits))
        .expect("the collecting script loads");
    let out = pool
        .run("stubs@1.0.0", json!({}))
        .expect("the collecting script runs");
    out.records.into_iter().next().expect("one record")
}

/// A top-level declaration of the stub file.
#[derive(Debug, Clone, PartialEq)]
enum Declared {
    Function,
    /// A class, with its members; `type_only` for `TypedDict` and `Protocol` classes.
    Class {
        members: BTreeSet<String>,
        type_only: bool,
    },
    /// An annotated name (`nn: _NN`), with its annotation.
    Variable {
        annotation: String,
    },
    /// `X: TypeAlias = ...`.
    Alias,
}

/// The stub file's declarations: top-level `def`, `class`, annotated or assigned names, and the
/// members indented four spaces under each class. Docstrings, decorators, imports and lines
/// that continue an open bracket are skipped; overloads declare one name.
#[derive(Debug, Default)]
struct Stub {
    all: Vec<String>,
    names: BTreeMap<String, Declared>,
}

fn parse_stub(text: &str) -> Stub {
    let mut stub = Stub::default();
    let mut in_docstring = false;
    let mut depth = 0i32;
    let mut class: Option<String> = None;
    for line in text.lines() {
        let quotes = line.matches("\"\"\"").count();
        let starts_in_docstring = in_docstring;
        if quotes % 2 == 1 {
            in_docstring = !in_docstring;
        }
        let code = strip_comment(line);
        let trimmed = code.trim_start();
        if starts_in_docstring || trimmed.starts_with("\"\"\"") || trimmed.is_empty() {
            continue;
        }
        let continuation = depth > 0;
        depth += bracket_balance(code);
        if continuation {
            continue;
        }
        let indent = code.len() - trimmed.len();
        if trimmed.starts_with('@')
            || trimmed.starts_with("import ")
            || trimmed.starts_with("from ")
        {
            continue;
        }
        if indent == 0 {
            class = None;
            if let Some(rest) = trimmed.strip_prefix("class ") {
                let name = identifier(rest);
                let bases = rest[name.len()..].trim_start();
                let type_only = bases.starts_with('(')
                    && (bases.contains("TypedDict") || bases.contains("Protocol"));
                stub.names.insert(
                    name.to_owned(),
                    Declared::Class {
                        members: BTreeSet::new(),
                        type_only,
                    },
                );
                class = Some(name.to_owned());
            } else if let Some(rest) = trimmed.strip_prefix("def ") {
                stub.names
                    .insert(identifier(rest).to_owned(), Declared::Function);
            } else if trimmed.starts_with("__all__") {
                stub.all = quoted_strings(trimmed);
            } else if let Some((name, declared)) = variable(trimmed) {
                stub.names.insert(name, declared);
            }
        } else if indent == 4
            && let Some(Declared::Class { members, .. }) =
                class.as_ref().and_then(|c| stub.names.get_mut(c))
        {
            let name = match trimmed.strip_prefix("def ") {
                Some(rest) => Some(identifier(rest).to_owned()),
                None => variable(trimmed).map(|(name, _)| name),
            };
            members.extend(name);
        }
    }
    stub
}

/// `name: annotation [= ...]` or `name = ...`.
fn variable(line: &str) -> Option<(String, Declared)> {
    let name = identifier(line);
    if name.is_empty() {
        return None;
    }
    let rest = line[name.len()..].trim_start();
    if let Some(annotation) = rest.strip_prefix(':') {
        let annotation = annotation
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let declared = if annotation == "TypeAlias" {
            Declared::Alias
        } else {
            Declared::Variable { annotation }
        };
        return Some((name.to_owned(), declared));
    }
    rest.starts_with('=').then(|| {
        (
            name.to_owned(),
            Declared::Variable {
                annotation: String::new(),
            },
        )
    })
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The line without a `#` comment outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &line[..at],
            _ => {}
        }
    }
    line
}

/// Opening minus closing brackets outside quotes.
fn bracket_balance(code: &str) -> i32 {
    let mut quote: Option<char> = None;
    let mut balance = 0;
    for c in code.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '(' | '[' | '{') => balance += 1,
            (None, ')' | ']' | '}') => balance -= 1,
            _ => {}
        }
    }
    balance
}

fn quoted_strings(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every difference between the module (as the VM describes it) and the stub.
fn differences(module: &Value, stub: &Stub) -> Vec<String> {
    let mut problems = Vec::new();
    let all: Vec<&str> = module["all"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if all != stub.all {
        problems.push(format!(
            "__all__ is {all:?} in the module but {:?} in the stub",
            stub.all
        ));
    }
    let empty = serde_json::Map::new();
    let names = module["names"].as_object().unwrap_or(&empty);
    for (name, found) in names {
        let declared = stub.names.get(name);
        match (found["kind"].as_str(), declared) {
            (_, None) => problems.push(format!("`walle.{name}` is missing from the stub")),
            (Some("function"), Some(Declared::Function)) => {}
            (Some("class"), Some(Declared::Class { members, .. })) => {
                compare_members(name, found, name, members, &mut problems);
            }
            (Some("object"), Some(Declared::Variable { annotation })) => {
                let stub_type = annotation.trim_matches('"');
                match stub.names.get(stub_type) {
                    Some(Declared::Class { members, .. }) => {
                        compare_members(name, found, stub_type, members, &mut problems);
                    }
                    _ => problems.push(format!(
                        "`walle.{name}` is annotated `{annotation}` in the stub, which is not a class the stub declares"
                    )),
                }
            }
            (kind, Some(declared)) => problems.push(format!(
                "`walle.{name}` is a {} in the module but declared as {declared:?} in the stub",
                kind.unwrap_or("?")
            )),
        }
    }
    for (name, declared) in &stub.names {
        let type_only = matches!(
            declared,
            Declared::Alias
                | Declared::Class {
                    type_only: true,
                    ..
                }
        );
        let private = name.starts_with('_');
        let exists = names.contains_key(name);
        if type_only && exists {
            problems.push(format!(
                "`walle.{name}` exists in the module, but the stub declares it for type checking only"
            ));
        } else if !type_only && !private && !exists {
            problems.push(format!(
                "the stub declares `walle.{name}`, which the module does not have"
            ));
        }
    }
    problems
}

/// Compares the members of the module's class or object `name` with the stub's class
/// `stub_class`.
fn compare_members(
    name: &str,
    found: &Value,
    stub_class: &str,
    declared: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    if found["type"].as_str() != Some(stub_class) {
        problems.push(format!(
            "`walle.{name}` is of type {} in the module but {stub_class} in the stub",
            found["type"]
        ));
    }
    let members: BTreeSet<String> = found["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    for missing in members.difference(declared) {
        problems.push(format!(
            "`walle.{name}.{missing}` is missing from the stub's class {stub_class}"
        ));
    }
    for extra in declared.difference(&members) {
        problems.push(format!(
            "the stub's class {stub_class} declares `{extra}`, which `walle.{name}` does not have"
        ));
    }
}

#[test]
fn the_stubs_declare_exactly_what_the_host_module_exports() {
    let module = module_names();
    let stub = parse_stub(STUB);
    // The module's own view, so that a collecting script that sees nothing cannot pass.
    for name in ["Tensor", "nn", "state", "context", "upload", "log"] {
        assert!(
            module["names"].get(name).is_some(),
            "the VM reported no `walle.{name}`: {module}"
        );
    }
    let problems = differences(&module, &stub);
    assert!(
        problems.is_empty(),
        "sdk/stubs/walle/__init__.pyi and the walle module (task-vm/src/walle.py) differ:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_stub_parser_reads_classes_members_aliases_and_skips_docstrings() {
    let stub = parse_stub(
        r#"
"""Module doc.

def not_a_function(): a docstring line
"""
from typing import TypeAlias
__all__ = ["f", "C"]
Alias: TypeAlias = (
    int | str
)
class Shape(TypedDict):
    x: int
@overload
def f(a: int) -> int: ...
@overload
def f(a: str) -> str: ...
class C:
    """Doc.

    def hidden(self): also a docstring line
    """
    attr: int
    @property
    def prop(self) -> int:
        """Doc."""
    def method(
        self,
        arg: int,
    ) -> None: ...
obj: C
"#,
    );
    assert_eq!(stub.all, ["f", "C"]);
    let members: BTreeSet<String> = ["attr", "prop", "method"].map(String::from).into();
    let expected: BTreeMap<String, Declared> = [
        ("Alias", Declared::Alias),
        (
            "Shape",
            Declared::Class {
                members: ["x".to_owned()].into(),
                type_only: true,
            },
        ),
        ("f", Declared::Function),
        (
            "C",
            Declared::Class {
                members,
                type_only: false,
            },
        ),
        (
            "obj",
            Declared::Variable {
                annotation: "C".into(),
            },
        ),
    ]
    .into_iter()
    .map(|(name, declared)| (name.to_owned(), declared))
    .collect();
    assert_eq!(stub.names, expected);
}
