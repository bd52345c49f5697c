//! One worker thread: the interpreters of the tasks placed on it, and the jobs it is sent.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use serde_json::Value;

use crate::alloc::TaskMemory;
use crate::host::{Models, RunHost, StateStore, with_log};
use crate::limits::Limits;
use crate::pool::RunOutput;
use crate::python::PythonTask;
use crate::wasm::{WasmLimits, WasmTask};
use crate::watchdog::Watchdog;
use crate::{TaskCode, VmError};

/// Stack of a worker thread. Python recursion runs on the native stack, and RustPython's
/// recursion limit (and its stack-depth check) must trip long before the stack ends; the space
/// is only reserved, pages are used as needed.
const WORKER_STACK_BYTES: usize = 256 * 1024 * 1024;

pub(super) enum Job {
    Load {
        code: TaskCode,
        memory: Arc<TaskMemory>,
        reply: Sender<Result<(), VmError>>,
    },
    Run {
        key: String,
        context: Value,
        reply: Sender<Result<RunOutput, VmError>>,
    },
    Unload {
        key: String,
    },
}

/// The pool's handle on a worker thread.
pub(super) struct Worker {
    pub(super) jobs: Sender<Job>,
    /// Bumped each time the worker at this index is replaced.
    pub(super) generation: u64,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(super) fn spawn(
        index: usize,
        generation: u64,
        watchdog: &Arc<Watchdog>,
        state: &Arc<dyn StateStore>,
    ) -> Result<Worker, VmError> {
        let (jobs, inbox) = channel();
        let (watchdog, state) = (watchdog.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name(format!("walle-vm-{index}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || worker_loop(inbox, &watchdog, state.as_ref()))
            .map_err(|e| VmError::Pool(format!("cannot start worker thread: {e}")))?;
        Ok(Worker {
            jobs,
            generation,
            thread: Some(thread),
        })
    }

    /// Closes the inbox, which ends the worker loop, and waits for the thread.
    pub(super) fn stop(mut self) {
        drop(self.jobs);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Closes the inbox and lets the thread go without waiting: it is stuck in a native call or
    /// parked at a memory cap, and ends (if ever) on its own.
    pub(super) fn abandon(mut self) {
        drop(self.jobs);
        drop(self.thread.take());
    }
}

/// A task loaded on this worker: its program and its models.
struct Loaded {
    program: Program,
    models: Models,
    limits: Limits,
}

/// What runs a task: a Python interpreter or a WASM module.
enum Program {
    // Boxed: the interpreter is large, and both kinds live in one map.
    Python(Box<PythonTask>),
    Wasm(WasmTask),
}

impl Loaded {
    fn load(
        code: &TaskCode,
        memory: Arc<TaskMemory>,
        watchdog: &Watchdog,
    ) -> Result<Loaded, VmError> {
        let program = match &code.wasm {
            Some(module) => {
                let limits = WasmLimits {
                    deadline: code.limits.deadline,
                    memory_bytes: usize::try_from(code.limits.memory_bytes).unwrap_or(usize::MAX),
                    ..WasmLimits::default()
                };
                Program::Wasm(WasmTask::load(&code.key, module, limits)?)
            }
            None => Program::Python(Box::new(PythonTask::load(code, memory, watchdog)?)),
        };
        Ok(Loaded {
            program,
            models: Models::new(&code.models),
            limits: code.limits,
        })
    }

    fn run(
        &mut self,
        key: &str,
        context: &Value,
        state: &dyn StateStore,
        watchdog: &Watchdog,
    ) -> Result<RunOutput, VmError> {
        let max_output = self.limits.max_output_bytes;
        let mut host = RunHost::new(key, context, state, &mut self.models, max_output);
        match &self.program {
            Program::Python(python) => python.call(&mut host, watchdog),
            Program::Wasm(wasm) => {
                let (records, logs) = with_log(self.limits.max_log_bytes, || {
                    let returned = wasm.call(&mut host)?;
                    host.finish(returned)
                });
                Ok(RunOutput {
                    records: records?,
                    logs,
                    state: host.take_state_writes(),
                })
            }
        }
    }
}

fn worker_loop(inbox: Receiver<Job>, watchdog: &Watchdog, state: &dyn StateStore) {
    crate::sandbox::warm_up();
    let mut tasks: HashMap<String, Loaded> = HashMap::new();
    while let Ok(job) = inbox.recv() {
        match job {
            Job::Load {
                code,
                memory,
                reply,
            } => {
                let key = code.key.clone();
                let loaded = guarded(&key, || Loaded::load(&code, memory, watchdog));
                let _ = reply.send(loaded.map(|task| {
                    tasks.insert(key, task);
                }));
            }
            Job::Run {
                key,
                context,
                reply,
            } => {
                let result = match tasks.get_mut(&key) {
                    Some(task) => guarded(&key, || task.run(&key, &context, state, watchdog)),
                    None => Err(VmError::NotLoaded(key.clone())),
                };
                if matches!(result, Err(VmError::Panicked(_))) {
                    // The interpreter was interrupted mid-operation; its state cannot be trusted.
                    tasks.remove(&key);
                }
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
