//! A task version as the VM loads it ([`TaskCode`]), built from its manifest and files wherever
//! they are: an unpacked bundle on the device's disk, or a bundle in memory (`walle task test`).

use std::sync::Arc;

use walle_proto::manifest::{Runtime, TaskManifest};
use walle_vm::{Limits, TaskCode};

/// The VM's form of a task version. `read` returns a file of the bundle by its path;
/// `python_files` are the bundle's files the entry script may import (others are ignored).
pub fn task_code(
    key: String,
    manifest: &TaskManifest,
    read: impl Fn(&str) -> Result<Vec<u8>, String>,
    python_files: &[(String, Vec<u8>)],
) -> Result<TaskCode, String> {
    let entry = read(&manifest.entry)?;
    let (source, wasm) = match manifest.runtime {
        Runtime::Wasm => (String::new(), Some(Arc::new(entry))),
        Runtime::Python => (
            String::from_utf8(entry)
                .map_err(|_| format!("entry script {} is not UTF-8 text", manifest.entry))?,
            None,
        ),
    };
    let modules = walle_vm::bundled_modules(
        &key,
        &manifest.entry,
        python_files
            .iter()
            .map(|(path, bytes)| (path.as_str(), bytes.as_slice())),
    )
    .map_err(|e| e.to_string())?;
    let models = manifest
        .models
        .iter()
        .map(|path| {
            Ok((
                walle_vm::host::model_name(path).to_owned(),
                Arc::new(read(path)?),
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(TaskCode {
        key,
        entry_path: manifest.entry.clone(),
        source,
        handler: manifest.handler.clone(),
        modules,
        limits: Limits::declared(
            manifest.limits.max_output_bytes,
            manifest.limits.deadline_ms,
            manifest.limits.memory_bytes,
            manifest.limits.max_log_bytes,
        ),
        models,
        wasm,
    })
}
