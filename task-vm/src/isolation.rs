//! Keeps tasks that share a worker thread from reaching each other's objects.
//!
//! RustPython shares the built-in type objects among all interpreters of a thread, and each of
//! them records its subclasses. Unfiltered, `object.__subclasses__()` in one task lists the
//! classes of every other task on the worker, and through their methods' `__globals__` their
//! whole module state, readable and writable. So:
//! * `type.__new__` is wrapped to record each class it makes in the making interpreter's
//!   registry (weakly, in `_walle_sandbox.owned_types`);
//! * `type.__subclasses__` is replaced by one that lists the calling interpreter's classes and
//!   the built-in types of [`VISIBLE_MODULES`] only: what a task can import anyway. The types of
//!   the VM's own machinery (`_io`'s streams, `_hashlib`, `ast`, `sys`'s internals) stay out of
//!   reach of a subclass walk.
//!
//! * setting or deleting an attribute of a built-in type (`itertools.count.__next__ = f`) is
//!   refused: RustPython marks only some of its own types immutable, and a change to a shared
//!   type would reach every task on the worker.
//!
//! Classes made without `type.__new__` (by native code) are left out of the listings: hiding
//! never leaks. The patches are per thread, like the shared types.

use std::cell::Cell;
use std::sync::OnceLock;

use rustpython_vm::builtins::{PyDictRef, PyListRef, PyStr, PyStrRef, PyType, PyTypeRef, PyWeak};
use rustpython_vm::function::{FuncArgs, PySetterValue};
use rustpython_vm::{AsObject, Py, PyObject, PyObjectRef, PyRef, PyResult, VirtualMachine};

use crate::native::NewFn;

/// `type`'s original `__new__` slot (the same function on every thread).
static TYPE_NEW: OnceLock<NewFn> = OnceLock::new();

thread_local! {
    static PATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Modules whose built-in types `__subclasses__` lists: the builtins and what the whitelist
/// (`TASK_IMPORTS`) imports, with their native halves.
const VISIBLE_MODULES: &[&str] = &[
    "builtins",
    "types",
    "typing",
    "string.templatelib",
    "collections",
    "_collections",
    "functools",
    "itertools",
    "operator",
    "_operator",
    "json",
    "_json",
    "random",
    "_random",
    "math",
    "re",
    "_walle_re",
    "walle",
];

/// Name of the registry on the `_walle_sandbox` module.
const REGISTRY: &str = "owned_types";

/// Patches this thread's `type` (once) and gives the interpreter its class registry.
pub(crate) fn install(vm: &VirtualMachine, sandbox: &PyObjectRef) -> PyResult<()> {
    sandbox.set_attr(REGISTRY, vm.ctx.new_dict(), vm)?;
    if PATCHED.with(|p| p.replace(true)) {
        return Ok(());
    }
    let type_type = vm.ctx.types.type_type;
    if let Some(original) = type_type.slots.new.load() {
        let _ = TYPE_NEW.set(original);
        type_type.slots.new.store(Some(recording_new));
    }
    let subclasses = vm.new_method("__subclasses__", type_type, own_subclasses);
    type_type.set_attr(vm.ctx.intern_str("__subclasses__"), subclasses.into());
    if let Some(original) = type_type.slots.setattro.load() {
        let _ = TYPE_SETATTRO.set(original);
        type_type.slots.setattro.store(Some(guarded_setattro));
    }
    // `type.__setattr__(t, …)` and `type.__delattr__(t, …)` go through the guarded slot too.
    let setattr = vm.new_method("__setattr__", type_type, type_setattr);
    type_type.set_attr(vm.ctx.intern_str("__setattr__"), setattr.into());
    let delattr = vm.new_method("__delattr__", type_type, type_delattr);
    type_type.set_attr(vm.ctx.intern_str("__delattr__"), delattr.into());
    Ok(())
}

type SetattroFn = fn(&PyObject, &Py<PyStr>, PySetterValue, &VirtualMachine) -> PyResult<()>;

/// `type`'s original attribute setter (the same function on every thread).
static TYPE_SETATTRO: OnceLock<SetattroFn> = OnceLock::new();

/// Refuses changes to built-in types; passes the rest to `type`'s own setter.
fn guarded_setattro(
    obj: &PyObject,
    name: &Py<PyStr>,
    value: PySetterValue,
    vm: &VirtualMachine,
) -> PyResult<()> {
    if let Some(ty) = obj.downcast_ref::<PyType>()
        && ty.heaptype_ext.is_none()
    {
        return Err(vm.new_type_error(format!(
            "cannot set '{}' attribute of immutable type '{}'",
            name.as_wtf8(),
            ty.slot_name()
        )));
    }
    let original = TYPE_SETATTRO
        .get()
        .ok_or_else(|| vm.new_system_error("walle: type.__setattr__ is not set up"))?;
    original(obj, name, value, vm)
}

fn type_setattr(
    zelf: PyObjectRef,
    name: PyStrRef,
    value: PyObjectRef,
    vm: &VirtualMachine,
) -> PyResult<()> {
    guarded_setattro(&zelf, &name, PySetterValue::Assign(value), vm)
}

fn type_delattr(zelf: PyObjectRef, name: PyStrRef, vm: &VirtualMachine) -> PyResult<()> {
    guarded_setattro(&zelf, &name, PySetterValue::Delete, vm)
}

fn recording_new(cls: PyTypeRef, args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    let original = TYPE_NEW
        .get()
        .ok_or_else(|| vm.new_system_error("walle: type.__new__ is not set up"))?;
    let made = original(cls, args, vm)?;
    if made.downcast_ref::<PyType>().is_some()
        && let Some(registry) = registry(vm)
    {
        let weak = made.downgrade(None, vm)?;
        registry.set_item(&made.get_id(), weak.into(), vm)?;
        if registry.__len__() % 1024 == 0 {
            forget_dead(&registry, vm)?;
        }
    }
    Ok(made)
}

/// Drops the entries of classes that no longer exist (a script making classes in a loop).
fn forget_dead(registry: &PyDictRef, vm: &VirtualMachine) -> PyResult<()> {
    for (key, weak) in registry.items_vec() {
        let alive = weak
            .downcast::<PyWeak>()
            .ok()
            .and_then(|w| w.upgrade())
            .is_some();
        if !alive {
            registry.del_item(&*key, vm)?;
        }
    }
    Ok(())
}

/// `type.__subclasses__`: built-in subclasses, and those made by the calling interpreter.
fn own_subclasses(zelf: PyRef<PyType>, vm: &VirtualMachine) -> PyListRef {
    let registry = registry(vm);
    let visible: Vec<PyObjectRef> = zelf
        .subclasses
        .read()
        .iter()
        .filter_map(|weak| weak.upgrade())
        .filter(|sub| {
            let Some(ty) = sub.downcast_ref::<PyType>() else {
                return false;
            };
            match ty.heaptype_ext {
                None => visible_builtin(ty, vm),
                Some(_) => registry.as_ref().is_some_and(|r| made_here(r, sub, vm)),
            }
        })
        .collect();
    vm.ctx.new_list(visible)
}

/// Whether a built-in type belongs to one of [`VISIBLE_MODULES`].
fn visible_builtin(ty: &PyType, vm: &VirtualMachine) -> bool {
    ty.__module__(vm)
        .downcast::<PyStr>()
        .ok()
        .and_then(|module| module.to_str().map(|m| VISIBLE_MODULES.contains(&m)))
        .unwrap_or(false)
}

fn made_here(registry: &PyDictRef, class: &PyObjectRef, vm: &VirtualMachine) -> bool {
    registry
        .get_item_opt(&class.get_id(), vm)
        .ok()
        .flatten()
        .and_then(|weak| weak.downcast::<PyWeak>().ok())
        .and_then(|weak| weak.upgrade())
        .is_some_and(|alive| alive.is(class))
}

/// The calling interpreter's registry, if it is a task interpreter.
fn registry(vm: &VirtualMachine) -> Option<PyDictRef> {
    vm.sys_module
        .get_attr("modules", vm)
        .and_then(|modules| modules.get_item("_walle_sandbox", vm))
        .and_then(|sandbox| sandbox.get_attr(REGISTRY, vm))
        .ok()?
        .downcast()
        .ok()
}
