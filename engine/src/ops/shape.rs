//! Layout ops that only change how values are viewed: Flatten and Reshape.

use crate::Tensor;

/// ONNX Flatten: dimensions before `axis` become rows, the rest columns.
pub fn flatten(t: Tensor, axis: i64) -> Result<Tensor, String> {
    let rank = t.shape().len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..=rank).contains(&axis) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    let rows: usize = t.shape()[..axis as usize].iter().product();
    let cols: usize = t.shape()[axis as usize..].iter().product();
    t.reshaped(vec![rows, cols]).map_err(|e| e.to_string())
}

/// ONNX Reshape: `0` copies the input dimension (unless `allowzero`), one `-1` is inferred.
pub fn reshape(t: Tensor, target: &[i64], allow_zero: bool) -> Result<Tensor, String> {
    let mut shape = Vec::with_capacity(target.len());
    let mut inferred = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if inferred.is_none() => {
                inferred = Some(i);
                shape.push(1);
            }
            0 if !allow_zero => shape.push(
                *t.shape()
                    .get(i)
                    .ok_or_else(|| format!("shape[{i}] = 0 copies a dimension the input lacks"))?,
            ),
            d if d >= 0 => shape.push(d as usize),
            d => return Err(format!("shape[{i}] = {d} is not a dimension")),
        }
    }
    let total: usize = t.data().len();
    if let Some(i) = inferred {
        let known: usize = shape.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot infer -1 in {target:?} for {total} values"));
        }
        shape[i] = total / known;
    }
    t.reshaped(shape).map_err(|e| e.to_string())
}

/// Softmax along `axis`; before opset 13 the input is seen as 2-D, split at `axis`.
pub fn softmax(mut t: Tensor, axis: i64, opset: i64) -> Result<Tensor, String> {
    let rank = t.shape().len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    let axis = axis as usize;
    let (outer, len, inner) = if opset < 13 {
        (
            t.shape()[..axis].iter().product(),
            t.shape()[axis..].iter().product(),
            1,
        )
    } else {
        (
            t.shape()[..axis].iter().product::<usize>(),
            t.shape()[axis],
            t.shape()[axis + 1..].iter().product::<usize>(),
        )
    };
    let data = t.data_mut();
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let max = (0..len)
                .map(|j| data[at(j)])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for j in 0..len {
                let e = (data[at(j)] - max).exp();
                data[at(j)] = e;
                sum += e;
            }
            for j in 0..len {
                data[at(j)] /= sum;
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_copies_zeros_and_infers_minus_one() {
        let t = Tensor::zeros(vec![2, 3, 4]);
        assert_eq!(
            reshape(t.clone(), &[0, -1], false).unwrap().shape(),
            [2, 12]
        );
        assert_eq!(flatten(t.clone(), 1).unwrap().shape(), [2, 12]);
        assert!(reshape(t, &[5, -1], false).is_err());
    }

    #[test]
    fn softmax_sums_to_one_along_the_axis() {
        let t = Tensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 0.0, 0.0, 1000.0]).unwrap();
        let s = softmax(t, 1, 13).unwrap();
        for row in s.data().chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(s.data()[5] > 0.999, "large inputs stay finite");
        let e: Vec<f32> = [1.0f32, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let total: f32 = e.iter().sum();
        assert!((s.data()[0] - e[0] / total).abs() < 1e-6);
    }
}
