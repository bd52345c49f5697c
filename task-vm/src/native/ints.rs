//! Integer arithmetic that would run long or allocate a lot is refused before it starts.
//!
//! Python integers have no size limit, and one operator can ask for a result of billions of bits
//! (`10**10**8`, `1 << 10**10`, `pow(3, 2**10**6, m)`), computed in one native call the
//! watchdog cannot stop. So the int type's power, multiplication, shift and division slots and
//! the `math` functions that build big integers first estimate the result's size and the work:
//!
//! * a result of more than [`MAX_INT_BITS`] bits raises `OverflowError` naming the limit (no
//!   task needs a number of more than a million decimal digits; CPython's own `int`↔`str`
//!   conversion limit is 4,300 digits, which RustPython enforces for parsing);
//! * a result that does not fit in the task's remaining memory budget raises `MemoryError` (and
//!   fails the run with the memory limit's error);
//! * modular powers and divisions are refused past [`MAX_WORK`] word operations.
//!
//! The size bound also bounds what no slot sees: `str()` of an exact int (RustPython converts
//! it on a fast path, in time that grows faster than its size) takes at most about 0.4 s in a
//! debug build at [`MAX_INT_BITS`]. Decimal text is parsed only up to CPython's 4,300 digits
//! (RustPython's own check), other bases up to [`MAX_INT_BITS`].
//!
//! Not covered: `a * b` where both are exact ints is specialised by RustPython's bytecode and
//! never reaches the slot. Its operands are bounded by this module (no other operator makes a
//! big int) and by the memory budget, so repeated squaring stops at the budget after a few
//! steps; the multiplication in flight when the deadline passes still completes.

use std::sync::OnceLock;

use rustpython_vm::builtins::{PyInt, PyStr, PyTypeRef};
use rustpython_vm::function::FuncArgs;
use rustpython_vm::{AsObject, PyObject, PyObjectRef, PyResult, VirtualMachine};

use super::{BinaryFn, FnAddress, NewFn, TernaryFn, reserve};

/// Largest integer result, in bits, an operation may produce (about 630,000 decimal digits).
/// The bound that matters is `str()`: RustPython converts exact ints without any check, in
/// time that grows faster than the size (0.7 s for 3 million bits in a debug build).
pub(crate) const MAX_INT_BITS: u64 = 1 << 21;

/// Results up to this size (8 KiB) are not checked against the budget: the allocator's count
/// and the watchdog handle them like any other small allocation.
const SMALL_INT_BITS: u128 = 1 << 16;

/// Most 64-bit word operations one modular power or division may take (a fraction of a second).
pub(crate) const MAX_WORK: u128 = 1 << 31;

static MULTIPLY: OnceLock<BinaryFn> = OnceLock::new();
static LSHIFT: OnceLock<BinaryFn> = OnceLock::new();
static FLOOR_DIVIDE: OnceLock<BinaryFn> = OnceLock::new();
static REMAINDER: OnceLock<BinaryFn> = OnceLock::new();
static DIVMOD: OnceLock<BinaryFn> = OnceLock::new();
static POWER: OnceLock<TernaryFn> = OnceLock::new();
static INT_NEW: OnceLock<NewFn> = OnceLock::new();

/// Wraps the int slots (on `int` and on `bool`, which copied its arithmetic).
pub(super) fn install_slots(vm: &VirtualMachine) {
    let types = &vm.ctx.types;
    let int = &types.int_type.slots;
    patch(&INT_NEW, int.new.load(), checked_new, |f| {
        int.new.store(Some(f))
    });
    for ty in [types.int_type, types.bool_type] {
        let n = &ty.slots.as_number;
        patch(&MULTIPLY, n.multiply.load(), checked_multiply, |f| {
            n.multiply.store(Some(f));
            n.right_multiply.store(Some(f));
        });
        patch(&LSHIFT, n.lshift.load(), checked_lshift, |f| {
            n.lshift.store(Some(f));
            n.right_lshift.store(Some(f));
        });
        patch(
            &FLOOR_DIVIDE,
            n.floor_divide.load(),
            checked_floor_divide,
            |f| {
                n.floor_divide.store(Some(f));
                n.right_floor_divide.store(Some(f));
            },
        );
        patch(&REMAINDER, n.remainder.load(), checked_remainder, |f| {
            n.remainder.store(Some(f));
            n.right_remainder.store(Some(f));
        });
        patch(&DIVMOD, n.divmod.load(), checked_divmod, |f| {
            n.divmod.store(Some(f));
            n.right_divmod.store(Some(f));
        });
        patch(&POWER, n.power.load(), checked_power, |f| {
            n.power.store(Some(f));
            n.right_power.store(Some(f));
        });
    }
}

/// Remembers `current` as the original (the first time) and stores `wrapper` in its place, if
/// the slot holds that original (a type whose slot differs keeps its own).
fn patch<F: Copy + FnAddress>(
    original: &OnceLock<F>,
    current: Option<F>,
    wrapper: F,
    store: impl FnOnce(F),
) {
    let Some(current) = current else {
        return;
    };
    if current.address() == wrapper.address() {
        return;
    }
    let kept = *original.get_or_init(|| current);
    if kept.address() == current.address() {
        store(wrapper);
    }
}

fn original<F: Copy>(slot: &OnceLock<F>, vm: &VirtualMachine) -> PyResult<F> {
    slot.get()
        .copied()
        .ok_or_else(|| vm.new_system_error("walle: int slot is not set up"))
}

/// Bits of `obj` if it is an int.
fn bits(obj: &PyObject) -> Option<u64> {
    obj.downcast_ref::<PyInt>().map(|i| i.as_bigint().bits())
}

/// Refuses a result of `result_bits` bits produced by `what`.
fn admit_result(what: &str, result_bits: u128, vm: &VirtualMachine) -> PyResult<()> {
    if result_bits <= SMALL_INT_BITS {
        // The everyday case (`total * 31`): nothing worth checking, so nothing checked.
        return Ok(());
    }
    if result_bits > u128::from(MAX_INT_BITS) {
        return Err(vm.new_overflow_error(format!(
            "{what} would make an integer of about {result_bits} bits; a Walle task's integers are limited to {MAX_INT_BITS} bits"
        )));
    }
    reserve(what, result_bits.div_ceil(8), vm)
}

/// Refuses an operation estimated at `work` word operations.
fn admit_work(what: &str, work: u128, vm: &VirtualMachine) -> PyResult<()> {
    if work > MAX_WORK {
        return Err(vm.new_overflow_error(format!(
            "{what} on integers this large would take about {work} word operations; a Walle task may take at most {MAX_WORK} in one operation"
        )));
    }
    Ok(())
}

fn words(bits: u64) -> u128 {
    u128::from(bits.div_ceil(64).max(1))
}

/// `int(text, base)`: RustPython limits decimal text to the digit limit but not the other bases.
fn checked_new(cls: PyTypeRef, args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    let base = args
        .args
        .get(1)
        .or_else(|| args.kwargs.get("base"))
        .and_then(|b| b.downcast_ref::<PyInt>())
        .and_then(|b| u32::try_from(b.as_bigint()).ok());
    if let (Some(text), Some(base)) = (args.args.first(), base)
        && base != 10
        && let Some(chars) = text_len(text)
    {
        // Base 0 reads the base from a prefix: up to 16 (hex) bits per digit need 4 bits.
        let bits_per_digit = u128::from(32 - base.max(16).saturating_sub(1).leading_zeros());
        admit_result("int() of this text", chars * bits_per_digit, vm)?;
    }
    original(&INT_NEW, vm)?(cls, args, vm)
}

/// Characters of a str, or bytes of bytes.
fn text_len(obj: &PyObject) -> Option<u128> {
    if let Some(s) = obj.downcast_ref::<PyStr>() {
        return Some(s.char_len() as u128);
    }
    obj.downcast_ref::<rustpython_vm::builtins::PyBytes>()
        .map(|b| b.as_bytes().len() as u128)
}

fn checked_multiply(a: &PyObject, b: &PyObject, vm: &VirtualMachine) -> PyResult {
    if let (Some(x), Some(y)) = (bits(a), bits(b)) {
        admit_result("multiplying", u128::from(x) + u128::from(y), vm)?;
    }
    original(&MULTIPLY, vm)?(a, b, vm)
}

fn checked_lshift(a: &PyObject, b: &PyObject, vm: &VirtualMachine) -> PyResult {
    if let (Some(x), Some(shift)) = (bits(a), b.downcast_ref::<PyInt>())
        && x > 0
    {
        let shift = u64::try_from(shift.as_bigint()).unwrap_or(0);
        admit_result("shifting left", u128::from(x) + u128::from(shift), vm)?;
    }
    original(&LSHIFT, vm)?(a, b, vm)
}

/// Division costs about the product of the divisor's size and the quotient's.
fn admit_division(a: &PyObject, b: &PyObject, vm: &VirtualMachine) -> PyResult<()> {
    if let (Some(x), Some(y)) = (bits(a), bits(b)) {
        let quotient = words(x.saturating_sub(y));
        admit_work("dividing", quotient * words(y), vm)?;
    }
    Ok(())
}

fn checked_floor_divide(a: &PyObject, b: &PyObject, vm: &VirtualMachine) -> PyResult {
    admit_division(a, b, vm)?;
    original(&FLOOR_DIVIDE, vm)?(a, b, vm)
}

fn checked_remainder(a: &PyObject, b: &PyObject, vm: &VirtualMachine) -> PyResult {
    admit_division(a, b, vm)?;
    original(&REMAINDER, vm)?(a, b, vm)
}

fn checked_divmod(a: &PyObject, b: &PyObject, vm: &VirtualMachine) -> PyResult {
    admit_division(a, b, vm)?;
    original(&DIVMOD, vm)?(a, b, vm)
}

fn checked_power(a: &PyObject, b: &PyObject, m: &PyObject, vm: &VirtualMachine) -> PyResult {
    if let (Some(base), Some(exponent)) = (bits(a), b.downcast_ref::<PyInt>()) {
        let exponent = exponent.as_bigint();
        if vm.is_none(m) {
            // A negative exponent gives a float; |base| <= 1 stays small; past u64 RustPython
            // refuses by itself. The result has at least (bits - 1)·e + 1 bits.
            if base > 1
                && let Ok(e) = u64::try_from(exponent)
            {
                admit_result(
                    "raising to a power",
                    u128::from(base - 1) * u128::from(e) + 1,
                    vm,
                )?;
            }
        } else if let Some(modulus) = bits(m) {
            // Square-and-multiply: about two modular multiplications per exponent bit, each
            // about the square of the modulus's words.
            let work = 2 * u128::from(exponent.bits()) * words(modulus) * words(modulus);
            admit_work("a modular power", work, vm)?;
        }
    }
    original(&POWER, vm)?(a, b, m, vm)
}

/// `int.from_bytes(data)` makes an int of 8 bits per byte: wrapped in a classmethod that checks
/// the size and calls the original bound to the same class.
pub(super) fn install_from_bytes(vm: &VirtualMachine) -> PyResult<()> {
    let int_type = vm.ctx.types.int_type;
    let name = vm.ctx.intern_str("from_bytes");
    let original = int_type
        .get_attr(name)
        .ok_or_else(|| vm.new_system_error("walle: int.from_bytes is missing"))?;
    let checked = vm.new_function(
        "from_bytes",
        move |mut args: FuncArgs, vm: &VirtualMachine| {
            let cls = args
                .take_positional()
                .ok_or_else(|| vm.new_type_error("from_bytes() needs its class"))?;
            if let Some(bytes) = args.args.first().or_else(|| args.kwargs.get("bytes"))
                && let Some(len) = text_len(bytes).or_else(|| {
                    bytes
                        .downcast_ref::<rustpython_vm::builtins::PyByteArray>()
                        .map(|b| b.borrow_buf().len() as u128)
                })
            {
                admit_result("int.from_bytes", len * 8, vm)?;
            }
            let bound = vm.call_method(&original, "__get__", (vm.ctx.none(), cls))?;
            bound.call(args, vm)
        },
    );
    let classmethod = vm
        .ctx
        .types
        .classmethod_type
        .as_object()
        .call((checked,), vm)?;
    int_type.set_attr(name, classmethod);
    Ok(())
}

/// `math` functions whose results grow with their arguments: checked in every interpreter (the
/// module object is the interpreter's own).
pub(super) fn install_functions(vm: &VirtualMachine) -> PyResult<()> {
    let math = vm.import("math", 0)?;
    wrap_math(vm, &math, "factorial", check_factorial)?;
    wrap_math(vm, &math, "perm", check_perm)?;
    wrap_math(vm, &math, "comb", check_comb)?;
    wrap_math(vm, &math, "lcm", check_lcm)
}

/// n! has about n·log2(n) bits.
fn check_factorial(args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(n) = int_arg(args, 0) else {
        return Ok(());
    };
    admit_result("math.factorial", n * u128::from(bit_length(n)), vm)
}

/// perm(n, k) = n!/(n-k)! has at most k·log2(n) bits.
fn check_perm(args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let Some(n) = int_arg(args, 0) else {
        return Ok(());
    };
    let k = int_arg(args, 1).unwrap_or(n).min(n);
    admit_result("math.perm", k * u128::from(bit_length(n)), vm)
}

/// comb(n, k) has at most min(n, min(k, n-k)·log2(n)) bits.
fn check_comb(args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let (Some(n), Some(k)) = (int_arg(args, 0), int_arg(args, 1)) else {
        return Ok(());
    };
    let steps = k.min(n.saturating_sub(k));
    admit_result("math.comb", n.min(steps * u128::from(bit_length(n))), vm)
}

/// lcm's result has at most the sum of its arguments' bits, and every step touches it.
fn check_lcm(args: &FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
    let total: u128 = args
        .args
        .iter()
        .filter_map(|a| bits(a))
        .map(u128::from)
        .sum();
    admit_result("math.lcm", total, vm)?;
    let steps = args.args.len() as u128;
    admit_work("math.lcm", total.div_ceil(64).max(1) * steps, vm)
}

/// The positional argument `index` as an unsigned number, if it is a non-negative int (other
/// arguments are left to the original function to refuse).
fn int_arg(args: &FuncArgs, index: usize) -> Option<u128> {
    let int = args.args.get(index)?.downcast_ref::<PyInt>()?;
    u128::try_from(int.as_bigint()).ok()
}

fn bit_length(n: u128) -> u32 {
    128 - n.leading_zeros()
}

/// Replaces `module.name` with a function that runs `check` on the arguments first.
fn wrap_math(
    vm: &VirtualMachine,
    module: &PyObjectRef,
    name: &'static str,
    check: fn(&FuncArgs, &VirtualMachine) -> PyResult<()>,
) -> PyResult<()> {
    let original = module.get_attr(name, vm)?;
    let checked = vm.new_function(name, move |args: FuncArgs, vm: &VirtualMachine| {
        check(&args, vm)?;
        original.call(args, vm)
    });
    module.set_attr(name, checked, vm)
}
