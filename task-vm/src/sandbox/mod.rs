//! Building a task's interpreter: one explicit module table, a gated `__import__`, no `open`, a
//! `sys` without the functions that could hurt the host process, `print` into the run's log.

pub(crate) mod imports;
mod native;

use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;

use rustpython_vm::builtins::{PyModuleDef, PyType};
use rustpython_vm::common::rc::PyRc;
use rustpython_vm::frozen::FrozenModule;
use rustpython_vm::signal::{UserSignalSender, user_signal_channel};
use rustpython_vm::{AsObject, Interpreter, PyResult, Settings, VirtualMachine};

use crate::TaskCode;

/// Native modules of the VM itself kept in the table: what its start-up (import system, codecs)
/// and the whitelisted modules need. Everything else it ships (`gc`, `marshal`, `atexit`,
/// `_symtable`, `_sysconfig`, its own `time` with `sleep`, …) is removed.
const VM_NATIVE: &[&str] = &[
    "_abc",
    "_ast",
    "_codecs",
    "_collections",
    "_functools",
    "_imp",
    "_io",
    "_operator",
    "_string",
    "_typing",
    "_types",
    "_warnings",
    "_weakref",
    "itertools",
];

/// Native modules taken from `rustpython-stdlib` (built without `host_env`).
/// `_hashlib` holds the hash object type `_sha512` returns.
const STDLIB_NATIVE: &[&str] = &["math", "_random", "_bisect", "_json", "_sha512", "_hashlib"];

/// Frozen modules of the VM kept: its import system, `_thread` stand-in and codecs.
const VM_FROZEN: &[&str] = &[
    "_frozen_importlib",
    "_thread",
    "codecs",
    "copyreg",
    "encodings_ascii",
    "encodings_utf_8",
];

/// `sys` attributes removed: process-wide knobs a script could turn against the worker thread
/// (a raised recursion limit overflows the native stack, tracing slows every task), and the host
/// paths the process was started with.
const SYS_REMOVED: &[&str] = &[
    "setrecursionlimit",
    "settrace",
    "setprofile",
    "_settraceallthreads",
    "_setprofileallthreads",
    "setswitchinterval",
    "set_int_max_str_digits",
    "activate_stack_trampoline",
    "remote_exec",
    "addaudithook",
    "argv",
    "orig_argv",
    "executable",
    "_base_executable",
    "prefix",
    "base_prefix",
    "exec_prefix",
    "base_exec_prefix",
    "platlibdir",
    "_stdlib_dir",
    "pycache_prefix",
];

/// `builtins` removed: they would read the host's stdin or start a debugger.
const BUILTINS_REMOVED: &[&str] = &["input", "breakpoint"];

/// The pure-Python halves of the whitelisted modules and `_walle_setup.py`, gathered by
/// `build.rs` from `rustpython-pylib` and compiled in at build time.
fn vendored_modules() -> impl Iterator<Item = (&'static str, FrozenModule)> {
    include!(concat!(env!("OUT_DIR"), "/pylib_frozen.rs")).into_iter()
}

/// A sandboxed interpreter and the sender that interrupts it.
pub(crate) struct Sandbox {
    pub(crate) interpreter: Interpreter,
    pub(crate) interrupt: UserSignalSender,
}

/// Why the sandbox could not be built (a bug, not a task error).
#[derive(Debug)]
pub(crate) struct SetupError(pub(crate) String);

/// Builds the interpreter for a task, with its bundled modules importable.
pub(crate) fn build(code: &TaskCode) -> Result<Sandbox, SetupError> {
    let (interrupt, receiver) = user_signal_channel();
    let restricted = Rc::new(Cell::new(false));
    let interpreter = {
        let restricted = restricted.clone();
        let defs = native_defs(rustpython_vm::Context::genesis());
        Interpreter::builder(settings())
            .add_native_modules(&defs)
            .add_frozen_modules(vendored_modules())
            .init_hook(move |vm| {
                vm.set_user_signal_channel(receiver);
                restricted.set(restrict_module_table(vm));
            })
            .build()
    };
    if !restricted.get() {
        return Err(SetupError("cannot restrict the module table".into()));
    }
    interpreter
        .enter(|vm| lock_down(vm, code))
        .map_err(|e| SetupError(format!("sandbox setup raised {}", e.class().name())))?;
    Ok(Sandbox {
        interpreter,
        interrupt,
    })
}

/// Builds and drops one sandbox, charged to no task: sets up the thread's shared VM state and the
/// process's one-time state, so that no task pays for them, and no task's thread can be parked at
/// its memory cap while holding a process-wide lock during that set-up.
pub(crate) fn warm_up() {
    let code = TaskCode::python("walle-warm-up", "", crate::Limits::default());
    if let Err(e) = build(&code) {
        tracing::error!(error = %e.0, "VM worker warm-up failed");
    }
}

/// Interpreter settings for task code: no site import, no environment, no search path.
fn settings() -> Settings {
    let mut settings = Settings::default();
    settings.isolated = true;
    settings.import_site = false;
    settings.ignore_environment = true;
    settings.safe_path = true;
    settings.path_list.clear();
    settings.allow_external_library = false;
    settings
}

/// Walle's native modules and the chosen ones of `rustpython-stdlib`.
fn native_defs(ctx: &rustpython_vm::Context) -> Vec<&'static PyModuleDef> {
    let mut defs: Vec<&'static PyModuleDef> = rustpython_stdlib::stdlib_module_defs(ctx)
        .into_iter()
        .filter(|def| STDLIB_NATIVE.contains(&def.name.as_str()))
        .collect();
    defs.push(native::sandbox_module_def(ctx));
    defs.push(native::time_module_def(ctx));
    defs.push(crate::regex::module_def(ctx));
    defs
}

/// Keeps only the listed native and frozen modules (plus Walle's). Runs before the VM starts,
/// while its global state is not yet shared.
fn restrict_module_table(vm: &mut VirtualMachine) -> bool {
    let Some(state) = PyRc::get_mut(&mut vm.state) else {
        return false;
    };
    state.module_defs.retain(|name, _| {
        VM_NATIVE.contains(name)
            || STDLIB_NATIVE.contains(name)
            || native::NAMES.contains(name)
            || *name == crate::regex::NAME
    });
    let vendored: Vec<&str> = vendored_modules().map(|(name, _)| name).collect();
    state
        .frozen
        .retain(|name, _| VM_FROZEN.contains(name) || vendored.contains(name));
    true
}

/// Installs the bundle finder and log sink, then the import gate, and strips `sys`/`builtins`.
fn lock_down(vm: &VirtualMachine, code: &TaskCode) -> PyResult<()> {
    let sources = vm.ctx.new_dict();
    for module in &code.modules {
        let entry = (
            module.path.as_str(),
            module.source.as_str(),
            module.is_package(),
        );
        sources.set_item(module.name.as_str(), vm.new_tuple(entry).into(), vm)?;
    }
    let sandbox = vm.import("_walle_sandbox", 0)?;
    sandbox.set_attr("bundle", sources.clone(), vm)?;
    let setup = vm.import("_walle_setup", 0)?;
    vm.call_method(&setup, "install", (sources,))?;
    for name in SYS_REMOVED {
        let _ = vm.sys_module.as_object().del_attr(*name, vm);
    }
    let builtins = &vm.builtins;
    for name in BUILTINS_REMOVED {
        let _ = builtins.as_object().del_attr(*name, vm);
    }
    builtins.set_attr("open", sandbox.get_attr("open", vm)?, vm)?;
    harden_builtin_types(vm);
    crate::isolation::install(vm, &sandbox)?;
    crate::native::install(vm)?;
    // Last: from here on, imports go through the gate.
    builtins.set_attr("__import__", sandbox.get_attr("__import__", vm)?, vm)
}

/// Walks the built-in types reachable from `object` (as a script can, with `__subclasses__`) and
/// fixes two things found there:
/// * RustPython panics when `type.__name__` is read on a built-in type whose name is not interned
///   (e.g. `HeapMethodDef`); a panic fails the run and unloads the task, so names are interned.
/// * `sys._SandboxStdio` is compiled in even without `stdio`, can be instantiated from Python and
///   would write to the host's stdout and read its stdin: its methods are removed.
fn harden_builtin_types(vm: &VirtualMachine) {
    let mut todo = vec![vm.ctx.types.object_type.to_owned()];
    let mut seen = HashSet::new();
    while let Some(ty) = todo.pop() {
        if !seen.insert(ty.get_id()) {
            continue;
        }
        if ty.heaptype_ext.is_none() {
            let name = ty.name().to_string();
            if name == "_SandboxStdio" {
                ty.attributes
                    .write()
                    .retain(|attr, _| attr.as_str().starts_with("__"));
            }
            vm.ctx.intern_str(name);
        }
        let subclasses: Vec<_> = ty
            .subclasses
            .read()
            .iter()
            .filter_map(|w| w.upgrade())
            .collect();
        todo.extend(
            subclasses
                .into_iter()
                .filter_map(|s| s.downcast::<PyType>().ok()),
        );
    }
}
