//! 2-D convolution and pooling over NCHW tensors.
//!
//! Convolution lowers to GEMM: a 1×1 convolution with stride 1 and no padding is one GEMM of
//! the weights with the input as it lies; any other is im2col (unfold the input patches into a
//! matrix) followed by a GEMM, per image and group.

use super::linalg::{MatRef, sgemm};
use crate::Tensor;

/// Spatial parameters shared by convolution and pooling (2-D).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// top, left, bottom, right.
    pub pads: [usize; 4],
    /// Output size rounds up (pooling's `ceil_mode`).
    pub ceil: bool,
}

impl Window {
    /// Output height and width for an input of `h × w`.
    pub fn output(&self, h: usize, w: usize) -> Result<[usize; 2], String> {
        let size = |input: usize, axis: usize| {
            let span = self.dilations[axis] * (self.kernel[axis] - 1) + 1;
            let padded = input + self.pads[axis] + self.pads[axis + 2];
            if padded < span {
                return Err(format!(
                    "window {span} is larger than the padded input {padded}"
                ));
            }
            let steps = padded - span;
            let stride = self.strides[axis];
            Ok(if self.ceil {
                steps.div_ceil(stride) + 1
            } else {
                steps / stride + 1
            })
        };
        Ok([size(h, 0)?, size(w, 1)?])
    }
}

fn nchw(t: &Tensor, what: &str) -> Result<[usize; 4], String> {
    match *t.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        ref other => Err(format!("{what} must be 4-D (NCHW), got {other:?}")),
    }
}

/// ONNX Conv (2-D, with groups and optional bias).
pub fn conv(
    x: &Tensor,
    weights: &Tensor,
    bias: Option<&Tensor>,
    window: &Window,
    group: usize,
    threads: usize,
) -> Result<Tensor, String> {
    let [n, c, h, w] = nchw(x, "input")?;
    let [m, cg, kh, kw] = nchw(weights, "weights")?;
    if group == 0 || c != cg * group || m % group != 0 {
        return Err(format!(
            "{c} input channels, {m} filters of {cg} channels and group {group} do not fit"
        ));
    }
    if [kh, kw] != window.kernel {
        return Err(format!(
            "kernel_shape {:?} differs from the weights' {kh}×{kw}",
            window.kernel
        ));
    }
    if let Some(b) = bias
        && b.shape() != [m]
    {
        return Err(format!("bias has shape {:?}, expected [{m}]", b.shape()));
    }
    let [oh, ow] = window.output(h, w)?;
    let (mg, patch, pixels) = (m / group, cg * kh * kw, oh * ow);
    let mut out = Tensor::zeros(vec![n, m, oh, ow]);
    let direct = [kh, kw] == [1, 1] && window.strides == [1, 1] && window.pads == [0; 4];
    let mut columns = if direct {
        Vec::new()
    } else {
        vec![0.0; patch * pixels]
    };
    for image in 0..n {
        for g in 0..group {
            let input = &x.data()[(image * c + g * cg) * h * w..(image * c + (g + 1) * cg) * h * w];
            let cols: &[f32] = if direct {
                input
            } else {
                im2col(input, [cg, h, w], window, [oh, ow], &mut columns);
                &columns
            };
            let filters = &weights.data()[g * mg * patch..(g + 1) * mg * patch];
            let start = (image * m + g * mg) * pixels;
            sgemm(
                (mg, patch, pixels),
                MatRef::rows(filters, patch),
                MatRef::rows(cols, pixels),
                &mut out.data_mut()[start..start + mg * pixels],
                false,
                threads,
            );
        }
    }
    if let Some(b) = bias {
        for (index, plane) in out.data_mut().chunks_mut(pixels).enumerate() {
            let value = b.data()[index % m];
            plane.iter_mut().for_each(|v| *v += value);
        }
    }
    Ok(out)
}

/// Unfolds the patches of one image's `[c, h, w]` channels into a `(c·kh·kw) × (oh·ow)` matrix.
fn im2col(
    input: &[f32],
    [c, h, w]: [usize; 3],
    win: &Window,
    [oh, ow]: [usize; 2],
    out: &mut [f32],
) {
    let [kh, kw] = win.kernel;
    let mut row = 0;
    for channel in 0..c {
        let plane = &input[channel * h * w..(channel + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let dst = &mut out[row * oh * ow..(row + 1) * oh * ow];
                for oy in 0..oh {
                    let y = (oy * win.strides[0] + ky * win.dilations[0]) as isize
                        - win.pads[0] as isize;
                    for ox in 0..ow {
                        let x = (ox * win.strides[1] + kx * win.dilations[1]) as isize
                            - win.pads[1] as isize;
                        dst[oy * ow + ox] =
                            if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                                plane[y as usize * w + x as usize]
                            } else {
                                0.0
                            };
                    }
                }
                row += 1;
            }
        }
    }
}

/// How a pooling window combines its values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pool {
    Max,
    /// Average; `count_include_pad` counts padded positions in the divisor.
    Average {
        count_include_pad: bool,
    },
}

/// ONNX MaxPool / AveragePool (2-D).
pub fn pool(x: &Tensor, window: &Window, kind: Pool) -> Result<Tensor, String> {
    let [n, c, h, w] = nchw(x, "input")?;
    let [oh, ow] = window.output(h, w)?;
    let [kh, kw] = window.kernel;
    let mut out = Tensor::zeros(vec![n, c, oh, ow]);
    for (plane_index, dst) in out.data_mut().chunks_mut(oh * ow).enumerate() {
        let plane = &x.data()[plane_index * h * w..(plane_index + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut max, mut sum, mut count, mut padded_count) =
                    (f32::NEG_INFINITY, 0.0, 0, 0);
                for ky in 0..kh {
                    let y = (oy * window.strides[0] + ky * window.dilations[0]) as isize
                        - window.pads[0] as isize;
                    for kx in 0..kw {
                        let x = (ox * window.strides[1] + kx * window.dilations[1]) as isize
                            - window.pads[1] as isize;
                        // Positions in the explicit padding count for count_include_pad; positions
                        // past it (ceil mode) never do.
                        let in_padding =
                            y < (h + window.pads[2]) as isize && x < (w + window.pads[3]) as isize;
                        if in_padding {
                            padded_count += 1;
                        }
                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                            let v = plane[y as usize * w + x as usize];
                            max = max.max(v);
                            sum += v;
                            count += 1;
                        }
                    }
                }
                dst[oy * ow + ox] = match kind {
                    Pool::Max => max,
                    Pool::Average {
                        count_include_pad: true,
                    } => sum / padded_count.max(1) as f32,
                    Pool::Average { .. } => sum / count.max(1) as f32,
                };
            }
        }
    }
    Ok(out)
}

/// ONNX GlobalAveragePool: the mean of each channel plane, as N×C×1×1.
pub fn global_average_pool(x: &Tensor) -> Result<Tensor, String> {
    let [n, c, h, w] = nchw(x, "input")?;
    let data = x
        .data()
        .chunks(h * w)
        .map(|plane| plane.iter().sum::<f32>() / (h * w) as f32)
        .collect();
    Tensor::new(vec![n, c, 1, 1], data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Convolution by its definition, for comparison.
    fn naive_conv(x: &Tensor, wt: &Tensor, bias: &[f32], win: &Window, group: usize) -> Vec<f32> {
        let [n, c, h, w] = nchw(x, "x").unwrap();
        let [m, cg, kh, kw] = nchw(wt, "w").unwrap();
        let [oh, ow] = win.output(h, w).unwrap();
        let mut out = vec![0.0; n * m * oh * ow];
        for b in 0..n {
            for f in 0..m {
                let g = f / (m / group);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[f];
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let y = (oy * win.strides[0] + ky * win.dilations[0]) as isize
                                        - win.pads[0] as isize;
                                    let xx = (ox * win.strides[1] + kx * win.dilations[1]) as isize
                                        - win.pads[1] as isize;
                                    if y < 0 || xx < 0 || y as usize >= h || xx as usize >= w {
                                        continue;
                                    }
                                    let input = x.data()[((b * c + g * cg + ci) * h + y as usize)
                                        * w
                                        + xx as usize];
                                    acc += input * wt.data()[((f * cg + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        out[((b * m + f) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) * 0.125)
            .collect()
    }

    #[test]
    fn conv_matches_the_definition_for_each_lowering() {
        // (input [n,c,h,w], filters m, kernel, stride, pad, dilation, group)
        let cases = [
            ([1, 3, 5, 5], 4, 1, 1, 0, 1, 1), // 1×1: direct GEMM
            ([2, 4, 7, 6], 6, 3, 1, 1, 1, 2), // grouped 3×3, padded
            ([1, 3, 9, 9], 2, 3, 2, 1, 2, 1), // strided, dilated
            ([1, 4, 6, 6], 4, 3, 1, 1, 1, 4), // depthwise
        ];
        for (shape, m, k, s, p, d, group) in cases {
            let x = Tensor::new(shape.to_vec(), values(shape.iter().product(), 1)).unwrap();
            let cg = shape[1] / group;
            let wt = Tensor::new(vec![m, cg, k, k], values(m * cg * k * k, 2)).unwrap();
            let bias = values(m, 3);
            let win = Window {
                kernel: [k, k],
                strides: [s, s],
                dilations: [d, d],
                pads: [p; 4],
                ceil: false,
            };
            let b = Tensor::new(vec![m], bias.clone()).unwrap();
            let got = conv(&x, &wt, Some(&b), &win, group, 2).unwrap();
            let expected = naive_conv(&x, &wt, &bias, &win, group);
            assert_eq!(got.data().len(), expected.len());
            for (g, e) in got.data().iter().zip(&expected) {
                assert!(
                    (g - e).abs() < 1e-4,
                    "case {shape:?} k{k} s{s} p{p} d{d} g{group}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn pooling_counts_padding_as_asked() {
        let x = Tensor::new(vec![1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
        let win = Window {
            kernel: [2, 2],
            strides: [2, 2],
            dilations: [1, 1],
            pads: [0, 0, 1, 1],
            ceil: false,
        };
        let max = pool(&x, &win, Pool::Max).unwrap();
        assert_eq!(max.data(), [5.0, 6.0, 8.0, 9.0]);
        let avg = pool(
            &x,
            &win,
            Pool::Average {
                count_include_pad: false,
            },
        )
        .unwrap();
        assert_eq!(avg.data(), [3.0, 4.5, 7.5, 9.0]);
        let with_pad = pool(
            &x,
            &win,
            Pool::Average {
                count_include_pad: true,
            },
        )
        .unwrap();
        assert_eq!(with_pad.data(), [3.0, 2.25, 3.75, 2.25]);
        let ceil = Window {
            pads: [0; 4],
            ceil: true,
            ..win
        };
        assert_eq!(pool(&x, &ceil, Pool::Max).unwrap().shape(), [1, 1, 2, 2]);
        assert_eq!(global_average_pool(&x).unwrap().data(), [5.0]);
    }
}
