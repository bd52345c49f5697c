//! Making a version active: the VM, the triggers, the pointer and the table, together or not at
//! all.
//!
//! A version is loaded into the VM first (its module-level code runs there and may fail), then
//! its triggers and feature windows replace the old version's, then the pointer on disk
//! switches, and only then does the table of active versions name it and the old version leave
//! the VM. If loading, the triggers or the switch fails, the previous version stays active with
//! its own triggers, and the new one is unloaded.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use walle_proto::manifest::TaskManifest;
use walle_vm::{VmError, VmPool};

use super::{ActiveTasks, InstallError, InstalledTask, Installer};

/// Where the active versions' triggers and feature windows live (the intake).
pub(crate) trait Triggers: Send + Sync {
    /// Installs (or replaces) `task`'s triggers and features; if refused, nothing changes.
    fn install(&self, task: &TaskManifest) -> Result<(), walle_pipeline::tasks::InstallError>;
    /// Removes a task's triggers and features.
    fn remove(&self, task: &str);
}

/// Why a version could not be made active (the previous one, if any, still is).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SwitchError {
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// The version's files do not make a task the VM can load.
    #[error("{0}")]
    Code(String),
    #[error("VM load worker failed: {0}")]
    Worker(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Vm(VmError),
    #[error(transparent)]
    Triggers(walle_pipeline::tasks::InstallError),
    #[error(transparent)]
    Pointer(InstallError),
}

/// Switches task versions: owns nothing but the handles of what a switch touches.
#[derive(Clone)]
pub(crate) struct Versions {
    vm: Arc<VmPool>,
    triggers: Arc<dyn Triggers>,
    active: ActiveTasks,
}

impl Versions {
    pub(crate) fn new(vm: Arc<VmPool>, triggers: Arc<dyn Triggers>, active: ActiveTasks) -> Self {
        Versions {
            vm,
            triggers,
            active,
        }
    }

    /// How many versions may load at once: one per VM worker, so that a version whose
    /// module-level code runs to its deadline holds up only its own install.
    pub(crate) fn loads_at_once(&self) -> usize {
        self.vm.threads()
    }

    /// The table of active versions this switches.
    pub(crate) fn active(&self) -> &ActiveTasks {
        &self.active
    }

    /// Makes a newly unpacked version the active one (see the module doc).
    pub(crate) async fn activate(
        &self,
        installer: &Installer,
        installed: InstalledTask,
    ) -> Result<(), SwitchError> {
        self.switch_to(installer, installed, |installer, installed| {
            installer.activate(installed)
        })
        .await
    }

    /// Loads `installed` into the VM, runs `switch_pointer` (which makes it the active version
    /// on disk), then moves triggers and runs to it and unloads the version it replaces. If
    /// loading or the switch fails, nothing changes.
    pub(crate) async fn switch_to(
        &self,
        installer: &Installer,
        installed: InstalledTask,
        switch_pointer: impl FnOnce(&Installer, &InstalledTask) -> Result<(), InstallError>,
    ) -> Result<(), SwitchError> {
        self.load(&installed).await?;
        let manifest = &installed.manifest.task;
        let switched = self
            .triggers
            .install(manifest)
            .map_err(SwitchError::Triggers)
            .and_then(|()| switch_pointer(installer, &installed).map_err(SwitchError::Pointer));
        if let Err(e) = switched {
            self.vm.unload(&installed.vm_key());
            // Back to the triggers and features of the version that stays active, if any.
            match self.active.get(&manifest.name) {
                Some(active) => {
                    let _ = self.triggers.install(&active.manifest.task);
                }
                None => self.triggers.remove(&manifest.name),
            }
            return Err(e);
        }
        let key = installed.vm_key();
        if let Some(previous) = self.active.insert(installed)
            && previous.vm_key() != key
        {
            self.vm.unload(&previous.vm_key());
        }
        Ok(())
    }

    /// Takes `task` out of service: its triggers, its VM interpreter and its files. Returns the
    /// version that was active, if one was.
    pub(crate) fn remove(&self, installer: &Installer, task: &str) -> Option<InstalledTask> {
        let previous = self.active.remove(task)?;
        self.triggers.remove(task);
        self.vm.unload(&previous.vm_key());
        if let Err(e) = installer.remove(task) {
            tracing::warn!(task, error = %e, "removing task files failed");
        }
        Some(previous)
    }

    /// Makes the versions that were active before a restart active again, several at once (one
    /// per VM worker); a version that no longer loads stays inactive and is logged.
    pub(crate) async fn restore(&self, installer: &Installer) {
        let installed = match installer.all_current() {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "cannot read installed tasks");
                return;
            }
        };
        let loaded: Vec<(InstalledTask, Result<(), SwitchError>)> =
            futures::stream::iter(installed)
                .map(|task| async move {
                    let result = self.load(&task).await;
                    (task, result)
                })
                .buffer_unordered(self.vm.threads())
                .collect()
                .await;
        for (task, result) in loaded {
            if let Err(e) = result {
                tracing::error!(task = %task.vm_key(), error = %e, "installed task failed to load");
                continue;
            }
            match self.triggers.install(&task.manifest.task) {
                Ok(()) => {
                    self.active.insert(task);
                }
                Err(e) => {
                    self.vm.unload(&task.vm_key());
                    tracing::error!(task = %task.vm_key(), error = %e, "installed task's triggers or features refused");
                }
            }
        }
    }

    /// Loads a version into the VM (on a blocking worker: its module-level code runs there).
    async fn load(&self, installed: &InstalledTask) -> Result<(), SwitchError> {
        let read = |path: &str| {
            let file = installed.dir.join(path);
            std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))
        };
        // A language model stays in the installed bundle, memory-mapped by the VM.
        let language_model = |path: &str| {
            let file = installed.dir.join(path);
            if file.is_file() {
                Ok(walle_vm::LlmSource::File(file))
            } else {
                Err(format!("the installed bundle has no {}", file.display()))
            }
        };
        let files = python_files(&installed.dir)?;
        let code = super::code::task_code(
            installed.vm_key(),
            &installed.manifest.task,
            read,
            &files,
            language_model,
        )
        .map_err(SwitchError::Code)?;
        let vm = self.vm.clone();
        tokio::task::spawn_blocking(move || vm.load(code))
            .await
            .map_err(SwitchError::Worker)?
            .map_err(SwitchError::Vm)
    }
}

/// The `.py` files of an unpacked bundle, as (path relative to `dir` with `/`, content).
fn python_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, SwitchError> {
    let fail = |action, path: String| {
        move |source| SwitchError::File {
            action,
            path,
            source,
        }
    };
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = pending.pop() {
        let listed = || path.display().to_string();
        let entries = std::fs::read_dir(&path).map_err(fail("list", listed()))?;
        for entry in entries {
            let entry = entry.map_err(fail("list", listed()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            let kind = entry.file_type().map_err(fail("stat", rel.clone()))?;
            if kind.is_dir() {
                pending.push((entry.path(), format!("{rel}/")));
            } else if kind.is_file() && name.ends_with(".py") {
                let bytes = std::fs::read(entry.path()).map_err(fail("read", rel.clone()))?;
                files.push((rel, bytes));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_files_are_found_in_subdirectories_with_bundle_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("main.py"), "x = 1").unwrap();
        std::fs::write(dir.path().join("pkg/util.py"), "y = 2").unwrap();
        std::fs::write(dir.path().join("walle.toml"), "").unwrap();
        let mut files = python_files(dir.path()).unwrap();
        files.sort();
        assert_eq!(
            files,
            vec![
                ("main.py".to_owned(), b"x = 1".to_vec()),
                ("pkg/util.py".to_owned(), b"y = 2".to_vec()),
            ]
        );
    }
}
