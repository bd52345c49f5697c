//! WASM tasks on wasmtime: one compiled module per task, a fresh instance per run.
//!
//! # Guest ABI (what a task compiles against)
//!
//! A task is a core WebAssembly module (binary or WAT text) that **exports**:
//!
//! - `memory`: its (32-bit) linear memory; every pointer below is an offset into it;
//! - `run: () -> i32`: called once per run; `0` means success, any other value fails the run
//!   with [`VmError::GuestFailed`] carrying that code.
//!
//! It may **import** from module `walle` (and nothing else; an unknown import fails the load).
//! Pointers and lengths are `i32` read as unsigned; every range is checked against the memory
//! and a bad one ends the run with [`VmError::BadGuestArgument`]. Data is UTF-8 JSON text. A
//! function that fills a guest buffer (`out_ptr`, `out_cap`) returns the number of bytes
//! written, or `-needed` when the buffer is too small (nothing is written; call again with at
//! least `needed` bytes). The whole buffer `out_ptr..out_ptr+out_cap` must lie in memory.
//!
//! | import | returns |
//! |---|---|
//! | `context_len() -> i32` | size of the trigger context's JSON text |
//! | `context_read(out_ptr, out_cap) -> i32` | the context JSON: bytes written, or `-needed` |
//! | `log(level, ptr, len)` | level 0 debug, 1 info, 2 warn, 3 error; past the log cap lines are counted, not kept |
//! | `upload(ptr, len) -> i32` | `0`; the record (a JSON value) is queued; past the output cap the run fails |
//! | `state_get(key_ptr, key_len, out_ptr, out_cap) -> i32` | `0` if absent (JSON text is never empty), else bytes written, or `-needed` |
//! | `state_set(key_ptr, key_len, val_ptr, val_len) -> i32` | `0`; `val_len == 0` deletes the key |
//! | `nn_run(name_ptr, name_len, in_ptr, in_len, out_ptr, out_cap) -> i32` | runs the bundle's model `name`: bytes of output JSON written, or `-needed` |
//!
//! `nn_run` takes `{"<input>": {"shape": [..], "data": [..]}, ..}` (f32 data, row-major) and
//! writes the model's outputs in the same form. When it answers `-needed` the outputs are
//! discarded, so a retry runs the model again: size the buffer for the model's outputs.
//!
//! Records reach the cloud only through `upload`: [`WasmTask::call`] returns no records of its
//! own, so a caller ends the run with [`RunHost::finish`] just as for a Python task.
//!
//! # Limits
//!
//! Each run gets a fresh store and instance (a run cannot leave state in memory for the next;
//! `walle.state` is the way to keep something) and runs under [`WasmLimits`]:
//!
//! - **fuel**: an instruction budget, so a busy loop ends with [`VmError::FuelExhausted`];
//! - **deadline**: wall time, enforced by epoch interruption. One ticker thread per process
//!   advances the shared engine's epoch every [`TICK`] while any run is in progress (it sleeps
//!   when none is); a run past its deadline ends with [`VmError::DeadlineExceeded`] at its next
//!   loop back-edge or function entry, whatever the fuel left. Time inside a host call (a long
//!   `nn_run`) is counted but not interrupted;
//! - **memory**: growing linear memory (or declaring an initial memory) past the limit ends the
//!   run with [`VmError::MemoryLimit`] rather than returning -1, the same budget rule as a
//!   Python task. One memory, one instance and a few small tables at most.

mod imports;
mod sandbox;

use std::ptr::NonNull;
use std::time::Duration;

use wasmtime::{
    Engine, ExternType, InstancePre, Linker, Module, Store, Trap, ValType, WasmBacktrace,
};

use crate::VmError;
use crate::host::RunHost;
use imports::{Imports, RunState};
pub use sandbox::TICK;

/// Per-run limits of a WASM task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmLimits {
    /// Fuel (roughly, wasm instructions) one run may burn.
    pub fuel: u64,
    /// Wall time one run may take.
    pub deadline: Duration,
    /// Largest linear memory a run may have, in bytes.
    pub memory_bytes: usize,
}

impl Default for WasmLimits {
    /// One billion instructions, 5 s, 64 MiB.
    fn default() -> Self {
        WasmLimits {
            fuel: 1_000_000_000,
            deadline: Duration::from_secs(5),
            memory_bytes: 64 << 20,
        }
    }
}

/// One WASM task: its compiled, import-checked module, ready to instantiate per run.
pub struct WasmTask {
    key: String,
    limits: WasmLimits,
    engine: Engine,
    pre: InstancePre<RunState>,
}

impl std::fmt::Debug for WasmTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmTask")
            .field("key", &self.key)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl WasmTask {
    /// Compiles `wasm_or_wat` (binary or text) for task `key` and checks its imports and exports.
    pub fn load(key: &str, wasm_or_wat: &[u8], limits: WasmLimits) -> Result<WasmTask, VmError> {
        let engine = sandbox::engine().map_err(|message| VmError::WasmCompile {
            task: key.to_owned(),
            message,
        })?;
        let module = Module::new(&engine, wasm_or_wat).map_err(|e| VmError::WasmCompile {
            task: key.to_owned(),
            message: format!("{e:#}"),
        })?;
        check_exports(key, &module)?;
        let mut linker = Linker::new(&engine);
        imports::define(&mut linker).map_err(|e| VmError::WasmLink {
            task: key.to_owned(),
            message: format!("defining the walle imports: {e:#}"),
        })?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| VmError::WasmLink {
                task: key.to_owned(),
                message: format!("{e:#}"),
            })?;
        Ok(WasmTask {
            key: key.to_owned(),
            limits,
            engine,
            pre,
        })
    }

    /// The task's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The limits each run gets.
    pub fn limits(&self) -> WasmLimits {
        self.limits
    }

    /// One run in a fresh instance: calls `run` with `host` behind the `walle` imports. Returns
    /// no records of its own (they are uploaded through `host`); see the module doc.
    pub fn call(&self, host: &mut RunHost<'_>) -> Result<Vec<serde_json::Value>, VmError> {
        let host: &mut dyn Imports = host;
        // SAFETY: the store holding this pointer is created and dropped inside this function
        // (see `RunState::host`), so it never outlives the `&mut RunHost` borrow.
        let host = unsafe { imports::erase(NonNull::from(host)) };
        let _running = sandbox::Running::start().map_err(|e| self.trap(e))?;
        let mut store = self.store(host)?;
        let code = self.run_in(&mut store).map_err(|e| self.run_error(e))?;
        drop(store);
        match code {
            0 => Ok(Vec::new()),
            code => Err(VmError::GuestFailed {
                task: self.key.clone(),
                code,
            }),
        }
    }

    fn store(&self, host: NonNull<dyn Imports>) -> Result<Store<RunState>, VmError> {
        let state = RunState::new(host, sandbox::Limiter::new(&self.key, self.limits));
        let mut store = Store::try_new(&self.engine, state)
            .map_err(|e| self.trap(format!("creating the store: {e:#}")))?;
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| self.trap(format!("setting fuel: {e:#}")))?;
        store.set_epoch_deadline(sandbox::deadline_ticks(self.limits.deadline));
        store.epoch_deadline_trap();
        Ok(store)
    }

    fn run_in(&self, store: &mut Store<RunState>) -> wasmtime::Result<i32> {
        let instance = self.pre.instantiate(&mut *store)?;
        let run = instance.get_typed_func::<(), i32>(&mut *store, "run")?;
        run.call(&mut *store, ())
    }

    /// The run's error: a host error carried through the trap as itself, else what the trap was.
    fn run_error(&self, error: wasmtime::Error) -> VmError {
        if let Some(error) = error.downcast_ref::<VmError>() {
            return error.clone();
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => VmError::FuelExhausted {
                task: self.key.clone(),
                fuel: self.limits.fuel,
            },
            Some(Trap::Interrupt) => VmError::DeadlineExceeded {
                task: self.key.clone(),
                deadline_ms: duration_ms(self.limits.deadline),
            },
            _ => self.trap(trap_message(&error)),
        }
    }

    fn trap(&self, message: String) -> VmError {
        VmError::Trap {
            task: self.key.clone(),
            message,
        }
    }
}

/// What trapped and where: the error chain without wasmtime's full backtrace (a stack overflow
/// would list thousands of frames), then the innermost wasm function.
fn trap_message(error: &wasmtime::Error) -> String {
    let backtrace = error.downcast_ref::<WasmBacktrace>();
    // The backtrace is attached as a context, so it is found among the causes by its text.
    let backtrace_text = backtrace.map(ToString::to_string);
    let causes: Vec<String> = error
        .chain()
        .map(ToString::to_string)
        .filter(|cause| Some(cause) != backtrace_text.as_ref())
        .collect();
    let mut message = causes.join(": ");
    if let Some(frame) = backtrace.and_then(|b| b.frames().first()) {
        let name = frame.func_name().map_or_else(
            || format!("function {}", frame.func_index()),
            |name| format!("function {name}"),
        );
        let offset = frame
            .module_offset()
            .map_or_else(String::new, |o| format!(" at byte {o:#x}"));
        message.push_str(&format!(" (in {name}{offset})"));
    }
    message
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Checks that the module exports `memory` (32-bit) and `run: () -> i32`, so that a wrong
/// module fails at load rather than on every run.
fn check_exports(key: &str, module: &Module) -> Result<(), VmError> {
    let missing = |export: &str, expected: &str| VmError::MissingExport {
        task: key.to_owned(),
        export: export.to_owned(),
        expected: expected.to_owned(),
    };
    match module.get_export("memory") {
        Some(ExternType::Memory(memory)) if !memory.is_64() && !memory.is_shared() => {}
        _ => return Err(missing("memory", "a 32-bit, unshared linear memory")),
    }
    match module.get_export("run") {
        Some(ExternType::Func(run))
            if run.params().len() == 0
                && run.results().len() == 1
                && run.results().all(|r| matches!(r, ValType::I32)) => {}
        _ => return Err(missing("run", "a function () -> i32")),
    }
    Ok(())
}
