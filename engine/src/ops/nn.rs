//! Normalisation: BatchNormalization (inference) and LRN, over NCHW (or NC…) tensors.

use crate::Tensor;

/// ONNX BatchNormalization in inference mode: `(x - mean) / sqrt(var + ε) · scale + bias` per
/// channel (axis 1), in `x`'s buffer; then clamped at zero when `relu` (a fused Relu).
pub fn batch_norm(
    mut x: Tensor,
    [scale, bias, mean, var]: [&Tensor; 4],
    epsilon: f32,
    relu: bool,
) -> Result<Tensor, String> {
    let c = *x.shape().get(1).ok_or("input needs a channel axis")?;
    for (name, t) in [("scale", scale), ("B", bias), ("mean", mean), ("var", var)] {
        if t.data().len() != c {
            return Err(format!(
                "{name} has {} values for {c} channels",
                t.data().len()
            ));
        }
    }
    let inner: usize = x.shape()[2..].iter().product::<usize>().max(1);
    let (scale, bias, mean, var) = (scale.data(), bias.data(), mean.data(), var.data());
    // Chunks start on plane boundaries (whole planes per thread), so each knows its channels.
    let planes_per_chunk = x
        .data()
        .len()
        .div_ceil(inner * rayon::current_num_threads().max(1));
    let normalise = |first_plane: usize, chunk: &mut [f32]| {
        for (i, plane) in chunk.chunks_mut(inner).enumerate() {
            let ch = (first_plane + i) % c;
            let factor = scale[ch] / (var[ch] + epsilon).sqrt();
            let shift = bias[ch] - mean[ch] * factor;
            if relu {
                plane
                    .iter_mut()
                    .for_each(|v| *v = (*v * factor + shift).max(0.0));
            } else {
                plane.iter_mut().for_each(|v| *v = *v * factor + shift);
            }
        }
    };
    if x.data().len() < 1 << 16 || planes_per_chunk == 0 {
        super::simd(
            #[inline(always)]
            || normalise(0, x.data_mut()),
        );
    } else {
        use rayon::prelude::*;
        let per = planes_per_chunk * inner;
        x.data_mut()
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(i, chunk)| {
                super::simd(
                    #[inline(always)]
                    || normalise(i * planes_per_chunk, chunk),
                )
            });
    }
    Ok(x)
}

/// ONNX LRN: each value divided by `(bias + alpha/size · Σ x²)^beta` over `size` neighbouring
/// channels.
pub fn lrn(x: &Tensor, size: usize, alpha: f32, beta: f32, bias: f32) -> Result<Tensor, String> {
    let shape = x.shape();
    if shape.len() < 3 || size == 0 {
        return Err(format!(
            "LRN needs N×C×… input and size ≥ 1, got {shape:?}, size {size}"
        ));
    }
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let (below, above) = ((size - 1) / 2, size.div_ceil(2) - 1);
    let mut out = Tensor::zeros(shape.to_vec());
    for b in 0..n {
        for ch in 0..c {
            let (lo, hi) = (ch.saturating_sub(below), (ch + above).min(c - 1));
            for i in 0..inner {
                let at = |k: usize| (b * c + k) * inner + i;
                let sum: f32 = (lo..=hi).map(|k| x.data()[at(k)].powi(2)).sum();
                out.data_mut()[at(ch)] =
                    x.data()[at(ch)] / (bias + alpha / size as f32 * sum).powf(beta);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_norm_and_lrn_follow_their_formulas() {
        let x = Tensor::new(vec![1, 2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let t = |v: [f32; 2]| Tensor::new(vec![2], v.to_vec()).unwrap();
        let (scale, bias, mean, var) = (t([2.0, 1.0]), t([0.5, 0.0]), t([1.0, 3.0]), t([4.0, 1.0]));
        let y = batch_norm(x.clone(), [&scale, &bias, &mean, &var], 0.0, false).unwrap();
        assert_eq!(y.data(), [0.5, 1.5, 0.0, 1.0]);
        // With the fused Relu: channel 0 is x - 1.5, channel 1 is x - 5, clamped at zero.
        let mean = t([2.0, 5.0]);
        let r = batch_norm(x.clone(), [&scale, &bias, &mean, &var], 0.0, true).unwrap();
        assert_eq!(r.data(), [0.0, 0.5, 0.0, 0.0]);
        // Large enough to be split over threads (whole planes each): the same formula.
        let (c, inner) = (3, 40_000);
        let big = Tensor::new(
            vec![1, c, 200, 200],
            (0..c * inner).map(|i| (i % 31) as f32).collect(),
        )
        .unwrap();
        let t3 = |v: [f32; 3]| Tensor::new(vec![3], v.to_vec()).unwrap();
        let (s3, b3, m3, v3) = (
            t3([1.0, 2.0, 0.5]),
            t3([0.0, 1.0, -1.0]),
            t3([3.0, 0.0, 1.0]),
            t3([1.0, 4.0, 0.25]),
        );
        let y = batch_norm(big.clone(), [&s3, &b3, &m3, &v3], 0.0, false).unwrap();
        for (i, (&got, &x)) in y.data().iter().zip(big.data()).enumerate() {
            let ch = i / inner;
            let expected =
                (x - m3.data()[ch]) / v3.data()[ch].sqrt() * s3.data()[ch] + b3.data()[ch];
            assert!((got - expected).abs() < 1e-4, "[{i}] {got} vs {expected}");
        }
        let l = lrn(&x, 3, 1.0, 1.0, 1.0).unwrap();
        // channel 0 sees channels 0..=1: 1 + (1² + 3²)/3
        assert!((l.data()[0] - 1.0 / (1.0 + 10.0 / 3.0)).abs() < 1e-6);
        assert!((l.data()[3] - 4.0 / (1.0 + 20.0 / 3.0)).abs() < 1e-6);
    }
}
