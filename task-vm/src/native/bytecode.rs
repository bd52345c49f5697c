//! Keeps task code's integer multiplication on the checked path.
//!
//! RustPython specialises a `*` whose operands were both exact ints into an instruction that
//! multiplies them directly, without the int type's multiply slot, so without
//! [`super::ints`]'s check. Repeated squaring (`x = x * x`) would then build an int as large as
//! the memory budget, one multiplication taking seconds, and its decimal form minutes.
//!
//! So every code object made from task source is prepared before it first runs: its adaptive
//! counters are initialised (what RustPython does lazily at the first `RESUME`) and the counter
//! of each multiplication is pinned where it never triggers specialisation. Everything else
//! specialises as usual. Code objects come from the entry script (`python`), the task's bundled
//! modules and `compile`, `exec` and `eval` of source, `code.replace` and `types.CodeType`; all of
//! them are prepared here. (The frozen standard library is not task code.)

use std::borrow::Borrow;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use rustpython_vm::builtins::{PyCode, PyStr, PyTypeRef};
use rustpython_vm::bytecode::{BinaryOperator, Instruction, OpArg};
use rustpython_vm::function::FuncArgs;
use rustpython_vm::{AsObject, PyObject, PyObjectRef, PyResult, VirtualMachine};

use super::NewFn;

/// An adaptive counter that never triggers: RustPython specialises when a counter drops below
/// 15, and counts down in steps of 16 (wrapping), so a counter at 15 stays ≡ 15 (mod 16) and
/// never drops below it.
const NEVER_SPECIALISE: u16 = 15;

static CODE_NEW: OnceLock<NewFn> = OnceLock::new();

/// Prepares `code` and the code objects nested in its constants, if it has not run yet.
pub(crate) fn prepare(code: &PyCode) {
    if code.quickened.swap(true, Ordering::AcqRel) {
        return;
    }
    let units = &code.instructions;
    units.quicken();
    let mut index = 0;
    while index < units.len() {
        let op = units.read_op(index);
        if let Instruction::BinaryOp { op: operator } = op {
            let arg = OpArg::new(u32::from(u8::from(units.read_arg(index))));
            if matches!(
                operator.try_get(arg),
                Ok(BinaryOperator::Multiply | BinaryOperator::InplaceMultiply)
            ) && index + 1 < units.len()
            {
                // SAFETY: `index + 1` is in bounds: the multiplication's cache entry.
                unsafe { units.write_adaptive_counter(index + 1, NEVER_SPECIALISE) };
            }
        }
        index += 1 + op.cache_entries();
    }
    for constant in code.constants.iter() {
        let constant: &PyObject = constant.borrow();
        if let Some(nested) = constant.downcast_ref::<PyCode>() {
            prepare(nested);
        }
    }
}

/// Prepares the result, if it is a code object.
fn prepared(result: PyObjectRef) -> PyObjectRef {
    if let Some(code) = result.downcast_ref::<PyCode>() {
        prepare(code);
    }
    result
}

/// Wraps this thread's code type (`replace`, the constructor).
pub(super) fn install_slots(vm: &VirtualMachine) -> PyResult<()> {
    let code_type = vm.ctx.types.code_type;
    if let Some(new) = code_type.slots.new.load() {
        let _ = CODE_NEW.set(new);
        code_type.slots.new.store(Some(prepared_new));
    }
    let name = vm.ctx.intern_str("replace");
    let replace = code_type
        .get_attr(name)
        .ok_or_else(|| vm.new_system_error("walle: code.replace is missing"))?;
    let checked = vm.new_method(
        "replace",
        code_type,
        move |zelf: PyObjectRef, mut args: FuncArgs, vm: &VirtualMachine| {
            args.prepend_arg(zelf);
            replace.call(args, vm).map(prepared)
        },
    );
    code_type.set_attr(name, checked.into());
    Ok(())
}

fn prepared_new(cls: PyTypeRef, args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    let original = CODE_NEW
        .get()
        .ok_or_else(|| vm.new_system_error("walle: code.__new__ is not set up"))?;
    original(cls, args, vm).map(prepared)
}

/// Refuses source text that would compile too deep or too big (see `source`): a `SyntaxError`
/// or a `MemoryError`. Anything that is not text is left to `compile` to refuse.
fn admit_source(source: &PyObject, vm: &VirtualMachine) -> PyResult<()> {
    let text = if let Some(text) = source.downcast_ref::<PyStr>() {
        text.as_wtf8().to_string_lossy().into_owned()
    } else if let Some(bytes) = source.downcast_ref::<rustpython_vm::builtins::PyBytes>() {
        String::from_utf8_lossy(bytes.as_bytes()).into_owned()
    } else {
        return Ok(());
    };
    super::reserve(
        "compiling this source",
        text.len() as u128 * super::source::COMPILE_BYTES_PER_SOURCE_BYTE,
        vm,
    )?;
    let Err(too_deep) = super::source::check(&text) else {
        return Ok(());
    };
    // Made as RustPython's compiler makes one: the message as its only argument, the location
    // as attributes (its traceback printer reads them).
    let line_text = text
        .lines()
        .nth(too_deep.line.saturating_sub(1))
        .unwrap_or("");
    let line_text: String = line_text.chars().take(80).collect();
    let exception = vm.new_exception_msg(
        vm.ctx.exceptions.syntax_error.to_owned(),
        too_deep.message.into(),
    );
    let object = exception.as_object();
    object.set_attr("filename", vm.ctx.new_str("<string>"), vm)?;
    object.set_attr("lineno", vm.ctx.new_int(too_deep.line), vm)?;
    object.set_attr("offset", vm.ctx.new_int(1), vm)?;
    object.set_attr("text", vm.ctx.new_str(line_text), vm)?;
    Err(exception)
}

/// Wraps this interpreter's `compile`, `exec` and `eval`.
pub(super) fn install_builtins(vm: &VirtualMachine) -> PyResult<()> {
    let builtins = vm.builtins.as_object();
    let compile = builtins.get_attr("compile", vm)?;
    let checked_compile = {
        let compile = compile.clone();
        vm.new_function("compile", move |args: FuncArgs, vm: &VirtualMachine| {
            if let Some(source) = args.args.first().or_else(|| args.kwargs.get("source")) {
                admit_source(source, vm)?;
            }
            compile.call(args, vm).map(prepared)
        })
    };
    builtins.set_attr("compile", checked_compile, vm)?;
    for (name, mode) in [("exec", "exec"), ("eval", "eval")] {
        let original = builtins.get_attr(name, vm)?;
        let compile = compile.clone();
        let checked = vm.new_function(name, move |mut args: FuncArgs, vm: &VirtualMachine| {
            if let Some(source) = args.args.first_mut() {
                if let Some(text) = source.downcast_ref::<PyStr>() {
                    // eval() ignores leading blanks, as CPython's does; compile() would not.
                    let text = match mode {
                        "eval" => text
                            .as_wtf8()
                            .to_string_lossy()
                            .trim_start_matches([' ', '\t'])
                            .to_owned(),
                        _ => text.as_wtf8().to_string_lossy().into_owned(),
                    };
                    let text: PyObjectRef = vm.ctx.new_str(text).into();
                    admit_source(&text, vm)?;
                    let code = compile.call((text, "<string>", mode), vm)?;
                    *source = prepared(code);
                } else if source
                    .downcast_ref::<rustpython_vm::builtins::PyBytes>()
                    .is_some()
                {
                    admit_source(source, vm)?;
                    let code = compile.call((source.clone(), "<string>", mode), vm)?;
                    *source = prepared(code);
                } else if let Some(code) = source.downcast_ref::<PyCode>() {
                    prepare(code);
                }
            }
            original.call(args, vm)
        });
        builtins.set_attr(name, checked, vm)?;
    }
    Ok(())
}
