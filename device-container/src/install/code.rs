//! A task version as the VM loads it ([`TaskCode`]), built from its manifest and files wherever
//! they are: an unpacked bundle on the device's disk, or a bundle in memory (`walle task test`).

use std::sync::Arc;

use walle_proto::manifest::{Runtime, TaskManifest};
use walle_vm::{Limits, LlmSource, TaskCode};

/// The VM's form of a task version. `read` returns a file of the bundle by its path;
/// `python_files` are the bundle's files the entry script may import (others are ignored);
/// `language_model` says where a `.gguf` model of the bundle is (a file to map on a device,
/// bytes in memory for `walle task test`); every other model is ONNX, read into memory.
pub fn task_code(
    key: String,
    manifest: &TaskManifest,
    read: impl Fn(&str) -> Result<Vec<u8>, String>,
    python_files: &[(String, Vec<u8>)],
    language_model: impl Fn(&str) -> Result<LlmSource, String>,
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
    let (gguf, onnx): (Vec<&String>, Vec<&String>) = manifest
        .models
        .iter()
        .partition(|path| path.ends_with(".gguf"));
    let llms = gguf
        .into_iter()
        .map(|path| {
            Ok((
                walle_vm::llm::llm_name(path).to_owned(),
                language_model(path)?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let models = onnx
        .into_iter()
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
        llms,
        wasm,
    })
}
