//! Direct depthwise convolution: one filter per channel (`group == channels`), where im2col +
//! GEMM would run thousands of tiny products.
//!
//! On AVX-512 every output vector (a run of up to 16 pixels) is accumulated in a register over
//! the kernel taps, each tap one load of the input masked where the window hangs over an edge,
//! and stored once with the bias and Relu applied. Where each run's tap reads from, and which of
//! its lanes are inside the plane, is the same for every channel, so it is worked out once per
//! call ([`Geometry`]). A stride-1 convolution whose output is as large as its input runs over
//! the flattened plane, so small planes (7×7, 14×14) fill whole vectors; a horizontal stride `s`
//! first splits each input row into `s` phases, so that every tap reads contiguous columns.
//! Four runs are computed together, to keep four multiply-add chains in flight.
//!
//! Elsewhere each output row accumulates one shifted input row per kernel tap.

use super::conv::Window;
use super::packed::{flat_mask, lane_mask, phase_columns, split_phases};
use super::{Epilogue, SendPtr};

/// Convolves one image `[channels, h, w]` with `[channels, 1, kh, kw]` weights into
/// `[channels, oh, ow]`, writing every output.
pub fn depthwise(
    image: (&[f32], [usize; 3]),
    weights: &[f32],
    window: &Window,
    out: (&mut [f32], [usize; 2]),
    epilogue: Epilogue,
    threads: usize,
) {
    if super::packed::avx512() {
        vectorised(image, weights, window, out, epilogue, threads)
    } else {
        portable(image, weights, window, out, epilogue, threads)
    }
}

/// Output pixels of one vector.
const LANES: usize = 16;
/// Runs computed together (independent multiply-add chains).
const RUNS: usize = 4;

/// One kernel tap of one run: where its first lane reads in the channel's source (its plane,
/// or the plane split into phases), and the lanes that read inside it.
#[derive(Debug, Clone, Copy, Default)]
struct TapRead {
    offset: isize,
    mask: u16,
}

/// Where every run reads under every tap, and where it writes: the same for each channel.
struct Geometry {
    /// Each run's first output pixel and the mask of its lanes; padded with empty runs to a
    /// multiple of [`RUNS`].
    runs: Vec<(usize, u16)>,
    /// `reads[run · taps + tap]`.
    reads: Vec<TapRead>,
    taps: usize,
    /// Floats of a channel's source after the phase split (0: read the plane itself).
    phases_len: usize,
}

impl Geometry {
    fn new([h, w]: [usize; 2], window: &Window, [oh, ow]: [usize; 2]) -> Geometry {
        let [kh, kw] = window.kernel;
        let flat = window.strides == [1, 1] && [oh, ow] == [h, w];
        // (first output pixel, lanes, output row, output column)
        let runs: Vec<(usize, usize, isize, isize)> = if flat {
            let pixels = oh * ow;
            (0..pixels)
                .step_by(LANES)
                .map(|p| (p, (pixels - p).min(LANES), 0, 0))
                .collect()
        } else {
            (0..oh)
                .flat_map(|oy| {
                    (0..ow).step_by(LANES).map(move |ox| {
                        (oy * ow + ox, (ow - ox).min(LANES), oy as isize, ox as isize)
                    })
                })
                .collect()
        };
        let mut reads = Vec::with_capacity(runs.len().next_multiple_of(RUNS) * kh * kw);
        for &(pixel, lanes, oy, ox) in &runs {
            for ky in 0..kh {
                for kx in 0..kw {
                    let tap = [ky, kx];
                    reads.push(if flat {
                        flat_read(pixel, lanes, tap, window, [h, w])
                    } else {
                        row_read([oy, ox], lanes, tap, window, [h, w])
                    });
                }
            }
        }
        let mut runs: Vec<(usize, u16)> = runs
            .iter()
            .map(|&(pixel, lanes, ..)| (pixel, lane_mask(0, lanes as isize)))
            .collect();
        while !runs.len().is_multiple_of(RUNS) {
            runs.push((0, 0));
            reads.extend(std::iter::repeat_n(TapRead::default(), kh * kw));
        }
        let sx = window.strides[1];
        Geometry {
            runs,
            reads,
            taps: kh * kw,
            phases_len: if sx > 1 { sx * h * w.div_ceil(sx) } else { 0 },
        }
    }
}

/// Tap `[ky, kx]` of the run of `lanes` pixels from `pixel` of a flattened plane (stride 1,
/// output as large as the input): lane `l` reads input pixel `pixel + l` shifted by the tap.
fn flat_read(
    pixel: usize,
    lanes: usize,
    [ky, kx]: [usize; 2],
    window: &Window,
    [h, w]: [usize; 2],
) -> TapRead {
    let dy = (ky * window.dilations[0]) as isize - window.pads[0] as isize;
    let dx = (kx * window.dilations[1]) as isize - window.pads[1] as isize;
    TapRead {
        offset: pixel as isize + dy * w as isize + dx,
        mask: flat_mask((pixel, lanes), [dy, dx], [h, w]),
    }
}

/// Tap `[ky, kx]` of the run of `lanes` pixels from column `ox` of output row `oy`, reading
/// the input split into phases (`[sx, h, ⌈w / sx⌉]`, see [`split_phases`]; the plane itself
/// when `sx` is 1): lane `l` reads column `ox + l + shift` of the tap's phase.
fn row_read(
    [oy, ox]: [isize; 2],
    lanes: usize,
    [ky, kx]: [usize; 2],
    window: &Window,
    [h, w]: [usize; 2],
) -> TapRead {
    let [sy, sx] = window.strides.map(|s| s as isize);
    let y = oy * sy + (ky * window.dilations[0]) as isize - window.pads[0] as isize;
    let offset = (kx * window.dilations[1]) as isize - window.pads[1] as isize;
    let (phase, shift, columns) = phase_columns(offset, sx, w);
    let (phase_width, x) = (w.div_ceil(sx as usize) as isize, ox + shift);
    let row_inside = (0..h as isize).contains(&y);
    TapRead {
        offset: (phase * h as isize + y) * phase_width + x,
        mask: if row_inside {
            lane_mask(-x, (columns - x).min(lanes as isize))
        } else {
            0
        },
    }
}

/// [`depthwise`] on AVX-512 (see the module docs).
fn vectorised(
    (input, [channels, h, w]): (&[f32], [usize; 3]),
    weights: &[f32],
    window: &Window,
    (out, [oh, ow]): (&mut [f32], [usize; 2]),
    epilogue: Epilogue,
    threads: usize,
) {
    let geometry = Geometry::new([h, w], window, [oh, ow]);
    let taps = geometry.taps;
    assert!(
        input.len() >= channels * h * w
            && out.len() >= channels * oh * ow
            && weights.len() >= channels * taps
            && epilogue.bias.is_none_or(|b| b.len() >= channels),
        "depthwise operands smaller than {channels} channels"
    );
    let dst = SendPtr(out.as_mut_ptr());
    super::parallel_ranges(channels, threads, |range| {
        let mut phases = vec![0.0; geometry.phases_len];
        for c in range {
            let mut source = &input[c * h * w..(c + 1) * h * w];
            if !phases.is_empty() {
                split_phases(source, [1, h, w], window, &mut phases);
                source = &phases;
            }
            let bias = epilogue.bias.map_or(0.0, |b| b[c]);
            // SAFETY: `avx512()` was checked by the caller; every unmasked lane of the
            // geometry reads inside a channel's source, every run writes inside one output
            // plane, and channel `c` writes only its own plane.
            unsafe {
                channel_vectors(
                    source,
                    &weights[c * taps..(c + 1) * taps],
                    (bias, epilogue.relu),
                    &geometry,
                    dst.at(c * oh * ow),
                )
            };
        }
    });
}

/// Computes one channel's output plane at `out` from its `source`, run group by run group.
///
/// # Safety
/// AVX-512F; `source` must be the source the geometry was made for (its unmasked lanes read
/// inside it), and `out` must hold the runs' output pixels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn channel_vectors(
    source: &[f32],
    filter: &[f32],
    (bias, relu): (f32, bool),
    geometry: &Geometry,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let taps = geometry.taps;
    let base = source.as_ptr();
    let groups = geometry.runs.chunks_exact(RUNS);
    for (group, reads) in groups.zip(geometry.reads.chunks_exact(RUNS * taps)) {
        let mut acc = [_mm512_set1_ps(bias); RUNS];
        for (tap, &weight) in filter.iter().enumerate() {
            let weight = _mm512_set1_ps(weight);
            for (v, acc) in acc.iter_mut().enumerate() {
                let read = reads[v * taps + tap];
                // SAFETY: as this function's contract (masked lanes read nothing).
                let x =
                    unsafe { _mm512_maskz_loadu_ps(read.mask, base.wrapping_offset(read.offset)) };
                *acc = _mm512_fmadd_ps(weight, x, *acc);
            }
        }
        for (&(pixel, lanes), &acc) in group.iter().zip(&acc) {
            let value = if relu {
                _mm512_max_ps(acc, _mm512_setzero_ps())
            } else {
                acc
            };
            // SAFETY: the run's lanes are inside the output plane.
            unsafe { _mm512_mask_storeu_ps(out.add(pixel), lanes, value) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn channel_vectors(_: &[f32], _: &[f32], _: (f32, bool), _: &Geometry, _: *mut f32) {
    unreachable!("the vectorised depthwise kernel runs only where packed::avx512() is true")
}

/// [`depthwise`] on any CPU: each output row accumulates one shifted input row per tap.
fn portable(
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

    type Kernel =
        fn((&[f32], [usize; 3]), &[f32], &Window, (&mut [f32], [usize; 2]), Epilogue, usize);

    /// Both kernels (the vectorised one where this CPU has AVX-512), 1 thread without Relu and
    /// 2 with, against the naive convolution: padding, strides, dilation, taps that reach no
    /// column of a row, flattened planes (stride 1, same size) with runs crossing rows and a
    /// partial run group, and stride-2 phases with uneven padding.
    #[test]
    fn depthwise_matches_the_definition() {
        let mut kernels: Vec<(&str, Kernel)> = vec![("portable", portable)];
        if crate::ops::packed::avx512() {
            kernels.push(("vectorised", vectorised));
        }
        // (channels, h, w, kernel, stride, pads, dilation)
        for (c, h, w, k, s, p, d) in [
            (3, 7, 9, 3, 1, [1; 4], 1),
            (4, 8, 8, 3, 2, [1; 4], 1),
            (2, 9, 7, 5, 2, [2; 4], 1),
            (3, 10, 10, 3, 1, [2; 4], 2),
            (2, 5, 5, 3, 3, [0; 4], 1),
            (2, 3, 3, 5, 1, [4; 4], 1), // taps that reach no column of a row
            (5, 7, 7, 3, 1, [1; 4], 1), // flattened: 49 pixels, one run group
            (3, 14, 14, 3, 1, [1; 4], 1), // flattened: 13 runs, a partial group
            (4, 23, 37, 3, 1, [0; 4], 1), // rows wider than two vectors
            (3, 29, 35, 3, 2, [0, 1, 1, 0], 1), // phases, uneven padding
            (2, 12, 40, 5, 3, [2, 1, 2, 3], 1),
        ] {
            let x = Tensor::new(vec![1, c, h, w], values(c * h * w, 1)).unwrap();
            let wt = Tensor::new(vec![c, 1, k, k], values(c * k * k, 2)).unwrap();
            let bias = values(c, 3);
            let win = Window {
                kernel: [k, k],
                strides: [s, s],
                dilations: [d, d],
                pads: p,
                ceil: false,
            };
            let [oh, ow] = win.output(h, w).unwrap();
            let expected = naive_conv(&x, &wt, &bias, &win, c);
            for ((name, kernel), (threads, relu)) in kernels
                .iter()
                .flat_map(|k| [(k, (1, false)), (k, (2, true))])
            {
                let mut out = vec![f32::NAN; c * oh * ow];
                let epilogue = Epilogue {
                    bias: Some(&bias),
                    relu,
                };
                kernel(
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
                        "{name} c{c} {h}×{w} k{k} s{s} p{p:?} d{d} [{i}]: {g} vs {e}"
                    );
                }
            }
        }
    }
}
