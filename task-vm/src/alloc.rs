//! Per-task memory accounting: a counting global allocator.
//!
//! [`TaskAllocator`] wraps the system allocator. While a worker thread runs a task's code (load
//! or run, see [`charge_to`]), every allocation and free on that thread is added to or taken from
//! the task's [`TaskMemory`]; frees of memory the task allocated happen on the same thread (its
//! interpreter never leaves it), so the count is the task's live heap.
//!
//! What is guaranteed, and what is not:
//! * the allocator never fails an allocation because of a budget: returning null would make Rust
//!   abort the whole process (`handle_alloc_error`), and it must not unwind. Going over budget
//!   only marks the task, and the first allocation past the budget in a load or run wakes the
//!   watchdog, which raises `MemoryError` in the script at its next bytecode boundary; the run
//!   fails with [`crate::VmError::MemoryExceeded`]. Growth through Python code (appending in a
//!   loop, building strings piece by piece) is therefore stopped just past the budget.
//! * one native call allocates until it returns. The native calls that are given a size or
//!   build a result from their arguments' sizes are checked against the remaining budget
//!   *before* they allocate, and native loops check the budget at every step (`crate::native`).
//!   Anything else meets the **hard cap**, twice the budget: an allocation that would take the
//!   task past it parks the thread for good, before allocating. The pool then abandons that
//!   worker after the run's deadline (its memory, at most the hard cap, stays allocated) and
//!   carries on with a fresh one (see `pool`). So a task never holds more than twice its
//!   budget, and the process never aborts because of a task.
//! * memory a task frees goes back to the system after a run that hit its budget and when a
//!   task is unloaded ([`return_free_memory`]); RustPython's freelists are emptied after every
//!   run (`crate::freelists`), or their storage would be freed during another task's run.
//! * allocations are charged only while the interpreter runs (never while this crate holds a
//!   lock another thread needs, so a parked worker blocks nobody). Counting is approximate where
//!   a free happens while another task is current on the thread (it is charged to that task):
//!   the freelists above were the one place where that was routine.
//! * without `TaskAllocator` installed as the `#[global_allocator]`, nothing is counted and
//!   budgets are not enforced ([`TaskAllocator::is_installed`] tells).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The counting allocator. Install it in every binary that runs tasks:
/// `#[global_allocator] static A: walle_vm::TaskAllocator = walle_vm::TaskAllocator;`
pub struct TaskAllocator;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised and without a destructor, so reading it inside the allocator neither
    // allocates nor fails during thread teardown.
    static CURRENT: Cell<*const TaskMemory> = const { Cell::new(std::ptr::null()) };
}

impl TaskAllocator {
    /// Whether this allocator is the process's global allocator (it has served an allocation).
    pub fn is_installed() -> bool {
        INSTALLED.load(Ordering::Relaxed)
    }
}

/// Notes that this allocator serves the process. Read before written: a store on every
/// allocation would bounce the flag's cache line between the cores of parallel workers.
fn mark_installed() {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Parks the thread for good if `extra` more bytes would take the current task past its hard cap.
fn admit(extra: usize) {
    let current = CURRENT.with(|c| c.get());
    if current.is_null() {
        return;
    }
    // SAFETY: as in `charge`.
    let memory = unsafe { &*current };
    // A panicking thread is let through: its unwinding and panic message (a backtrace takes
    // megabytes) must finish, or it would park holding the locks of stderr and of the test
    // harness's output capture, and the process could never print or exit again.
    if memory.live().saturating_add(extra as u64) > memory.hard_cap() && !std::thread::panicking() {
        memory.parked.store(true, Ordering::Release);
        // Neither allocates nor unwinds; the pool abandons this worker (see the module doc).
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

fn charge(delta: i64) {
    let current = CURRENT.with(|c| c.get());
    if current.is_null() {
        return;
    }
    // SAFETY: `charge_to` keeps the `TaskMemory` alive while its pointer is current.
    let memory = unsafe { &*current };
    let live = memory.live.fetch_add(delta, Ordering::Relaxed) + delta;
    if delta > 0 && live > memory.budget as i64 && !memory.reported.swap(true, Ordering::Relaxed) {
        // The first allocation past the budget in this load or run: the watchdog is woken to
        // interrupt the script at once rather than at its next tick (a tight loop can allocate
        // tens of megabytes in a tick). Waking it neither allocates nor blocks.
        if let Some(wake) = memory.wake.get() {
            wake();
        }
    }
}

// SAFETY: every method forwards to `System` with the same arguments; the accounting around it
// touches only a const thread-local and atomics, so it neither allocates nor unwinds.
unsafe impl GlobalAlloc for TaskAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        admit(layout.size());
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            charge(layout.size() as i64);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        admit(layout.size());
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            charge(layout.size() as i64);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        charge(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        admit(new_size.saturating_sub(layout.size()));
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            charge(new_size as i64 - layout.size() as i64);
        }
        new
    }
}

/// Gives the heap's free pages back to the system. glibc keeps what is freed in its arenas (one
/// per worker thread), so after a task let go of a budget's worth of memory the process's RSS
/// would stay high; trimming returns it. A few milliseconds: call it after such events only.
pub(crate) fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One task's live heap and its budget.
///
/// Aligned to its own cache lines: every allocation of the task updates `live`, and two tasks'
/// counters sharing a line would make their workers, running in parallel, fight over it.
#[repr(align(128))]
pub(crate) struct TaskMemory {
    live: AtomicI64,
    budget: u64,
    /// Set when a pre-check refused an allocation in the current load or run.
    refused: AtomicBool,
    /// Set when the allocator parked a thread at the hard cap.
    parked: AtomicBool,
    /// Set when an allocation first took the task past its budget in this load or run.
    reported: AtomicBool,
    /// Wakes the watchdog watching the task (see [`TaskMemory::wake_on_overrun`]).
    wake: OnceLock<Arc<dyn Fn() + Send + Sync>>,
}

impl TaskMemory {
    pub(crate) fn new(budget: u64) -> Arc<TaskMemory> {
        Arc::new(TaskMemory {
            live: AtomicI64::new(0),
            budget,
            refused: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            reported: AtomicBool::new(false),
            wake: OnceLock::new(),
        })
    }

    /// Bytes the task holds now.
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed).max(0) as u64
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Most the task may ever hold: past this the allocator parks its thread.
    fn hard_cap(&self) -> u64 {
        self.budget.saturating_mul(2)
    }

    /// Whether the allocator parked a thread of this task at the hard cap.
    pub(crate) fn parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    /// Whether the task holds more than its budget, or asked for more in this load or run.
    pub(crate) fn over_budget(&self) -> bool {
        self.refused.load(Ordering::Relaxed) || self.live() > self.budget
    }

    /// Starts a new load or run: earlier refusals no longer count.
    pub(crate) fn reset_refusals(&self) {
        self.refused.store(false, Ordering::Relaxed);
        self.reported.store(false, Ordering::Relaxed);
    }

    /// Has the allocator call `wake` (once per load or run) when an allocation takes the task
    /// past its budget. Set once: a task is watched by one watchdog.
    pub(crate) fn wake_on_overrun(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wake.set(Arc::new(wake));
    }
}

/// While alive, allocations on this thread are charged to one task.
pub(crate) struct Charging {
    previous: *const TaskMemory,
    // Keeps the counter alive while its pointer is in `CURRENT`.
    _memory: Arc<TaskMemory>,
}

/// Charges this thread's allocations to `memory` until the returned guard is dropped. Hold it
/// only around interpreter work: never across a lock other threads take (see the module doc).
pub(crate) fn charge_to(memory: &Arc<TaskMemory>) -> Charging {
    let previous = CURRENT.with(|c| c.replace(Arc::as_ptr(memory)));
    Charging {
        previous,
        _memory: memory.clone(),
    }
}

impl Drop for Charging {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Records that the task current on this thread asked for more than its budget.
pub(crate) fn refuse_current() {
    let current = CURRENT.with(|c| c.get());
    if !current.is_null() {
        // SAFETY: as in `charge`.
        unsafe { (*current).refused.store(true, Ordering::Relaxed) };
    }
}

/// Counts `bytes` that are not the allocator's (a memory-mapped model's weights) in the budget
/// of the task current on this thread, for as long as the task lives.
pub(crate) fn charge_outside_heap(bytes: u64) {
    charge(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Bytes the task current on this thread may still allocate, if one is current.
pub(crate) fn remaining_budget() -> Option<u64> {
    let current = CURRENT.with(|c| c.get());
    if current.is_null() {
        return None;
    }
    // SAFETY: as in `charge`.
    let memory = unsafe { &*current };
    Some(memory.budget.saturating_sub(memory.live()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates `bytes` while the thread unwinds.
    struct AllocatesOnUnwind(usize);

    impl Drop for AllocatesOnUnwind {
        fn drop(&mut self) {
            std::hint::black_box(vec![1u8; self.0]);
        }
    }

    #[test]
    fn a_thread_past_its_hard_cap_while_panicking_unwinds_instead_of_parking() {
        let memory = TaskMemory::new(1 << 20);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _charging = charge_to(&memory);
                let _guard = AllocatesOnUnwind(8 << 20);
                std::panic::resume_unwind(Box::new("a task's native code failed"));
            }));
            let _ = done.send((unwound.is_err(), memory.parked()));
        });
        let (unwound, parked) = finished
            .recv_timeout(Duration::from_secs(20))
            .expect("the panicking thread was parked by the allocator");
        assert!(unwound && !parked);
    }
}
