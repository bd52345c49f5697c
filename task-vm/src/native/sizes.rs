//! Native calls that are given a size are checked against the remaining budget before they
//! allocate.
//!
//! `bytearray(10**10)`, `'x'.ljust(10**10)` or `f'{1:>{10**10}}'` ask for gigabytes in one
//! allocation. Left alone, the allocator would park the thread at the task's hard cap and the
//! pool would have to abandon the worker; checked here, the script gets a `MemoryError` at
//! once and the run fails with the memory limit's error. Each check computes the result's size
//! from the arguments (cheaply: a `count` at most) and leaves every other argument to the
//! original, which still reports its own errors.

use std::sync::OnceLock;

use rustpython_vm::builtins::{PyByteArray, PyBytes, PyInt, PyStr, PyType, PyTypeRef};
use rustpython_vm::function::FuncArgs;
use rustpython_vm::{Py, PyObject, PyObjectRef, PyResult, VirtualMachine};

use super::ints::MAX_INT_BITS;
use super::{InitFn, NewFn, reserve};

static BYTES_NEW: OnceLock<NewFn> = OnceLock::new();
static BYTEARRAY_INIT: OnceLock<InitFn> = OnceLock::new();

/// A check of a method call's arguments (`zelf` is the object the method is called on).
type Check = fn(&PyObject, &FuncArgs, &VirtualMachine) -> PyResult<()>;

/// Wraps this thread's built-in constructors and methods that take a size.
pub(super) fn install_slots(vm: &VirtualMachine) -> PyResult<()> {
    let types = &vm.ctx.types;
    if let Some(new) = types.bytes_type.slots.new.load() {
        let _ = BYTES_NEW.set(new);
        types.bytes_type.slots.new.store(Some(checked_bytes_new));
    }
    if let Some(init) = types.bytearray_type.slots.init.load() {
        let _ = BYTEARRAY_INIT.set(init);
        types
            .bytearray_type
            .slots
            .init
            .store(Some(checked_bytearray_init));
    }
    for ty in [types.str_type, types.bytes_type, types.bytearray_type] {
        wrap_method(vm, ty, "ljust", check_padding)?;
        wrap_method(vm, ty, "rjust", check_padding)?;
        wrap_method(vm, ty, "center", check_padding)?;
        wrap_method(vm, ty, "zfill", check_padding)?;
        wrap_method(vm, ty, "expandtabs", check_expandtabs)?;
        wrap_method(vm, ty, "replace", check_replace)?;
        wrap_method(vm, ty, "join", check_join)?;
        wrap_method(vm, ty, "split", check_split)?;
        wrap_method(vm, ty, "rsplit", check_split)?;
        wrap_method(vm, ty, "splitlines", check_splitlines)?;
    }
    wrap_method(vm, types.str_type, "translate", check_translate)?;
    for ty in [
        types.int_type,
        types.float_type,
        types.str_type,
        types.complex_type,
    ] {
        wrap_method(vm, ty, "__format__", check_format)?;
    }
    wrap_method(vm, types.int_type, "to_bytes", check_to_bytes)?;
    let random: PyTypeRef = vm
        .import("_random", 0)?
        .get_attr("Random", vm)?
        .downcast()
        .map_err(|_| vm.new_system_error("walle: _random.Random is not a type"))?;
    // Method descriptors keep their class for ever; the type lives as long as the thread.
    let random: &'static Py<PyType> = Box::leak(Box::new(random));
    wrap_method(vm, random, "getrandbits", check_getrandbits)
}

/// Replaces `ty.name` with a method that runs `check` and then the original.
fn wrap_method(
    vm: &VirtualMachine,
    ty: &'static Py<PyType>,
    name: &'static str,
    check: Check,
) -> PyResult<()> {
    let attr = vm.ctx.intern_str(name);
    let original = ty
        .get_attr(attr)
        .ok_or_else(|| vm.new_system_error(format!("walle: {}.{name} is missing", ty.name())))?;
    let checked = vm.new_method(
        name,
        ty,
        move |zelf: PyObjectRef, mut args: FuncArgs, vm: &VirtualMachine| {
            check(&zelf, &args, vm)?;
            args.prepend_arg(zelf);
            original.call(args, vm)
        },
    );
    ty.set_attr(attr, checked.into());
    Ok(())
}

fn checked_bytes_new(cls: PyTypeRef, args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    check_count_argument("bytes(n)", &args, vm)?;
    let original = BYTES_NEW
        .get()
        .ok_or_else(|| vm.new_system_error("walle: bytes.__new__ is not set up"))?;
    original(cls, args, vm)
}

fn checked_bytearray_init(zelf: PyObjectRef, args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    check_count_argument("bytearray(n)", &args, vm)?;
    let original = BYTEARRAY_INIT
        .get()
        .ok_or_else(|| vm.new_system_error("walle: bytearray.__init__ is not set up"))?;
    original(zelf, args, vm)
}

/// `bytes(n)` and `bytearray(n)` allocate n zero bytes.
fn check_count_argument(what: &str, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let size = args
        .args
        .first()
        .or_else(|| args.kwargs.get("source"))
        .and_then(|source| int_value(source));
    match size {
        Some(n) => reserve(what, n, vm),
        None => Ok(()),
    }
}

/// An int argument's value, if it is a non-negative int that fits.
fn int_value(obj: &PyObject) -> Option<u128> {
    u128::try_from(obj.downcast_ref::<PyInt>()?.as_bigint()).ok()
}

/// Bytes a str, bytes or bytearray takes (the wtf-8 form for a str), if it is one.
fn byte_len(obj: &PyObject) -> Option<u128> {
    let len = if let Some(s) = obj.downcast_ref::<PyStr>() {
        s.as_wtf8().as_bytes().len()
    } else if let Some(b) = obj.downcast_ref::<PyBytes>() {
        b.as_bytes().len()
    } else if let Some(b) = obj.downcast_ref::<PyByteArray>() {
        b.borrow_buf().len()
    } else {
        return None;
    };
    Some(len as u128)
}

/// An argument by position or keyword.
fn argument<'a>(args: &'a FuncArgs, position: usize, keyword: &str) -> Option<&'a PyObjectRef> {
    args.args.get(position).or_else(|| args.kwargs.get(keyword))
}

/// `ljust`, `rjust`, `center` (width, fill character) and `zfill` (width): the result has at
/// most `width` fill characters plus the original.
fn check_padding(zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(width) = argument(args, 0, "width").and_then(|w| int_value(w)) else {
        return Ok(());
    };
    let fill = argument(args, 1, "fillchar")
        .and_then(|f| byte_len(f))
        .unwrap_or(1);
    let own = byte_len(zelf).unwrap_or(0);
    reserve("padding to this width", width * fill + own, vm)
}

/// `expandtabs(tabsize=8)`: each tab becomes up to `tabsize` spaces.
fn check_expandtabs(zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(tabsize) = argument(args, 0, "tabsize").and_then(|t| int_value(t)) else {
        return Ok(());
    };
    let tabs = count(zelf, "\t", vm)?;
    let own = byte_len(zelf).unwrap_or(0);
    reserve("expanding tabs", tabs * tabsize + own, vm)
}

/// `replace(old, new)`: each occurrence grows by the difference in length (an empty `old`
/// occurs between every two characters).
fn check_replace(zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let (Some(old), Some(new)) = (args.args.first(), args.args.get(1)) else {
        return Ok(());
    };
    let (Some(old_len), Some(new_len)) = (byte_len(old), byte_len(new)) else {
        return Ok(());
    };
    if new_len <= old_len {
        return Ok(());
    }
    let occurrences = vm
        .call_method(zelf, "count", (old.clone(),))
        .ok()
        .and_then(|n| int_value(&n))
        .unwrap_or(0);
    let own = byte_len(zelf).unwrap_or(0);
    reserve(
        "this replacement",
        own + occurrences * (new_len - old_len),
        vm,
    )
}

/// What one more object in a result list takes besides its data: its header and the list's
/// pointer to it (RustPython's str and bytes objects take 56 to 80 bytes empty).
const PER_OBJECT_BYTES: u128 = 80;

/// `split(sep=None, maxsplit=-1)` and `rsplit`: a list of pieces, one object each. The pieces
/// are counted first (a `count` of the separator, or the words of a whitespace split), since
/// splitting millions of them is one native call.
fn check_split(zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(own) = byte_len(zelf) else {
        return Ok(());
    };
    if own * PER_OBJECT_BYTES < 1 << 20 {
        return Ok(()); // At most a few MB of pieces: nothing worth counting.
    }
    let pieces = match argument(args, 0, "sep").filter(|sep| !vm.is_none(sep)) {
        Some(sep) => {
            let n = vm.call_method(zelf, "count", (sep.clone(),))?;
            int_value(&n).unwrap_or(0) + 1
        }
        None => words(zelf),
    };
    let pieces = match argument(args, 1, "maxsplit").and_then(|m| int_value(m)) {
        Some(most) => pieces.min(most + 1),
        None => pieces,
    };
    reserve("splitting this text", pieces * PER_OBJECT_BYTES + own, vm)
}

/// `splitlines()`: one object per line.
fn check_splitlines(zelf: &PyObject, _args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(own) = byte_len(zelf) else {
        return Ok(());
    };
    if own * PER_OBJECT_BYTES < 1 << 20 {
        return Ok(());
    }
    let breaks = text_units(zelf)
        .filter(|&c| matches!(c, 0x0a..=0x0d | 0x1c..=0x1e | 0x85 | 0x2028 | 0x2029))
        .count() as u128;
    reserve(
        "splitting these lines",
        (breaks + 1) * PER_OBJECT_BYTES + own,
        vm,
    )
}

/// Runs of non-whitespace in a str, bytes or bytearray.
fn words(obj: &PyObject) -> u128 {
    let mut words = 0;
    let mut in_word = false;
    for unit in text_units(obj) {
        let space = char::from_u32(unit).is_some_and(char::is_whitespace);
        if !space && !in_word {
            words += 1;
        }
        in_word = !space;
    }
    words
}

/// The characters of a str (code points) or the bytes of bytes and bytearray.
fn text_units(obj: &PyObject) -> Box<dyn Iterator<Item = u32> + '_> {
    if let Some(s) = obj.downcast_ref::<PyStr>() {
        Box::new(s.as_wtf8().code_points().map(|c| c.to_u32()))
    } else if let Some(b) = obj.downcast_ref::<PyBytes>() {
        Box::new(b.as_bytes().iter().map(|&b| u32::from(b)))
    } else if let Some(b) = obj.downcast_ref::<PyByteArray>() {
        Box::new(b.borrow_buf().to_vec().into_iter().map(u32::from))
    } else {
        Box::new(std::iter::empty())
    }
}

/// `str.translate(table)`: each character may become the longest replacement in the table (a
/// table that is not a dict calls Python for each character, which the deadline stops).
fn check_translate(zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let (Some(text), Some(table)) = (
        zelf.downcast_ref::<PyStr>(),
        args.args
            .first()
            .and_then(|t| t.downcast_ref::<rustpython_vm::builtins::PyDict>()),
    ) else {
        return Ok(());
    };
    let longest = table
        .values_vec()
        .iter()
        .map(|value| {
            if value.downcast_ref::<PyInt>().is_some() {
                4
            } else {
                byte_len(value).unwrap_or(0)
            }
        })
        .max()
        .unwrap_or(0);
    reserve(
        "this translation",
        text.char_len() as u128 * longest.max(1),
        vm,
    )
}

/// `sep.join(items)`: the items' lengths plus a separator between each two. Only sequences are
/// summed here (an iterator would be consumed); the join of an iterator is bounded by its
/// items, which are checked as they are made.
fn check_join(zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(items) = args.args.first() else {
        return Ok(());
    };
    let items: Vec<PyObjectRef> =
        if let Some(list) = items.downcast_ref::<rustpython_vm::builtins::PyList>() {
            list.borrow_vec().to_vec()
        } else if let Some(tuple) = items.downcast_ref::<rustpython_vm::builtins::PyTuple>() {
            tuple.as_slice().to_vec()
        } else {
            return Ok(());
        };
    let separator = byte_len(zelf).unwrap_or(0);
    let total: u128 = items.iter().filter_map(|item| byte_len(item)).sum::<u128>()
        + separator * (items.len().saturating_sub(1) as u128);
    reserve("joining these items", total, vm)
}

/// `__format__(spec)`: a width and a precision in the spec make the result at least that long.
fn check_format(_zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(spec) = args
        .args
        .first()
        .and_then(|s| s.downcast_ref::<PyStr>())
        .and_then(|s| s.to_str().map(str::to_owned))
    else {
        return Ok(());
    };
    let (width, precision, fill) = format_sizes(&spec);
    reserve(
        "formatting to this width",
        width.saturating_mul(fill) + precision,
        vm,
    )
}

/// Width, precision and the fill character's byte length of a format spec
/// (`[[fill]align][sign][z][#][0][width][grouping][.precision][type]`).
fn format_sizes(spec: &str) -> (u128, u128, u128) {
    let chars: Vec<char> = spec.chars().collect();
    let is_align = |c: &char| matches!(c, '<' | '>' | '=' | '^');
    let (mut at, fill) = if chars.len() >= 2 && is_align(&chars[1]) {
        (2, chars[0].len_utf8() as u128)
    } else if chars.first().is_some_and(is_align) {
        (1, 1)
    } else {
        (0, 1)
    };
    while at < chars.len() && matches!(chars[at], '+' | '-' | ' ' | 'z' | '#' | '0') {
        at += 1;
    }
    let width = digits(&chars, &mut at);
    while at < chars.len() && matches!(chars[at], ',' | '_') {
        at += 1;
    }
    let precision = if chars.get(at) == Some(&'.') {
        at += 1;
        digits(&chars, &mut at)
    } else {
        0
    };
    (width, precision, fill)
}

/// The decimal number starting at `at` (0 if none), saturating; moves `at` past it.
fn digits(chars: &[char], at: &mut usize) -> u128 {
    let mut value: u128 = 0;
    while let Some(digit) = chars.get(*at).and_then(|c| c.to_digit(10)) {
        value = value.saturating_mul(10).saturating_add(u128::from(digit));
        *at += 1;
    }
    value
}

/// `int.to_bytes(length=1, …)` allocates `length` bytes.
fn check_to_bytes(_zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    match argument(args, 0, "length").and_then(|l| int_value(l)) {
        Some(length) => reserve("int.to_bytes", length, vm),
        None => Ok(()),
    }
}

/// `Random.getrandbits(k)` makes a k-bit integer.
fn check_getrandbits(_zelf: &PyObject, args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(bits) = argument(args, 0, "k").and_then(|k| int_value(k)) else {
        return Ok(());
    };
    if bits > u128::from(MAX_INT_BITS) {
        return Err(vm.new_overflow_error(format!(
            "getrandbits({bits}) would make an integer of {bits} bits; a Walle task's integers are limited to {MAX_INT_BITS} bits"
        )));
    }
    reserve("getrandbits", bits.div_ceil(8), vm)
}

/// How many times `needle` occurs in `haystack` (by its own `count`).
fn count(haystack: &PyObject, needle: &str, vm: &VirtualMachine) -> PyResult<u128> {
    let needle: PyObjectRef = if haystack.downcast_ref::<PyStr>().is_some() {
        vm.ctx.new_str(needle).into()
    } else {
        vm.ctx.new_bytes(needle.as_bytes().to_vec()).into()
    };
    let n = vm.call_method(haystack, "count", (needle,))?;
    Ok(int_value(&n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::format_sizes;

    #[test]
    fn format_specs_give_their_width_and_precision() {
        assert_eq!(format_sizes(""), (0, 0, 1));
        assert_eq!(format_sizes(">10"), (10, 0, 1));
        assert_eq!(format_sizes("é^+#012,.3f"), (12, 3, 2));
        assert_eq!(format_sizes(".100000e"), (0, 100000, 1));
        assert_eq!(
            format_sizes("99999999999999999999999999999999999999999999").0,
            u128::MAX
        );
    }
}
