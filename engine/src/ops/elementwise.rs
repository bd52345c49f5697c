//! Unary activations and binary arithmetic with numpy-style (multidirectional) broadcasting.

use crate::Tensor;

/// Unary ops applied value by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Neg,
    Sqrt,
}

impl Unary {
    /// Applies the op to every value in place (each arm its own loop, so it vectorises).
    pub fn apply(self, t: Tensor) -> Tensor {
        match self {
            Unary::Relu => map(t, |x| x.max(0.0)),
            Unary::Sigmoid => map(t, |x| 1.0 / (1.0 + (-x).exp())),
            Unary::Tanh => map(t, f32::tanh),
            Unary::Exp => map(t, f32::exp),
            Unary::Neg => map(t, |x| -x),
            Unary::Sqrt => map(t, f32::sqrt),
        }
    }
}

fn map(mut t: Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    t.data_mut().iter_mut().for_each(|x| *x = f(*x));
    t
}

/// Binary arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    /// `a ∘ b` with broadcasting, into a new tensor.
    pub fn apply(self, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
        match self {
            Binary::Add => apply_with(a, b, |x, y| x + y),
            Binary::Sub => apply_with(a, b, |x, y| x - y),
            Binary::Mul => apply_with(a, b, |x, y| x * y),
            Binary::Div => apply_with(a, b, |x, y| x / y),
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
        }
    }
}

/// [`Binary::apply`] for one operation (monomorphised, so the loops vectorise).
fn apply_with(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor, String> {
    if a.shape() == b.shape() {
        let data = a
            .data()
            .iter()
            .zip(b.data())
            .map(|(&x, &y)| f(x, y))
            .collect();
        return Tensor::new(a.shape().to_vec(), data).map_err(|e| e.to_string());
    }
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let mut out = Tensor::zeros(shape.clone());
    let (sa, sb) = (
        broadcast_strides(a.shape(), &shape),
        broadcast_strides(b.shape(), &shape),
    );
    let inner = *shape.last().unwrap_or(&1);
    let steps = (*sa.last().unwrap_or(&0), *sb.last().unwrap_or(&0));
    let rows = out.data_mut().chunks_mut(inner.max(1));
    for (row, (ia, ib)) in rows.zip(row_offsets(&shape, &sa, &sb)) {
        match steps {
            (1, 1) => {
                let (xa, xb) = (&a.data()[ia..ia + inner], &b.data()[ib..ib + inner]);
                for ((o, &x), &y) in row.iter_mut().zip(xa).zip(xb) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let y = b.data()[ib];
                for (o, &x) in row.iter_mut().zip(&a.data()[ia..ia + inner]) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let x = a.data()[ia];
                for (o, &y) in row.iter_mut().zip(&b.data()[ib..ib + inner]) {
                    *o = f(x, y);
                }
            }
            _ => row.fill(f(a.data()[ia], b.data()[ib])),
        }
    }
    Ok(out)
}

/// [`Binary::apply_in_place`] for one operation.
fn apply_in_place_with(
    a: &mut Tensor,
    b: &Tensor,
    relu: bool,
    f: impl Fn(f32, f32) -> f32,
) -> bool {
    if broadcast_shape(a.shape(), b.shape()).as_deref() != Ok(a.shape()) {
        return false;
    }
    if a.shape() == b.shape() {
        for (x, &y) in a.data_mut().iter_mut().zip(b.data()) {
            let v = f(*x, y);
            *x = if relu { v.max(0.0) } else { v };
        }
        return true;
    }
    let shape = a.shape().to_vec();
    let sb = broadcast_strides(b.shape(), &shape);
    let inner = *shape.last().unwrap_or(&1);
    let contiguous = *sb.last().unwrap_or(&0) == 1;
    let rows = a.data_mut().chunks_mut(inner.max(1));
    let full = broadcast_strides(&shape, &shape);
    for (row, (_, ib)) in rows.zip(row_offsets(&shape, &full, &sb)) {
        if contiguous {
            for (x, &y) in row.iter_mut().zip(&b.data()[ib..ib + inner]) {
                *x = f(*x, y);
            }
        } else {
            let y = b.data()[ib];
            row.iter_mut().for_each(|x| *x = f(*x, y));
        }
        if relu {
            row.iter_mut().for_each(|x| *x = x.max(0.0));
        }
    }
    true
}

/// For each row (innermost axis) of `shape` in order, the offsets of its first element in two
/// operands read with the strides `sa` and `sb`: an odometer over the outer axes.
fn row_offsets<'a>(
    shape: &'a [usize],
    sa: &'a [usize],
    sb: &'a [usize],
) -> impl Iterator<Item = (usize, usize)> + 'a {
    let outer = shape.len().saturating_sub(1);
    let rows: usize = shape[..outer].iter().product();
    let mut index = vec![0usize; outer];
    (0..rows).map(move |_| {
        let at = index
            .iter()
            .zip(sa.iter().zip(sb))
            .fold((0, 0), |(ia, ib), (&i, (&x, &y))| (ia + i * x, ib + i * y));
        for axis in (0..outer).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
        at
    })
}

/// The shape two shapes broadcast to, or why they cannot.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    (0..rank)
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
        .collect()
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
        // A second operand larger than the first cannot be written into the first.
        let mut small = Tensor::zeros(vec![4]);
        assert!(!Binary::Add.apply_in_place(&mut small, &a, false));
        assert_eq!(small.data(), [0.0; 4]);
    }
}
