//! Walle's thread-level task VM.
//!
//! A [`VmPool`] is a fixed set of worker threads. Each loaded task gets its **own** RustPython
//! interpreter, created on one worker thread and kept warm there; interpreters are never shared
//! between tasks and there is no global lock, so tasks on different workers run in parallel.
//!
//! The interpreter is built without host access (`rustpython-vm` without `host_env` and without
//! the standard library): there is no `os`, no file, socket or subprocess module and no import
//! from the filesystem. A task is a script defining a handler function; each run calls it with
//! the trigger context (a JSON-like dict) and its return value becomes the run's output records.
//!
//! This crate runs code; it must not know about networks, bundles on disk or the cloud.

mod convert;
mod pool;
mod python;

pub use pool::VmPool;

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
    /// Largest total JSON size of the records one run may return.
    pub max_output_bytes: u64,
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
    #[error("task {task}: handler returned an unsendable result: {reason}")]
    BadResult { task: String, reason: String },
    #[error("task {task}: output is {size} bytes, more than its {max}-byte limit")]
    OutputTooLarge { task: String, size: u64, max: u64 },
    #[error("task {0} is not loaded")]
    NotLoaded(String),
    #[error("task {0}: the interpreter panicked; the run was abandoned")]
    Panicked(String),
    #[error("VM worker {0} has stopped")]
    WorkerGone(usize),
    #[error("VM pool: {0}")]
    Pool(String),
}

#[cfg(test)]
mod tests;
