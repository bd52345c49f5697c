//! Native loops stop at the deadline: every built-in iterator's `__next__` and every built-in
//! type's rich comparison first asks [`super::check`].
//!
//! Native code that runs long does so by looping, and the loops a script can start all step an
//! iterator (`sum`, `max`, `any`, `list`, `tuple`, `dict.fromkeys`, `str.join`,
//! `deque.extend`, `bytes(iterable)`, `itertools` chains, …) or compare items (`list.sort`,
//! `list.index`, `x in list`, dict and set probing). Wrapping those two slots of every built-in
//! type puts a stop check (an atomic load) in every step of every such loop, without knowing the
//! loops. Types made by scripts inherit the wrapped slots.
//!
//! A wrapper cannot carry data, so each distinct original function gets an index in a table,
//! and the wrapper installed for it is the one instantiated for that index. Originals are the
//! same static functions on every thread, so the tables are process-wide while the patches are
//! per thread (the types are).

use std::sync::{Mutex, OnceLock};

use rustpython_vm::builtins::PyType;
use rustpython_vm::function::{Either, PyComparisonValue};
use rustpython_vm::protocol::PyIterReturn;
use rustpython_vm::types::PyComparisonOp;
use rustpython_vm::{AsObject, PyObject, PyObjectRef, PyRef, PyResult, VirtualMachine};

use super::{FnAddress, IterNextFn, RichCompareFn, check};

/// Distinct originals a table can hold; more built-in types than this have no such slot.
const CAPACITY: usize = 192;

/// Original slot functions, each at the index its wrapper was instantiated for.
struct Originals<F: 'static> {
    /// Addresses of the originals, by index; appended under the lock.
    assigned: Mutex<Vec<usize>>,
    functions: [OnceLock<F>; CAPACITY],
}

impl<F: Copy> Originals<F> {
    const fn new() -> Self {
        Originals {
            assigned: Mutex::new(Vec::new()),
            functions: [const { OnceLock::new() }; CAPACITY],
        }
    }

    /// The index of `original` (whose address is `address`), given one if it has none yet.
    fn index_for(&self, original: F, address: usize) -> Option<usize> {
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = assigned.iter().position(|&a| a == address) {
            return Some(index);
        }
        let index = assigned.len();
        if index == CAPACITY {
            return None;
        }
        let _ = self.functions[index].set(original);
        assigned.push(address);
        Some(index)
    }

    fn get(&self, index: usize) -> Option<F> {
        self.functions[index].get().copied()
    }
}

static NEXT: Originals<IterNextFn> = Originals::new();
static COMPARE: Originals<RichCompareFn> = Originals::new();

fn checked_next<const I: usize>(zelf: &PyObject, vm: &VirtualMachine) -> PyResult<PyIterReturn> {
    check(vm)?;
    let original = NEXT
        .get(I)
        .ok_or_else(|| vm.new_system_error("walle: iterator slot is not set up"))?;
    original(zelf, vm)
}

fn checked_compare<const I: usize>(
    a: &PyObject,
    b: &PyObject,
    op: PyComparisonOp,
    vm: &VirtualMachine,
) -> PyResult<Either<PyObjectRef, PyComparisonValue>> {
    check(vm)?;
    let original = COMPARE
        .get(I)
        .ok_or_else(|| vm.new_system_error("walle: comparison slot is not set up"))?;
    original(a, b, op, vm)
}

macro_rules! instantiate {
    ($function:ident; $($index:literal)*) => {
        [$($function::<$index>),*]
    };
}

static NEXT_WRAPPERS: [IterNextFn; CAPACITY] = instantiate!(checked_next; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 128 129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144 145 146 147 148 149 150 151 152 153 154 155 156 157 158 159 160 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185 186 187 188 189 190 191);
static COMPARE_WRAPPERS: [RichCompareFn; CAPACITY] = instantiate!(checked_compare; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 128 129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144 145 146 147 148 149 150 151 152 153 154 155 156 157 158 159 160 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185 186 187 188 189 190 191);

/// Native modules whose types must exist before the walk: their iterators are patched only if
/// they are there to be found.
const NATIVE_MODULES: &[&str] = &[
    "itertools",
    "_collections",
    "_functools",
    "_operator",
    "_json",
    "_random",
    "math",
    "_bisect",
];

/// Wraps the iterator and comparison slots of every built-in type of this thread.
pub(super) fn install(vm: &VirtualMachine) -> PyResult<()> {
    for module in NATIVE_MODULES {
        vm.import(*module, 0)?;
    }
    let mut skipped = 0;
    for ty in builtin_types(vm) {
        let next = &ty.slots.iternext;
        skipped += usize::from(!wrap(
            next.load(),
            |w| next.store(Some(w)),
            &NEXT,
            &NEXT_WRAPPERS,
        ));
        let compare = &ty.slots.richcompare;
        skipped += usize::from(!wrap(
            compare.load(),
            |w| compare.store(Some(w)),
            &COMPARE,
            &COMPARE_WRAPPERS,
        ));
    }
    if skipped > 0 {
        tracing::error!(
            skipped,
            "some built-in slots were left without a stop check"
        );
    }
    Ok(())
}

/// Stores the wrapper for a slot's current function (`slot`) with `store`; false if the table
/// is full and the slot stays as it was.
fn wrap<F: Copy + FnAddress + 'static>(
    slot: Option<F>,
    store: impl FnOnce(F),
    table: &'static Originals<F>,
    wrappers: &'static [F; CAPACITY],
) -> bool {
    let Some(original) = slot else {
        return true;
    };
    if wrappers.iter().any(|w| w.address() == original.address()) {
        return true;
    }
    match table.index_for(original, original.address()) {
        Some(index) => {
            store(wrappers[index]);
            true
        }
        None => false,
    }
}

/// The built-in (not script-made) types reachable from `object`.
fn builtin_types(vm: &VirtualMachine) -> Vec<PyRef<PyType>> {
    let mut found = Vec::new();
    let mut todo = vec![vm.ctx.types.object_type.to_owned()];
    let mut seen = std::collections::HashSet::new();
    while let Some(ty) = todo.pop() {
        if !seen.insert(ty.get_id()) {
            continue;
        }
        let subclasses: Vec<_> = ty
            .subclasses
            .read()
            .iter()
            .filter_map(|w| w.upgrade())
            .filter_map(|s| s.downcast::<PyType>().ok())
            .collect();
        todo.extend(subclasses);
        if ty.heaptype_ext.is_none() {
            found.push(ty);
        }
    }
    found
}
