//! Elementwise ops: unary maths, binary arithmetic, comparisons and logic with numpy-style
//! (multidirectional) broadcasting, and Where. Floats are f32; integers (and bools, as 0/1)
//! are i64, where arithmetic wraps and division by zero gives 0 rather than a panic.

use crate::{Tensor, Value};

/// Unary ops applied value by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Neg,
    Sqrt,
    Abs,
    Log,
    Reciprocal,
    Floor,
    Ceil,
    /// Halves to even.
    Round,
    Sign,
    Erf,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
}

impl Unary {
    /// The op an ONNX unary op type names.
    pub fn parse(op_type: &str) -> Option<Unary> {
        use Unary::*;
        Some(match op_type {
            "Relu" => Relu,
            "Sigmoid" => Sigmoid,
            "Tanh" => Tanh,
            "Exp" => Exp,
            "Neg" => Neg,
            "Sqrt" => Sqrt,
            "Abs" => Abs,
            "Log" => Log,
            "Reciprocal" => Reciprocal,
            "Floor" => Floor,
            "Ceil" => Ceil,
            "Round" => Round,
            "Sign" => Sign,
            "Erf" => Erf,
            "Sin" => Sin,
            "Cos" => Cos,
            "Tan" => Tan,
            "Asin" => Asin,
            "Acos" => Acos,
            "Atan" => Atan,
            "Sinh" => Sinh,
            "Cosh" => Cosh,
            "Asinh" => Asinh,
            "Acosh" => Acosh,
            "Atanh" => Atanh,
            _ => return None,
        })
    }

    /// Applies the op to every value in place (each arm its own loop, so it vectorises).
    pub fn apply(self, t: Tensor) -> Tensor {
        use Unary::*;
        match self {
            Relu => map(t, |x| x.max(0.0)),
            Sigmoid => map(t, |x| 1.0 / (1.0 + (-x).exp())),
            Tanh => map(t, f32::tanh),
            Exp => map(t, f32::exp),
            Neg => map(t, |x| -x),
            Sqrt => map(t, f32::sqrt),
            Abs => map(t, f32::abs),
            Log => map(t, f32::ln),
            Reciprocal => map(t, f32::recip),
            Floor => map(t, f32::floor),
            Ceil => map(t, f32::ceil),
            Round => map(t, f32::round_ties_even),
            Sign => map(t, |x| {
                if x == 0.0 || x.is_nan() {
                    x
                } else {
                    x.signum()
                }
            }),
            Erf => map(t, erf),
            Sin => map(t, f32::sin),
            Cos => map(t, f32::cos),
            Tan => map(t, f32::tan),
            Asin => map(t, f32::asin),
            Acos => map(t, f32::acos),
            Atan => map(t, f32::atan),
            Sinh => map(t, f32::sinh),
            Cosh => map(t, f32::cosh),
            Asinh => map(t, f32::asinh),
            Acosh => map(t, f32::acosh),
            Atanh => map(t, f32::atanh),
        }
    }

    /// The op on integers, where it means something for them.
    pub fn apply_ints(self, mut data: Vec<i64>) -> Result<Vec<i64>, String> {
        let f: fn(i64) -> i64 = match self {
            Unary::Neg => i64::wrapping_neg,
            Unary::Abs => i64::wrapping_abs,
            Unary::Sign => i64::signum,
            Unary::Relu => |x| x.max(0),
            Unary::Floor | Unary::Ceil | Unary::Round => |x| x,
            other => return Err(format!("{other:?} of int64 values")),
        };
        data.iter_mut().for_each(|x| *x = f(*x));
        Ok(data)
    }
}

/// What Cast converts to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CastTo {
    /// Float and double (computed as float).
    Float,
    /// An integer type of `bits` bits: values wrap to its range, floats truncate toward zero.
    Int { bits: u32, signed: bool },
    /// 1 for nonzero, else 0.
    Bool,
}

impl CastTo {
    /// The target of ONNX's `to` attribute (a `TensorProto.DataType`), if the engine has it.
    pub fn from_onnx(to: i64) -> Option<CastTo> {
        use crate::onnx::pb::tensor_proto::DataType as T;
        let int = |bits, signed| Some(CastTo::Int { bits, signed });
        match T::try_from(i32::try_from(to).ok()?).ok()? {
            T::Float | T::Double => Some(CastTo::Float),
            T::Int64 => int(64, true),
            T::Int32 => int(32, true),
            T::Int16 => int(16, true),
            T::Int8 => int(8, true),
            T::Uint64 => int(64, false),
            T::Uint32 => int(32, false),
            T::Uint16 => int(16, false),
            T::Uint8 => int(8, false),
            T::Bool => Some(CastTo::Bool),
            _ => None,
        }
    }

    /// The element type of the result.
    pub fn dtype(self) -> crate::DType {
        match self {
            CastTo::Float => crate::DType::F32,
            _ => crate::DType::I64,
        }
    }

    /// Converts a value.
    pub fn apply(self, value: &Value) -> Result<Value, String> {
        let shape = value.shape().to_vec();
        Ok(match (self, value) {
            (CastTo::Float, Value::F32(t)) => Value::F32(t.clone()),
            (CastTo::Float, Value::I64 { data, .. }) => Value::F32(
                Tensor::new(shape, data.iter().map(|&v| v as f32).collect())
                    .map_err(|e| e.to_string())?,
            ),
            (CastTo::Bool, Value::F32(t)) => Value::I64 {
                shape,
                data: t.data().iter().map(|&v| i64::from(v != 0.0)).collect(),
            },
            (CastTo::Bool, Value::I64 { data, .. }) => Value::I64 {
                shape,
                data: data.iter().map(|&v| i64::from(v != 0)).collect(),
            },
            (CastTo::Int { bits, signed }, Value::F32(t)) => Value::I64 {
                shape,
                data: t
                    .data()
                    .iter()
                    .map(|&v| wrap(v as i64, bits, signed))
                    .collect(),
            },
            (CastTo::Int { bits, signed }, Value::I64 { data, .. }) => Value::I64 {
                shape,
                data: data.iter().map(|&v| wrap(v, bits, signed)).collect(),
            },
        })
    }
}

/// `v` wrapped to a `bits`-bit integer's range (as the ONNX reference's numpy casts do).
fn wrap(v: i64, bits: u32, signed: bool) -> i64 {
    if bits >= 64 {
        return v;
    }
    let low = v & ((1i64 << bits) - 1);
    if signed && low >> (bits - 1) != 0 {
        low - (1i64 << bits)
    } else {
        low
    }
}

/// The error function, to within 1.2e-7 (Numerical Recipes' `erfc` Chebyshev fit, in f64):
/// std has no `erf`, and Gelu's conformance needs more than the usual 1e-4 fits.
fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    (if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }) as f32
}

fn map(mut t: Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    super::for_chunks(t.data_mut(), |_, chunk| {
        chunk.iter_mut().for_each(|x| *x = f(*x))
    });
    t
}

/// Binary arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Remainder with the divisor's sign (Python's `%`: ONNX Mod with `fmod = 0`).
    Mod,
    /// Remainder with the dividend's sign (C's `fmod`: ONNX Mod with `fmod = 1`).
    FMod,
    /// Integers only (BitwiseAnd, BitwiseOr, BitwiseXor, BitShift).
    BitAnd,
    BitOr,
    BitXor,
    ShiftLeft,
    /// Logical: the value's bits read as unsigned.
    ShiftRight,
}

impl Binary {
    /// `a ∘ b` with broadcasting, into a new tensor.
    pub fn apply(self, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
        match self {
            Binary::Add => apply_with(a, b, |x, y| x + y),
            Binary::Sub => apply_with(a, b, |x, y| x - y),
            Binary::Mul => apply_with(a, b, |x, y| x * y),
            Binary::Div => apply_with(a, b, |x, y| x / y),
            Binary::Pow => apply_with(a, b, f32::powf),
            // NaN wins, as in numpy's maximum (f32::max would drop it).
            Binary::Max => apply_with(a, b, |x, y| if x.is_nan() || x > y { x } else { y }),
            Binary::Min => apply_with(a, b, |x, y| if x.is_nan() || x < y { x } else { y }),
            Binary::Mod => apply_with(a, b, |x, y| {
                let r = x % y;
                if r != 0.0 && (r < 0.0) != (y < 0.0) {
                    r + y
                } else {
                    r
                }
            }),
            Binary::FMod => apply_with(a, b, |x, y| x % y),
            bitwise => Err(format!("{bitwise:?} of float values")),
        }
    }

    /// Whether the op is defined on integers only.
    pub fn is_bitwise(self) -> bool {
        use Binary::*;
        matches!(self, BitAnd | BitOr | BitXor | ShiftLeft | ShiftRight)
    }

    /// `a ∘ b` on integers: wrapping, and 0 where a division has no integer result (or a shift
    /// leaves no bits).
    pub fn apply_ints(
        self,
        (sa, a): (&[usize], &[i64]),
        (sb, b): (&[usize], &[i64]),
    ) -> Result<Value, String> {
        let f: fn(i64, i64) -> i64 = match self {
            Binary::Add => i64::wrapping_add,
            Binary::Sub => i64::wrapping_sub,
            Binary::Mul => i64::wrapping_mul,
            Binary::Div => |x, y| x.checked_div(y).unwrap_or(0),
            Binary::Pow => |x, y| (x as f64).powf(y as f64) as i64,
            Binary::Max => i64::max,
            Binary::Min => i64::min,
            Binary::Mod => |x, y| {
                x.checked_rem(y).map_or(0, |r| {
                    if r != 0 && (r < 0) != (y < 0) {
                        r + y
                    } else {
                        r
                    }
                })
            },
            Binary::FMod => |x, y| x.checked_rem(y).unwrap_or(0),
            Binary::BitAnd => |x, y| x & y,
            Binary::BitOr => |x, y| x | y,
            Binary::BitXor => |x, y| x ^ y,
            Binary::ShiftLeft => |x, y| {
                u32::try_from(y)
                    .ok()
                    .and_then(|y| x.checked_shl(y))
                    .unwrap_or(0)
            },
            Binary::ShiftRight => |x, y| {
                let shifted = u32::try_from(y)
                    .ok()
                    .and_then(|y| (x as u64).checked_shr(y));
                shifted.unwrap_or(0) as i64
            },
        };
        let (shape, data) = zip_broadcast((sa, a), (sb, b), f)?;
        Ok(Value::I64 { shape, data })
    }

    /// `a ∘ b` on values of one element type (Pow also takes an int exponent of a float base).
    pub fn apply_values(self, a: &Value, b: &Value) -> Result<Value, String> {
        match (a, b) {
            (Value::F32(x), Value::F32(y)) => Ok(Value::F32(self.apply(x, y)?)),
            (Value::I64 { shape: sa, data: a }, Value::I64 { shape: sb, data: b }) => {
                self.apply_ints((sa, a), (sb, b))
            }
            (Value::F32(x), Value::I64 { shape, data }) if self == Binary::Pow => {
                let exponent = data.iter().map(|&v| v as f32).collect();
                let y = Tensor::new(shape.clone(), exponent).map_err(|e| e.to_string())?;
                Ok(Value::F32(self.apply(x, &y)?))
            }
            (Value::I64 { shape: sa, data: a }, Value::F32(y)) if self == Binary::Pow => {
                let (shape, data) = zip_broadcast((sa, a), (y.shape(), y.data()), |x, e| {
                    (x as f64).powf(f64::from(e)) as i64
                })?;
                Ok(Value::I64 { shape, data })
            }
            _ => Err(format!(
                "{self:?} of {} and {}",
                a.type_name(),
                b.type_name()
            )),
        }
    }

    /// `a = a ∘ b` (then ReLU when `relu`) in `a`'s own buffer; `false` (and `a` untouched)
    /// when `b` does not broadcast to `a`'s shape.
    pub fn apply_in_place(self, a: &mut Tensor, b: &Tensor, relu: bool) -> bool {
        match self {
            Binary::Add => apply_in_place_with(a, b, relu, |x, y| x + y),
            Binary::Sub => apply_in_place_with(a, b, relu, |x, y| x - y),
            Binary::Mul => apply_in_place_with(a, b, relu, |x, y| x * y),
            Binary::Div => apply_in_place_with(a, b, relu, |x, y| x / y),
            _ => false,
        }
    }
}

/// Comparisons: 1 where true, else 0 (int64, ONNX's bool).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compare {
    Equal,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
}

impl Compare {
    /// `a ∘ b` with broadcasting, on values of one element type.
    pub fn apply(self, a: &Value, b: &Value) -> Result<Value, String> {
        let (shape, data) = match (a, b) {
            (Value::F32(x), Value::F32(y)) => {
                zip_broadcast((x.shape(), x.data()), (y.shape(), y.data()), |x, y| {
                    self.holds(x.partial_cmp(&y))
                })?
            }
            (Value::I64 { shape: sa, data: a }, Value::I64 { shape: sb, data: b }) => {
                zip_broadcast((sa, a), (sb, b), |x, y| self.holds(Some(x.cmp(&y))))?
            }
            _ => {
                return Err(format!(
                    "{self:?} of {} and {}",
                    a.type_name(),
                    b.type_name()
                ));
            }
        };
        Ok(Value::I64 { shape, data })
    }

    /// 1 if the ordering satisfies the comparison (never for NaN), else 0.
    fn holds(self, order: Option<std::cmp::Ordering>) -> i64 {
        use std::cmp::Ordering::*;
        let Some(order) = order else { return 0 };
        i64::from(match self {
            Compare::Equal => order == Equal,
            Compare::Less => order == Less,
            Compare::Greater => order == Greater,
            Compare::LessOrEqual => order != Greater,
            Compare::GreaterOrEqual => order != Less,
        })
    }
}

/// Logic on bools (int64, nonzero true).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Logic {
    And,
    Or,
    Xor,
}

impl Logic {
    /// `a ∘ b` with broadcasting.
    pub fn apply(
        self,
        (sa, a): (&[usize], &[i64]),
        (sb, b): (&[usize], &[i64]),
    ) -> Result<Value, String> {
        let (shape, data) = zip_broadcast((sa, a), (sb, b), |x, y| {
            let (x, y) = (x != 0, y != 0);
            i64::from(match self {
                Logic::And => x && y,
                Logic::Or => x || y,
                Logic::Xor => x != y,
            })
        })?;
        Ok(Value::I64 { shape, data })
    }
}

/// ONNX Where: `x` where `condition` is nonzero, else `y`, all three broadcast together.
pub fn where_(condition: (&[usize], &[i64]), x: &Value, y: &Value) -> Result<Value, String> {
    match (x, y) {
        (Value::F32(a), Value::F32(b)) => {
            let (shape, data) = select(condition, (a.shape(), a.data()), (b.shape(), b.data()))?;
            Ok(Value::F32(
                Tensor::new(shape, data).map_err(|e| e.to_string())?,
            ))
        }
        (Value::I64 { shape: sa, data: a }, Value::I64 { shape: sb, data: b }) => {
            let (shape, data) = select(condition, (sa, a), (sb, b))?;
            Ok(Value::I64 { shape, data })
        }
        _ => Err(format!("Where of {} and {}", x.type_name(), y.type_name())),
    }
}

/// [`where_`] for one element type.
fn select<T: Copy>(
    (sc, c): (&[usize], &[i64]),
    (sx, x): (&[usize], &[T]),
    (sy, y): (&[usize], &[T]),
) -> Result<(Vec<usize>, Vec<T>), String> {
    let shape = broadcast_shape(&broadcast_shape(sc, sx)?, sy)?;
    let (ic, ix, iy) = (
        broadcast_index(sc, &shape),
        broadcast_index(sx, &shape),
        broadcast_index(sy, &shape),
    );
    let data = ic
        .zip(ix.zip(iy))
        .map(|(i, (j, k))| if c[i] != 0 { x[j] } else { y[k] })
        .collect();
    Ok((shape, data))
}

/// For each element of `to` in order, the index of the element of a tensor of (broadcastable)
/// `shape` it reads.
fn broadcast_index(shape: &[usize], to: &[usize]) -> impl Iterator<Item = usize> {
    let strides = broadcast_strides(shape, to);
    let to = to.to_vec();
    let total: usize = to.iter().product();
    let mut index = vec![0usize; to.len()];
    (0..total).map(move |_| {
        let at = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        for axis in (0..to.len()).rev() {
            index[axis] += 1;
            if index[axis] < to[axis] {
                break;
            }
            index[axis] = 0;
        }
        at
    })
}

/// [`Binary::apply`] for one operation (monomorphised, so the loops vectorise): as
/// [`zip_broadcast`], with the output cut into one chunk per thread.
fn apply_with(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor, String> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let plan = BroadcastRows::new(a.shape(), b.shape(), &shape);
    let mut out = vec![0.0; shape.iter().product()];
    super::for_chunks(&mut out, |offset, chunk| {
        plan.zip(offset, chunk, (a.data(), b.data()), &f)
    });
    Tensor::new(shape, out).map_err(|e| e.to_string())
}

/// Two operands broadcast to one output shape, read row by row on the output's axes merged
/// as far as both allow ([`merged_axes`]).
struct BroadcastRows {
    dims: Vec<usize>,
    strides: [Vec<usize>; 2],
}

impl BroadcastRows {
    fn new(sa: &[usize], sb: &[usize], shape: &[usize]) -> BroadcastRows {
        let strides = [sa, sb].map(|s| broadcast_strides(s, shape));
        let (dims, strides) = merged_axes(shape, [&strides[0], &strides[1]]);
        BroadcastRows { dims, strides }
    }

    /// Writes `f(a, b)` into `chunk`, the output's elements from `offset` on.
    #[inline(always)]
    fn zip<A: Copy, B: Copy, U>(
        &self,
        offset: usize,
        chunk: &mut [U],
        (a, b): (&[A], &[B]),
        f: &impl Fn(A, B) -> U,
    ) {
        let last = self.dims.len() - 1;
        let [sa, sb] = &self.strides;
        for_row_segments(&self.dims, offset, chunk, |row, column, segment| {
            let ia = row_offset(row, &self.dims, sa) + column * sa[last];
            let ib = row_offset(row, &self.dims, sb) + column * sb[last];
            let len = segment.len();
            match (sa[last], sb[last]) {
                (1, 1) => {
                    let (x, y) = (&a[ia..ia + len], &b[ib..ib + len]);
                    for ((o, &x), &y) in segment.iter_mut().zip(x).zip(y) {
                        *o = f(x, y);
                    }
                }
                (1, 0) => {
                    let y = b[ib];
                    for (o, &x) in segment.iter_mut().zip(&a[ia..ia + len]) {
                        *o = f(x, y);
                    }
                }
                (0, 1) => {
                    let x = a[ia];
                    for (o, &y) in segment.iter_mut().zip(&b[ib..ib + len]) {
                        *o = f(x, y);
                    }
                }
                (step_a, step_b) => {
                    for (k, o) in segment.iter_mut().enumerate() {
                        *o = f(a[ia + k * step_a], b[ib + k * step_b]);
                    }
                }
            }
        });
    }
}

/// `shape` and the operands' `strides` with adjacent axes merged wherever every operand reads
/// them as one axis (broadcast over both, or contiguous across both), and axes of size 1
/// dropped: a per-channel operand of an NCHW tensor reads as `[C, H·W]` with strides `[1, 0]`,
/// so its rows are whole planes, not image rows. At least one axis is left.
fn merged_axes<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
) -> (Vec<usize>, [Vec<usize>; N]) {
    let mut dims: Vec<usize> = Vec::new();
    let mut merged: [Vec<usize>; N] = std::array::from_fn(|_| Vec::new());
    for (axis, &n) in shape.iter().enumerate().filter(|&(_, &n)| n != 1) {
        let joins = (0..N).all(|i| merged[i].last() == Some(&(strides[i][axis] * n)));
        match dims.last_mut() {
            Some(last) if joins => {
                *last *= n;
                for (merged, strides) in merged.iter_mut().zip(strides) {
                    merged.pop();
                    merged.push(strides[axis]);
                }
            }
            _ => {
                dims.push(n);
                for (merged, strides) in merged.iter_mut().zip(strides) {
                    merged.push(strides[axis]);
                }
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        merged.iter_mut().for_each(|s| s.push(0));
    }
    (dims, merged)
}

/// Calls `f(row, column, segment)` for each piece of `chunk` (the elements from `offset` on of
/// a tensor of `dims`) that lies in one row (innermost axis) of it.
#[inline(always)]
fn for_row_segments<T>(
    dims: &[usize],
    offset: usize,
    chunk: &mut [T],
    mut f: impl FnMut(usize, usize, &mut [T]),
) {
    let inner = dims[dims.len() - 1].max(1);
    let mut done = 0;
    while done < chunk.len() {
        let (row, column) = ((offset + done) / inner, (offset + done) % inner);
        let len = (inner - column).min(chunk.len() - done);
        f(row, column, &mut chunk[done..done + len]);
        done += len;
    }
}

/// Where row `row` (of the rows of `dims`, in order) starts in an operand read with `strides`.
fn row_offset(mut row: usize, dims: &[usize], strides: &[usize]) -> usize {
    let outer = dims.len() - 1;
    let mut at = 0;
    for (&n, &stride) in dims[..outer].iter().zip(&strides[..outer]).rev() {
        at += (row % n) * stride;
        row /= n;
    }
    at
}

/// `f` of two broadcast operands, element by element: the output shape and values.
#[inline(always)]
fn zip_broadcast<A: Copy, B: Copy, U: Copy + Default>(
    (sa, a): (&[usize], &[A]),
    (sb, b): (&[usize], &[B]),
    f: impl Fn(A, B) -> U,
) -> Result<(Vec<usize>, Vec<U>), String> {
    let shape = broadcast_shape(sa, sb)?;
    let mut out = vec![U::default(); shape.iter().product()];
    BroadcastRows::new(sa, sb, &shape).zip(0, &mut out, (a, b), &f);
    Ok((shape, out))
}

/// [`Binary::apply_in_place`] for one operation.
fn apply_in_place_with(
    a: &mut Tensor,
    b: &Tensor,
    relu: bool,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> bool {
    if broadcast_shape(a.shape(), b.shape()).as_deref() != Ok(a.shape()) {
        return false;
    }
    if a.shape() == b.shape() {
        let b = b.data();
        super::for_chunks(a.data_mut(), |offset, chunk| {
            for (x, &y) in chunk.iter_mut().zip(&b[offset..]) {
                let v = f(*x, y);
                *x = if relu { v.max(0.0) } else { v };
            }
        });
        return true;
    }
    let strides = broadcast_strides(b.shape(), a.shape());
    let (dims, [sb]) = merged_axes(a.shape(), [&strides]);
    let b = b.data();
    let step = sb[dims.len() - 1];
    super::for_chunks(a.data_mut(), |offset, chunk| {
        for_row_segments(&dims, offset, chunk, |row, column, segment| {
            let (ib, len) = (row_offset(row, &dims, &sb) + column * step, segment.len());
            match step {
                1 => {
                    for (x, &y) in segment.iter_mut().zip(&b[ib..ib + len]) {
                        *x = f(*x, y);
                    }
                }
                0 => {
                    let y = b[ib];
                    segment.iter_mut().for_each(|x| *x = f(*x, y));
                }
                _ => {
                    for (k, x) in segment.iter_mut().enumerate() {
                        *x = f(*x, b[ib + k * step]);
                    }
                }
            }
            if relu {
                segment.iter_mut().for_each(|x| *x = x.max(0.0));
            }
        });
    });
    true
}

/// The shape two shapes broadcast to, or why they cannot.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let shape = (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect::<Result<Vec<usize>, String>>()?;
    // Two small operands can broadcast to a huge result (a hostile model's [n,1] · [1,n]).
    super::raster::elements(&shape)?;
    Ok(shape)
}

/// Strides to read a tensor of `shape` as if it had the (broadcast) shape `to`: 0 on
/// broadcast axes.
fn broadcast_strides(shape: &[usize], to: &[usize]) -> Vec<usize> {
    let offset = to.len() - shape.len();
    let mut strides = vec![0; to.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        strides[i + offset] = if shape[i] == 1 { 0 } else { stride };
        stride *= shape[i];
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Broadcasting checked against the definition, index by index.
    #[test]
    fn broadcasting_matches_the_definition() {
        let a = Tensor::new(vec![2, 1, 3], (0..6).map(|x| x as f32).collect()).unwrap();
        let b = Tensor::new(vec![4, 1], (0..4).map(|x| 10.0 * x as f32).collect()).unwrap();
        let out = Binary::Add.apply(&a, &b).unwrap();
        assert_eq!(out.shape(), [2, 4, 3]);
        for i in 0..2 {
            for j in 0..4 {
                for k in 0..3 {
                    let expected = a.data()[i * 3 + k] + b.data()[j];
                    assert_eq!(out.data()[(i * 4 + j) * 3 + k], expected);
                }
            }
        }
        assert!(Binary::Mul.apply(&a, &Tensor::zeros(vec![2])).is_err());
    }

    /// The value of a broadcast operand of `shape` at output index `index` (right-aligned;
    /// axes of size 1 read element 0), by the definition.
    fn at_index(t: &Tensor, index: &[usize]) -> f32 {
        let skip = index.len() - t.shape().len();
        let flat = t
            .shape()
            .iter()
            .zip(&index[skip..])
            .fold(0, |flat, (&n, &i)| flat * n + if n == 1 { 0 } else { i });
        t.data()[flat]
    }

    /// The allocating and the in-place forms on the broadcasts models make (per-channel
    /// operands of NCHW tensors, rows, columns, scalars, both operands broadcast), on one and
    /// on two threads with chunks that split rows, against the definition element by element.
    #[test]
    fn broadcasts_match_the_definition_on_one_and_two_threads() {
        let values = |shape: &[usize], seed: usize| {
            let len: usize = shape.iter().product();
            let data = (0..len)
                .map(|i| ((i * 7 + seed) % 23) as f32 - 11.0)
                .collect();
            Tensor::new(shape.to_vec(), data).unwrap()
        };
        let cases: [(&[usize], &[usize]); 8] = [
            (&[1, 24, 57, 59], &[24, 1, 1]),
            (&[1, 24, 57, 59], &[1, 24, 1, 1]),
            (&[2, 12, 57, 59], &[12, 1, 59]),
            (&[1, 24, 57, 59], &[59]),
            (&[1, 24, 57, 59], &[1]),
            (&[3, 1, 181, 131], &[3, 1, 181, 131]),
            (&[24, 1, 59], &[24, 57, 1]),
            (&[57, 1], &[1, 1200]),
        ];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for &(sa, sb) in &cases {
                let (a, b) = (values(sa, 1), values(sb, 5));
                let out = pool.install(|| Binary::Sub.apply(&a, &b)).unwrap();
                let shape = out.shape().to_vec();
                let mut index = vec![0; shape.len()];
                for (flat, &got) in out.data().iter().enumerate() {
                    let mut rest = flat;
                    for (i, &n) in index.iter_mut().zip(&shape).rev() {
                        *i = rest % n;
                        rest /= n;
                    }
                    let expected = at_index(&a, &index) - at_index(&b, &index);
                    assert_eq!(
                        got, expected,
                        "{sa:?} - {sb:?} at {index:?}, {threads} threads"
                    );
                }
                if shape == a.shape() {
                    let mut in_place = a.clone();
                    assert!(pool.install(|| Binary::Sub.apply_in_place(&mut in_place, &b, true)));
                    let relu: Vec<f32> = out.data().iter().map(|x| x.max(0.0)).collect();
                    assert_eq!(in_place.data(), relu, "{sa:?} -= {sb:?}, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn a_broadcast_too_large_to_hold_is_refused() {
        let column = Tensor::zeros(vec![1 << 15, 1]);
        let row = Tensor::zeros(vec![1, 1 << 15]);
        let err = Binary::Add.apply(&column, &row).unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn in_place_arithmetic_equals_the_allocating_form() {
        let a = Tensor::new(vec![2, 3, 4], (0..24).map(|x| x as f32 - 11.0).collect()).unwrap();
        for b_shape in [vec![2, 3, 4], vec![3, 1], vec![4], vec![1]] {
            let len = b_shape.iter().product();
            let b = Tensor::new(
                b_shape.clone(),
                (0..len).map(|x| 0.5 * x as f32 - 1.25).collect(),
            )
            .unwrap();
            for op in [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div] {
                for relu in [false, true] {
                    let mut expected = op.apply(&a, &b).unwrap();
                    if relu {
                        expected = Unary::Relu.apply(expected);
                    }
                    let mut got = a.clone();
                    assert!(op.apply_in_place(&mut got, &b, relu), "{op:?} {b_shape:?}");
                    assert_eq!(
                        got.data(),
                        expected.data(),
                        "{op:?} {b_shape:?} relu {relu}"
                    );
                }
            }
        }
        // Large enough to be split over threads: the same values.
        let n = 3 << 16;
        let big = Tensor::new(vec![n], (0..n).map(|i| (i % 97) as f32 - 48.0).collect()).unwrap();
        let other = Tensor::new(vec![n], (0..n).map(|i| (i % 13) as f32 * 0.5).collect()).unwrap();
        let expected = Unary::Relu.apply(Binary::Sub.apply(&big, &other).unwrap());
        let mut got = big.clone();
        assert!(Binary::Sub.apply_in_place(&mut got, &other, true));
        assert_eq!(got.data(), expected.data());
        let negated = Unary::Neg.apply(big.clone());
        assert!(negated.data().iter().zip(big.data()).all(|(a, b)| *a == -b));
        // A second operand larger than the first cannot be written into the first.
        let mut small = Tensor::zeros(vec![4]);
        assert!(!Binary::Add.apply_in_place(&mut small, &a, false));
        assert_eq!(small.data(), [0.0; 4]);
    }

    fn ints(shape: &[usize], data: &[i64]) -> Value {
        Value::I64 {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn erf_matches_known_values() {
        let known = [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ];
        for (x, want) in known {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn new_unary_and_binary_ops_match_their_definitions() {
        let t = Tensor::new(vec![4], vec![-2.5, -0.5, 0.5, 2.5]).unwrap();
        assert_eq!(Unary::Round.apply(t.clone()).data(), [-2.0, -0.0, 0.0, 2.0]);
        assert_eq!(Unary::Sign.apply(t.clone()).data(), [-1.0, -1.0, 1.0, 1.0]);
        assert_eq!(Unary::Floor.apply(t.clone()).data(), [-3.0, -1.0, 0.0, 2.0]);
        let y = Tensor::new(vec![1], vec![2.0]).unwrap();
        let modulo = Binary::Mod
            .apply(&t, &Tensor::new(vec![1], vec![-2.0]).unwrap())
            .unwrap();
        assert_eq!(
            modulo.data(),
            [-0.5, -0.5, -1.5, -1.5],
            "the divisor's sign"
        );
        assert_eq!(
            Binary::FMod.apply(&t, &y).unwrap().data(),
            [-0.5, -0.5, 0.5, 0.5]
        );
        assert_eq!(
            Binary::Pow.apply(&t, &y).unwrap().data(),
            [6.25, 0.25, 0.25, 6.25]
        );
        assert_eq!(
            Binary::Max
                .apply(&t, &Tensor::zeros(vec![]))
                .unwrap()
                .data(),
            [0.0, 0.0, 0.5, 2.5]
        );
        let a = ints(&[3], &[7, -7, 5]);
        let b = ints(&[3], &[2, 2, 0]);
        assert_eq!(
            Binary::Div.apply_values(&a, &b).unwrap(),
            ints(&[3], &[3, -3, 0])
        );
        assert_eq!(
            Binary::Mod.apply_values(&a, &b).unwrap(),
            ints(&[3], &[1, 1, 0])
        );
        assert_eq!(
            Binary::FMod.apply_values(&a, &b).unwrap(),
            ints(&[3], &[1, -1, 0])
        );
        assert_eq!(
            Unary::Abs.apply_ints(vec![-3, i64::MIN]).unwrap(),
            [3, i64::MIN]
        );
        let bits = ints(&[3], &[0b1100, 1, -8]);
        let by = ints(&[3], &[0b1010, 70, 1]);
        assert_eq!(
            Binary::BitXor.apply_values(&bits, &by).unwrap(),
            ints(&[3], &[0b0110, 71, -7])
        );
        assert_eq!(
            Binary::ShiftLeft.apply_values(&bits, &by).unwrap(),
            ints(&[3], &[12 << 10, 0, -16])
        );
        let logical = (-8i64 as u64 >> 1) as i64;
        assert_eq!(
            Binary::ShiftRight.apply_values(&bits, &by).unwrap(),
            ints(&[3], &[0, 0, logical])
        );
        assert!(
            Binary::Add.apply_values(&a, &Value::F32(t)).is_err(),
            "types mix"
        );
    }

    #[test]
    fn comparisons_logic_where_and_casts() {
        let x = Value::F32(Tensor::new(vec![2, 2], vec![1.0, f32::NAN, 3.0, 4.0]).unwrap());
        let three = Value::F32(Tensor::new(vec![1], vec![3.0]).unwrap());
        let less = Compare::Less.apply(&x, &three).unwrap();
        assert_eq!(less, ints(&[2, 2], &[1, 0, 0, 0]), "NaN compares false");
        assert_eq!(
            Compare::GreaterOrEqual.apply(&x, &three).unwrap(),
            ints(&[2, 2], &[0, 0, 1, 1])
        );
        let or = Logic::Or
            .apply((&[2, 2], &[1, 0, 0, 0]), (&[2], &[0, 1]))
            .unwrap();
        assert_eq!(or, ints(&[2, 2], &[1, 1, 0, 1]));
        let zero = Value::F32(Tensor::zeros(vec![]));
        match where_((&[2, 1], &[1, 0]), &x, &zero).unwrap() {
            Value::F32(t) => {
                assert_eq!(t.shape(), [2, 2]);
                assert_eq!(t.data()[0], 1.0);
                assert!(t.data()[1].is_nan());
                assert_eq!(&t.data()[2..], [0.0, 0.0]);
            }
            other => panic!("{other:?}"),
        }
        let floats = Value::F32(Tensor::new(vec![3], vec![-1.7, 300.0, 0.0]).unwrap());
        let to_u8 = CastTo::Int {
            bits: 8,
            signed: false,
        };
        assert_eq!(to_u8.apply(&floats).unwrap(), ints(&[3], &[255, 44, 0]));
        assert_eq!(CastTo::Bool.apply(&floats).unwrap(), ints(&[3], &[1, 1, 0]));
        let back = CastTo::Float.apply(&ints(&[2], &[-2, 5])).unwrap();
        assert_eq!(
            back,
            Value::F32(Tensor::new(vec![2], vec![-2.0, 5.0]).unwrap())
        );
    }
}
