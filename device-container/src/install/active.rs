//! The table of active task versions: written by [`Versions`](super::Versions) only (install,
//! switch, remove), read by everyone (the intake for run limits, the runner for what to run,
//! timers, status). Readers get copies; no lock is held outside this module.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::locks::{read, write};

use super::InstalledTask;

/// Task name → its active version.
#[derive(Clone, Default)]
pub(crate) struct ActiveTasks(Arc<RwLock<HashMap<String, InstalledTask>>>);

impl ActiveTasks {
    /// The active version of `task`, if any.
    pub(crate) fn get(&self, task: &str) -> Option<InstalledTask> {
        read(&self.0).get(task).cloned()
    }

    /// Every active version, in no particular order.
    pub(crate) fn all(&self) -> Vec<InstalledTask> {
        read(&self.0).values().cloned().collect()
    }

    /// Calls `f` with the table, for readers that must not copy every version.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&HashMap<String, InstalledTask>) -> R) -> R {
        f(&read(&self.0))
    }

    /// Makes `installed` the active version of its task; returns the one it replaces.
    pub(super) fn insert(&self, installed: InstalledTask) -> Option<InstalledTask> {
        write(&self.0).insert(installed.task().to_owned(), installed)
    }

    /// Removes `task`; returns its version.
    pub(super) fn remove(&self, task: &str) -> Option<InstalledTask> {
        write(&self.0).remove(task)
    }
}
