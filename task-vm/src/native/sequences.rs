//! Sequence repetition (`'x' * 10**10`, the classic one-liner bomb): the repeat slots of the
//! built-in sequence types are wrapped so that the result's size is compared with the running
//! task's remaining budget before anything is allocated, and a `MemoryError` is raised instead.

use std::sync::OnceLock;

use rustpython_vm::builtins::{PyByteArray, PyBytes, PyList, PyStr, PyTuple, PyType};
use rustpython_vm::protocol::PySequence;
use rustpython_vm::{Py, PyObject, PyResult, VirtualMachine};

use super::reserve;

type RepeatFn = fn(PySequence<'_>, isize, &VirtualMachine) -> PyResult;

/// The original slot functions, one per (type, in-place) pair below. They are the same static
/// functions on every thread.
static ORIGINALS: [OnceLock<RepeatFn>; 10] = [const { OnceLock::new() }; 10];

/// Wraps the repeat slots of this thread's built-in sequence types (once per thread).
pub(super) fn install(vm: &VirtualMachine) {
    let types = &vm.ctx.types;
    let all: [&Py<PyType>; 5] = [
        types.str_type,
        types.bytes_type,
        types.bytearray_type,
        types.list_type,
        types.tuple_type,
    ];
    let wrappers: [(RepeatFn, RepeatFn); 5] = [
        (guarded::<0>, guarded::<1>),
        (guarded::<2>, guarded::<3>),
        (guarded::<4>, guarded::<5>),
        (guarded::<6>, guarded::<7>),
        (guarded::<8>, guarded::<9>),
    ];
    for (index, (ty, (repeat, inplace))) in all.iter().zip(wrappers).enumerate() {
        let slots = &ty.slots.as_sequence;
        if let Some(original) = slots.repeat.load() {
            let _ = ORIGINALS[2 * index].set(original);
            slots.repeat.store(Some(repeat));
        }
        if let Some(original) = slots.inplace_repeat.load() {
            let _ = ORIGINALS[2 * index + 1].set(original);
            slots.inplace_repeat.store(Some(inplace));
        }
    }
}

fn guarded<const I: usize>(seq: PySequence<'_>, n: isize, vm: &VirtualMachine) -> PyResult {
    check_repeat(seq.obj, n, vm)?;
    let original = ORIGINALS[I]
        .get()
        .ok_or_else(|| vm.new_system_error("walle: sequence repeat slot is not set up"))?;
    original(seq, n, vm)
}

/// Refuses a repetition whose result would not fit in the running task's remaining budget.
fn check_repeat(obj: &PyObject, n: isize, vm: &VirtualMachine) -> PyResult<()> {
    let wanted = (item_bytes(obj) as u128) * (n.max(0) as u128);
    reserve("repeating this sequence", wanted, vm)
}

/// Bytes one copy of the sequence takes.
fn item_bytes(obj: &PyObject) -> usize {
    const POINTER: usize = size_of::<usize>();
    if let Some(s) = obj.downcast_ref::<PyStr>() {
        s.as_wtf8().as_bytes().len()
    } else if let Some(b) = obj.downcast_ref::<PyBytes>() {
        b.as_bytes().len()
    } else if let Some(b) = obj.downcast_ref::<PyByteArray>() {
        b.borrow_buf().len()
    } else if let Some(l) = obj.downcast_ref::<PyList>() {
        l.borrow_vec().len() * POINTER
    } else if let Some(t) = obj.downcast_ref::<PyTuple>() {
        t.as_slice().len() * POINTER
    } else {
        0
    }
}
