//! Walle's thread-level task VM.
//!
//! A [`VmPool`] is a fixed set of worker threads. Each loaded task gets its **own** RustPython
//! interpreter, created on one worker thread and kept warm there; interpreters are never shared
//! between tasks and there is no global lock, so tasks on different workers run in parallel.
//! A task is an entry script defining a handler function; each run calls it with the trigger
//! context (a JSON-like dict), its return value becomes the run's output records and what it
//! printed becomes the run's log ([`RunOutput`]).
//!
//! # Sandbox
//!
//! The interpreter is built without host access (`rustpython-vm` without `host_env` and without
//! `stdio`), so the process holds no Python-reachable code for files, sockets, processes or
//! signals. On top of that, each interpreter gets one explicit module table (`sandbox`):
//!
//! * task code may import only [`TASK_IMPORTS`] (`json`, `math`, `re`, `collections`,
//!   `itertools`, `functools`, `heapq`, `bisect`, `random`, `time`) and the task's own bundled
//!   modules ([`TaskCode::modules`]); anything else is an `ImportError` naming the whitelist.
//!   Nothing is ever imported from the filesystem.
//! * the pure-Python halves of those modules come from `rustpython-pylib`'s `Lib/` at build
//!   time (`build.rs`, which also patches `random.py` not to need `os`) and are frozen into the
//!   binary;
//!   the native halves come from `rustpython-vm` and `rustpython-stdlib` (built without
//!   `host_env`). `time` is Walle's own: clocks only, no `sleep`. So is `re` (`regex`): CPython's
//!   API on a linear-time engine with a backtracking budget, instead of RustPython's port of
//!   `_sre`, which backtracks without bound inside native code.
//! * `open()` raises `PermissionError`; `print()` writes to the run's log; `sys` loses the
//!   functions that could hurt the host process (`setrecursionlimit`, `settrace`, …).
//! * tasks sharing a worker thread share RustPython's built-in type objects;
//!   `type.__subclasses__` only lists the calling task's own classes and the built-in types of
//!   the modules it may import, so one task cannot reach another's objects, nor the VM's own
//!   machinery (`_io`, `ast`, …), through them, and no task may change a built-in type
//!   (`isolation`).
//!
//! # Limits
//!
//! Every load and run is bounded by the task's [`Limits`]; hitting one fails that run (or load)
//! with a [`VmError`] naming the task and the limit, and leaves the worker and every other task
//! working:
//!
//! * **deadline**, counted from when the load or run starts executing (the time it waited in
//!   its worker's queue is reported apart, [`RunTiming`]): a watchdog thread interrupts the
//!   script at its next bytecode boundary, re-arming RustPython's process-wide "signal pending"
//!   flag until the target interpreter has stopped, so another busy interpreter cannot swallow
//!   the interrupt (`watchdog`). Inside native code, where there is no bytecode boundary, the
//!   bounds of `native` stop or refuse the operations a script can make run long (native loops
//!   over iterators and comparisons, big integers, huge allocations, deep parses), regular
//!   expressions run on a bounded engine, and a model run stops between nodes (and refuses a
//!   node whose known output size does not fit in the budget).
//! * **memory**: [`TaskAllocator`], installed as the `#[global_allocator]` by every binary,
//!   charges allocations to the task running on the thread (its models' too); the first
//!   allocation past the budget wakes the watchdog, and the script gets a `MemoryError` at once;
//!   native calls that are given a size are checked before they allocate (`native`); freed
//!   storage RustPython keeps for reuse is dropped at the end of each run (`freelists`) and free
//!   memory is returned to the system after a run that hit its budget. An allocation past twice
//!   the budget parks the thread. A task never holds more than twice its budget; the process
//!   never aborts because of one (`alloc`).
//! * **lost workers**: what nothing bounds (a parked thread, a native call nobody foresaw) is
//!   waited for at most the deadline plus [`ABANDON_GRACE`]; then the worker thread is let go,
//!   a fresh one serves its queue, the other tasks it held are loaded again ahead of their queued
//!   runs, and the culprit gets a strike; at [`QUARANTINE_STRIKES`] it is quarantined
//!   ([`VmError::Quarantined`]). [`VmPool::health`] counts the lost threads still running and the
//!   memory they hold, for the embedding process to restart itself past a threshold (`pool`).
//! * **output** and **log** sizes: output over its cap fails the run; the log is truncated at its
//!   cap with a marker (a chatty script keeps running).
//!
//! WASM tasks ([`WasmTask`], module [`wasm`]) run on wasmtime under fuel, an epoch deadline and a
//! memory limit, with the same host API as `walle` imports.
//!
//! This crate runs code; it must not know about networks, bundles on disk or the cloud.

mod alloc;
mod bindings;
mod convert;
mod freelists;
pub mod host;
mod isolation;
mod limits;
pub mod llm;
mod native;
mod output;
mod pool;
mod python;
mod regex;
mod sandbox;
pub mod syntax;
pub mod wasm;
mod watchdog;

pub use alloc::TaskAllocator;
pub use host::{Level, MemoryState, Models, RunHost, StateStore, StateWrite, task_name};
pub use limits::{Limit, Limits};
pub use llm::LlmSource;
pub use pool::{
    ABANDON_GRACE, PoolHealth, QUARANTINE_STRIKES, RunOutput, RunTiming, TimedRun, VmPool,
};
pub use sandbox::imports::{TASK_IMPORTS, TaskModule, bundled_modules};
pub use syntax::{SyntaxError, check_python};
pub use wasm::{WasmLimits, WasmTask};

use std::sync::Arc;

/// A task's code as the VM loads it.
#[derive(Debug, Clone)]
pub struct TaskCode {
    /// Unique key of the loaded task version, e.g. `ipv-feature@1.0.0`.
    pub key: String,
    /// Path of the entry script in the bundle (used in tracebacks).
    pub entry_path: String,
    /// Source text of the entry script.
    pub source: String,
    /// Function to call per run.
    pub handler: String,
    /// The bundle's other Python modules, importable by the task (see [`bundled_modules`]).
    pub modules: Vec<TaskModule>,
    /// What one load or run may use.
    pub limits: Limits,
    /// The bundle's ONNX models by name (file name without `.onnx`), for `walle.nn.load`.
    pub models: Vec<(String, Arc<Vec<u8>>)>,
    /// The bundle's language models by name (file name without `.gguf`), for `walle.llm.load`.
    pub llms: Vec<(String, LlmSource)>,
    /// For a task with `runtime = "wasm"`: its module (binary or WAT text), run in wasmtime
    /// ([`WasmTask`]) instead of `source` in Python.
    pub wasm: Option<Arc<Vec<u8>>>,
}

impl TaskCode {
    /// A Python task whose entry script (`main.py`) is `source` with handler `run`, and no
    /// bundled modules or models: what tests, benchmarks and the sandbox's warm-up load.
    pub fn python(key: &str, source: &str, limits: Limits) -> TaskCode {
        TaskCode {
            key: key.into(),
            entry_path: "main.py".into(),
            source: source.into(),
            handler: "run".into(),
            modules: Vec::new(),
            limits,
            models: Vec::new(),
            llms: Vec::new(),
            wasm: None,
        }
    }
}

/// Why loading or running a task failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum VmError {
    #[error("task {task}: script does not compile: {message}")]
    Compile { task: String, message: String },
    #[error("task {task}: script raised an exception:\n{traceback}")]
    Raised { task: String, traceback: String },
    #[error("task {task}: entry script {entry} defines no callable `{handler}`")]
    NoHandler {
        task: String,
        handler: String,
        entry: String,
    },
    #[error("task {task}: bundled module {path:?} cannot be loaded: {reason}")]
    BadModule {
        task: String,
        path: String,
        reason: String,
    },
    #[error("task {task}: unusable limits: {reason}")]
    BadLimits { task: String, reason: String },
    #[error("task {task}: handler returned an unsendable result: {reason}")]
    BadResult { task: String, reason: String },
    #[error("task {task}: output is {size} bytes, more than its {max}-byte limit")]
    OutputTooLarge { task: String, size: u64, max: u64 },
    #[error("task {task}: model {model}: {reason}")]
    Model {
        task: String,
        model: String,
        reason: String,
    },
    #[error("task {task}: state key {key:?}: {reason}")]
    State {
        task: String,
        key: String,
        reason: String,
    },
    #[error("task {task}: stopped after exceeding its {deadline_ms} ms deadline")]
    DeadlineExceeded { task: String, deadline_ms: u64 },
    #[error("task {task}: stopped after exceeding its memory budget of {max} bytes")]
    MemoryExceeded { task: String, max: u64 },
    #[error("task {task} is quarantined: {reason}")]
    Quarantined { task: String, reason: String },
    #[error("task {task}: WASM module does not compile: {message}")]
    WasmCompile { task: String, message: String },
    #[error("task {task}: WASM module cannot be linked: {message}")]
    WasmLink { task: String, message: String },
    #[error("task {task}: WASM module exports no `{export}` ({expected})")]
    MissingExport {
        task: String,
        export: String,
        expected: String,
    },
    #[error("task {task}: WASM run failed: {message}")]
    Trap { task: String, message: String },
    #[error("task {task}: ran out of fuel (its budget is {fuel})")]
    FuelExhausted { task: String, fuel: u64 },
    #[error("task {task}: asked for {requested} bytes of memory, more than its {limit}-byte limit")]
    MemoryLimit {
        task: String,
        requested: u64,
        limit: u64,
    },
    #[error("task {task}: walle.{import}: {reason}")]
    BadGuestArgument {
        task: String,
        import: &'static str,
        reason: String,
    },
    #[error("task {task}: run() returned failure code {code}")]
    GuestFailed { task: String, code: i32 },
    #[error("task {0} is not loaded")]
    NotLoaded(String),
    #[error("task {0}: the interpreter panicked; the run was abandoned and the task unloaded")]
    Panicked(String),
    #[error("VM worker {0} has stopped")]
    WorkerGone(usize),
    #[error("VM pool: {0}")]
    Pool(String),
}

impl VmError {
    /// What kind of failure this is, as a stable snake_case label (for failure counts by kind).
    pub fn kind(&self) -> &'static str {
        match self {
            VmError::Compile { .. } | VmError::WasmCompile { .. } => "compile",
            VmError::Raised { .. } => "exception",
            VmError::NoHandler { .. }
            | VmError::MissingExport { .. }
            | VmError::WasmLink { .. } => "no_handler",
            VmError::BadModule { .. } => "bad_module",
            VmError::BadLimits { .. } => "bad_limits",
            VmError::BadResult { .. } | VmError::BadGuestArgument { .. } => "bad_result",
            VmError::OutputTooLarge { .. } => "output_too_large",
            VmError::Model { .. } => "model",
            VmError::State { .. } => "state",
            VmError::DeadlineExceeded { .. } => "deadline",
            VmError::MemoryExceeded { .. } | VmError::MemoryLimit { .. } => "memory",
            VmError::FuelExhausted { .. } => "fuel",
            VmError::Trap { .. } | VmError::GuestFailed { .. } => "trap",
            VmError::Quarantined { .. } => "quarantined",
            VmError::NotLoaded(_) => "not_loaded",
            VmError::Panicked(_) => "panic",
            VmError::WorkerGone(_) | VmError::Pool(_) => "vm",
        }
    }
}

// The unit tests measure memory budgets, so they need the counting allocator too.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: TaskAllocator = TaskAllocator;

#[cfg(test)]
mod tests;
