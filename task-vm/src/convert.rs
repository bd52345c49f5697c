//! Conversion between JSON values (what the host speaks) and Python objects (what tasks see).
//!
//! Going through JSON text would be slower: values are built and read directly as Python objects.

use rustpython_vm::builtins::{PyDict, PyFloat, PyInt, PyList, PyStr, PyTuple};
use rustpython_vm::{AsObject, PyObject, PyObjectRef, VirtualMachine};
use serde_json::Value;

/// Deepest nesting accepted when reading a task's result.
pub const MAX_DEPTH: usize = 64;

/// Builds the Python object for a JSON value.
pub fn json_to_py(vm: &VirtualMachine, value: &Value) -> PyObjectRef {
    match value {
        Value::Null => vm.ctx.none(),
        Value::Bool(b) => vm.ctx.new_bool(*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => vm.ctx.new_int(i).into(),
            None => vm.ctx.new_float(n.as_f64().unwrap_or(f64::NAN)).into(),
        },
        Value::String(s) => vm.ctx.new_str(s.as_str()).into(),
        Value::Array(items) => vm
            .ctx
            .new_list(items.iter().map(|v| json_to_py(vm, v)).collect())
            .into(),
        Value::Object(map) => {
            let dict = vm.ctx.new_dict();
            for (key, v) in map {
                // Setting a str key on a fresh exact dict cannot raise.
                let _ = dict.set_item(key.as_str(), json_to_py(vm, v), vm);
            }
            dict.into()
        }
    }
}

/// Why a result cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum ToJsonError {
    /// Its JSON text is at least this many bytes, more than allowed; found before copying it all.
    #[error("it is at least {at_least} bytes of JSON, more than allowed")]
    TooLarge { at_least: u64 },
    /// It holds something JSON cannot carry.
    #[error("{0}")]
    Unsendable(String),
}

impl From<String> for ToJsonError {
    fn from(reason: String) -> Self {
        ToJsonError::Unsendable(reason)
    }
}

/// Reads a task's result back into JSON. Only None, bool, int, float, str, list, tuple and dict
/// with str keys are accepted; anything else is an error naming the type. Stops early once the
/// JSON text is sure to exceed `max_bytes`, so a huge result is not copied whole.
pub fn py_to_json(
    vm: &VirtualMachine,
    obj: &PyObject,
    max_bytes: u64,
) -> Result<Value, ToJsonError> {
    // A top-level list is split into records, so its own byte is not part of the output.
    let mut size = SizeBound {
        at_least: 0,
        max: max_bytes.saturating_add(1),
    };
    to_json_at_depth(vm, obj, 0, &mut size)
}

/// A running lower bound of the JSON text's size.
struct SizeBound {
    at_least: u64,
    max: u64,
}

impl SizeBound {
    fn add(&mut self, bytes: usize) -> Result<(), ToJsonError> {
        self.at_least = self.at_least.saturating_add(bytes as u64);
        if self.at_least > self.max {
            return Err(ToJsonError::TooLarge {
                at_least: self.at_least,
            });
        }
        Ok(())
    }
}

fn to_json_at_depth(
    vm: &VirtualMachine,
    obj: &PyObject,
    depth: usize,
    size: &mut SizeBound,
) -> Result<Value, ToJsonError> {
    if depth > MAX_DEPTH {
        return Err(format!("result is nested deeper than {MAX_DEPTH} levels").into());
    }
    // Every JSON value takes at least one byte, plus a separator.
    size.add(1)?;
    if vm.is_none(obj) {
        return Ok(Value::Null);
    }
    if obj.is(&vm.ctx.true_value) {
        return Ok(Value::Bool(true));
    }
    if obj.is(&vm.ctx.false_value) {
        return Ok(Value::Bool(false));
    }
    if let Some(int) = obj.downcast_ref::<PyInt>() {
        return int
            .try_to_primitive::<i64>(vm)
            .map(Value::from)
            .map_err(|_| {
                "result holds an int that does not fit in 64 bits"
                    .to_owned()
                    .into()
            });
    }
    if let Some(float) = obj.downcast_ref::<PyFloat>() {
        return serde_json::Number::from_f64(float.to_f64())
            .map(Value::Number)
            .ok_or_else(|| "result holds a NaN or infinite float".to_owned().into());
    }
    if let Some(s) = obj.downcast_ref::<PyStr>() {
        // Quotes plus at least one byte per byte of text; checked before the copy.
        size.add(s.as_wtf8().as_bytes().len() + 1)?;
        return s
            .to_str()
            .map(|text| Value::String(text.to_owned()))
            .ok_or_else(|| {
                "result holds a str with lone surrogates (not UTF-8)"
                    .to_owned()
                    .into()
            });
    }
    if let Some(list) = obj.downcast_ref::<PyList>() {
        let items: Vec<PyObjectRef> = list.borrow_vec().to_vec();
        return sequence_to_json(vm, &items, depth, size);
    }
    if let Some(tuple) = obj.downcast_ref::<PyTuple>() {
        return sequence_to_json(vm, tuple.as_slice(), depth, size);
    }
    if let Some(dict) = obj.downcast_ref::<PyDict>() {
        let mut map = serde_json::Map::new();
        for (key, value) in dict.items_vec() {
            let key = key
                .downcast_ref::<PyStr>()
                .and_then(|k| k.to_str())
                .ok_or_else(|| {
                    format!(
                        "result dict has a key of type {} (only UTF-8 str keys can be sent)",
                        key.class().name()
                    )
                })?
                .to_owned();
            // The quoted key and its colon.
            size.add(key.len() + 3)?;
            map.insert(key, to_json_at_depth(vm, &value, depth + 1, size)?);
        }
        return Ok(Value::Object(map));
    }
    Err(format!(
        "result holds a value of type {}, which cannot be sent (use None, bool, int, float, str, list or dict)",
        obj.class().name()
    )
    .into())
}

fn sequence_to_json(
    vm: &VirtualMachine,
    items: &[PyObjectRef],
    depth: usize,
    size: &mut SizeBound,
) -> Result<Value, ToJsonError> {
    items
        .iter()
        .map(|item| to_json_at_depth(vm, item, depth + 1, size))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}
