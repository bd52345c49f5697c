//! Bounds on what task code can do inside the interpreter's native code.
//!
//! The watchdog stops a script at its next bytecode boundary (`watchdog`); one native call runs
//! until it returns. Left alone, a one-liner keeps a worker for ever (`sum(range(10**15))`,
//! `collections.deque(itertools.count(), 0)`), for minutes (`10**10**8`, sorting millions of
//! items) or allocates gigabytes in one step (`bytearray(10**10)`). So every native operation a
//! script can make run long or allocate a lot is bounded here, before or while it runs:
//!
//! * [`iteration`]: every built-in iterator's `__next__` and every built-in type's comparison
//!   first asks [`check`], so a native loop over an iterator (`sum`, `list`, `max`, `join`,
//!   `deque.extend`, …) or over comparisons (`sort`, `list.index`, dict probing) stops at the
//!   deadline or the memory budget like Python code does;
//! * [`sequences`]: repetition (`'x' * 10**10`) is checked against the remaining budget before it
//!   allocates;
//! * [`ints`]: integer power, multiplication, shifts and division, `str()` of an int and the
//!   `math` functions that build big integers refuse results past [`ints::MAX_INT_BITS`] or the
//!   remaining budget before computing; [`bytecode`] keeps task code's `*` from being
//!   specialised past that check;
//! * [`sizes`]: native calls that take a size (`bytearray(n)`, `str.ljust(n)`, a format width,
//!   `int.to_bytes(n)`, `random.getrandbits(n)`, …) are checked against the remaining budget
//!   first;
//! * [`source`]: source text is measured before it is compiled (RustPython's compiler recurses
//!   on the native stack without a limit: a deeply nested expression would overflow it and abort
//!   the process);
//! * regular expressions run on a linear-time engine with a backtracking budget (`crate::regex`).
//!
//! A bound that trips raises in the script: the deadline and the memory budget raise the same
//! exceptions the watchdog does, and the run fails with that limit's error whatever the script
//! makes of them; a size past a hard bound raises `OverflowError` or `MemoryError` naming it.
//!
//! The patched slots live on the built-in type objects, which RustPython shares among all
//! interpreters of a thread; only Walle's worker threads create interpreters, so patching them
//! once per thread is safe, and outside a task (no load or run watched) the wrappers only call
//! the originals.

pub(crate) mod bytecode;
pub(crate) mod ints;
pub(crate) mod iteration;
pub(crate) mod sequences;
pub(crate) mod sizes;
pub(crate) mod source;

use std::cell::Cell;

use rustpython_vm::builtins::PyTypeRef;
use rustpython_vm::function::{Either, FuncArgs, PyComparisonValue};
use rustpython_vm::protocol::PyIterReturn;
use rustpython_vm::types::PyComparisonOp;
use rustpython_vm::{PyObject, PyObjectRef, PyResult, VirtualMachine};

use crate::alloc::refuse_current;
use crate::limits::Limit;
use crate::watchdog::{current_stop, stop_exception};

/// The slot functions patched here (RustPython keeps their names crate-private).
pub(crate) type NewFn = fn(PyTypeRef, FuncArgs, &VirtualMachine) -> PyResult;
pub(crate) type InitFn = fn(PyObjectRef, FuncArgs, &VirtualMachine) -> PyResult<()>;
pub(crate) type BinaryFn = fn(&PyObject, &PyObject, &VirtualMachine) -> PyResult;
pub(crate) type TernaryFn = fn(&PyObject, &PyObject, &PyObject, &VirtualMachine) -> PyResult;
pub(crate) type IterNextFn = fn(&PyObject, &VirtualMachine) -> PyResult<PyIterReturn>;
pub(crate) type RichCompareFn = fn(
    &PyObject,
    &PyObject,
    PyComparisonOp,
    &VirtualMachine,
) -> PyResult<Either<PyObjectRef, PyComparisonValue>>;

/// A slot function's address, to tell the functions stored in slots apart (comparing function
/// pointers directly is not meaningful; comparing what was stored in a slot is).
pub(crate) trait FnAddress {
    fn address(&self) -> usize;
}

macro_rules! fn_address {
    ($($function:ty),*) => {
        $(impl FnAddress for $function {
            fn address(&self) -> usize {
                *self as usize
            }
        })*
    };
}

fn_address!(NewFn, BinaryFn, TernaryFn, IterNextFn, RichCompareFn);

thread_local! {
    static PATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Installs every bound in a freshly built task interpreter. The slot patches are made once per
/// thread; the per-interpreter ones (module functions) every time.
pub(crate) fn install(vm: &VirtualMachine) -> PyResult<()> {
    if !PATCHED.with(|p| p.replace(true)) {
        sequences::install(vm);
        ints::install_slots(vm);
        ints::install_from_bytes(vm)?;
        sizes::install_slots(vm)?;
        bytecode::install_slots(vm)?;
        // Last: it wraps what the others installed, and must see every built-in type.
        iteration::install(vm)?;
    }
    ints::install_functions(vm)?;
    bytecode::install_builtins(vm)
}

/// Fails if the load or run executing on this thread must stop: its deadline has passed or its
/// memory is over budget. Native loops call it at every step.
#[inline]
pub(crate) fn check(vm: &VirtualMachine) -> PyResult<()> {
    match current_stop() {
        None => Ok(()),
        Some(limit) => Err(stop(vm, limit)),
    }
}

#[cold]
fn stop(vm: &VirtualMachine, limit: Limit) -> rustpython_vm::builtins::PyBaseExceptionRef {
    if limit == Limit::Memory {
        // The run fails with the memory limit's error even if the script catches this.
        refuse_current();
    }
    stop_exception(vm, limit)
}

/// Refuses, with a `MemoryError`, an allocation of `wanted` bytes that the running task's
/// remaining budget cannot hold. What asked for it is named in the message.
pub(crate) fn reserve(what: &str, wanted: u128, vm: &VirtualMachine) -> PyResult<()> {
    let Some(remaining) = crate::alloc::remaining_budget() else {
        return Ok(());
    };
    if wanted > u128::from(remaining) {
        refuse_current();
        return Err(vm.new_memory_error(format!(
            "{what} needs {wanted} bytes; the task has {remaining} left in its memory budget"
        )));
    }
    Ok(())
}
