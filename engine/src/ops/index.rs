//! Ops that keep, pick, place or accumulate elements by position: Trilu, CumSum,
//! GatherElements, ScatterElements, TopK. Each runs on float and int64 values alike.

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

/// For each index of `indices` (in order), the offset in a tensor of shape `source` of the
/// element it addresses: its own coordinates with the `axis` one replaced by the index
/// (negative counts from the end). Shared by GatherElements and ScatterElements.
fn element_offsets(
    source: &[usize],
    (shape, indices): (&[usize], &[i64]),
    axis: usize,
) -> Result<Vec<usize>, String> {
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
    Ok(offsets)
}

/// ONNX GatherElements: `out[p] = data[p with its `axis` coordinate replaced by indices[p]]`;
/// the output has the indices' shape.
pub fn gather_elements(
    data: &Value,
    indices: (&[usize], &[i64]),
    axis: usize,
) -> Result<Value, String> {
    let offsets = element_offsets(data.shape(), indices, axis)?;
    let shape = indices.0.to_vec();
    Ok(match data {
        Value::F32(t) => Value::F32(
            Tensor::new(shape, offsets.iter().map(|&o| t.data()[o]).collect())
                .map_err(|e| e.to_string())?,
        ),
        Value::I64 { data, .. } => Value::I64 {
            shape,
            data: offsets.iter().map(|&o| data[o]).collect(),
        },
    })
}

/// ONNX ScatterElements: a copy of `data` with `updates[p]` written (or, with a `reduction`,
/// combined by Add, Mul, Max or Min) at the element GatherElements would read for `p`.
pub fn scatter_elements(
    data: &Value,
    indices: (&[usize], &[i64]),
    updates: &Value,
    axis: usize,
    reduction: Option<super::elementwise::Binary>,
) -> Result<Value, String> {
    use super::elementwise::Binary;
    if updates.shape() != indices.0 {
        return Err(format!(
            "updates {:?} and indices {:?} differ",
            updates.shape(),
            indices.0
        ));
    }
    let offsets = element_offsets(data.shape(), indices, axis)?;
    fn place<T: Copy>(
        out: &mut [T],
        offsets: &[usize],
        updates: &[T],
        combine: impl Fn(T, T) -> T,
    ) {
        for (&o, &u) in offsets.iter().zip(updates) {
            out[o] = combine(out[o], u);
        }
    }
    Ok(match (data, updates) {
        (Value::F32(t), Value::F32(u)) => {
            let mut out = t.clone();
            let combine = |a: f32, b: f32| match reduction {
                Some(Binary::Add) => a + b,
                Some(Binary::Mul) => a * b,
                Some(Binary::Max) => a.max(b),
                Some(Binary::Min) => a.min(b),
                _ => b,
            };
            place(out.data_mut(), &offsets, u.data(), combine);
            Value::F32(out)
        }
        (Value::I64 { shape, data }, Value::I64 { data: u, .. }) => {
            let mut out = data.clone();
            let combine = |a: i64, b: i64| match reduction {
                Some(Binary::Add) => a.wrapping_add(b),
                Some(Binary::Mul) => a.wrapping_mul(b),
                Some(Binary::Max) => a.max(b),
                Some(Binary::Min) => a.min(b),
                _ => b,
            };
            place(&mut out, &offsets, u, combine);
            Value::I64 {
                shape: shape.clone(),
                data: out,
            }
        }
        _ => return Err("data and updates differ in type".into()),
    })
}

/// What TopK picks: the output shape, and for each output element the offset of the input
/// element it copies and that element's index along the axis.
struct Picks {
    shape: Vec<usize>,
    offsets: Vec<usize>,
    indices: Vec<i64>,
}

/// The `k` first positions along `axis` of each line of `data` ordered by value (descending
/// when `largest`), ties to the lower index.
fn pick_top<T: Copy + PartialOrd>(
    shape: &[usize],
    data: &[T],
    k: usize,
    axis: usize,
    largest: bool,
) -> Result<Picks, String> {
    let len = *shape
        .get(axis)
        .ok_or_else(|| format!("axis {axis} is out of range for {shape:?}"))?;
    if k > len {
        return Err(format!("k = {k} exceeds the axis' {len} values"));
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut picks = Picks {
        shape: shape.to_vec(),
        offsets: vec![0; outer * k * inner],
        indices: vec![0; outer * k * inner],
    };
    picks.shape[axis] = k;
    let mut order: Vec<usize> = Vec::with_capacity(len);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            order.clear();
            order.extend(0..len);
            order.sort_by(|&a, &b| {
                let by = data[at(a)]
                    .partial_cmp(&data[at(b)])
                    .unwrap_or(std::cmp::Ordering::Equal);
                (if largest { by.reverse() } else { by }).then(a.cmp(&b))
            });
            for (r, &j) in order.iter().take(k).enumerate() {
                let out = (o * k + r) * inner + i;
                picks.offsets[out] = at(j);
                picks.indices[out] = j as i64;
            }
        }
    }
    Ok(picks)
}

/// ONNX TopK: the `k` largest (or smallest) values along `axis` (normalised) in order, ties
/// to the lower index, and their indices.
pub fn top_k(x: &Value, k: usize, axis: usize, largest: bool) -> Result<(Value, Value), String> {
    let (values, picks) = match x {
        Value::F32(t) => {
            let picks = pick_top(t.shape(), t.data(), k, axis, largest)?;
            let data = picks.offsets.iter().map(|&o| t.data()[o]).collect();
            let values = Tensor::new(picks.shape.clone(), data).map_err(|e| e.to_string())?;
            (Value::F32(values), picks)
        }
        Value::I64 { shape, data } => {
            let picks = pick_top(shape, data, k, axis, largest)?;
            let values = Value::I64 {
                shape: picks.shape.clone(),
                data: picks.offsets.iter().map(|&o| data[o]).collect(),
            };
            (values, picks)
        }
    };
    let indices = Value::I64 {
        shape: picks.shape,
        data: picks.indices,
    };
    Ok((values, indices))
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
    fn scatter_elements_writes_or_combines_and_top_k_orders_ties_by_index() {
        use crate::ops::elementwise::Binary;
        let data = floats(&[2, 2], &[1., 2., 3., 4.]);
        let updates = floats(&[1, 2], &[10., 20.]);
        let set = scatter_elements(&data, (&[1, 2], &[1, 0]), &updates, 0, None).unwrap();
        assert_eq!(set, floats(&[2, 2], &[1., 20., 10., 4.]));
        let add =
            scatter_elements(&data, (&[1, 2], &[1, 1]), &updates, 1, Some(Binary::Add)).unwrap();
        assert_eq!(add, floats(&[2, 2], &[1., 32., 3., 4.]));
        let x = floats(&[2, 3], &[1., 3., 3., 5., 4., 6.]);
        let (values, indices) = top_k(&x, 2, 1, true).unwrap();
        assert_eq!(values, floats(&[2, 2], &[3., 3., 6., 5.]));
        assert_eq!(
            indices,
            Value::I64 {
                shape: vec![2, 2],
                data: vec![1, 2, 2, 0]
            }
        );
        let (values, _) = top_k(&x, 1, 0, false).unwrap();
        assert_eq!(values, floats(&[1, 3], &[1., 3., 3.]));
        assert!(top_k(&x, 4, 1, true).is_err());
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
