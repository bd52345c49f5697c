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
    pub fn apply(self, mut t: Tensor) -> Tensor {
        let f: fn(f32) -> f32 = match self {
            Unary::Relu => |x| x.max(0.0),
            Unary::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
            Unary::Tanh => f32::tanh,
            Unary::Exp => f32::exp,
            Unary::Neg => |x| -x,
            Unary::Sqrt => f32::sqrt,
        };
        t.data_mut().iter_mut().for_each(|x| *x = f(*x));
        t
    }
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
    fn f(self) -> fn(f32, f32) -> f32 {
        match self {
            Binary::Add => |a, b| a + b,
            Binary::Sub => |a, b| a - b,
            Binary::Mul => |a, b| a * b,
            Binary::Div => |a, b| a / b,
        }
    }

    pub fn apply(self, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
        let f = self.f();
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
        let (sa, sb) = (
            broadcast_strides(a.shape(), &shape),
            broadcast_strides(b.shape(), &shape),
        );
        // The innermost axis runs as a tight loop (each operand contiguous or fixed along it);
        // an odometer walks the outer axes.
        let inner = *shape.last().unwrap_or(&1);
        let (ia_step, ib_step) = (*sa.last().unwrap_or(&0), *sb.last().unwrap_or(&0));
        let outer_axes = shape.len().saturating_sub(1);
        let mut out = Tensor::zeros(shape.clone());
        let mut index = vec![0usize; outer_axes];
        for row in out.data_mut().chunks_mut(inner.max(1)) {
            let (ia, ib) = index
                .iter()
                .zip(sa.iter().zip(&sb))
                .fold((0, 0), |(ia, ib), (&i, (&x, &y))| (ia + i * x, ib + i * y));
            match (ia_step, ib_step) {
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
            for axis in (0..outer_axes).rev() {
                index[axis] += 1;
                if index[axis] < shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        Ok(out)
    }
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
}
