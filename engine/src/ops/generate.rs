//! Ops that make values from shapes and scalars: Shape, Range.

use crate::{Tensor, Value};

/// The largest Range the engine makes (a hostile `limit` must not exhaust memory).
const MAX_RANGE: f64 = (1u64 << 28) as f64;

/// ONNX Shape: dimensions `start..end` of `shape` (negative bounds count from the end, both
/// clamped to the rank).
pub fn shape(shape: &[usize], start: i64, end: Option<i64>) -> Value {
    let rank = shape.len() as i64;
    let clamp = |b: i64| (if b < 0 { b + rank } else { b }).clamp(0, rank) as usize;
    let (start, end) = (clamp(start), clamp(end.unwrap_or(rank)));
    let dims: Vec<i64> = shape[start..end.max(start)]
        .iter()
        .map(|&d| d as i64)
        .collect();
    Value::I64 {
        shape: vec![dims.len()],
        data: dims,
    }
}

/// ONNX Range: `start, start + delta, …` up to (excluding) `limit`; scalars of one type.
pub fn range(start: &Value, limit: &Value, delta: &Value) -> Result<Value, String> {
    let count = |s: f64, l: f64, d: f64| -> Result<usize, String> {
        let n = ((l - s) / d).ceil().max(0.0);
        if !n.is_finite() || n > MAX_RANGE {
            return Err(format!("Range({s}, {l}, {d}) has too many elements"));
        }
        Ok(n as usize)
    };
    match (start, limit, delta) {
        (Value::F32(s), Value::F32(l), Value::F32(d)) => {
            let (s, l, d) = (scalar(s.data())?, scalar(l.data())?, scalar(d.data())?);
            let n = count(f64::from(s), f64::from(l), f64::from(d))?;
            let data = (0..n).map(|i| s + i as f32 * d).collect();
            Ok(Value::F32(
                Tensor::new(vec![n], data).map_err(|e| e.to_string())?,
            ))
        }
        (Value::I64 { data: s, .. }, Value::I64 { data: l, .. }, Value::I64 { data: d, .. }) => {
            let (s, l, d) = (scalar(s)?, scalar(l)?, scalar(d)?);
            let n = count(s as f64, l as f64, d as f64)?;
            let data = (0..n as i64)
                .map(|i| s.wrapping_add(i.wrapping_mul(d)))
                .collect();
            Ok(Value::I64 {
                shape: vec![n],
                data,
            })
        }
        _ => Err("Range's start, limit and delta must have one type".into()),
    }
}

fn scalar<T: Copy>(data: &[T]) -> Result<T, String> {
    match data {
        [v] => Ok(*v),
        _ => Err(format!("{} values where a scalar is needed", data.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: i64) -> Value {
        Value::I64 {
            shape: vec![],
            data: vec![v],
        }
    }

    #[test]
    fn shape_slices_and_range_counts_like_numpy() {
        let dims = |v: Value| match v {
            Value::I64 { data, .. } => data,
            other => panic!("{other:?}"),
        };
        assert_eq!(dims(shape(&[2, 3, 4], 0, None)), [2, 3, 4]);
        assert_eq!(dims(shape(&[2, 3, 4], -2, Some(10))), [3, 4]);
        assert_eq!(dims(shape(&[2, 3, 4], 2, Some(1))), [] as [i64; 0]);
        assert_eq!(
            dims(range(&ints(10), &ints(1), &ints(-3)).unwrap()),
            [10, 7, 4]
        );
        assert_eq!(
            dims(range(&ints(1), &ints(1), &ints(1)).unwrap()),
            [] as [i64; 0]
        );
        assert!(range(&ints(0), &ints(i64::MAX), &ints(1)).is_err());
        assert!(
            range(&ints(0), &ints(5), &ints(0)).is_err(),
            "delta 0 never ends"
        );
        let f = |v: f32| Value::F32(Tensor::new(vec![], vec![v]).unwrap());
        match range(&f(1.0), &f(2.0), &f(0.25)).unwrap() {
            Value::F32(t) => assert_eq!(t.data(), [1.0, 1.25, 1.5, 1.75]),
            other => panic!("{other:?}"),
        }
    }
}
