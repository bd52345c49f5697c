//! Install: everything that makes a task version the active one, in one place, called by the
//! cloud sync and the local rollback alike (both in `activation`) and at start.
//!
//! - [`disk`]: verified, atomic unpacking of bundles and the active/previous pointers on disk
//!   ([`Installer`]).
//! - [`Versions`] (in `switch`): loading a version into the VM, moving its triggers and feature
//!   windows (through [`Triggers`], which the intake implements), switching the pointer, and
//!   unloading the version it replaces; or, if any step fails, changing nothing.
//! - [`ActiveTasks`]: which version of each task is active. Only this module writes it; the
//!   intake, the runner and status read it.
//! - [`cache`]: the bundle cache's disk budget. [`code`]: a version as the VM loads it.

mod active;
pub mod cache;
pub mod code;
mod disk;
mod switch;

pub(crate) use active::ActiveTasks;
pub use disk::{InstallError, InstalledTask, Installer};
pub(crate) use switch::{SwitchError, Triggers, Versions};
