//! Locking that survives a panicking holder, and the crate's lock order.
//!
//! Each component keeps its state behind its own locks, and every lock is a leaf: no code holds
//! one while it takes another, with one exception. The run queue (`runner::RunQueue`) writes a
//! run to the outbox's journal (`uplink::Outgoing`) while it holds the run's place, so that a
//! run is never queued without its journal entry nor journalled without its place:
//!
//! ```text
//! runner::RunQueue (scheduler)  ─►  uplink::Outgoing (outbox)
//! ```
//!
//! A new nested lock must follow the data flow (intake ─► runner ─► uplink, activation ─►
//! install ─► intake's triggers) and be added here; one against it could deadlock.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks a lock, recovering the data if a panicking thread poisoned it.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks a lock, recovering the data if a panicking thread poisoned it.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
