//! The `walle` imports: each reads its arguments out of guest memory (bounds-checked), calls
//! the run's [`RunHost`] and writes the answer back. The ABI is in the parent module's doc.

use std::ops::Range;
use std::ptr::NonNull;

use serde_json::Value;
use walle_engine::{Session, Tensor};
use wasmtime::{Caller, Extern, Linker};

use super::sandbox::Limiter;
use crate::VmError;
use crate::host::{Level, RunHost};

/// What the imports reach of a [`RunHost`]. A trait rather than `RunHost` itself so that the
/// lifetime-erased pointer in [`RunState`] cannot be used to store a borrowed value: no method
/// here takes or returns anything tied to the host's lifetime.
pub(super) trait Imports {
    fn task(&self) -> &str;
    fn context(&self) -> &Value;
    fn log(&mut self, level: Level, message: &str);
    fn upload(&mut self, record: Value) -> Result<(), VmError>;
    fn state_get(&self, key: &str) -> Result<Option<Value>, VmError>;
    fn state_set(&self, key: &str, value: Option<&Value>) -> Result<(), VmError>;
    fn model(&mut self, name: &str) -> Result<&Session, VmError>;
}

impl Imports for RunHost<'_> {
    fn task(&self) -> &str {
        RunHost::task(self)
    }
    fn context(&self) -> &Value {
        RunHost::context(self)
    }
    fn log(&mut self, level: Level, message: &str) {
        RunHost::log(self, level, message);
    }
    fn upload(&mut self, record: Value) -> Result<(), VmError> {
        RunHost::upload(self, record)
    }
    fn state_get(&self, key: &str) -> Result<Option<Value>, VmError> {
        RunHost::state_get(self, key)
    }
    fn state_set(&self, key: &str, value: Option<&Value>) -> Result<(), VmError> {
        RunHost::state_set(self, key, value)
    }
    fn model(&mut self, name: &str) -> Result<&Session, VmError> {
        RunHost::model(self, name)
    }
}

/// Erases the host's lifetime so that it fits in a `Store`, whose data must be `'static`.
///
/// # Safety
/// The returned pointer must not be used after the borrow `host` came from ends: the caller
/// drops the store holding it before then.
pub(super) unsafe fn erase<'a>(host: NonNull<dyn Imports + 'a>) -> NonNull<dyn Imports + 'static> {
    // SAFETY: only the trait object's lifetime bound changes; the layout is identical.
    unsafe { std::mem::transmute::<NonNull<dyn Imports + 'a>, NonNull<dyn Imports>>(host) }
}

/// A run's store data: its host, its limiter, and the context JSON once serialized.
pub(super) struct RunState {
    host: NonNull<dyn Imports>,
    context: Option<Vec<u8>>,
    pub(super) limiter: Limiter,
}

impl RunState {
    pub(super) fn new(host: NonNull<dyn Imports>, limiter: Limiter) -> RunState {
        RunState {
            host,
            context: None,
            limiter,
        }
    }

    fn host(&mut self) -> &mut dyn Imports {
        // SAFETY: `WasmTask::call` builds this state from its `&mut RunHost` and drops the
        // store before returning, so the pointee is alive and borrowed by nobody else;
        // `&mut self` makes this the only reference derived from it.
        unsafe { self.host.as_mut() }
    }

    /// The trigger context as JSON text, serialized on first use.
    fn context_json(&mut self) -> &[u8] {
        if self.context.is_none() {
            // A `Value` always serializes.
            self.context = Some(serde_json::to_vec(self.host().context()).unwrap_or_default());
        }
        self.context.as_deref().unwrap_or_default()
    }
}

/// Defines every `walle` import on `linker`.
pub(super) fn define(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    linker.func_wrap("walle", "context_len", |mut c: Caller<'_, RunState>| {
        trap(context_len(&mut c))
    })?;
    linker.func_wrap(
        "walle",
        "context_read",
        |mut c: Caller<'_, RunState>, ptr: i32, cap: i32| trap(context_read(&mut c, ptr, cap)),
    )?;
    linker.func_wrap(
        "walle",
        "log",
        |mut c: Caller<'_, RunState>, level: i32, ptr: i32, len: i32| {
            trap(log(&mut c, level, ptr, len))
        },
    )?;
    linker.func_wrap(
        "walle",
        "upload",
        |mut c: Caller<'_, RunState>, ptr: i32, len: i32| trap(upload(&mut c, ptr, len)),
    )?;
    linker.func_wrap(
        "walle",
        "state_get",
        |mut c: Caller<'_, RunState>, key: i32, key_len: i32, out: i32, cap: i32| {
            trap(state_get(&mut c, (key, key_len), (out, cap)))
        },
    )?;
    linker.func_wrap(
        "walle",
        "state_set",
        |mut c: Caller<'_, RunState>, key: i32, key_len: i32, val: i32, val_len: i32| {
            trap(state_set(&mut c, (key, key_len), (val, val_len)))
        },
    )?;
    linker.func_wrap(
        "walle",
        "nn_run",
        |mut c: Caller<'_, RunState>,
         name: i32,
         name_len: i32,
         input: i32,
         in_len: i32,
         out: i32,
         cap: i32| {
            trap(nn_run(
                &mut c,
                (name, name_len),
                (input, in_len),
                (out, cap),
            ))
        },
    )?;
    Ok(())
}

/// Ends the run with a host error; [`super::WasmTask::call`] finds it again by downcasting.
fn trap<T>(result: Result<T, VmError>) -> wasmtime::Result<T> {
    result.map_err(wasmtime::Error::new)
}

/// A guest `(pointer, length)` pair.
type Span = (i32, i32);

fn context_len(caller: &mut Caller<'_, RunState>) -> Result<i32, VmError> {
    let mut guest = Guest::of(caller, "context_len")?;
    let len = guest.state.context_json().len();
    guest.size(len)
}

fn context_read(caller: &mut Caller<'_, RunState>, ptr: i32, cap: i32) -> Result<i32, VmError> {
    let mut guest = Guest::of(caller, "context_read")?;
    let context = guest.state.context_json().to_vec();
    guest.reply((ptr, cap), &context)
}

fn log(caller: &mut Caller<'_, RunState>, level: i32, ptr: i32, len: i32) -> Result<(), VmError> {
    let mut guest = Guest::of(caller, "log")?;
    let level = match level {
        0 => Level::Debug,
        1 => Level::Info,
        2 => Level::Warn,
        3 => Level::Error,
        other => return Err(guest.bad(format!("unknown log level {other} (0 to 3)"))),
    };
    // A log line is for people: keep it even if it is not quite UTF-8.
    let message = String::from_utf8_lossy(guest.bytes((ptr, len))?).into_owned();
    guest.state.host().log(level, &message);
    Ok(())
}

fn upload(caller: &mut Caller<'_, RunState>, ptr: i32, len: i32) -> Result<i32, VmError> {
    let mut guest = Guest::of(caller, "upload")?;
    let record = guest.json("record", (ptr, len))?;
    guest.state.host().upload(record)?;
    Ok(0)
}

fn state_get(caller: &mut Caller<'_, RunState>, key: Span, out: Span) -> Result<i32, VmError> {
    let mut guest = Guest::of(caller, "state_get")?;
    let key = guest.text("key", key)?;
    let value = guest.state.host().state_get(&key)?;
    let text = value.map(|v| serde_json::to_vec(&v).unwrap_or_default());
    // Empty means absent: JSON text is never empty, so the answer 0 is unambiguous.
    guest.reply(out, text.as_deref().unwrap_or_default())
}

fn state_set(caller: &mut Caller<'_, RunState>, key: Span, value: Span) -> Result<i32, VmError> {
    let mut guest = Guest::of(caller, "state_set")?;
    let key = guest.text("key", key)?;
    let value = match value.1 {
        0 => None,
        _ => Some(guest.json("value", value)?),
    };
    guest.state.host().state_set(&key, value.as_ref())?;
    Ok(0)
}

fn nn_run(
    caller: &mut Caller<'_, RunState>,
    name: Span,
    input: Span,
    out: Span,
) -> Result<i32, VmError> {
    let mut guest = Guest::of(caller, "nn_run")?;
    let name = guest.text("model name", name)?;
    let inputs = guest.json("inputs", input)?;
    let inputs = tensors(inputs).map_err(|reason| guest.bad(format!("inputs: {reason}")))?;
    let host = guest.state.host();
    let task = host.task().to_owned();
    let outputs = host.model(&name)?.run(inputs).map_err(|e| VmError::Model {
        task,
        model: name.clone(),
        reason: e.to_string(),
    })?;
    let text = outputs_json(&outputs).map_err(|e| guest.bad(format!("outputs: {e}")))?;
    guest.reply(out, &text)
}

/// Named input tensors from `{"name": {"shape": [..], "data": [..]}, ..}`.
fn tensors(inputs: Value) -> Result<Vec<(String, Tensor)>, String> {
    let Value::Object(inputs) = inputs else {
        return Err("expected an object of named tensors".into());
    };
    inputs
        .into_iter()
        .map(|(name, value)| {
            let tensor = tensor(&value).map_err(|reason| format!("{name:?}: {reason}"))?;
            Ok((name, tensor))
        })
        .collect()
}

fn tensor(value: &Value) -> Result<Tensor, String> {
    let shape = value
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no `shape` array")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or("`shape` holds something other than a non-negative integer")?;
    // Checked here because the engine multiplies unchecked.
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("`shape` overflows")?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("no `data` array")?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect::<Option<Vec<f32>>>()
        .ok_or("`data` holds something other than a number")?;
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// `{"name": {"shape": [..], "data": [..]}, ..}`, written by hand so that f32 values keep
/// their short form (a `Value` would widen them to f64 digits). Non-finite values are `null`.
fn outputs_json(outputs: &[(String, Tensor)]) -> Result<Vec<u8>, serde_json::Error> {
    let mut text = String::from("{");
    for (index, (name, tensor)) in outputs.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::to_string(name)?);
        text.push_str(":{\"shape\":");
        text.push_str(&serde_json::to_string(tensor.shape())?);
        text.push_str(",\"data\":");
        text.push_str(&serde_json::to_string(tensor.data())?);
        text.push('}');
    }
    text.push('}');
    Ok(text.into_bytes())
}

/// One import call's view of the guest: its memory and the run's state, borrowed together.
struct Guest<'c> {
    import: &'static str,
    memory: &'c mut [u8],
    state: &'c mut RunState,
}

impl<'c> Guest<'c> {
    fn of(caller: &'c mut Caller<'_, RunState>, import: &'static str) -> Result<Self, VmError> {
        let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
            let task = caller.data_mut().host().task().to_owned();
            return Err(VmError::BadGuestArgument {
                task,
                import,
                reason: "the module exports no `memory`".into(),
            });
        };
        let (memory, state) = memory.data_and_store_mut(caller);
        Ok(Guest {
            import,
            memory,
            state,
        })
    }

    /// The guest's bytes at `span`, or an error if any of them is outside its memory.
    fn bytes(&mut self, span: Span) -> Result<&[u8], VmError> {
        let range = self.range(span)?;
        Ok(&self.memory[range])
    }

    fn range(&mut self, (ptr, len): Span) -> Result<Range<usize>, VmError> {
        // Wasm pointers and lengths are unsigned: a negative i32 is a large u32.
        let start = ptr as u32 as usize;
        let end = start.checked_add(len as u32 as usize);
        match end {
            Some(end) if end <= self.memory.len() => Ok(start..end),
            _ => Err(self.bad(format!(
                "{} bytes at {start:#x} are outside the {}-byte memory",
                len as u32,
                self.memory.len()
            ))),
        }
    }

    /// UTF-8 text at `span`.
    fn text(&mut self, what: &str, span: Span) -> Result<String, VmError> {
        let bytes = self.bytes(span)?.to_vec();
        String::from_utf8(bytes).map_err(|e| self.bad(format!("{what} is not UTF-8: {e}")))
    }

    /// A JSON value at `span`.
    fn json(&mut self, what: &str, span: Span) -> Result<Value, VmError> {
        let parsed = serde_json::from_slice::<Value>(self.bytes(span)?);
        parsed.map_err(|e| self.bad(format!("{what} is not JSON: {e}")))
    }

    /// Writes `answer` into the guest buffer `out` if it fits; the ABI's byte count or
    /// `-needed`.
    fn reply(&mut self, out: Span, answer: &[u8]) -> Result<i32, VmError> {
        let buffer = self.range(out)?;
        let size = self.size(answer.len())?;
        if answer.len() > buffer.len() {
            return Ok(-size);
        }
        self.memory[buffer.start..buffer.start + answer.len()].copy_from_slice(answer);
        Ok(size)
    }

    /// A byte count as the ABI's `i32`.
    fn size(&mut self, len: usize) -> Result<i32, VmError> {
        i32::try_from(len).map_err(|_| self.bad(format!("the answer is {len} bytes, too big")))
    }

    fn bad(&mut self, reason: String) -> VmError {
        VmError::BadGuestArgument {
            task: self.state.host().task().to_owned(),
            import: self.import,
            reason,
        }
    }
}
