//! Ops that keep, pick or accumulate elements by position: Trilu, CumSum, GatherElements. Each
//! runs on float and int64 values alike.

use super::raster::strides;
use crate::{Tensor, Value};

/// Runs `f` on a value's elements, whichever their type, keeping the type.
fn map_value<
    F: Fn(&[usize], &[f32]) -> Result<Vec<f32>, String>,
    G: Fn(&[usize], &[i64]) -> Result<Vec<i64>, String>,
>(
    value: &Value,
    on_floats: F,
    on_ints: G,
) -> Result<Value, String> {
    Ok(match value {
        Value::F32(t) => {
            let data = on_floats(t.shape(), t.data())?;
            Value::F32(Tensor::new(t.shape().to_vec(), data).map_err(|e| e.to_string())?)
        }
        Value::I64 { shape, data } => Value::I64 {
            shape: shape.clone(),
            data: on_ints(shape, data)?,
        },
    })
}

/// ONNX Trilu: the upper (`j − i ≥ k`) or lower (`j − i ≤ k`) triangle of each matrix in the
/// last two axes; the rest is zero.
pub fn trilu(x: &Value, k: i64, upper: bool) -> Result<Value, String> {
    fn keep<T: Copy + Default>(
        shape: &[usize],
        data: &[T],
        k: i64,
        upper: bool,
    ) -> Result<Vec<T>, String> {
        let &[.., n, m] = shape else {
            return Err(format!("Trilu needs at least 2-D input, got {shape:?}"));
        };
        let mut out = data.to_vec();
        for (at, v) in out.iter_mut().enumerate() {
            let (i, j) = ((at / m.max(1)) % n.max(1), at % m.max(1));
            let d = j as i64 - i as i64;
            if (upper && d < k) || (!upper && d > k) {
                *v = T::default();
            }
        }
        Ok(out)
    }
    map_value(x, |s, d| keep(s, d, k, upper), |s, d| keep(s, d, k, upper))
}

/// ONNX CumSum along `axis` (normalised): inclusive or `exclusive`, forward or `reverse`.
pub fn cumsum(x: &Value, axis: usize, exclusive: bool, reverse: bool) -> Result<Value, String> {
    fn scan<T: Copy + Default + std::ops::Add<Output = T>>(
        shape: &[usize],
        data: &[T],
        axis: usize,
        (exclusive, reverse): (bool, bool),
    ) -> Result<Vec<T>, String> {
        let len = *shape
            .get(axis)
            .ok_or_else(|| format!("axis {axis} is out of range for {shape:?}"))?;
        let inner: usize = shape[axis + 1..].iter().product();
        let outer: usize = shape[..axis].iter().product();
        let mut out = vec![T::default(); data.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * len + j) * inner + i;
                let mut acc = T::default();
                for step in 0..len {
                    let j = if reverse { len - 1 - step } else { step };
                    if exclusive {
                        out[at(j)] = acc;
                        acc = acc + data[at(j)];
                    } else {
                        acc = acc + data[at(j)];
                        out[at(j)] = acc;
                    }
                }
            }
        }
        Ok(out)
    }
    let flags = (exclusive, reverse);
    match x {
        Value::I64 { shape, data } => {
            let wrapped: Vec<std::num::Wrapping<i64>> =
                data.iter().map(|&v| std::num::Wrapping(v)).collect();
            let out = scan(shape, &wrapped, axis, flags)?;
            Ok(Value::I64 {
                shape: shape.clone(),
                data: out.into_iter().map(|v| v.0).collect(),
            })
        }
        Value::F32(t) => {
            let data = scan(t.shape(), t.data(), axis, flags)?;
            Ok(Value::F32(
                Tensor::new(t.shape().to_vec(), data).map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// ONNX GatherElements: `out[p] = data[p with its `axis` coordinate replaced by indices[p]]`
/// (negative indices count from the end); the output has the indices' shape.
pub fn gather_elements(
    data: &Value,
    (shape, indices): (&[usize], &[i64]),
    axis: usize,
) -> Result<Value, String> {
    let source = data.shape();
    if source.len() != shape.len() || axis >= shape.len() {
        return Err(format!(
            "indices {shape:?} and data {source:?} need one rank, and axis {axis} in it"
        ));
    }
    let (from, to) = (strides(source), strides(shape));
    let len = source[axis] as i64;
    let mut offsets = Vec::with_capacity(indices.len());
    for (p, &index) in indices.iter().enumerate() {
        let index = if index < 0 { index + len } else { index };
        if !(0..len).contains(&index) {
            return Err(format!(
                "index {index} is out of range for axis {axis} of {len}"
            ));
        }
        let mut offset = 0;
        for d in 0..shape.len() {
            let coordinate = (p / to[d]) % shape[d].max(1);
            if d != axis && coordinate >= source[d] {
                return Err(format!(
                    "indices {shape:?} exceed data {source:?} off the axis"
                ));
            }
            offset += if d == axis {
                index as usize
            } else {
                coordinate
            } * from[d];
        }
        offsets.push(offset);
    }
    Ok(match data {
        Value::F32(t) => Value::F32(
            Tensor::new(
                shape.to_vec(),
                offsets.iter().map(|&o| t.data()[o]).collect(),
            )
            .map_err(|e| e.to_string())?,
        ),
        Value::I64 { data, .. } => Value::I64 {
            shape: shape.to_vec(),
            data: offsets.iter().map(|&o| data[o]).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(shape: &[usize], data: &[f32]) -> Value {
        Value::F32(Tensor::new(shape.to_vec(), data.to_vec()).unwrap())
    }

    #[test]
    fn trilu_keeps_a_triangle_of_each_matrix() {
        let x = floats(&[2, 2, 3], &(1..=12).map(|v| v as f32).collect::<Vec<_>>());
        let upper = trilu(&x, 1, true).unwrap();
        assert_eq!(
            upper,
            floats(
                &[2, 2, 3],
                &[0., 2., 3., 0., 0., 6., 0., 8., 9., 0., 0., 12.]
            )
        );
        let lower = trilu(&x, 0, false).unwrap();
        assert_eq!(
            lower,
            floats(
                &[2, 2, 3],
                &[1., 0., 0., 4., 5., 0., 7., 0., 0., 10., 11., 0.]
            )
        );
    }

    #[test]
    fn cumsum_runs_each_way() {
        let x = Value::I64 {
            shape: vec![2, 3],
            data: vec![1, 2, 3, 4, 5, 6],
        };
        let ints = |data: &[i64]| Value::I64 {
            shape: vec![2, 3],
            data: data.to_vec(),
        };
        assert_eq!(
            cumsum(&x, 1, false, false).unwrap(),
            ints(&[1, 3, 6, 4, 9, 15])
        );
        assert_eq!(
            cumsum(&x, 1, true, true).unwrap(),
            ints(&[5, 3, 0, 11, 6, 0])
        );
        assert_eq!(
            cumsum(&x, 0, false, false).unwrap(),
            ints(&[1, 2, 3, 5, 7, 9])
        );
        let f = floats(&[3], &[0.5, 1.0, 2.0]);
        assert_eq!(
            cumsum(&f, 0, false, true).unwrap(),
            floats(&[3], &[3.5, 3.0, 2.0])
        );
    }

    #[test]
    fn gather_elements_picks_along_the_axis_and_checks_bounds() {
        let data = floats(&[2, 2], &[1., 2., 3., 4.]);
        let got = gather_elements(&data, (&[2, 2], &[0, 0, 1, -2]), 1).unwrap();
        assert_eq!(got, floats(&[2, 2], &[1., 1., 4., 3.]));
        let got = gather_elements(&data, (&[1, 2], &[1, 0]), 0).unwrap();
        assert_eq!(got, floats(&[1, 2], &[3., 2.]));
        assert!(gather_elements(&data, (&[1, 2], &[2, 0]), 0).is_err());
        assert!(gather_elements(&data, (&[1, 3], &[0, 0, 0]), 0).is_err());
    }
}
