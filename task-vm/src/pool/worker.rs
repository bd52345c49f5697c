//! One worker thread: the interpreters of the tasks placed on it, and the jobs it is sent.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Instant;

use serde_json::Value;

use crate::alloc::TaskMemory;
use crate::host::{Models, RunHost, StateStore, with_log};
use crate::limits::Limits;
use crate::pool::RunOutput;
use crate::pool::queue::JobQueue;
use crate::python::PythonTask;
use crate::wasm::{WasmLimits, WasmTask};
use crate::watchdog::Watchdog;
use crate::{TaskCode, VmError};

/// Stack of a worker thread. Python recursion runs on the native stack, and RustPython's
/// recursion limit (and its stack-depth check) must trip long before the stack ends; the space
/// is only reserved, pages are used as needed.
const WORKER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Work for a worker thread.
pub(super) enum Job {
    Load {
        code: TaskCode,
        memory: Arc<TaskMemory>,
        reply: Sender<Answer<()>>,
    },
    Run {
        key: String,
        context: Value,
        reply: Sender<Answer<RunOutput>>,
    },
    Unload {
        key: String,
    },
}

/// What a worker tells the caller of a load or run: when it started executing, then its result.
pub(super) enum Answer<T> {
    /// Sent by the thread serving the queue as `generation`.
    Started {
        at: Instant,
        generation: u64,
    },
    Done(Result<T, VmError>),
}

/// Starts the thread serving `queue` as `generation`.
pub(super) fn spawn(
    index: usize,
    generation: u64,
    queue: &Arc<JobQueue>,
    watchdog: &Arc<Watchdog>,
    state: &Arc<dyn StateStore>,
) -> Result<JoinHandle<()>, VmError> {
    let (queue, watchdog, state) = (queue.clone(), watchdog.clone(), state.clone());
    std::thread::Builder::new()
        .name(format!("walle-vm-{index}"))
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || serve(&queue, generation, &watchdog, state.as_ref()))
        .map_err(|e| VmError::Pool(format!("cannot start worker thread: {e}")))
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
            models: Models::new(&code.models).with_llms(&code.llms),
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

/// Serves the queue until this generation is retired or the queue closes, then drops the
/// interpreters it held and gives their memory back to the system.
fn serve(queue: &JobQueue, generation: u64, watchdog: &Watchdog, state: &dyn StateStore) {
    crate::sandbox::warm_up();
    let mut tasks: HashMap<String, Loaded> = HashMap::new();
    while let Some(job) = queue.next(generation) {
        match job {
            Job::Load {
                code,
                memory,
                reply,
            } => {
                let _ = reply.send(Answer::Started {
                    at: Instant::now(),
                    generation,
                });
                let key = code.key.clone();
                let loaded = guarded(&key, || Loaded::load(&code, memory, watchdog));
                let _ = reply.send(Answer::Done(loaded.map(|task| {
                    tasks.insert(key, task);
                })));
            }
            Job::Run {
                key,
                context,
                reply,
            } => {
                let _ = reply.send(Answer::Started {
                    at: Instant::now(),
                    generation,
                });
                let result = match tasks.get_mut(&key) {
                    Some(task) => guarded(&key, || task.run(&key, &context, state, watchdog)),
                    None => Err(VmError::NotLoaded(key.clone())),
                };
                if matches!(result, Err(VmError::Panicked(_))) {
                    // The interpreter was interrupted mid-operation; its state cannot be trusted.
                    tasks.remove(&key);
                }
                if matches!(result, Err(VmError::MemoryExceeded { .. })) {
                    // The script let go of what it held when it unwound.
                    crate::alloc::return_free_memory();
                }
                let _ = reply.send(Answer::Done(result));
            }
            Job::Unload { key } => {
                if tasks.remove(&key).is_some() {
                    crate::alloc::return_free_memory();
                }
            }
        }
    }
    drop(tasks);
    crate::alloc::return_free_memory();
}

/// Runs interpreter work so that a panic inside the VM fails only this job, not the worker.
fn guarded<T>(key: &str, work: impl FnOnce() -> Result<T, VmError>) -> Result<T, VmError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| Err(VmError::Panicked(key.to_owned())))
}
