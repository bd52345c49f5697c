//! Stops scripts that pass their deadline or memory budget, reliably, while other interpreters
//! run on other workers.
//!
//! RustPython checks for interrupts at bytecode boundaries, but only when its *process-wide*
//! "signal pending" flag is set, and the first interpreter to see the flag clears it while it
//! drains only its *own* signal channel. A single "send and forget" interrupt can therefore be
//! swallowed by another busy interpreter. So the watchdog keeps sending, every tick, to each
//! tripped run until that run has finished: each send re-arms the global flag, and the target
//! interpreter raises as soon as it checks. A script that catches the exception and carries on
//! gets it again at the next tick, and from then on also a trace function on every frame that
//! raises at every new line and call, so no handler can run; the run fails with the limit's
//! error whatever the script does.
//!
//! Not guaranteed: a single native call (a huge regex backtrack, `10**10**8`) runs to completion
//! before the next bytecode boundary; the interrupt lands after it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustpython_vm::builtins::PyBaseExceptionRef;
use rustpython_vm::function::FuncArgs;
use rustpython_vm::signal::{UserSignal, UserSignalSender};
use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};

use crate::alloc::TaskMemory;
use crate::limits::Limit;

/// How often tripped runs are re-interrupted and budgets are checked.
const TICK: Duration = Duration::from_millis(5);

/// How long past its deadline a run is still interrupted. By then the pool has given up on a
/// worker that does not answer (`ABANDON_GRACE`) and the watch would only pile up interrupts.
const GIVE_UP: Duration = Duration::from_secs(10);
const _: () = assert!(GIVE_UP.as_secs() > crate::pool::ABANDON_GRACE.as_secs());

const NOT_TRIPPED: u8 = 0;
const DEADLINE: u8 = 1;
const MEMORY: u8 = 2;

/// One load or run being watched.
struct Watch {
    deadline: Instant,
    memory: Arc<TaskMemory>,
    interrupt: UserSignalSender,
    tripped: AtomicU8,
    finished: AtomicBool,
    /// How many times the script has been interrupted in this run.
    raised: AtomicU32,
}

impl Watch {
    fn tripped(&self) -> Option<Limit> {
        match self.tripped.load(Ordering::Acquire) {
            DEADLINE => Some(Limit::Deadline),
            MEMORY => Some(Limit::Memory),
            _ => None,
        }
    }

    /// Trips the watch if a limit is now exceeded; returns whether it is tripped.
    fn check(&self, now: Instant) -> bool {
        if self.tripped().is_some() {
            return true;
        }
        let hit = if now >= self.deadline {
            DEADLINE
        } else if self.memory.over_budget() {
            MEMORY
        } else {
            return false;
        };
        let _ =
            self.tripped
                .compare_exchange(NOT_TRIPPED, hit, Ordering::AcqRel, Ordering::Acquire);
        true
    }
}

/// Raised inside the script by the interpreter that owns the watch.
fn interrupt(watch: Arc<Watch>) -> UserSignal {
    Box::new(move |vm: &VirtualMachine| {
        // Stale interrupts (queued for a run that has ended) are drained harmlessly.
        if watch.finished.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(limit) = watch.tripped() else {
            return Ok(());
        };
        let exception = stop_exception(vm, limit);
        if watch.raised.fetch_add(1, Ordering::AcqRel) > 0 {
            // The script survived an interrupt: it catches them.
            trace_every_frame(vm);
        }
        Err(exception)
    })
}

/// The exception that stops a script at `limit`.
pub(crate) fn stop_exception(vm: &VirtualMachine, limit: Limit) -> PyBaseExceptionRef {
    match limit {
        Limit::Deadline => vm.new_exception_msg(
            vm.ctx.exceptions.keyboard_interrupt.to_owned(),
            "the task's deadline has passed".into(),
        ),
        Limit::Memory => vm.new_memory_error("the task's memory budget is exhausted"),
    }
}

/// Makes every frame of the script, present and future, raise at its next line or call.
/// Undone at the start of the next run (`reset_tracing`).
fn trace_every_frame(vm: &VirtualMachine) {
    // Made here rather than looked up, so that nothing the script can reach decides it.
    let stop: PyObjectRef = vm.new_function("walle_stop", stop).into();
    *vm.trace_func.borrow_mut() = stop.clone();
    vm.use_tracing.set(true);
    let mut frame: Option<PyObjectRef> = vm.current_frame().map(|f| f.as_object().to_owned());
    while let Some(current) = frame {
        let _ = current.set_attr("f_trace", stop.clone(), vm);
        frame = current
            .get_attr("f_back", vm)
            .ok()
            .filter(|back| !vm.is_none(back));
    }
}

/// The trace function of a script being stopped.
fn stop(_args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    Err(vm.new_exception_msg(
        vm.ctx.exceptions.keyboard_interrupt.to_owned(),
        "the task is being stopped".into(),
    ))
}

/// Turns off what `trace_every_frame` turned on (scripts cannot trace: `sys.settrace` is gone).
pub(crate) fn reset_tracing(vm: &VirtualMachine) {
    if vm.use_tracing.get() {
        *vm.trace_func.borrow_mut() = vm.ctx.none();
        vm.use_tracing.set(false);
    }
}

#[derive(Default)]
struct Shared {
    watches: Mutex<Vec<Arc<Watch>>>,
    wake: Condvar,
    stopping: AtomicBool,
}

/// The watchdog thread of one pool.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

thread_local! {
    // The watch of the load or run executing on this thread, for checks from native code
    // (`crate::native`). Const-initialised and without a destructor, like the allocator's.
    static CURRENT: Cell<*const Watch> = const { Cell::new(std::ptr::null()) };
}

/// The limit that has stopped the load or run executing on this thread, if one has: its
/// deadline has passed (as the watchdog saw at its last tick) or its memory is over budget
/// (now). `None` outside a watched load or run.
pub(crate) fn current_stop() -> Option<Limit> {
    let current = CURRENT.with(|c| c.get());
    if current.is_null() {
        return None;
    }
    // SAFETY: `Armed` keeps the watch alive while its pointer is current on this thread.
    let watch = unsafe { &*current };
    if watch.finished.load(Ordering::Acquire) {
        return None;
    }
    watch
        .tripped()
        .or_else(|| watch.memory.over_budget().then_some(Limit::Memory))
}

/// A watched load or run; [`Armed::finish`] ends the watch.
pub(crate) struct Armed {
    watch: Arc<Watch>,
    previous: *const Watch,
}

impl Armed {
    /// Ends the watch and says which limit, if any, stopped the script. A budget exceeded since
    /// the last tick counts too: the script may have finished before the watchdog looked.
    pub(crate) fn finish(self) -> Option<Limit> {
        let tripped = self.watch.tripped();
        if tripped.is_none() && self.watch.memory.over_budget() {
            return Some(Limit::Memory);
        }
        tripped
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.watch.finished.store(true, Ordering::Release);
        CURRENT.with(|c| c.set(self.previous));
    }
}

impl Watchdog {
    pub(crate) fn start() -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("walle-vm-watchdog".into())
                .spawn(move || watch_loop(&shared))?
        };
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches a load or run until the returned guard is finished or dropped. Call it on the
    /// thread that executes the load or run: native code there asks [`current_stop`].
    pub(crate) fn arm(
        &self,
        deadline: Duration,
        memory: &Arc<TaskMemory>,
        interrupt: &UserSignalSender,
    ) -> Armed {
        memory.reset_refusals();
        let shared = Arc::downgrade(&self.shared);
        memory.wake_on_overrun(move || {
            if let Some(shared) = shared.upgrade() {
                shared.wake.notify_one();
            }
        });
        let watch = Arc::new(Watch {
            deadline: Instant::now() + deadline,
            memory: memory.clone(),
            interrupt: interrupt.clone(),
            tripped: AtomicU8::new(NOT_TRIPPED),
            finished: AtomicBool::new(false),
            raised: AtomicU32::new(0),
        });
        lock(&self.shared.watches).push(watch.clone());
        self.shared.wake.notify_one();
        let previous = CURRENT.with(|c| c.replace(Arc::as_ptr(&watch)));
        Armed { watch, previous }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            // Under the lock: the loop checks `stopping` and starts waiting while holding it, so
            // the notice below cannot fall between the two and be lost (the thread would then
            // sleep for ever and this join never return).
            let _watches = lock(&self.shared.watches);
            self.shared.stopping.store(true, Ordering::Release);
        }
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn watch_loop(shared: &Shared) {
    let mut watches = lock(&shared.watches);
    while !shared.stopping.load(Ordering::Acquire) {
        let now = Instant::now();
        watches.retain(|w| !w.finished.load(Ordering::Acquire) && now < w.deadline + GIVE_UP);
        for watch in watches.iter() {
            if watch.check(now) {
                // Each send also re-arms the process-wide flag another interpreter may have
                // cleared. A send fails only if the interpreter is gone, i.e. the run is over.
                let _ = watch.interrupt.send(interrupt(watch.clone()));
            }
        }
        watches = if watches.is_empty() {
            shared.wake.wait(watches).unwrap_or_else(|p| p.into_inner())
        } else {
            let wait = next_wait(&watches, now);
            shared
                .wake
                .wait_timeout(watches, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0
        };
    }
}

/// Sleeps one tick, or less if a deadline comes sooner.
fn next_wait(watches: &[Arc<Watch>], now: Instant) -> Duration {
    watches
        .iter()
        .filter(|w| w.tripped().is_none())
        .map(|w| w.deadline.saturating_duration_since(now))
        .fold(TICK, Duration::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watchdog_stops_at_once_however_soon_it_is_dropped() {
        // Dropping right after the start races the thread's first wait: a lost notice hung the
        // join (and once a whole CI run) before `stopping` was set under the lock.
        for i in 0..2000u32 {
            let watchdog = Watchdog::start().expect("watchdog thread");
            // Vary when the drop lands relative to the thread's first check of `stopping`.
            let until = Instant::now() + Duration::from_micros(u64::from(i % 64));
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            drop(watchdog);
        }
    }
}
