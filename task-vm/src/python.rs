//! One task's sandboxed Python interpreter: load the entry script once, call its handler per run.

use rustpython_vm::builtins::PyBaseExceptionRef;
use rustpython_vm::compiler::Mode;
use rustpython_vm::{AsObject, Interpreter, PyObjectRef, Settings, VirtualMachine};
use serde_json::Value;

use crate::convert::{json_to_py, py_to_json};
use crate::{TaskCode, VmError};

/// A warm interpreter holding one task's loaded module. Not `Send`: it lives on one worker thread.
pub(crate) struct PythonTask {
    interpreter: Interpreter,
    handler: PyObjectRef,
    key: String,
    max_output_bytes: u64,
}

/// Interpreter settings for task code: no site import, no environment, no search path. The VM is
/// built without `host_env`, so there is no `os`, file, socket or subprocess module to reach.
fn sandbox_settings() -> Settings {
    let mut settings = Settings::default();
    settings.isolated = true;
    settings.import_site = false;
    settings.ignore_environment = true;
    settings.safe_path = true;
    settings.path_list.clear();
    settings.allow_external_library = false;
    settings
}

impl PythonTask {
    /// Creates an interpreter for the task, runs its entry script and finds its handler.
    pub(crate) fn load(code: &TaskCode) -> Result<PythonTask, VmError> {
        let interpreter = Interpreter::without_stdlib(sandbox_settings());
        let handler = interpreter.enter(|vm| find_handler(vm, code))?;
        Ok(PythonTask {
            interpreter,
            handler,
            key: code.key.clone(),
            max_output_bytes: code.max_output_bytes,
        })
    }

    /// Calls the handler with the trigger context and returns the records it produced.
    pub(crate) fn call(&self, context: &Value) -> Result<Vec<Value>, VmError> {
        let result = self.interpreter.enter(|vm| {
            let arg = json_to_py(vm, context);
            let returned = self
                .handler
                .call((arg,), vm)
                .map_err(|exc| VmError::Raised {
                    task: self.key.clone(),
                    traceback: format_exception(vm, &exc),
                })?;
            py_to_json(vm, &returned).map_err(|reason| VmError::BadResult {
                task: self.key.clone(),
                reason,
            })
        })?;
        let records = match result {
            Value::Null => Vec::new(),
            Value::Array(items) => items,
            other => vec![other],
        };
        let size: usize = records.iter().map(|r| r.to_string().len()).sum();
        if size as u64 > self.max_output_bytes {
            return Err(VmError::OutputTooLarge {
                task: self.key.clone(),
                size: size as u64,
                max: self.max_output_bytes,
            });
        }
        Ok(records)
    }
}

fn find_handler(vm: &VirtualMachine, code: &TaskCode) -> Result<PyObjectRef, VmError> {
    let compiled = vm
        .compile(&code.source, Mode::Exec, code.entry_path.clone())
        .map_err(|e| VmError::Compile {
            task: code.key.clone(),
            message: e.to_string(),
        })?;
    let scope = vm.new_scope_with_builtins();
    vm.run_code_obj(compiled, scope.clone())
        .map_err(|exc| VmError::Raised {
            task: code.key.clone(),
            traceback: format_exception(vm, &exc),
        })?;
    let handler = scope
        .globals
        .get_item_opt(code.handler.as_str(), vm)
        .ok()
        .flatten()
        .filter(|h| h.is_callable())
        .ok_or_else(|| VmError::NoHandler {
            task: code.key.clone(),
            handler: code.handler.clone(),
            entry: code.entry_path.clone(),
        })?;
    Ok(handler)
}

fn format_exception(vm: &VirtualMachine, exc: &PyBaseExceptionRef) -> String {
    let mut text = String::new();
    if vm.write_exception(&mut text, exc).is_err() || text.is_empty() {
        text = format!("{}", exc.class().name());
    }
    text.trim_end().to_owned()
}
