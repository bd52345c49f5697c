//! Empties RustPython's object freelists at the end of each load, and of each run that grew its
//! task's heap.
//!
//! RustPython keeps up to 80 freed lists and 80 freed dicts per thread for reuse, **with their
//! storage**: a list a script grew to 60 MB stays allocated in the freelist after the script
//! is gone, and is only dropped when some later list on the thread reuses the entry, that is,
//! during another task's run, charged to that task. The first task's memory would not come
//! back, and the second's count would go wrong (it could then allocate far past its budget
//! before its count caught up).
//!
//! Taking every entry and handing back empty ones drops the stale storage now, charged to the
//! task that made it, and leaves the freelists holding empty objects. A run whose task holds
//! about what it held before has nothing big there (a freelisted list's storage still counts
//! as held), so only runs that grew the heap pay for the flush (160 small objects).

use rustpython_vm::{PyObjectRef, VirtualMachine};

/// Entries each freelist holds at most (RustPython's `MAX_FREELIST` for lists and dicts).
const FREELIST_ENTRIES: usize = 80;

/// Growth of a task's heap over one run past which the run's end flushes the freelists.
const FLUSH_AFTER_GROWTH: u64 = 1 << 20;

/// Flushes after a run that took the task from `before` to `after` bytes, if it grew by more
/// than [`FLUSH_AFTER_GROWTH`].
pub(crate) fn flush_if_grown(vm: &VirtualMachine, before: u64, after: u64) {
    if after > before.saturating_add(FLUSH_AFTER_GROWTH) {
        flush(vm);
    }
}

/// Replaces the thread's freelisted lists and dicts with empty ones.
pub(crate) fn flush(vm: &VirtualMachine) {
    let mut taken: Vec<PyObjectRef> = Vec::with_capacity(2 * FREELIST_ENTRIES);
    for _ in 0..FREELIST_ENTRIES {
        taken.push(vm.ctx.new_list(Vec::new()).into());
        taken.push(vm.ctx.new_dict().into());
    }
}
