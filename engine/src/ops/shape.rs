//! Shape arithmetic of the layout ops (output shapes from input shapes and parameters), and
//! Softmax.

use crate::Tensor;

/// ONNX Flatten: dimensions before `axis` become rows, the rest columns.
pub fn flatten(shape: &[usize], axis: i64) -> Result<Vec<usize>, String> {
    let rank = shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..=rank).contains(&axis) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    let rows: usize = shape[..axis as usize].iter().product();
    let cols: usize = shape[axis as usize..].iter().product();
    Ok(vec![rows, cols])
}

/// ONNX Reshape: `0` copies the input dimension (unless `allowzero`), one `-1` is inferred.
pub fn reshape(shape: &[usize], target: &[i64], allow_zero: bool) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut inferred = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if inferred.is_none() => {
                inferred = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(
                *shape
                    .get(i)
                    .ok_or_else(|| format!("shape[{i}] = 0 copies a dimension the input lacks"))?,
            ),
            d if d >= 0 => out.push(usize::try_from(d).map_err(|e| e.to_string())?),
            d => return Err(format!("shape[{i}] = {d} is not a dimension")),
        }
    }
    let total: usize = shape.iter().product();
    let known = out
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {target:?} overflows"))?;
    match inferred {
        Some(i) if known != 0 && total.is_multiple_of(known) => out[i] = total / known,
        Some(_) => return Err(format!("cannot infer -1 in {target:?} for {total} values")),
        None if known != total => {
            return Err(format!(
                "cannot reshape {shape:?} ({total} values) to {target:?}"
            ));
        }
        None => {}
    }
    Ok(out)
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
        let t = [2, 3, 4];
        assert_eq!(reshape(&t, &[0, -1], false).unwrap(), [2, 12]);
        assert_eq!(flatten(&t, 1).unwrap(), [2, 12]);
        assert!(reshape(&t, &[5, -1], false).is_err());
        assert!(reshape(&t, &[5, 5], false).is_err());
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

/// The axis and output shape of ONNX Concat of inputs of `shapes` along `axis`.
pub fn concat_shape(shapes: &[&[usize]], axis: i64) -> Result<(usize, Vec<usize>), String> {
    let first = shapes.first().ok_or("Concat needs at least one input")?;
    let rank = first.len();
    let axis = normalize_axis(axis, rank)?;
    let mut shape = first.to_vec();
    shape[axis] = 0;
    for p in shapes {
        let same_rest = p.len() == rank && (0..rank).all(|i| i == axis || p[i] == first[i]);
        if !same_rest {
            return Err(format!(
                "cannot concatenate {first:?} and {p:?} on axis {axis}"
            ));
        }
        shape[axis] += p[axis];
    }
    Ok((axis, shape))
}

/// ONNX Transpose's permutation for `rank` axes (default: reverse the axes).
pub fn transpose_perm(rank: usize, perm: Option<&[i64]>) -> Result<Vec<usize>, String> {
    let perm: Vec<usize> = match perm {
        Some(p) => p
            .iter()
            .map(|&a| normalize_axis(a, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
    }
    Ok(perm)
}

/// ONNX Unsqueeze: inserts size-1 axes at `axes` (of the output).
pub fn unsqueeze(shape: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let rank = shape.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| normalize_axis(a, rank))
        .collect::<Result<_, _>>()?;
    axes.sort_unstable();
    let mut out = shape.to_vec();
    for a in axes {
        out.insert(a, 1);
    }
    Ok(out)
}

/// ONNX Squeeze: removes the given size-1 axes (all size-1 axes when none are given).
pub fn squeeze(shape: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>, String> {
    let rank = shape.len();
    let drop: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&x| normalize_axis(x, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).filter(|&i| shape[i] == 1).collect(),
    };
    if let Some(&bad) = drop.iter().find(|&&a| shape[a] != 1) {
        return Err(format!("axis {bad} has size {}, not 1", shape[bad]));
    }
    Ok((0..rank)
        .filter(|i| !drop.contains(i))
        .map(|i| shape[i])
        .collect())
}

/// A possibly negative axis as an index into `rank` axes.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn squeeze_unsqueeze_concat_and_transpose_shapes() {
        assert_eq!(
            concat_shape(&[&[2, 1, 2], &[2, 2, 2]], -2).unwrap(),
            (1, vec![2, 3, 2])
        );
        assert!(concat_shape(&[&[2, 1, 2], &[3, 2, 2]], 1).is_err());
        assert_eq!(transpose_perm(3, None).unwrap(), [2, 1, 0]);
        assert!(transpose_perm(3, Some(&[0, 0, 1])).is_err());
        assert_eq!(unsqueeze(&[3, 4], &[0, -1]).unwrap(), [1, 3, 4, 1]);
        assert_eq!(squeeze(&[1, 3, 1], None).unwrap(), [3]);
        assert!(squeeze(&[2, 3], Some(&[0])).is_err());
    }
}
