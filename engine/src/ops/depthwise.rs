//! Direct depthwise convolution: one filter per channel (`group == channels`), where im2col +
//! GEMM would run thousands of tiny products. Each output row accumulates one shifted input row
//! per kernel tap, so the inner loop is a contiguous multiply-add when the stride is 1.

use super::conv::Window;
use super::{Epilogue, SendPtr};

/// Convolves one image `[channels, h, w]` with `[channels, 1, kh, kw]` weights into
/// `[channels, oh, ow]`.
pub fn depthwise(
    (input, [channels, h, w]): (&[f32], [usize; 3]),
    weights: &[f32],
    window: &Window,
    (out, [oh, ow]): (&mut [f32], [usize; 2]),
    epilogue: Epilogue,
    threads: usize,
) {
    let taps = window.kernel[0] * window.kernel[1];
    let dst = SendPtr(out.as_mut_ptr());
    let spans = column_spans(window, w, ow);
    let channel = |c: usize| {
        // SAFETY: each channel writes only its own output plane.
        let plane = unsafe { std::slice::from_raw_parts_mut(dst.at(c * oh * ow), oh * ow) };
        plane.fill(epilogue.bias.map_or(0.0, |b| b[c]));
        let source = &input[c * h * w..(c + 1) * h * w];
        let filter = &weights[c * taps..(c + 1) * taps];
        super::simd(
            #[inline(always)]
            || channel_plane(source, [h, w], filter, window, &spans, plane, [oh, ow]),
        );
        if epilogue.relu {
            plane.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    };
    super::parallel_ranges(channels, threads, |range| range.for_each(&channel));
}

/// For each kernel column `kx`: the outputs `first..last` whose input column
/// `kx·dx - pad + ox·sx` lies inside a row of width `w`, and the input column of `first`. The
/// same for every row and channel, so it is worked out once per call.
fn column_spans(win: &Window, w: usize, ow: usize) -> Vec<(usize, usize, usize)> {
    let sx = win.strides[1];
    (0..win.kernel[1])
        .map(|kx| {
            let x0 = (kx * win.dilations[1]) as isize - win.pads[1] as isize;
            let first = ((-x0).max(0) as usize).div_ceil(sx).min(ow);
            let last = ((w as isize - x0).max(0) as usize)
                .div_ceil(sx)
                .clamp(first, ow);
            let start = (x0 + (first * sx) as isize).max(0) as usize;
            (first, last, start)
        })
        .collect()
}

/// Adds one channel's convolution to `out` (which holds the bias).
#[inline(always)]
fn channel_plane(
    source: &[f32],
    [h, w]: [usize; 2],
    filter: &[f32],
    win: &Window,
    spans: &[(usize, usize, usize)],
    out: &mut [f32],
    [oh, ow]: [usize; 2],
) {
    let kw = win.kernel[1];
    let ([sy, sx], dy) = (win.strides, win.dilations[0]);
    for oy in 0..oh {
        let row = &mut out[oy * ow..(oy + 1) * ow];
        for ky in 0..win.kernel[0] {
            let y = (oy * sy + ky * dy) as isize - win.pads[0] as isize;
            if y < 0 || y as usize >= h {
                continue;
            }
            let line = &source[y as usize * w..(y as usize + 1) * w];
            let taps = filter[ky * kw..(ky + 1) * kw].iter().zip(spans);
            for (&weight, &(first, last, start)) in taps {
                if first == last {
                    continue;
                }
                let outputs = &mut row[first..last];
                if sx == 1 {
                    let src = &line[start..start + outputs.len()];
                    for (o, &v) in outputs.iter_mut().zip(src) {
                        *o += weight * v;
                    }
                } else {
                    for (o, &v) in outputs.iter_mut().zip(line[start..].iter().step_by(sx)) {
                        *o += weight * v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;
    use crate::ops::conv::tests::{naive_conv, values};

    #[test]
    fn depthwise_matches_the_definition() {
        // (channels, h, w, kernel, stride, pad, dilation)
        for (c, h, w, k, s, p, d) in [
            (3, 7, 9, 3, 1, 1, 1),
            (4, 8, 8, 3, 2, 1, 1),
            (2, 9, 7, 5, 2, 2, 1),
            (3, 10, 10, 3, 1, 2, 2),
            (2, 5, 5, 3, 3, 0, 1),
            (2, 3, 3, 5, 1, 4, 1), // taps that reach no column of a row
        ] {
            let x = Tensor::new(vec![1, c, h, w], values(c * h * w, 1)).unwrap();
            let wt = Tensor::new(vec![c, 1, k, k], values(c * k * k, 2)).unwrap();
            let bias = values(c, 3);
            let win = Window {
                kernel: [k, k],
                strides: [s, s],
                dilations: [d, d],
                pads: [p; 4],
                ceil: false,
            };
            let [oh, ow] = win.output(h, w).unwrap();
            let expected = naive_conv(&x, &wt, &bias, &win, c);
            for (threads, relu) in [(1, false), (2, true)] {
                let mut out = vec![f32::NAN; c * oh * ow];
                let epilogue = Epilogue {
                    bias: Some(&bias),
                    relu,
                };
                depthwise(
                    (x.data(), [c, h, w]),
                    wt.data(),
                    &win,
                    (&mut out, [oh, ow]),
                    epilogue,
                    threads,
                );
                for (i, (g, e)) in out.iter().zip(&expected).enumerate() {
                    let e = if relu { e.max(0.0) } else { *e };
                    assert!(
                        (g - e).abs() < 1e-4,
                        "c{c} {h}×{w} k{k} s{s} p{p} d{d} [{i}]: {g} vs {e}"
                    );
                }
            }
        }
    }
}
