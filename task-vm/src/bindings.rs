//! The Python `walle` module: `walle.py` (tensors, models, state, … in Python) over native
//! `_host_*` functions that call the current run's [`RunHost`].
//!
//! The run's host is reachable from the native functions through a thread-local pointer, set
//! only while the task's handler runs on this worker thread ([`with_host`]). A host call that
//! fails the whole run (an output over its cap, a state store error) raises in the script *and*
//! is remembered, so the run fails with that error even if the script catches the exception.

use std::cell::{Cell, RefCell};

use rustpython_vm::builtins::{PyBaseExceptionRef, PyStrRef};
use rustpython_vm::compiler::Mode;
use rustpython_vm::{PyObjectRef, PyResult, VirtualMachine};
use serde_json::Value;
use walle_engine::{DType, Dim, Tensor};

use crate::VmError;
use crate::convert::{json_to_py, py_to_json};
use crate::host::{Level, RunHost};

const WALLE_PY: &str = include_str!("walle.py");

/// Largest JSON size of one `walle.state` value.
const MAX_STATE_VALUE_BYTES: u64 = 1024 * 1024;

thread_local! {
    /// The running task's host, or null between runs.
    static HOST: Cell<*mut RunHost<'static>> = const { Cell::new(std::ptr::null_mut()) };
    /// The first error of this run that must fail it, whatever the script does.
    static FATAL: RefCell<Option<VmError>> = const { RefCell::new(None) };
}

/// Builds the `walle` module in `vm` and registers it in `sys.modules`.
pub(crate) fn install(vm: &VirtualMachine) -> PyResult<()> {
    let dict = vm.ctx.new_dict();
    let natives: [(&str, PyObjectRef); 13] = [
        (
            "_host_context",
            vm.new_function("_host_context", host_context).into(),
        ),
        ("_host_log", vm.new_function("_host_log", host_log).into()),
        (
            "_host_upload",
            vm.new_function("_host_upload", host_upload).into(),
        ),
        (
            "_host_state_get",
            vm.new_function("_host_state_get", host_state_get).into(),
        ),
        (
            "_host_state_set",
            vm.new_function("_host_state_set", host_state_set).into(),
        ),
        (
            "_host_nn_describe",
            vm.new_function("_host_nn_describe", host_nn_describe)
                .into(),
        ),
        (
            "_host_nn_run",
            vm.new_function("_host_nn_run", host_nn_run).into(),
        ),
        (
            "_host_llm_load",
            vm.new_function("_host_llm_load", host_llm_load).into(),
        ),
        (
            "_host_llm_generate",
            vm.new_function("_host_llm_generate", host_llm_generate)
                .into(),
        ),
        (
            "_host_llm_chat_prompt",
            vm.new_function("_host_llm_chat_prompt", host_llm_chat_prompt)
                .into(),
        ),
        (
            "_host_llm_tokenize",
            vm.new_function("_host_llm_tokenize", host_llm_tokenize)
                .into(),
        ),
        (
            "_host_llm_score",
            vm.new_function("_host_llm_score", host_llm_score).into(),
        ),
        (
            "_host_llm_stats",
            vm.new_function("_host_llm_stats", host_llm_stats).into(),
        ),
    ];
    for (name, function) in natives {
        dict.set_item(name, function, vm)?;
    }
    dict.set_item("__builtins__", vm.builtins.clone().into(), vm)?;
    let module = vm.new_module("walle", dict.clone(), None);
    let code = vm
        .compile(WALLE_PY, Mode::Exec, "<walle>".to_owned())
        .map_err(|e| vm.new_runtime_error(format!("walle module: {e}")))?;
    vm.run_code_obj(
        code,
        rustpython_vm::scope::Scope::with_builtins(None, dict, vm),
    )?;
    let modules = vm.sys_module.get_attr("modules", vm)?;
    modules.set_item("walle", module.into(), vm)?;
    Ok(())
}

/// Runs `f` with `host` reachable from the `walle` module; afterwards, the error that must fail
/// the run (if a host call hit one) takes precedence over what `f` returned.
pub(crate) fn with_host<T>(
    host: &mut RunHost<'_>,
    f: impl FnOnce() -> Result<T, VmError>,
) -> Result<T, VmError> {
    // SAFETY: the pointer is cleared before `host` goes out of scope (the guard below runs on
    // return and on unwind), and only this thread reads it, while `f` runs.
    let erased: *mut RunHost<'static> = (host as *mut RunHost<'_>).cast();
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            HOST.set(std::ptr::null_mut());
        }
    }
    HOST.set(erased);
    FATAL.with_borrow_mut(|fatal| *fatal = None);
    let result = {
        let _clear = Clear;
        f()
    };
    match FATAL.with_borrow_mut(Option::take) {
        Some(fatal) => Err(fatal),
        None => result,
    }
}

/// Calls `f` with the current run's host, or raises when there is none.
fn host<T>(
    vm: &VirtualMachine,
    f: impl FnOnce(&mut RunHost<'static>) -> Result<T, VmError>,
) -> PyResult<T> {
    let pointer = HOST.get();
    if pointer.is_null() {
        return Err(vm.new_runtime_error("walle host calls work only while the task runs"));
    }
    // SAFETY: set by `with_host` for the duration of the handler call on this thread; the
    // native functions do not re-enter each other while holding it.
    let host = unsafe { &mut *pointer };
    f(host).map_err(|error| {
        let message = error.to_string();
        if fails_the_run(&error) {
            FATAL.with_borrow_mut(|fatal| {
                fatal.get_or_insert(error);
            });
        }
        vm.new_runtime_error(message)
    })
}

/// Errors that end the run whatever the script does with the exception.
fn fails_the_run(error: &VmError) -> bool {
    matches!(
        error,
        VmError::OutputTooLarge { .. } | VmError::State { .. }
    )
}

fn text(s: &PyStrRef, vm: &VirtualMachine) -> PyResult<String> {
    s.to_str()
        .map(str::to_owned)
        .ok_or_else(|| vm.new_value_error("the string is not valid UTF-8"))
}

fn host_context(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let context = host(vm, |h| Ok(h.context().clone()))?;
    Ok(json_to_py(vm, &context))
}

fn host_log(level: PyStrRef, message: PyStrRef, vm: &VirtualMachine) -> PyResult<()> {
    let name = text(&level, vm)?;
    let level = Level::parse(&name).ok_or_else(|| {
        vm.new_value_error(format!(
            "log level {name:?}: use debug, info, warn or error"
        ))
    })?;
    let message = message.to_string_lossy().into_owned();
    host(vm, |h| {
        h.log(level, &message);
        Ok(())
    })
}

fn host_upload(record: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    let max = host(vm, |h| Ok(h.max_output_bytes()))?;
    let record = py_to_json(vm, &record, max)
        .map_err(|reason| vm.new_type_error(format!("walle.upload: {reason}")))?;
    host(vm, |h| h.upload(record))
}

fn host_state_get(key: PyStrRef, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let key = text(&key, vm)?;
    let value = host(vm, |h| h.state_get(&key))?;
    Ok(json_to_py(vm, &value.unwrap_or(Value::Null)))
}

fn host_state_set(key: PyStrRef, value: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    let key = text(&key, vm)?;
    let value = py_to_json(vm, &value, MAX_STATE_VALUE_BYTES)
        .map_err(|reason| vm.new_type_error(format!("walle.state[{key:?}]: {reason}")))?;
    host(vm, |h| {
        h.state_set(&key, (!value.is_null()).then_some(&value))
    })
}

/// `(inputs, outputs)`: inputs as `(name, dtype, dims)` (`None` for a dynamic dimension).
fn host_nn_describe(name: PyStrRef, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let name = text(&name, vm)?;
    let (inputs, outputs) = host(vm, |h| {
        let session = h.model(&name)?;
        let inputs: Vec<Value> = session
            .inputs()
            .iter()
            .map(|spec| {
                let dims: Vec<Value> = spec
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(size) => Value::from(*size),
                        Dim::Named(_) => Value::Null,
                    })
                    .collect();
                serde_json::json!([spec.name, dtype_name(spec.dtype), dims])
            })
            .collect();
        Ok((inputs, session.outputs().to_vec()))
    })?;
    let inputs = json_to_py(vm, &Value::Array(inputs));
    let outputs = json_to_py(vm, &Value::from(outputs));
    Ok(vm.new_tuple((inputs, outputs)).into())
}

/// Runs model `name` on `{input: [shape, data, dtype]}`; returns `{output: [shape, data, dtype]}`.
fn host_nn_run(name: PyStrRef, inputs: PyObjectRef, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let name = text(&name, vm)?;
    let given = py_to_json(vm, &inputs, u64::MAX)
        .map_err(|reason| vm.new_type_error(format!("model {name}: inputs: {reason}")))?;
    let inputs = tensors_from_json(&given)
        .map_err(|reason| vm.new_value_error(format!("model {name}: {reason}")))?;
    // The session runs on this thread, under the run's memory budget; before each node it asks
    // whether the run must stop (a node in flight finishes first) and whether the node's outputs,
    // when their size is known, fit in what the budget has left.
    let admit = |bytes: Option<u64>| {
        if crate::watchdog::current_stop().is_some() {
            return false;
        }
        match (bytes, crate::alloc::remaining_budget()) {
            (Some(bytes), Some(remaining)) if bytes > remaining => {
                crate::alloc::refuse_current();
                false
            }
            _ => true,
        }
    };
    let outputs = host(vm, |h| {
        let task = h.task().to_owned();
        match h.model(&name)?.run_values_until(inputs, &admit) {
            Ok(outputs) => Ok(Some(outputs)),
            Err(walle_engine::RunError::Stopped { .. }) => Ok(None),
            Err(e) => Err(VmError::Model {
                task,
                model: name.clone(),
                reason: e.to_string(),
            }),
        }
    })?;
    let Some(outputs) = outputs else {
        crate::native::check(vm)?;
        return Err(vm.new_runtime_error(format!("model {name}: stopped")));
    };
    let dict = vm.ctx.new_dict();
    for (output, value) in outputs {
        dict.set_item(output.as_str(), tensor_to_py(vm, &value), vm)?;
    }
    Ok(dict.into())
}

/// Whether the run may go on: neither its deadline nor its memory budget has stopped it.
fn within_limits() -> bool {
    crate::watchdog::current_stop().is_none()
}

/// Raises the limit's error when the run's limits stopped a model call; else `what` stopped.
fn stopped_by_limits(vm: &VirtualMachine, what: &str) -> PyBaseExceptionRef {
    match crate::native::check(vm) {
        Err(exc) => exc,
        Ok(()) => vm.new_runtime_error(format!("{what}: stopped")),
    }
}

/// Loads language model `name` with room for `context` tokens.
fn host_llm_load(name: PyStrRef, context: usize, vm: &VirtualMachine) -> PyResult<()> {
    let name = text(&name, vm)?;
    host(vm, |h| {
        let task = h.task().to_owned();
        h.llms().load(&task, &name, context)
    })
}

/// Generates from `prompt` under `options` (`max_tokens`, `temperature`, `top_k`, `top_p`,
/// `repetition_penalty`, `seed`, `stop`); returns `(text, tokens, finish)`.
fn host_llm_generate(
    name: PyStrRef,
    prompt: PyStrRef,
    options: PyObjectRef,
    vm: &VirtualMachine,
) -> PyResult<PyObjectRef> {
    let name = text(&name, vm)?;
    let prompt = text(&prompt, vm)?;
    let options = py_to_json(vm, &options, u64::MAX)
        .map_err(|reason| vm.new_type_error(format!("model {name}: options: {reason}")))?;
    let request = generate_request(&options)
        .map_err(|reason| vm.new_value_error(format!("model {name}: {reason}")))?;
    let generated = host(vm, |h| {
        let task = h.task().to_owned();
        h.llms()
            .generate(&task, &name, &prompt, &request, &within_limits)
    })?;
    if generated.finish == "stopped" {
        return Err(stopped_by_limits(vm, &format!("model {name}")));
    }
    Ok(vm
        .new_tuple((
            vm.ctx.new_str(generated.text),
            generated.tokens,
            vm.ctx.new_str(generated.finish),
        ))
        .into())
}

/// The generation options a script passed, checked.
fn generate_request(options: &Value) -> Result<crate::llm::GenerateRequest, String> {
    let number = |key: &str, default: f64| -> Result<f64, String> {
        match &options[key] {
            Value::Null => Ok(default),
            value => value
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("{key} must be a number, not {value}")),
        }
    };
    let count = |key: &str, default: u64| -> Result<u64, String> {
        match &options[key] {
            Value::Null => Ok(default),
            value => value
                .as_u64()
                .ok_or_else(|| format!("{key} must be a whole number ≥ 0, not {value}")),
        }
    };
    let top_p = number("top_p", 1.0)?;
    if !(0.0..=1.0).contains(&top_p) {
        return Err(format!("top_p must be within 0..1, not {top_p}"));
    }
    let stop = match &options["stop"] {
        Value::Null => Vec::new(),
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("stop must be a string or a list of strings")?,
        other => {
            return Err(format!(
                "stop must be a string or a list of strings, not {other}"
            ));
        }
    };
    Ok(crate::llm::GenerateRequest {
        max_tokens: usize::try_from(count("max_tokens", 64)?).unwrap_or(usize::MAX),
        sampling: walle_engine::llm::Sampling {
            temperature: number("temperature", 0.0)? as f32,
            top_k: usize::try_from(count("top_k", 0)?).unwrap_or(usize::MAX),
            top_p: top_p as f32,
            repetition_penalty: number("repetition_penalty", 1.0)? as f32,
            seed: count("seed", 0)?,
            ..walle_engine::llm::Sampling::default()
        },
        stop,
    })
}

/// The chat prompt of `messages` (a list of `(role, content)`).
fn host_llm_chat_prompt(
    name: PyStrRef,
    messages: PyObjectRef,
    vm: &VirtualMachine,
) -> PyResult<PyObjectRef> {
    let name = text(&name, vm)?;
    let given = py_to_json(vm, &messages, u64::MAX)
        .map_err(|reason| vm.new_type_error(format!("model {name}: messages: {reason}")))?;
    let messages: Vec<(String, String)> = given
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m.as_array().map(Vec::as_slice) {
            Some([Value::String(role), Value::String(content)]) => {
                Some((role.clone(), content.clone()))
            }
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            vm.new_type_error(format!(
                "model {name}: messages are {{\"role\": ..., \"content\": ...}} dicts"
            ))
        })?;
    let prompt = host(vm, |h| {
        let task = h.task().to_owned();
        h.llms().chat_prompt(&task, &name, &messages)
    })?;
    Ok(vm.ctx.new_str(prompt).into())
}

/// The token ids of `text`.
fn host_llm_tokenize(
    name: PyStrRef,
    text_: PyStrRef,
    vm: &VirtualMachine,
) -> PyResult<PyObjectRef> {
    let name = text(&name, vm)?;
    let given = text(&text_, vm)?;
    let tokens = host(vm, |h| {
        let task = h.task().to_owned();
        h.llms().tokenize(&task, &name, &given)
    })?;
    Ok(json_to_py(vm, &Value::from(tokens)))
}

/// `(log_likelihood, tokens_scored)` of `text`.
fn host_llm_score(name: PyStrRef, text_: PyStrRef, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let name = text(&name, vm)?;
    let given = text(&text_, vm)?;
    let scored = host(vm, |h| {
        let task = h.task().to_owned();
        h.llms().score(&task, &name, &given, &within_limits)
    })?;
    let Some((log_likelihood, tokens)) = scored else {
        return Err(stopped_by_limits(vm, &format!("model {name}")));
    };
    Ok(vm
        .new_tuple((vm.ctx.new_float(log_likelihood), tokens))
        .into())
}

/// `{"weight_bytes", "cache_bytes"}` of the task's language models.
fn host_llm_stats(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let (weights, cache) = host(vm, |h| Ok(h.llms().bytes()))?;
    Ok(json_to_py(
        vm,
        &serde_json::json!({"weight_bytes": weights, "cache_bytes": cache}),
    ))
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::I64 => "i64",
    }
}

/// Reads `{name: [shape, data, dtype]}` into engine values.
fn tensors_from_json(given: &Value) -> Result<Vec<(String, walle_engine::Value)>, String> {
    let Value::Object(map) = given else {
        return Err("inputs must be a dict".into());
    };
    map.iter()
        .map(|(name, triple)| {
            let fail = |what: &str| format!("input {name:?}: {what}");
            let [shape, data, dtype] = triple.as_array().map(Vec::as_slice).unwrap_or_default()
            else {
                return Err(fail("expected [shape, data, dtype]"));
            };
            let shape: Vec<usize> = shape
                .as_array()
                .and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                })
                .ok_or_else(|| fail("the shape must be a list of non-negative ints"))?;
            let data = data
                .as_array()
                .ok_or_else(|| fail("the data must be a list"))?;
            let value = match dtype.as_str() {
                Some("i64") => walle_engine::Value::I64 {
                    data: data
                        .iter()
                        .map(Value::as_i64)
                        .collect::<Option<_>>()
                        .ok_or_else(|| fail("i64 data must be ints"))?,
                    shape,
                },
                _ => {
                    let data = data
                        .iter()
                        .map(|v| v.as_f64().map(|v| v as f32))
                        .collect::<Option<_>>()
                        .ok_or_else(|| fail("f32 data must be numbers"))?;
                    walle_engine::Value::F32(
                        Tensor::new(shape, data).map_err(|e| fail(&e.to_string()))?,
                    )
                }
            };
            if let walle_engine::Value::I64 { shape, data } = &value
                && shape.iter().product::<usize>() != data.len()
            {
                return Err(fail(&format!(
                    "shape {shape:?} does not hold {} values",
                    data.len()
                )));
            }
            Ok((name.clone(), value))
        })
        .collect()
}

/// `[shape, data, dtype]` as Python lists.
fn tensor_to_py(vm: &VirtualMachine, value: &walle_engine::Value) -> PyObjectRef {
    let shape: Vec<PyObjectRef> = value
        .shape()
        .iter()
        .map(|&d| vm.ctx.new_int(d).into())
        .collect();
    let (data, dtype): (Vec<PyObjectRef>, &str) = match value {
        walle_engine::Value::F32(t) => (
            t.data()
                .iter()
                .map(|&v| vm.ctx.new_float(f64::from(v)).into())
                .collect(),
            "f32",
        ),
        walle_engine::Value::I64 { data, .. } => (
            data.iter().map(|&v| vm.ctx.new_int(v).into()).collect(),
            "i64",
        ),
    };
    let parts: Vec<PyObjectRef> = vec![
        vm.ctx.new_list(shape).into(),
        vm.ctx.new_list(data).into(),
        vm.ctx.new_str(dtype).into(),
    ];
    vm.ctx.new_list(parts).into()
}
