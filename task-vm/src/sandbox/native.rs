//! Walle's native modules in every task interpreter: `_walle_sandbox` (the import gate, `open`,
//! the log writer) and `time` (clocks only).

use rustpython_vm::builtins::PyModuleDef;
use rustpython_vm::{Context, pymodule};

/// Names of the modules defined here.
pub(super) const NAMES: &[&str] = &["_walle_sandbox", "time"];

pub(super) fn sandbox_module_def(ctx: &Context) -> &'static PyModuleDef {
    _walle_sandbox::module_def(ctx)
}

pub(super) fn time_module_def(ctx: &Context) -> &'static PyModuleDef {
    time::module_def(ctx)
}

#[pymodule]
mod _walle_sandbox {
    use rustpython_vm::builtins::PyStrRef;
    use rustpython_vm::function::FuncArgs;
    use rustpython_vm::{PyResult, VirtualMachine};

    use crate::sandbox::imports::{ImportArgs, gated_import};

    /// `builtins.__import__`: only whitelisted and bundled modules.
    #[pyfunction]
    fn __import__(args: ImportArgs, vm: &VirtualMachine) -> PyResult {
        gated_import(args, vm)
    }

    /// `builtins.open`: tasks have no files.
    #[pyfunction]
    fn open(_args: FuncArgs, vm: &VirtualMachine) -> PyResult {
        Err(vm
            .new_os_subtype_error(
                vm.ctx.exceptions.permission_error.to_owned(),
                None,
                "open() is not available in a Walle task: tasks have no file access",
            )
            .upcast())
    }

    /// Appends printed text to the run's log.
    #[pyfunction]
    fn write(text: PyStrRef) {
        crate::output::write(&text.as_wtf8().to_string_lossy());
    }
}

/// Clocks only: no `sleep` (it would hold the worker), no time-zone or locale access.
#[pymodule]
mod time {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use rustpython_vm::{PyResult, VirtualMachine};

    thread_local! {
        // The monotonic clocks count from the first use on the thread.
        static START: Instant = Instant::now();
    }

    fn since_start() -> std::time::Duration {
        START.with(|start| start.elapsed())
    }

    /// Seconds since the Unix epoch.
    #[pyfunction]
    fn time(vm: &VirtualMachine) -> PyResult<f64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .map_err(|_| vm.new_os_error("the system clock is before 1970"))
    }

    /// Nanoseconds since the Unix epoch.
    #[pyfunction]
    fn time_ns(vm: &VirtualMachine) -> PyResult<u128> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .map_err(|_| vm.new_os_error("the system clock is before 1970"))
    }

    /// Monotonic seconds (arbitrary origin).
    #[pyfunction]
    fn monotonic() -> f64 {
        since_start().as_secs_f64()
    }

    /// Monotonic nanoseconds (arbitrary origin).
    #[pyfunction]
    fn monotonic_ns() -> u128 {
        since_start().as_nanos()
    }

    /// High-resolution monotonic seconds (arbitrary origin).
    #[pyfunction]
    fn perf_counter() -> f64 {
        since_start().as_secs_f64()
    }

    /// High-resolution monotonic nanoseconds (arbitrary origin).
    #[pyfunction]
    fn perf_counter_ns() -> u128 {
        since_start().as_nanos()
    }
}
