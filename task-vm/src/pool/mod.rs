//! A fixed pool of worker threads; each loaded task lives on exactly one of them.
//!
//! The watchdog stops scripts at bytecode boundaries; what it cannot stop is one native call
//! that never returns (`sum(range(10**15))`) or a worker the allocator parked at a task's hard
//! memory cap (see `alloc`). So every load and run is waited for at most its deadline plus
//! [`ABANDON_GRACE`]. Past that the worker is abandoned: its thread is let go, a fresh worker
//! takes its index, the other tasks it held are loaded again there (their module state starts
//! over), and the task that got it stuck is evicted until it is loaded again.

mod worker;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use crate::alloc::TaskMemory;
use crate::host::{MemoryState, StateStore, StateWrite, task_name};
use crate::watchdog::Watchdog;
use crate::{TaskAllocator, TaskCode, VmError};
use worker::{Job, Worker};

/// How long past its deadline a load or run may take before its worker is abandoned. An
/// interrupted script normally stops within milliseconds; this is for stuck native code.
pub const ABANDON_GRACE: Duration = Duration::from_secs(3);

/// What one run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// The records the handler returned.
    pub records: Vec<Value>,
    /// What the script printed, truncated at the task's log cap with a marker.
    pub logs: String,
    /// The task state the run wrote: already in the pool's [`StateStore`] after
    /// [`VmPool::run`], still to commit after [`VmPool::run_staged`].
    pub state: Vec<StateWrite>,
}

/// The VM pool. Calls block the calling thread until the worker answers; async callers should
/// use `spawn_blocking`.
pub struct VmPool {
    workers: Mutex<Vec<Worker>>,
    /// Which worker holds each loaded task, and how many tasks each worker holds.
    placement: Mutex<Placement>,
    // Dropped after the workers (see `Drop`), so no run is in flight when it stops.
    watchdog: Arc<Watchdog>,
    /// Where tasks' `walle.state` lives.
    state: Arc<dyn StateStore>,
}

#[derive(Default)]
struct Placement {
    by_task: HashMap<String, Placed>,
    load: Vec<usize>,
    /// Tasks evicted for getting their worker stuck, with the error that did it.
    evicted: HashMap<String, VmError>,
}

/// A loaded task: where it lives and what is needed to load it again elsewhere.
struct Placed {
    worker: usize,
    code: TaskCode,
    memory: Arc<TaskMemory>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl VmPool {
    /// Starts `threads` worker threads (at least one), with tasks' state kept in memory.
    pub fn new(threads: usize) -> Result<VmPool, VmError> {
        VmPool::with_state(threads, Arc::new(MemoryState::default()))
    }

    /// Starts `threads` worker threads (at least one), with tasks' `walle.state` in `state`.
    pub fn with_state(threads: usize, state: Arc<dyn StateStore>) -> Result<VmPool, VmError> {
        let threads = threads.max(1);
        if !TaskAllocator::is_installed() {
            tracing::warn!(
                "walle_vm::TaskAllocator is not the global allocator: task memory budgets are not enforced"
            );
        }
        let watchdog = Arc::new(
            Watchdog::start()
                .map_err(|e| VmError::Pool(format!("cannot start watchdog thread: {e}")))?,
        );
        let workers = (0..threads)
            .map(|index| Worker::spawn(index, 0, &watchdog, &state))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmPool {
            workers: Mutex::new(workers),
            placement: Mutex::new(Placement {
                load: vec![0; threads],
                ..Placement::default()
            }),
            watchdog,
            state,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        lock(&self.workers).len()
    }

    /// Loads (or reloads) a task into its own interpreter on the least-loaded worker.
    pub fn load(&self, code: TaskCode) -> Result<(), VmError> {
        let key = code.key.clone();
        if let Some(reason) = code.limits.problem() {
            return Err(VmError::BadLimits { task: key, reason });
        }
        self.unload(&key);
        let memory = TaskMemory::new(code.limits.memory_bytes);
        let worker = self.place(&code, &memory);
        self.load_on(worker, code, &memory).map_err(|failure| {
            self.forget(&key);
            if let Failure::Stuck(_) = failure {
                self.abandon(worker.0, worker.1);
            }
            failure.into_error()
        })
    }

    /// Runs a loaded task's handler with the given context, commits the state it wrote to
    /// the pool's [`StateStore`], and returns its records and log.
    pub fn run(&self, key: &str, context: Value) -> Result<RunOutput, VmError> {
        let output = self.run_staged(key, context)?;
        self.state
            .commit(task_name(key), &output.state)
            .map_err(|reason| VmError::State {
                task: key.to_owned(),
                key: output
                    .state
                    .first()
                    .map(|w| w.key.clone())
                    .unwrap_or_default(),
                reason,
            })?;
        Ok(output)
    }

    /// Runs a loaded task's handler like [`VmPool::run`] but leaves the state it wrote in
    /// [`RunOutput::state`] for the caller to commit (e.g. in one transaction with the run's
    /// outputs). The caller must commit before the task's next run, which would not see it.
    pub fn run_staged(&self, key: &str, context: Value) -> Result<RunOutput, VmError> {
        let (index, deadline, memory) = self.placed(key)?;
        let (reply, answer) = channel();
        let job = Job::Run {
            key: key.to_owned(),
            context,
            reply,
        };
        let generation = self.send(index, job)?;
        wait(&answer, deadline, || stuck_error(key, &memory, deadline)).map_err(|failure| {
            if let Failure::Stuck(error) = &failure {
                self.evict(key, error.clone());
                self.abandon(index, generation);
            }
            failure.into_error()
        })
    }

    /// Heap bytes charged to a loaded task now (its interpreter, modules and data; what the
    /// memory budget is checked against), or `None` if it is not loaded. Zero everywhere unless
    /// [`TaskAllocator`] is the global allocator.
    pub fn task_memory(&self, key: &str) -> Option<u64> {
        lock(&self.placement)
            .by_task
            .get(key)
            .map(|placed| placed.memory.live())
    }

    /// Drops a task's interpreter, if loaded.
    pub fn unload(&self, key: &str) {
        lock(&self.placement).evicted.remove(key);
        if let Some(worker) = self.forget(key) {
            let _ = self.send(
                worker,
                Job::Unload {
                    key: key.to_owned(),
                },
            );
        }
    }

    /// Sends a load to a worker (index, generation) and waits for it, within its deadline.
    fn load_on(
        &self,
        worker: (usize, u64),
        code: TaskCode,
        memory: &Arc<TaskMemory>,
    ) -> Result<(), Failure> {
        let key = code.key.clone();
        let deadline = code.limits.deadline;
        let (reply, answer) = channel();
        let job = Job::Load {
            code,
            memory: memory.clone(),
            reply,
        };
        let sent = {
            let workers = lock(&self.workers);
            let target = &workers[worker.0];
            if target.generation != worker.1 {
                return Err(Failure::Error(VmError::WorkerGone(worker.0)));
            }
            target.jobs.send(job)
        };
        sent.map_err(|_| Failure::Error(VmError::WorkerGone(worker.0)))?;
        wait(&answer, deadline, || stuck_error(&key, memory, deadline))
    }

    /// Sends a job to the worker at `index`; returns that worker's generation.
    fn send(&self, index: usize, job: Job) -> Result<u64, VmError> {
        let workers = lock(&self.workers);
        let worker = &workers[index];
        worker
            .jobs
            .send(job)
            .map_err(|_| VmError::WorkerGone(index))?;
        Ok(worker.generation)
    }

    /// Replaces the worker at `index` (if it is still that generation) and loads the other tasks
    /// it held on the new one.
    fn abandon(&self, index: usize, generation: u64) {
        let fresh = match Worker::spawn(index, generation + 1, &self.watchdog, &self.state) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot replace a stuck VM worker");
                return;
            }
        };
        let old = {
            let mut workers = lock(&self.workers);
            if workers[index].generation != generation {
                // Someone else replaced it already.
                drop(workers);
                fresh.stop();
                return;
            }
            std::mem::replace(&mut workers[index], fresh)
        };
        old.abandon();
        tracing::warn!(
            worker = index,
            "VM worker stuck past a deadline was replaced"
        );
        self.reload_tasks_of(index, generation + 1);
    }

    /// Loads every task placed on worker `index` again (on its new thread).
    fn reload_tasks_of(&self, index: usize, generation: u64) {
        let codes: Vec<TaskCode> = lock(&self.placement)
            .by_task
            .values()
            .filter(|p| p.worker == index)
            .map(|p| p.code.clone())
            .collect();
        for code in codes {
            let key = code.key.clone();
            let memory = TaskMemory::new(code.limits.memory_bytes);
            if let Some(placed) = lock(&self.placement).by_task.get_mut(&key) {
                placed.memory = memory.clone();
            }
            if let Err(failure) = self.load_on((index, generation), code, &memory) {
                let error = failure.into_error();
                tracing::error!(task = %key, error = %error, "reloading a task on a replaced worker failed");
                self.evict(&key, error);
            }
        }
    }

    fn place(&self, code: &TaskCode, memory: &Arc<TaskMemory>) -> (usize, u64) {
        let worker = {
            let mut placement = lock(&self.placement);
            let worker = (0..placement.load.len())
                .min_by_key(|&w| placement.load[w])
                .unwrap_or(0);
            placement.load[worker] += 1;
            placement.by_task.insert(
                code.key.clone(),
                Placed {
                    worker,
                    code: code.clone(),
                    memory: memory.clone(),
                },
            );
            worker
        };
        (worker, lock(&self.workers)[worker].generation)
    }

    fn forget(&self, key: &str) -> Option<usize> {
        let mut placement = lock(&self.placement);
        let worker = placement.by_task.remove(key)?.worker;
        placement.load[worker] = placement.load[worker].saturating_sub(1);
        Some(worker)
    }

    fn evict(&self, key: &str, error: VmError) {
        self.forget(key);
        lock(&self.placement).evicted.insert(key.to_owned(), error);
    }

    /// Where a task lives, its deadline and its memory; or why it cannot run.
    fn placed(&self, key: &str) -> Result<(usize, Duration, Arc<TaskMemory>), VmError> {
        let placement = lock(&self.placement);
        if let Some(p) = placement.by_task.get(key) {
            return Ok((p.worker, p.code.limits.deadline, p.memory.clone()));
        }
        Err(match placement.evicted.get(key) {
            Some(error) => VmError::Evicted {
                task: key.to_owned(),
                reason: error.to_string(),
            },
            None => VmError::NotLoaded(key.to_owned()),
        })
    }
}

/// Why waiting for a worker failed.
enum Failure {
    /// The worker answered with an error, or could not be reached.
    Error(VmError),
    /// The worker did not answer in time: it is stuck and must be abandoned.
    Stuck(VmError),
}

impl Failure {
    fn into_error(self) -> VmError {
        match self {
            Failure::Error(error) | Failure::Stuck(error) => error,
        }
    }
}

/// Waits for a worker's answer for at most `deadline` plus the grace; `stuck` makes the error.
fn wait<T>(
    answer: &Receiver<Result<T, VmError>>,
    deadline: Duration,
    stuck: impl FnOnce() -> VmError,
) -> Result<T, Failure> {
    match answer.recv_timeout(deadline.saturating_add(ABANDON_GRACE)) {
        Ok(result) => result.map_err(Failure::Error),
        Err(RecvTimeoutError::Timeout) => Err(Failure::Stuck(stuck())),
        Err(RecvTimeoutError::Disconnected) => Err(Failure::Error(VmError::Pool(
            "a VM worker stopped without answering".to_owned(),
        ))),
    }
}

/// The limit a stuck worker hit: the memory cap if the allocator parked it, else the deadline.
fn stuck_error(task: &str, memory: &TaskMemory, deadline: Duration) -> VmError {
    if memory.parked() {
        VmError::MemoryExceeded {
            task: task.to_owned(),
            max: memory.budget(),
        }
    } else {
        VmError::DeadlineExceeded {
            task: task.to_owned(),
            deadline_ms: deadline.as_millis() as u64,
        }
    }
}

impl Drop for VmPool {
    fn drop(&mut self) {
        let workers = std::mem::take(&mut *lock(&self.workers));
        for worker in workers {
            worker.stop();
        }
    }
}
