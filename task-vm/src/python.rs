//! One task's sandboxed Python interpreter: load the entry script once, call its handler per run,
//! each under the task's limits.

use std::sync::Arc;

use rustpython_vm::builtins::PyBaseExceptionRef;
use rustpython_vm::compiler::Mode;
use rustpython_vm::signal::UserSignalSender;
use rustpython_vm::{AsObject, Interpreter, PyObjectRef, VirtualMachine};
use serde_json::Value;

use crate::alloc::{TaskMemory, charge_to};
use crate::bindings;
use crate::convert::{json_to_py, py_to_json};
use crate::host::RunHost;
use crate::limits::{Limit, Limits};
use crate::pool::RunOutput;
use crate::watchdog::Watchdog;
use crate::{TaskCode, VmError, output, sandbox};

/// A warm interpreter holding one task's loaded module. Not `Send`: it lives on one worker thread.
/// Dropping it empties its modules first (`break_cycles`).
pub(crate) struct PythonTask {
    // Dropped before `memory`, and its frees are not charged (no `charge_to` while dropping).
    interpreter: Interpreter,
    interrupt: UserSignalSender,
    handler: PyObjectRef,
    key: String,
    limits: Limits,
    memory: Arc<TaskMemory>,
}

impl Drop for PythonTask {
    fn drop(&mut self) {
        self.break_cycles();
    }
}

impl PythonTask {
    /// Creates an interpreter for the task, runs its entry script and finds its handler.
    pub(crate) fn load(
        code: &TaskCode,
        memory: Arc<TaskMemory>,
        watchdog: &Watchdog,
    ) -> Result<PythonTask, VmError> {
        let sandbox = {
            let _charging = charge_to(&memory);
            sandbox::build(code)
        }
        .map_err(|e| VmError::Pool(format!("task {}: {}", code.key, e.0)))?;
        let armed = watchdog.arm(code.limits.deadline, &memory, &sandbox.interrupt);
        let log = output::capture(code.limits.max_log_bytes);
        let found = {
            let _charging = charge_to(&memory);
            sandbox.interpreter.enter(|vm| {
                bindings::install(vm).map_err(|exc| VmError::Raised {
                    task: code.key.clone(),
                    traceback: format_exception(vm, &exc),
                })?;
                let found = find_handler(vm, code);
                crate::freelists::flush(vm);
                found
            })
        };
        let log = log.finish();
        if !log.is_empty() {
            tracing::debug!(task = %code.key, log = %log, "entry script printed");
        }
        let found = stopped_by(&code.key, &code.limits, armed.finish()).unwrap_or(found);
        tracing::debug!(task = %code.key, bytes = memory.live(), "task loaded");
        Ok(PythonTask {
            interpreter: sandbox.interpreter,
            interrupt: sandbox.interrupt,
            handler: found?,
            key: code.key.clone(),
            limits: code.limits,
            memory,
        })
    }

    /// Breaks the reference cycles of the interpreter's objects before it is dropped.
    ///
    /// RustPython has no cycle collector: a function's `__globals__` is its module's dict, which
    /// holds the function, so without this every module (the task's and the standard ones it
    /// imported) outlived its interpreter, about 1.5 MB per load, and a device that took a new
    /// version of a task every few minutes grew without bound. CPython's finalization does the
    /// same: it empties each module's dict, then `sys.modules`.
    fn break_cycles(&self) {
        use rustpython_vm::builtins::{PyDict, PyType};
        use rustpython_vm::types::PyTypeFlags;
        self.interpreter.enter(|vm| {
            let Ok(modules) = vm.sys_module.get_attr("modules", vm) else {
                return;
            };
            let Ok(modules) = modules.downcast::<PyDict>() else {
                return;
            };
            let mut classes = Vec::new();
            let mut dicts = Vec::new();
            for (_, module) in modules.clone().into_iter() {
                let Ok(dict) = module.get_attr("__dict__", vm) else {
                    continue;
                };
                let Ok(dict) = dict.downcast::<PyDict>() else {
                    continue;
                };
                if defined_in_python(&module, vm) {
                    classes.extend(dict.clone().into_iter().filter_map(|(_, value)| {
                        value
                            .downcast::<PyType>()
                            .ok()
                            .filter(|class| class.slots.flags.has_feature(PyTypeFlags::HEAPTYPE))
                    }));
                }
                dicts.push(dict);
            }
            for dict in dicts {
                dict.clear();
            }
            modules.clear();
            // A class is in its own MRO, and its methods' `__class__` cells point back at it.
            for class in classes {
                class.attributes.write().clear();
                class.mro.write().clear();
            }
        });
    }

    /// Calls the handler with the run's trigger context; returns the records it uploaded and
    /// returned, and its log (what it printed and logged).
    pub(crate) fn call(
        &self,
        host: &mut RunHost<'_>,
        watchdog: &Watchdog,
    ) -> Result<RunOutput, VmError> {
        let context = host.context().clone();
        let armed = watchdog.arm(self.limits.deadline, &self.memory, &self.interrupt);
        let log = output::capture(self.limits.max_log_bytes);
        let before = self.memory.live();
        let result = {
            let _charging = charge_to(&self.memory);
            bindings::with_host(host, || {
                self.interpreter.enter(|vm| {
                    let result = self.call_handler(vm, &context);
                    crate::freelists::flush_if_grown(vm, before, self.memory.live());
                    result
                })
            })
        };
        let logs = log.finish();
        let result = stopped_by(&self.key, &self.limits, armed.finish()).unwrap_or(result);
        let returned = match result? {
            Value::Null => Vec::new(),
            Value::Array(items) => items,
            other => vec![other],
        };
        let records = host.finish(returned)?;
        Ok(RunOutput {
            records,
            logs,
            state: host.take_state_writes(),
        })
    }

    fn call_handler(&self, vm: &VirtualMachine, context: &Value) -> Result<Value, VmError> {
        crate::watchdog::reset_tracing(vm);
        let arg = json_to_py(vm, context);
        let returned = self
            .handler
            .call((arg,), vm)
            .map_err(|exc| VmError::Raised {
                task: self.key.clone(),
                traceback: format_exception(vm, &exc),
            })?;
        py_to_json(vm, &returned, self.limits.max_output_bytes).map_err(|reason| match reason {
            crate::convert::ToJsonError::TooLarge { at_least } => VmError::OutputTooLarge {
                task: self.key.clone(),
                size: at_least,
                max: self.limits.max_output_bytes,
            },
            crate::convert::ToJsonError::Unsendable(reason) => VmError::BadResult {
                task: self.key.clone(),
                reason,
            },
        })
    }
}

/// The error for a limit that stopped the script, whatever the script itself made of it.
fn stopped_by<T>(task: &str, limits: &Limits, hit: Option<Limit>) -> Option<Result<T, VmError>> {
    stopped_error(task, limits, hit).map(Err)
}

fn stopped_error(task: &str, limits: &Limits, hit: Option<Limit>) -> Option<VmError> {
    match hit? {
        Limit::Deadline => Some(VmError::DeadlineExceeded {
            task: task.to_owned(),
            deadline_ms: limits.deadline.as_millis() as u64,
        }),
        Limit::Memory => Some(VmError::MemoryExceeded {
            task: task.to_owned(),
            max: limits.memory_bytes,
        }),
    }
}

/// Whether `module` is this interpreter's own: run from Python source in it (the task's modules,
/// the pure-Python standard library, the `walle` module), so the classes in it are too. Native
/// modules (spec origin `built-in`) may hand out classes shared by every interpreter.
fn defined_in_python(module: &PyObjectRef, vm: &VirtualMachine) -> bool {
    let origin = module
        .get_attr("__spec__", vm)
        .and_then(|spec| spec.get_attr("origin", vm))
        .ok()
        .and_then(|origin| origin.downcast::<rustpython_vm::builtins::PyStr>().ok());
    origin.is_none_or(|origin| origin.to_str() != Some("built-in"))
}

fn find_handler(vm: &VirtualMachine, code: &TaskCode) -> Result<PyObjectRef, VmError> {
    let compiling =
        code.source.len() as u128 * crate::native::source::COMPILE_BYTES_PER_SOURCE_BYTE;
    if compiling > u128::from(code.limits.memory_bytes) {
        return Err(VmError::Compile {
            task: code.key.clone(),
            message: format!(
                "{} is {} bytes; compiling it would take about {compiling} bytes, more than the task's memory budget of {}",
                code.entry_path,
                code.source.len(),
                code.limits.memory_bytes
            ),
        });
    }
    crate::native::source::check(&code.source).map_err(|too_deep| VmError::Compile {
        task: code.key.clone(),
        message: format!(
            "{} at {}, line {}",
            too_deep.message, code.entry_path, too_deep.line
        ),
    })?;
    let compiled = vm
        .compile(&code.source, Mode::Exec, code.entry_path.clone())
        .map_err(|e| VmError::Compile {
            task: code.key.clone(),
            message: crate::syntax::located(&e, &code.source, &code.entry_path).to_string(),
        })?;
    crate::native::bytecode::prepare(&compiled);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_using_every_whitelisted_module_fits_the_default_budget_easily() {
        let watchdog = Watchdog::start().unwrap();
        let source = "import json, math, re, collections, itertools, functools, heapq, bisect, random, time\n\
                      def run(ctx):\n    return json.dumps(re.findall(r'\\d', str(ctx)))\n";
        let code = TaskCode::python("all@1", source, Limits::default());
        let task =
            PythonTask::load(&code, TaskMemory::new(code.limits.memory_bytes), &watchdog).unwrap();
        let (context, state) = (serde_json::json!([1, 2]), crate::MemoryState::default());
        let mut models = crate::Models::default();
        let mut host = RunHost::new("all@1", &context, &state, &mut models, u64::MAX);
        let out = task.call(&mut host, &watchdog).unwrap();
        assert_eq!(out.records, vec![serde_json::json!("[\"1\", \"2\"]")]);
        let used = task.memory.live();
        assert!(used > 0, "nothing was charged");
        assert!(
            used < Limits::DEFAULT_MEMORY_BYTES / 4,
            "a task with every whitelisted module holds {used} bytes"
        );
    }
}
