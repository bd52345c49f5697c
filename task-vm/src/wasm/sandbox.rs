//! The process-wide wasmtime engine (fuel and epoch interruption on), its epoch ticker, and the
//! per-run resource limiter.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, ResourceLimiter};

use super::WasmLimits;
use crate::VmError;

/// How often the ticker advances the epoch: the granularity of WASM deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// Tables a run may have, and elements per table: enough for a compiled C/Rust guest's
/// indirect-call table, small enough not to matter for memory.
const MAX_TABLES: usize = 4;
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The engine every WASM task shares. One engine means one epoch counter, so a single ticker
/// thread serves every task; compiled modules are tied to the engine that compiled them.
pub(super) fn engine() -> Result<Engine, String> {
    shared().map(|shared| shared.engine.clone())
}

struct Shared {
    engine: Engine,
    /// Runs in progress; the ticker sleeps while there are none, so an idle device is not
    /// woken a hundred times a second.
    running: Mutex<usize>,
    started: Condvar,
}

fn shared() -> Result<&'static Shared, String> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let shared = SHARED
        .get_or_init(new_shared)
        .as_ref()
        .map_err(Clone::clone)?;
    start_ticker(shared)?;
    Ok(shared)
}

fn new_shared() -> Result<Shared, String> {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    let engine = Engine::new(&config).map_err(|e| format!("cannot start wasmtime: {e:#}"))?;
    Ok(Shared {
        engine,
        running: Mutex::new(0),
        started: Condvar::new(),
    })
}

/// Starts the epoch ticker once (it lives as long as the process).
fn start_ticker(shared: &'static Shared) -> Result<(), String> {
    static TICKER: OnceLock<Result<(), String>> = OnceLock::new();
    TICKER
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("walle-wasm-epoch".into())
                .spawn(move || tick(shared))
                .map(drop)
                .map_err(|e| format!("cannot start the WASM epoch ticker thread: {e}"))
        })
        .clone()
}

fn tick(shared: &Shared) {
    loop {
        let running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
        let running = shared
            .started
            .wait_while(running, |n| *n == 0)
            .unwrap_or_else(|p| p.into_inner());
        drop(running);
        shared.engine.increment_epoch();
        std::thread::sleep(TICK);
    }
}

/// Marks a run in progress (so the ticker ticks) until dropped.
pub(super) struct Running(&'static Shared);

impl Running {
    pub(super) fn start() -> Result<Running, String> {
        let shared = shared()?;
        *shared.running.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        shared.started.notify_one();
        Ok(Running(shared))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        *running = running.saturating_sub(1);
    }
}

/// Epoch ticks for a deadline: rounded up, plus one because the run may start just before a
/// tick (so a run gets at least `deadline`, at most one tick more).
pub(super) fn deadline_ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_nanos().div_ceil(TICK.as_nanos()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX - 1) + 1
}

/// Caps one run's memories and tables. Refusing memory fails the run with
/// [`VmError::MemoryLimit`] (carried through wasmtime as the error) rather than answering -1.
pub(super) struct Limiter {
    task: String,
    memory_bytes: usize,
}

impl Limiter {
    pub(super) fn new(task: &str, limits: WasmLimits) -> Limiter {
        Limiter {
            task: task.to_owned(),
            memory_bytes: limits.memory_bytes,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired <= self.memory_bytes {
            return Ok(true);
        }
        Err(wasmtime::Error::new(VmError::MemoryLimit {
            task: self.task.clone(),
            requested: desired as u64,
            limit: self.memory_bytes as u64,
        }))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        1
    }
}
