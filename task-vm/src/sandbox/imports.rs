//! What a task may import: the whitelist, the task's bundled modules, and the gate that is
//! `builtins.__import__` in every task interpreter.

use rustpython_vm::builtins::{PyDictRef, PyStr};
use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};

use crate::VmError;

/// Standard modules task code may import (with their submodules, e.g. `json.decoder`).
pub const TASK_IMPORTS: &[&str] = &[
    "json",
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "heapq",
    "bisect",
    "random",
    "time",
    // Walle's host module (tensors, models, context, upload, state, log): `bindings`.
    "walle",
];

/// Modules the whitelisted ones use internally. Task code cannot import them by name; the
/// vetted modules' own code can. None of them reaches the host (the VM has no host code).
pub(crate) const INTERNAL_IMPORTS: &[&str] = &[
    "sys",
    "builtins",
    "abc",
    "_abc",
    "_bisect",
    "_codecs",
    "_collections",
    "_collections_abc",
    // The import system's own frames are the importer when a native module imports another.
    "_frozen_importlib",
    "_functools",
    "_hashlib",
    "_json",
    "_operator",
    "_random",
    "_sha512",
    "_thread",
    "_types",
    "_walle_re",
    "_warnings",
    "_weakref",
    "codecs",
    "copyreg",
    "enum",
    "keyword",
    "operator",
    "reprlib",
    "types",
];

/// One of the task's own Python modules, shipped in its bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskModule {
    /// Dotted module name, e.g. `helpers` or `pkg.sub` (`pkg` for `pkg/__init__.py`).
    pub name: String,
    /// Path in the bundle (used in tracebacks).
    pub path: String,
    /// Source text.
    pub source: String,
}

impl TaskModule {
    /// Whether the module is a package (`pkg/__init__.py`).
    pub fn is_package(&self) -> bool {
        self.path.ends_with("/__init__.py")
    }
}

/// The importable modules among a bundle's files: every `.py` file except the entry script whose
/// path is made of Python identifiers. Fails on a module that is not UTF-8 or that would shadow a
/// standard module.
pub fn bundled_modules<'a>(
    task: &str,
    entry: &str,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<TaskModule>, VmError> {
    let mut modules = Vec::new();
    for (path, bytes) in files {
        if path == entry {
            continue;
        }
        let Some(name) = module_name(path) else {
            continue;
        };
        let bad = |reason: String| VmError::BadModule {
            task: task.to_owned(),
            path: path.to_owned(),
            reason,
        };
        let top = name.split('.').next().unwrap_or(&name);
        if is_listed(TASK_IMPORTS, top) || is_listed(INTERNAL_IMPORTS, top) {
            return Err(bad(format!("`{top}` is the name of a standard module")));
        }
        let source = String::from_utf8(bytes.to_vec())
            .map_err(|_| bad("the source is not UTF-8".to_owned()))?;
        modules.push(TaskModule {
            name,
            path: path.to_owned(),
            source,
        });
    }
    Ok(modules)
}

/// `pkg/sub.py` → `pkg.sub`, `pkg/__init__.py` → `pkg`; `None` if not an importable path.
fn module_name(path: &str) -> Option<String> {
    let stem = path.strip_suffix(".py")?;
    let mut parts: Vec<&str> = stem.split('/').collect();
    if parts.last() == Some(&"__init__") {
        parts.pop();
    }
    let valid = !parts.is_empty() && parts.iter().all(|p| is_identifier(p));
    valid.then(|| parts.join("."))
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn is_listed(list: &[&str], top: &str) -> bool {
    list.contains(&top)
}

/// Arguments of `__import__`.
#[derive(rustpython_vm::FromArgs)]
pub(crate) struct ImportArgs {
    #[pyarg(any)]
    name: rustpython_vm::builtins::PyStrRef,
    #[pyarg(any, default)]
    globals: Option<PyObjectRef>,
    #[pyarg(any, default)]
    locals: Option<PyObjectRef>,
    #[pyarg(any, default)]
    fromlist: Option<PyObjectRef>,
    #[pyarg(any, default)]
    level: i32,
}

/// `builtins.__import__` of a task interpreter: refuses what is not allowed, then imports through
/// the VM's own import system (whose finders know only built-in, frozen and bundled modules).
pub(crate) fn gated_import(args: ImportArgs, vm: &VirtualMachine) -> PyResult {
    let name = args.name.to_str().ok_or_else(|| {
        vm.new_import_error("module names must be valid UTF-8", args.name.clone())
    })?;
    let absolute = absolute_name(name, args.globals.as_ref(), args.level, vm)?;
    if !allowed(&absolute, args.globals.as_ref(), vm) {
        return Err(vm.new_import_error(
            format!(
                "import of '{absolute}' is not allowed in a Walle task (allowed: {}, and the task's own modules)",
                TASK_IMPORTS.join(", ")
            ),
            vm.ctx.new_str(absolute.as_str()),
        ));
    }
    let none = || vm.ctx.none();
    vm.import_func
        .call(
            (
                args.name.clone(),
                args.globals.unwrap_or_else(none),
                args.locals.unwrap_or_else(none),
                args.fromlist.unwrap_or_else(none),
                args.level,
            ),
            vm,
        )
        // Tracebacks show the task's frames, not the import system's (as `import` does).
        .inspect_err(|exc| rustpython_vm::import::remove_importlib_frames(vm, exc))
}

fn allowed(absolute: &str, globals: Option<&PyObjectRef>, vm: &VirtualMachine) -> bool {
    let top = absolute.split('.').next().unwrap_or(absolute);
    is_listed(TASK_IMPORTS, top)
        || is_bundled(absolute, vm)
        || (is_listed(INTERNAL_IMPORTS, top) && importer_is_vetted(globals, vm))
}

/// Whether `name` is one of the task's own modules.
fn is_bundled(name: &str, vm: &VirtualMachine) -> bool {
    bundle_sources(vm)
        .and_then(|sources| sources.get_item_opt(name, vm).ok().flatten())
        .is_some()
}

/// The `{name: (path, source, is_package)}` dict the bundle finder was installed with.
fn bundle_sources(vm: &VirtualMachine) -> Option<PyDictRef> {
    let sandbox = vm
        .sys_module
        .get_attr("modules", vm)
        .ok()?
        .get_item("_walle_sandbox", vm)
        .ok()?;
    sandbox.get_attr("bundle", vm).ok()?.downcast().ok()
}

/// Whether the importing code is a whitelisted or internal standard module: its globals must be
/// the very dict of the module registered under its name.
fn importer_is_vetted(globals: Option<&PyObjectRef>, vm: &VirtualMachine) -> bool {
    let Some(globals) = globals else {
        return false;
    };
    let Some(name) = globals
        .get_item("__name__", vm)
        .ok()
        .and_then(|n| n.downcast::<PyStr>().ok())
    else {
        return false;
    };
    let Some(name) = name.to_str() else {
        return false;
    };
    let top = name.split('.').next().unwrap_or_default();
    if !(is_listed(TASK_IMPORTS, top) || is_listed(INTERNAL_IMPORTS, top)) {
        return false;
    }
    vm.sys_module
        .get_attr("modules", vm)
        .and_then(|modules| modules.get_item(name, vm))
        .and_then(|module| module.get_attr("__dict__", vm))
        .is_ok_and(|dict| dict.is(globals))
}

/// Resolves a relative import (`from . import x`) against the importer's package.
fn absolute_name(
    name: &str,
    globals: Option<&PyObjectRef>,
    level: i32,
    vm: &VirtualMachine,
) -> PyResult<String> {
    if level <= 0 {
        return Ok(name.to_owned());
    }
    let no_parent = || {
        vm.new_import_error(
            "attempted relative import with no known parent package",
            vm.ctx.new_str(name),
        )
    };
    let package = globals
        .and_then(|g| package_of(g, vm))
        .ok_or_else(no_parent)?;
    let mut base = package.as_str();
    for _ in 1..level {
        base = base.rsplit_once('.').map(|(b, _)| b).ok_or_else(|| {
            vm.new_import_error(
                "attempted relative import beyond top-level package",
                vm.ctx.new_str(name),
            )
        })?;
    }
    Ok(if name.is_empty() {
        base.to_owned()
    } else {
        format!("{base}.{name}")
    })
}

/// The package a module's relative imports start from: `__package__`, else derived from
/// `__name__` as the import system does.
fn package_of(globals: &PyObjectRef, vm: &VirtualMachine) -> Option<String> {
    let text = |key: &str| {
        globals
            .get_item(key, vm)
            .ok()
            .and_then(|v| v.downcast::<PyStr>().ok())
            .and_then(|s| s.to_str().map(str::to_owned))
    };
    if let Some(package) = text("__package__").filter(|p| !p.is_empty()) {
        return Some(package);
    }
    let name = text("__name__")?;
    if globals.get_item("__path__", vm).is_ok() {
        return Some(name);
    }
    name.rsplit_once('.').map(|(parent, _)| parent.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_paths() {
        assert_eq!(module_name("helper.py").as_deref(), Some("helper"));
        assert_eq!(module_name("pkg/__init__.py").as_deref(), Some("pkg"));
        assert_eq!(
            module_name("pkg/sub/mod.py").as_deref(),
            Some("pkg.sub.mod")
        );
        assert_eq!(module_name("my-lib.py"), None);
        assert_eq!(module_name("data.json"), None);
        assert_eq!(module_name("__init__.py"), None);
    }

    #[test]
    fn bundled_modules_skip_the_entry_and_refuse_shadowing() {
        let files: Vec<(&str, &[u8])> = vec![
            ("main.py", b"x = 1"),
            ("helper.py", b"y = 2"),
            ("model.onnx", b"\0"),
        ];
        let modules = bundled_modules("t@1", "main.py", files).unwrap();
        assert_eq!(modules.len(), 1);
        assert_eq!(modules[0].name, "helper");
        let shadow: Vec<(&str, &[u8])> = vec![("json/__init__.py", b"")];
        let err = bundled_modules("t@1", "main.py", shadow).unwrap_err();
        assert!(matches!(err, VmError::BadModule { .. }), "{err}");
    }
}
