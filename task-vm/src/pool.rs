//! A fixed pool of worker threads; each loaded task lives on exactly one of them.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use serde_json::Value;

use crate::python::PythonTask;
use crate::{TaskCode, VmError};

enum Job {
    Load {
        code: TaskCode,
        reply: Sender<Result<(), VmError>>,
    },
    Run {
        key: String,
        context: Value,
        reply: Sender<Result<Vec<Value>, VmError>>,
    },
    Unload {
        key: String,
    },
}

struct Worker {
    jobs: Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

/// The VM pool. Calls block the calling thread until the worker answers; async callers should
/// use `spawn_blocking`.
pub struct VmPool {
    workers: Vec<Worker>,
    /// Which worker holds each loaded task, and how many tasks each worker holds.
    placement: Mutex<Placement>,
}

#[derive(Default)]
struct Placement {
    by_task: HashMap<String, usize>,
    load: Vec<usize>,
}

impl VmPool {
    /// Starts `threads` worker threads (at least one).
    pub fn new(threads: usize) -> Result<VmPool, VmError> {
        let threads = threads.max(1);
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            let (jobs, inbox) = channel();
            let thread = std::thread::Builder::new()
                .name(format!("walle-vm-{index}"))
                .spawn(move || worker_loop(inbox))
                .map_err(|e| VmError::Pool(format!("cannot start worker thread: {e}")))?;
            workers.push(Worker {
                jobs,
                thread: Some(thread),
            });
        }
        Ok(VmPool {
            workers,
            placement: Mutex::new(Placement {
                by_task: HashMap::new(),
                load: vec![0; threads],
            }),
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Loads (or reloads) a task into its own interpreter on the least-loaded worker.
    pub fn load(&self, code: TaskCode) -> Result<(), VmError> {
        let key = code.key.clone();
        self.unload(&key);
        let worker = self.place(&key);
        let (reply, answer) = channel();
        self.send(worker, Job::Load { code, reply })?;
        let result = answer.recv().map_err(|_| VmError::WorkerGone(worker))?;
        if result.is_err() {
            self.forget(&key);
        }
        result
    }

    /// Runs a loaded task's handler with the given context and returns its output records.
    pub fn run(&self, key: &str, context: Value) -> Result<Vec<Value>, VmError> {
        let worker = self
            .worker_of(key)
            .ok_or_else(|| VmError::NotLoaded(key.to_owned()))?;
        let (reply, answer) = channel();
        self.send(
            worker,
            Job::Run {
                key: key.to_owned(),
                context,
                reply,
            },
        )?;
        answer.recv().map_err(|_| VmError::WorkerGone(worker))?
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

    fn send(&self, worker: usize, job: Job) -> Result<(), VmError> {
        self.workers[worker]
            .jobs
            .send(job)
            .map_err(|_| VmError::WorkerGone(worker))
    }

    fn place(&self, key: &str) -> usize {
        let mut placement = self.placement.lock().unwrap_or_else(|p| p.into_inner());
        let worker = (0..placement.load.len())
            .min_by_key(|&w| placement.load[w])
            .unwrap_or(0);
        placement.load[worker] += 1;
        placement.by_task.insert(key.to_owned(), worker);
        worker
    }

    fn forget(&self, key: &str) -> Option<usize> {
        let mut placement = self.placement.lock().unwrap_or_else(|p| p.into_inner());
        let worker = placement.by_task.remove(key)?;
        placement.load[worker] = placement.load[worker].saturating_sub(1);
        Some(worker)
    }

    fn worker_of(&self, key: &str) -> Option<usize> {
        let placement = self.placement.lock().unwrap_or_else(|p| p.into_inner());
        placement.by_task.get(key).copied()
    }
}

impl Drop for VmPool {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            // Closing the channel ends the worker loop.
            let (closed, _) = channel();
            worker.jobs = closed;
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn worker_loop(inbox: Receiver<Job>) {
    let mut tasks: HashMap<String, PythonTask> = HashMap::new();
    while let Ok(job) = inbox.recv() {
        match job {
            Job::Load { code, reply } => {
                let key = code.key.clone();
                let loaded = guarded(&key, || PythonTask::load(&code));
                let _ = reply.send(loaded.map(|task| {
                    tasks.insert(key, task);
                }));
            }
            Job::Run {
                key,
                context,
                reply,
            } => {
                let result = match tasks.get(&key) {
                    Some(task) => guarded(&key, || task.call(&context)),
                    None => Err(VmError::NotLoaded(key)),
                };
                let _ = reply.send(result);
            }
            Job::Unload { key } => {
                tasks.remove(&key);
            }
        }
    }
}

/// Runs interpreter work so that a panic inside the VM fails only this job, not the worker.
fn guarded<T>(key: &str, work: impl FnOnce() -> Result<T, VmError>) -> Result<T, VmError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| Err(VmError::Panicked(key.to_owned())))
}
