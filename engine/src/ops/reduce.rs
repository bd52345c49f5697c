//! Reductions over axes (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd) and
//! ArgMax/ArgMin. The other ONNX reductions (L1, L2, SumSquare, LogSum, LogSumExp) are
//! composites of these and elementwise ops (see `composite`).

use crate::Tensor;

/// How a reduction combines values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

/// The axes a reduction runs over, as ONNX gives them (attribute or input) and reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Axes {
    /// From the attribute (before the op took them as input 1); `None`: from input 1.
    pub attr: Option<Vec<i64>>,
    pub keepdims: bool,
    /// With no axes: leave the input as it is (else reduce over every axis).
    pub noop_with_empty_axes: bool,
}

/// Axes normalised to `0..rank`, each once, sorted; an error for one out of range.
pub fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &axis in axes {
        let a = if axis < 0 { axis + rank as i64 } else { axis };
        let a = usize::try_from(a)
            .ok()
            .filter(|&a| a < rank)
            .ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl Axes {
    /// The axes to reduce, given the axes input (if any) and the rank: `None` for a no-op.
    pub fn resolve(
        &self,
        input: Option<&[i64]>,
        rank: usize,
    ) -> Result<Option<Vec<usize>>, String> {
        let given = self.attr.as_deref().or(input).unwrap_or_default();
        if given.is_empty() {
            return Ok((!self.noop_with_empty_axes).then(|| (0..rank).collect()));
        }
        normalize_axes(given, rank).map(Some)
    }

    /// The output shape of reducing `shape` over `axes`.
    pub fn output_shape(&self, shape: &[usize], axes: &[usize]) -> Vec<usize> {
        reduced_shape(shape, axes, self.keepdims)
    }
}

/// `shape` with `axes` set to 1 (`keepdims`) or dropped.
pub fn reduced_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// For each element of `shape` in order, the index of the element it reduces into (the
/// reduced axes' strides are 0).
fn reduced_index(shape: &[usize], axes: &[usize]) -> impl Iterator<Item = usize> {
    let mut strides = vec![0usize; shape.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        if !axes.contains(&i) {
            strides[i] = stride;
            stride *= shape[i];
        }
    }
    let shape = shape.to_vec();
    let total: usize = shape.iter().product();
    let mut index = vec![0usize; shape.len()];
    (0..total).map(move |_| {
        let at = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
        at
    })
}

impl Reduce {
    /// Reduces `x` over `axes` (normalised); empty reductions give the op's identity (Max of
    /// nothing is -∞, Mean of nothing NaN).
    pub fn apply(self, x: &Tensor, axes: &[usize], keepdims: bool) -> Result<Tensor, String> {
        let shape = reduced_shape(x.shape(), axes, keepdims);
        let len: usize = shape.iter().product();
        let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
        let (init, f): (f32, fn(f32, f32) -> f32) = match self {
            Reduce::Sum | Reduce::Mean => (0.0, |a, b| a + b),
            Reduce::Prod => (1.0, |a, b| a * b),
            Reduce::Max => (
                f32::NEG_INFINITY,
                |a, b| if b > a || b.is_nan() { b } else { a },
            ),
            Reduce::Min => (
                f32::INFINITY,
                |a, b| if b < a || b.is_nan() { b } else { a },
            ),
        };
        let mut out = vec![init; len];
        for (&v, o) in x.data().iter().zip(reduced_index(x.shape(), axes)) {
            out[o] = f(out[o], v);
        }
        if self == Reduce::Mean {
            let n = count as f32;
            out.iter_mut().for_each(|v| *v /= n);
        }
        Tensor::new(shape, out).map_err(|e| e.to_string())
    }
}

/// ArgMax (`max`) or ArgMin of `x` along `axis` (normalised): the index of the first extreme
/// value, or the last with `last`.
pub fn arg_extreme(
    x: &Tensor,
    axis: usize,
    keepdims: bool,
    max: bool,
    last: bool,
) -> Result<(Vec<usize>, Vec<i64>), String> {
    let shape = x.shape();
    let len = *shape
        .get(axis)
        .ok_or_else(|| format!("axis {axis} is out of range for rank {}", shape.len()))?;
    if len == 0 {
        return Err("ArgMax/ArgMin over an empty axis".into());
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let better = |v: f32, best: f32| {
        let strictly = if max { v > best } else { v < best };
        strictly || (last && v == best)
    };
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| x.data()[(o * len + j) * inner + i];
            let mut best = 0;
            for j in 1..len {
                if better(at(j), at(best)) {
                    best = j;
                }
            }
            out.push(best as i64);
        }
    }
    Ok((reduced_shape(shape, &[axis], keepdims), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each output element of a 3-D reduction against a direct loop over the reduced axes.
    #[test]
    fn reductions_match_direct_loops() {
        let x = Tensor::new(
            vec![2, 3, 4],
            (0..24).map(|v| (v as f32 * 0.37).sin()).collect(),
        )
        .unwrap();
        let at = |i: usize, j: usize, k: usize| x.data()[(i * 3 + j) * 4 + k];
        let out = Reduce::Sum.apply(&x, &[0, 2], true).unwrap();
        assert_eq!(out.shape(), [1, 3, 1]);
        for j in 0..3 {
            let want: f32 = (0..2)
                .flat_map(|i| (0..4).map(move |k| (i, k)))
                .map(|(i, k)| at(i, j, k))
                .sum();
            assert!((out.data()[j] - want).abs() < 1e-6);
        }
        let out = Reduce::Max.apply(&x, &[1], false).unwrap();
        assert_eq!(out.shape(), [2, 4]);
        for i in 0..2 {
            for k in 0..4 {
                let want = (0..3)
                    .map(|j| at(i, j, k))
                    .fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(out.data()[i * 4 + k], want);
            }
        }
        let mean = Reduce::Mean.apply(&x, &[0, 1, 2], false).unwrap();
        assert_eq!(mean.shape(), [] as [usize; 0]);
        assert!((mean.data()[0] - x.data().iter().sum::<f32>() / 24.0).abs() < 1e-6);
        let prod = Reduce::Prod.apply(&Tensor::new(vec![0, 2], vec![]).unwrap(), &[0], false);
        assert_eq!(prod.unwrap().data(), [1.0, 1.0], "an empty product is 1");
    }

    #[test]
    fn axes_resolve_from_attribute_or_input_and_empty_means_all_or_nothing() {
        let all = Axes {
            attr: None,
            keepdims: true,
            noop_with_empty_axes: false,
        };
        assert_eq!(all.resolve(None, 3).unwrap(), Some(vec![0, 1, 2]));
        assert_eq!(all.resolve(Some(&[-1, 0, 2]), 3).unwrap(), Some(vec![0, 2]));
        assert!(all.resolve(Some(&[3]), 3).is_err());
        let noop = Axes {
            noop_with_empty_axes: true,
            ..all
        };
        assert_eq!(noop.resolve(Some(&[]), 3).unwrap(), None);
    }

    #[test]
    fn arg_extremes_pick_the_first_or_last_tie() {
        let x = Tensor::new(vec![2, 3], vec![1.0, 5.0, 5.0, 0.0, -1.0, 0.0]).unwrap();
        assert_eq!(
            arg_extreme(&x, 1, false, true, false).unwrap(),
            (vec![2], vec![1, 0])
        );
        assert_eq!(
            arg_extreme(&x, 1, true, true, true).unwrap(),
            (vec![2, 1], vec![2, 2])
        );
        assert_eq!(
            arg_extreme(&x, 0, false, false, false).unwrap(),
            (vec![3], vec![1, 1, 1])
        );
    }
}
