//! Crash points: the fault-injection hook the crash tests use to kill the cloud or a device at an
//! exact moment (e.g. after the cloud committed an upload but before it answered).
//!
//! A crash point does nothing unless the environment variable `WALLE_CRASH_AT` names it (as
//! `name` or `name:N` for its N-th passage); then the process aborts there, as `kill -9` would,
//! without unwinding or flushing anything.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The armed point and how many passages to let through first, read once from the environment.
static ARMED: LazyLock<Option<(String, u64)>> = LazyLock::new(|| {
    let spec = std::env::var("WALLE_CRASH_AT").ok()?;
    let (name, nth) = match spec.split_once(':') {
        Some((name, nth)) => (name.to_owned(), nth.parse().unwrap_or(1)),
        None => (spec, 1),
    };
    Some((name, nth))
});
static PASSED: AtomicU64 = AtomicU64::new(0);

/// Aborts the process here if `WALLE_CRASH_AT` names this point and this is its N-th passage.
pub fn crash_point(name: &str) {
    let Some((armed, nth)) = ARMED.as_ref() else {
        return;
    };
    if armed != name {
        return;
    }
    if PASSED.fetch_add(1, Ordering::SeqCst) + 1 >= *nth {
        eprintln!("walle: crash point `{name}` reached; aborting (WALLE_CRASH_AT)");
        std::process::abort();
    }
}
