//! A fixed pool of worker threads; each loaded task lives on exactly one of them.
//!
//! Each worker index has a [`JobQueue`] that outlives the thread serving it. A load or run waits
//! in its worker's queue for as long as the jobs ahead of it take, and that wait is not its
//! own: its deadline starts when it starts executing, and its [`RunTiming`] reports the wait
//! and the execution separately.
//!
//! The watchdog and the native bounds (`native`) stop scripts near their deadline; what they
//! cannot stop is native code nobody bounded, or a worker the allocator parked at a task's hard
//! memory cap (see `alloc`). So an executing load or run is waited for at most its deadline
//! plus [`ABANDON_GRACE`]. Past that its worker is **lost**:
//!
//! * its thread is let go: its generation is retired, so if it ever comes back it takes no
//!   further job and ends, dropping its interpreters; it is counted in [`PoolHealth`] (threads
//!   still running, the memory they hold) until it ends, so the embedding process can restart
//!   itself when too much is lost;
//! * a fresh thread serves the same queue at once, and the tasks the lost one held are loaded
//!   again on it ahead of the queued jobs (their module state starts over), so runs queued for
//!   them run instead of failing;
//! * the task that got the worker lost gets a strike; at [`QUARANTINE_STRIKES`] it is
//!   quarantined: unloaded, and its runs and loads refused with [`VmError::Quarantined`] and the
//!   reason, until [`VmPool::release`].

mod queue;
mod worker;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::alloc::TaskMemory;
use crate::host::{MemoryState, StateStore, StateWrite, task_name};
use crate::watchdog::Watchdog;
use crate::{TaskAllocator, TaskCode, VmError};
use queue::JobQueue;
use worker::{Answer, Job};

/// How long past its deadline an executing load or run may take before its worker is
/// abandoned. An interrupted script normally stops within milliseconds; this is for native code
/// nobody bounded.
pub const ABANDON_GRACE: Duration = Duration::from_secs(3);

/// Times a task may get its worker lost before it is quarantined.
pub const QUARANTINE_STRIKES: u32 = 2;

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

/// Where a run's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTiming {
    /// Waiting in its worker's queue behind other tasks' jobs.
    pub queued: Duration,
    /// Executing: what the deadline bounds and what a run's duration is.
    pub executed: Duration,
}

/// A run's result and where its time went, from [`VmPool::run_staged`].
#[derive(Debug)]
pub struct TimedRun {
    pub result: Result<RunOutput, VmError>,
    pub timing: RunTiming,
}

/// What the pool has lost to stuck native code, and whom it refuses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolHealth {
    /// Abandoned worker threads that are still running (or parked); each holds a stack and its
    /// tasks' interpreters until it ends, if ever.
    pub lost_threads: usize,
    /// Heap bytes those threads' tasks still hold.
    pub lost_bytes: u64,
    /// Workers abandoned since the pool started.
    pub abandoned_total: u64,
    /// Quarantined tasks and why.
    pub quarantined: Vec<(String, String)>,
}

/// The VM pool. Calls block the calling thread until the worker answers; async callers should
/// use `spawn_blocking`.
pub struct VmPool {
    queues: Vec<Arc<JobQueue>>,
    /// The thread serving each queue now.
    threads: Mutex<Vec<Option<JoinHandle<()>>>>,
    /// Which worker holds each loaded task, strikes and quarantines.
    placement: Mutex<Placement>,
    lost: Mutex<Lost>,
    // Dropped after the workers (see `Drop`), so no run is in flight when it stops.
    watchdog: Arc<Watchdog>,
    /// Where tasks' `walle.state` lives.
    state: Arc<dyn StateStore>,
}

#[derive(Default)]
struct Placement {
    by_task: HashMap<String, Placed>,
    load: Vec<usize>,
    /// Times each task got its worker lost.
    strikes: HashMap<String, u32>,
    /// Quarantined tasks, with the reason.
    quarantined: HashMap<String, String>,
}

/// A loaded task: where it lives and what is needed to load it again elsewhere.
struct Placed {
    worker: usize,
    code: TaskCode,
    memory: Arc<TaskMemory>,
}

/// Abandoned threads and the memory of the tasks they held.
#[derive(Default)]
struct Lost {
    threads: Vec<(JoinHandle<()>, Vec<Arc<TaskMemory>>)>,
    total: u64,
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
        let queues: Vec<Arc<JobQueue>> = (0..threads).map(|_| Arc::default()).collect();
        let handles = queues
            .iter()
            .enumerate()
            .map(|(index, queue)| worker::spawn(index, 0, queue, &watchdog, &state).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmPool {
            queues,
            threads: Mutex::new(handles),
            placement: Mutex::new(Placement {
                load: vec![0; threads],
                ..Placement::default()
            }),
            lost: Mutex::default(),
            watchdog,
            state,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.queues.len()
    }

    /// Loads (or reloads) a task into its own interpreter on the least-loaded worker. Its
    /// module-level code runs under the task's deadline and memory budget.
    pub fn load(&self, code: TaskCode) -> Result<(), VmError> {
        let key = code.key.clone();
        if let Some(reason) = code.limits.problem() {
            return Err(VmError::BadLimits { task: key, reason });
        }
        if let Some(error) = self.quarantine_error(&key) {
            return Err(error);
        }
        self.unload(&key);
        let memory = TaskMemory::new(code.limits.memory_bytes);
        let index = self.place(&code, &memory);
        let deadline = code.limits.deadline;
        let (reply, answer) = channel();
        self.send(
            index,
            Job::Load {
                code,
                memory: memory.clone(),
                reply,
            },
        )?;
        let waited = wait(&answer, deadline);
        match waited.outcome {
            Outcome::Done(Ok(())) => Ok(()),
            Outcome::Done(Err(error)) => {
                self.forget(&key);
                Err(error)
            }
            Outcome::Stuck(generation) => {
                let error = stuck_error(&key, &memory, deadline);
                self.forget(&key);
                self.lose_worker(index, generation, &key, &error);
                Err(error)
            }
            Outcome::Gone => {
                self.forget(&key);
                Err(VmError::WorkerGone(index))
            }
        }
    }

    /// Runs a loaded task's handler with the given context, commits the state it wrote to
    /// the pool's [`StateStore`], and returns its records and log.
    pub fn run(&self, key: &str, context: Value) -> Result<RunOutput, VmError> {
        let output = self.run_staged(key, context).result?;
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
    /// outputs), and says where the run's time went. The caller must commit before the task's
    /// next run, which would not see it.
    pub fn run_staged(&self, key: &str, context: Value) -> TimedRun {
        let (index, deadline, memory) = match self.placed(key) {
            Ok(placed) => placed,
            Err(error) => return TimedRun::failed(error),
        };
        let (reply, answer) = channel();
        let job = Job::Run {
            key: key.to_owned(),
            context,
            reply,
        };
        if let Err(error) = self.send(index, job) {
            return TimedRun::failed(error);
        }
        let waited = wait(&answer, deadline);
        let result = match waited.outcome {
            // Queued before its task was quarantined (and so not loaded again): say so.
            Outcome::Done(Err(VmError::NotLoaded(task))) => Err(self
                .quarantine_error(key)
                .unwrap_or(VmError::NotLoaded(task))),
            Outcome::Done(result) => result,
            Outcome::Stuck(generation) => {
                let error = stuck_error(key, &memory, deadline);
                self.lose_worker(index, generation, key, &error);
                Err(error)
            }
            Outcome::Gone => Err(VmError::WorkerGone(index)),
        };
        TimedRun {
            result,
            timing: waited.timing,
        }
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
        if let Some(worker) = self.forget(key) {
            let _ = self.send(
                worker,
                Job::Unload {
                    key: key.to_owned(),
                },
            );
        }
    }

    /// Quarantines a task (e.g. one its host quarantined before a restart): it is unloaded and
    /// refused until [`VmPool::release`].
    pub fn quarantine(&self, key: &str, reason: &str) {
        self.unload(key);
        lock(&self.placement)
            .quarantined
            .insert(key.to_owned(), reason.to_owned());
    }

    /// Lifts a task's quarantine and forgets its strikes.
    pub fn release(&self, key: &str) {
        let mut placement = lock(&self.placement);
        placement.quarantined.remove(key);
        placement.strikes.remove(key);
    }

    /// What the pool has lost to stuck native code (threads that ended since are let go and
    /// their memory returned to the system), and the quarantined tasks.
    pub fn health(&self) -> PoolHealth {
        let (lost_threads, lost_bytes, abandoned_total) = {
            let mut lost = lock(&self.lost);
            let before = lost.threads.len();
            lost.threads.retain(|(thread, _)| !thread.is_finished());
            if lost.threads.len() < before {
                crate::alloc::return_free_memory();
            }
            let bytes = lost
                .threads
                .iter()
                .flat_map(|(_, memories)| memories)
                .map(|memory| memory.live())
                .sum();
            (lost.threads.len(), bytes, lost.total)
        };
        let mut quarantined: Vec<(String, String)> = lock(&self.placement)
            .quarantined
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        quarantined.sort();
        PoolHealth {
            lost_threads,
            lost_bytes,
            abandoned_total,
            quarantined,
        }
    }

    /// Queues work for the worker at `index`.
    fn send(&self, index: usize, job: Job) -> Result<(), VmError> {
        if self.queues[index].push(job) {
            Ok(())
        } else {
            Err(VmError::WorkerGone(index))
        }
    }

    /// The worker at `index` (serving as `generation`) is stuck on `culprit`'s job: lets its
    /// thread go, starts a fresh one on the same queue, loads the tasks it held there ahead of
    /// the queued jobs, and strikes (or quarantines) the culprit.
    fn lose_worker(&self, index: usize, generation: u64, culprit: &str, error: &VmError) {
        let queue = &self.queues[index];
        let Some(fresh) = queue.retire(generation) else {
            return; // Someone replaced it already.
        };
        let memories = self.strike(culprit, error, index);
        let old = match worker::spawn(index, fresh, queue, &self.watchdog, &self.state) {
            Ok(thread) => lock(&self.threads)[index].replace(thread),
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot replace a stuck VM worker");
                lock(&self.threads)[index].take()
            }
        };
        {
            let mut lost = lock(&self.lost);
            lost.total += 1;
            if let Some(old) = old {
                lost.threads.push((old, memories));
            }
        }
        tracing::warn!(worker = index, task = culprit, error = %error, "VM worker stuck past a deadline was replaced");
        self.reload_tasks_of(index);
    }

    /// Counts a strike against `culprit`; quarantines it at [`QUARANTINE_STRIKES`]. Returns
    /// the memory counters of the tasks placed on `index` (the lost thread holds them).
    fn strike(&self, culprit: &str, error: &VmError, index: usize) -> Vec<Arc<TaskMemory>> {
        let mut placement = lock(&self.placement);
        let strikes = placement.strikes.entry(culprit.to_owned()).or_insert(0);
        *strikes += 1;
        if *strikes >= QUARANTINE_STRIKES {
            let reason = format!(
                "got its VM worker stuck {strikes} times; the last time: {error}",
                strikes = *strikes
            );
            tracing::error!(task = culprit, %reason, "task quarantined");
            placement.quarantined.insert(culprit.to_owned(), reason);
            if let Some(placed) = placement.by_task.remove(culprit) {
                placement.load[placed.worker] = placement.load[placed.worker].saturating_sub(1);
            }
        }
        placement
            .by_task
            .values()
            .filter(|p| p.worker == index)
            .map(|p| p.memory.clone())
            .collect()
    }

    /// Loads every task placed on worker `index` again, ahead of the jobs queued there, and
    /// waits for those loads; a task that fails to load again is unloaded for good.
    fn reload_tasks_of(&self, index: usize) {
        let mut answers = Vec::new();
        let jobs: Vec<Job> = {
            let mut placement = lock(&self.placement);
            placement
                .by_task
                .values_mut()
                .filter(|p| p.worker == index)
                .map(|placed| {
                    placed.memory = TaskMemory::new(placed.code.limits.memory_bytes);
                    let (reply, answer) = channel();
                    let (key, deadline) = (placed.code.key.clone(), placed.code.limits.deadline);
                    answers.push((key, deadline, placed.memory.clone(), answer));
                    Job::Load {
                        code: placed.code.clone(),
                        memory: placed.memory.clone(),
                        reply,
                    }
                })
                .collect()
        };
        self.queues[index].push_front(jobs);
        for (key, deadline, memory, answer) in answers {
            let error = match wait(&answer, deadline).outcome {
                Outcome::Done(Ok(())) => continue,
                Outcome::Done(Err(error)) => error,
                Outcome::Stuck(generation) => {
                    let error = stuck_error(&key, &memory, deadline);
                    self.forget(&key);
                    self.lose_worker(index, generation, &key, &error);
                    return;
                }
                Outcome::Gone => VmError::WorkerGone(index),
            };
            tracing::error!(task = %key, error = %error, "reloading a task on a replaced worker failed");
            self.forget(&key);
        }
    }

    fn place(&self, code: &TaskCode, memory: &Arc<TaskMemory>) -> usize {
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
    }

    fn forget(&self, key: &str) -> Option<usize> {
        let mut placement = lock(&self.placement);
        let worker = placement.by_task.remove(key)?.worker;
        placement.load[worker] = placement.load[worker].saturating_sub(1);
        Some(worker)
    }

    fn quarantine_error(&self, key: &str) -> Option<VmError> {
        lock(&self.placement)
            .quarantined
            .get(key)
            .map(|reason| VmError::Quarantined {
                task: key.to_owned(),
                reason: reason.clone(),
            })
    }

    /// Where a task lives, its deadline and its memory; or why it cannot run.
    fn placed(&self, key: &str) -> Result<(usize, Duration, Arc<TaskMemory>), VmError> {
        let placement = lock(&self.placement);
        if let Some(p) = placement.by_task.get(key) {
            return Ok((p.worker, p.code.limits.deadline, p.memory.clone()));
        }
        Err(match placement.quarantined.get(key) {
            Some(reason) => VmError::Quarantined {
                task: key.to_owned(),
                reason: reason.clone(),
            },
            None => VmError::NotLoaded(key.to_owned()),
        })
    }
}

impl TimedRun {
    fn failed(error: VmError) -> TimedRun {
        TimedRun {
            result: Err(error),
            timing: RunTiming::default(),
        }
    }
}

/// How waiting for a worker ended.
enum Outcome<T> {
    /// The worker answered.
    Done(Result<T, VmError>),
    /// The job executed past its deadline plus the grace on the thread of this generation.
    Stuck(u64),
    /// The job was dropped unanswered (the pool is going away).
    Gone,
}

struct Waited<T> {
    outcome: Outcome<T>,
    timing: RunTiming,
}

/// Waits for a job just queued: as long as it takes to start, then at most `deadline` plus the
/// grace to finish.
fn wait<T>(answer: &Receiver<Answer<T>>, deadline: Duration) -> Waited<T> {
    let queued_at = Instant::now();
    let (started, generation) = match answer.recv() {
        Ok(Answer::Started { at, generation }) => (at, generation),
        Ok(Answer::Done(result)) => {
            return Waited {
                outcome: Outcome::Done(result),
                timing: RunTiming {
                    queued: queued_at.elapsed(),
                    executed: Duration::ZERO,
                },
            };
        }
        Err(_) => {
            return Waited {
                outcome: Outcome::Gone,
                timing: RunTiming::default(),
            };
        }
    };
    let queued = started.saturating_duration_since(queued_at);
    let outcome = match answer.recv_timeout(deadline.saturating_add(ABANDON_GRACE)) {
        Ok(Answer::Done(result)) => Outcome::Done(result),
        Ok(Answer::Started { .. }) | Err(RecvTimeoutError::Disconnected) => Outcome::Gone,
        Err(RecvTimeoutError::Timeout) => Outcome::Stuck(generation),
    };
    Waited {
        outcome,
        timing: RunTiming {
            queued,
            executed: started.elapsed(),
        },
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

/// How long dropping the pool waits for its workers to finish their current jobs; a worker
/// still busy after that is let go like a lost one (its job is stuck, and waiting would hang
/// whoever drops the pool, e.g. an agent restarting itself to get rid of stuck workers).
const DROP_PATIENCE: Duration = Duration::from_secs(10);

impl Drop for VmPool {
    fn drop(&mut self) {
        for queue in &self.queues {
            queue.close();
        }
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads))
            .into_iter()
            .flatten()
            .collect();
        let until = Instant::now() + DROP_PATIENCE;
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in threads {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}
