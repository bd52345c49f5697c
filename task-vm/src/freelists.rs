//! Empties RustPython's object freelists at the end of each load and run.
//!
//! RustPython keeps up to 80 freed lists and 80 freed dicts per thread for reuse, **with their
//! storage**: a list a script grew to 60 MB stays allocated in the freelist after the script
//! is gone, and is only dropped when some later list on the thread reuses the entry, that is,
//! during another task's run, charged to that task. The first task's memory would not come
//! back, and the second's count would go wrong (it could then allocate far past its budget
//! before its count caught up).
//!
//! Taking every entry and handing back empty ones drops the stale storage now, charged to the
//! task that made it, and leaves the freelists holding empty objects.

use rustpython_vm::{PyObjectRef, VirtualMachine};

/// Entries each freelist holds at most (RustPython's `MAX_FREELIST` for lists and dicts).
const FREELIST_ENTRIES: usize = 80;

/// Replaces the thread's freelisted lists and dicts with empty ones.
pub(crate) fn flush(vm: &VirtualMachine) {
    let mut taken: Vec<PyObjectRef> = Vec::with_capacity(2 * FREELIST_ENTRIES);
    for _ in 0..FREELIST_ENTRIES {
        taken.push(vm.ctx.new_list(Vec::new()).into());
        taken.push(vm.ctx.new_dict().into());
    }
}
