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
            if !self.ceil {
                return Ok(steps / stride + 1);
            }
            // Rounding up may add a window that starts in the end padding; like ONNX Runtime
            // and PyTorch, drop it.
            let out = steps.div_ceil(stride) + 1;
            Ok(if (out - 1) * stride >= input + self.pads[axis] {
                out - 1
            } else {
                out
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
    // The bias is written first (in place of zeros) and the GEMM adds to it: one pass over
    // the output fewer.
    let mut out = match bias {
        Some(b) => {
            let mut data = Vec::with_capacity(n * m * pixels);
            for _ in 0..n {
                for &value in b.data() {
                    data.extend(std::iter::repeat_n(value, pixels));
                }
            }
            Tensor::new(vec![n, m, oh, ow], data).map_err(|e| e.to_string())?
        }
        None => Tensor::zeros(vec![n, m, oh, ow]),
    };
    let direct = [kh, kw] == [1, 1] && window.strides == [1, 1] && window.pads == [0; 4];
    let mut columns = take_columns();
    {
        let columns = &mut columns;
        if !direct && columns.len() < patch * pixels {
            columns.resize(patch * pixels, 0.0);
        }
        for image in 0..n {
            for g in 0..group {
                let first = (image * c + g * cg) * h * w;
                let input = &x.data()[first..first + cg * h * w];
                let cols: &[f32] = if direct {
                    input
                } else {
                    im2col(input, [cg, h, w], window, [oh, ow], columns, threads);
                    &columns[..patch * pixels]
                };
                let filters = &weights.data()[g * mg * patch..(g + 1) * mg * patch];
                let start = (image * m + g * mg) * pixels;
                sgemm(
                    (mg, patch, pixels),
                    MatRef::rows(filters, patch),
                    MatRef::rows(cols, pixels),
                    &mut out.data_mut()[start..start + mg * pixels],
                    bias.is_some(),
                    threads,
                );
            }
        }
    }
    return_columns(columns);
    Ok(out)
}

/// Unfolds the patches of one image's `[c, h, w]` channels into a `(c·kh·kw) × (oh·ow)` matrix.
/// Each row (one channel and kernel offset) is independent, so rows are filled in parallel.
pub(crate) fn im2col(
    input: &[f32],
    [c, h, w]: [usize; 3],
    win: &Window,
    [oh, ow]: [usize; 2],
    out: &mut [f32],
    threads: usize,
) {
    use rayon::prelude::*;
    let [kh, kw] = win.kernel;
    let fill = |(row, dst): (usize, &mut [f32])| {
        let (channel, ky, kx) = (row / (kh * kw), (row / kw) % kh, row % kw);
        let plane = &input[channel * h * w..(channel + 1) * h * w];
        for oy in 0..oh {
            let line = &mut dst[oy * ow..(oy + 1) * ow];
            let y = (oy * win.strides[0] + ky * win.dilations[0]) as isize - win.pads[0] as isize;
            if y < 0 || y as usize >= h {
                line.fill(0.0);
                continue;
            }
            let src = &plane[y as usize * w..(y as usize + 1) * w];
            let x0 = (kx * win.dilations[1]) as isize - win.pads[1] as isize;
            unfold_line(src, x0, win.strides[1], line);
        }
    };
    let rows = &mut out[..c * kh * kw * oh * ow];
    if threads > 1 && rows.len() >= 1 << 16 {
        // Contiguous blocks of rows, one task per thread (an indexed split: `par_bridge` made
        // the threads take rows one at a time through a lock).
        let per_task = (c * kh * kw).div_ceil(threads) * oh * ow;
        rows.par_chunks_mut(per_task.max(1))
            .enumerate()
            .for_each(|(block, chunk)| {
                let first = block * per_task / (oh * ow).max(1);
                super::simd(
                    #[inline(always)]
                    || {
                        let rows = chunk.chunks_mut((oh * ow).max(1)).enumerate();
                        rows.for_each(|(i, row)| fill((first + i, row)))
                    },
                )
            });
    } else {
        super::simd(
            #[inline(always)]
            || {
                let rows = rows.chunks_mut((oh * ow).max(1)).enumerate();
                rows.for_each(fill)
            },
        );
    }
}

/// Writes `line[ox]` = `src[x0 + ox·stride]`, zero where that falls outside `src`.
#[inline(always)]
fn unfold_line(src: &[f32], x0: isize, stride: usize, line: &mut [f32]) {
    // Output columns `first..last` read inside `src`; zeros where the window hangs over an
    // edge, a strided copy in between.
    let len = line.len() as isize;
    let first = ceil_div(-x0, stride).clamp(0, len) as usize;
    let last = (ceil_div(src.len() as isize - x0, stride).clamp(0, len) as usize).max(first);
    line[..first].fill(0.0);
    line[last..].fill(0.0);
    let from = (x0 + (first * stride) as isize) as usize;
    let inner = &mut line[first..last];
    match stride {
        1 => inner.copy_from_slice(&src[from..from + inner.len()]),
        // Pairs, so the compiler turns the stride into shuffles of full vectors.
        2 => {
            let pairs = src[from..].chunks_exact(2);
            let tail = pairs.remainder().first().copied();
            let mut out = inner.iter_mut();
            // Pairs first: when they run out, `zip` has not taken an output yet.
            for (pair, value) in pairs.zip(out.by_ref()) {
                *value = pair[0];
            }
            if let (Some(value), Some(v)) = (out.next(), tail) {
                *value = v;
            }
        }
        _ => {
            for (value, &v) in inner.iter_mut().zip(src[from..].iter().step_by(stride)) {
                *value = v;
            }
        }
    }
}

/// `a / b` rounded up, for a positive `b`.
fn ceil_div(a: isize, b: usize) -> isize {
    let b = b as isize;
    a.div_euclid(b) + (a.rem_euclid(b) != 0) as isize
}

/// This thread's im2col buffer, taken out while in use, so a nested convolution on this thread
/// (rayon may run another job while this one waits) gets its own buffer instead of a borrow
/// conflict. Give it back with [`return_columns`].
pub(crate) fn take_columns() -> Vec<f32> {
    COLUMNS.take()
}

pub(crate) fn return_columns(columns: Vec<f32>) {
    COLUMNS.set(columns);
}

thread_local! {
    /// The im2col matrix, reused across convolutions on this thread (every element is written
    /// before it is read, so it is never cleared).
    static COLUMNS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
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
    let mut out = Tensor::zeros(vec![n, c, oh, ow]);
    // Planes are independent: one contiguous block of them per thread of the pool the session
    // runs in, each block with its own spans and buffers.
    use rayon::prelude::*;
    let (planes, plane_out) = (n * c, (oh * ow).max(1));
    let per = planes.div_ceil(rayon::current_num_threads()).max(1);
    let blocks = out.data_mut().par_chunks_mut(per * plane_out).enumerate();
    let max_3x3_s2 = kind == Pool::Max && max3x3s2::fits(window);
    blocks.for_each(|(block, dsts)| {
        if max_3x3_s2 {
            let first = block * per * h * w;
            // SAFETY: `fits` checked the CPU and the window.
            return unsafe { max3x3s2::planes(&x.data()[first..], [h, w], window, [oh, ow], dsts) };
        }
        let mut undilated =
            (window.dilations == [1, 1]).then(|| PlanePool::new(window, kind, [h, w], [oh, ow]));
        for (i, dst) in dsts.chunks_mut(plane_out).enumerate() {
            let index = block * per + i;
            let plane = &x.data()[index * h * w..(index + 1) * h * w];
            super::simd(
                #[inline(always)]
                || match &mut undilated {
                    Some(pool) => pool.run(plane, dst),
                    None => pool_plane_dilated(plane, [h, w], window, kind, [oh, ow], dst),
                },
            );
        }
    });
    Ok(out)
}

/// One plane of any pool, dilated or not: every window position checked against the input.
fn pool_plane_dilated(
    plane: &[f32],
    [h, w]: [usize; 2],
    window: &Window,
    kind: Pool,
    [oh, ow]: [usize; 2],
    dst: &mut [f32],
) {
    let [kh, kw] = window.kernel;
    for oy in 0..oh {
        for ox in 0..ow {
            let (mut max, mut sum, mut count, mut padded_count) = (f32::NEG_INFINITY, 0.0, 0, 0);
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

/// MaxPool with a 3×3 window and stride 2 (ResNet's, SqueezeNet's, GoogLeNet's) in AVX-512:
/// 16 outputs of a row at a time, from the elementwise maximum of the window's input rows,
/// whose even and odd lanes are then gathered by two-source permutes.
mod max3x3s2 {
    use super::Window;

    /// Whether the kernel runs this window on this CPU.
    pub(super) fn fits(window: &Window) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            window.kernel == [3, 3]
                && window.strides == [2, 2]
                && window.dilations == [1, 1]
                && crate::ops::packed::avx512()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = window;
            false
        }
    }

    /// Pools the planes of `input` (`[h, w]` each) into `out` (`[oh, ow]` each, as many as
    /// `out` holds).
    ///
    /// # Safety
    /// [`fits`] must have said yes, and `input` must hold a plane for each of `out`'s.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn planes(
        input: &[f32],
        [h, w]: [usize; 2],
        window: &Window,
        [oh, ow]: [usize; 2],
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (top, left) = (window.pads[0] as isize, window.pads[1] as isize);
        let (w_, h_) = (w as isize, h as isize);
        let low = _mm512_set1_ps(f32::NEG_INFINITY);
        // Lanes 0, 2, …, 30 and 1, 3, …, 31 of two vectors side by side.
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // The 16 input columns from `x`, NEG_INFINITY where they fall outside the row.
        let load = |row: *const f32, x: isize| {
            let from = (-x).clamp(0, 16) as u32;
            let to = (w_ - x).clamp(0, 16) as u32;
            let mask = if to > from {
                (((1u32 << to) - 1) & !((1u32 << from) - 1)) as u16
            } else {
                0
            };
            // SAFETY: only the lanes inside the row are read.
            unsafe { _mm512_mask_loadu_ps(low, mask, row.wrapping_offset(x)) }
        };
        for (plane, dst) in out.chunks_exact_mut((oh * ow).max(1)).enumerate() {
            let source = input[plane * h * w..(plane + 1) * h * w].as_ptr();
            for oy in 0..oh {
                let y0 = 2 * oy as isize - top;
                for ox in (0..ow).step_by(16) {
                    let x = 2 * ox as isize - left;
                    // Columns x..x+32 and x+2..x+34, each the maximum over the window's rows.
                    let mut v = [low; 4];
                    for y in y0.max(0)..(y0 + 3).min(h_) {
                        let row = source.wrapping_offset(y * w_);
                        for (i, offset) in [0, 16, 2, 18].into_iter().enumerate() {
                            v[i] = _mm512_max_ps(v[i], load(row, x + offset));
                        }
                    }
                    let first = _mm512_permutex2var_ps(v[0], even, v[1]);
                    let second = _mm512_permutex2var_ps(v[0], odd, v[1]);
                    let third = _mm512_permutex2var_ps(v[2], even, v[3]);
                    let result = _mm512_max_ps(_mm512_max_ps(first, second), third);
                    let lanes = (ow - ox).min(16) as u32;
                    let mask = ((1u32 << lanes) - 1) as u16;
                    // SAFETY: outputs `ox..ox + lanes` of row `oy` are inside `dst`.
                    unsafe {
                        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(oy * ow + ox), mask, result)
                    };
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn planes(
        _: &[f32],
        _: [usize; 2],
        _: &Window,
        _: [usize; 2],
        _: &mut [f32],
    ) {
        unreachable!("fits() is false off x86-64")
    }
}

/// One plane of an undilated pool, by [`separable`] passes.
#[cfg(test)]
fn pool_plane(
    plane: &[f32],
    [h, w]: [usize; 2],
    win: &Window,
    kind: Pool,
    [oh, ow]: [usize; 2],
    dst: &mut [f32],
) {
    PlanePool::new(win, kind, [h, w], [oh, ow]).run(plane, dst)
}

/// An undilated pool over planes of one size: the clipped input span of each output row and
/// column, worked out once, and the row buffers of [`separable`].
struct PlanePool<'w> {
    win: &'w Window,
    kind: Pool,
    w: usize,
    /// Per output row, then per output column: the first and end input index inside the
    /// input, and the window's size clipped to the explicitly padded extent (for
    /// count_include_pad).
    ys: Vec<(usize, usize, usize)>,
    xs: Vec<(usize, usize, usize)>,
    row: Vec<f32>,
    phases: Vec<f32>,
}

impl<'w> PlanePool<'w> {
    fn new(win: &'w Window, kind: Pool, [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Self {
        let spans = |outputs: usize, axis: usize, len: usize| -> Vec<(usize, usize, usize)> {
            (0..outputs)
                .map(|o| {
                    let start = (o * win.strides[axis]) as isize - win.pads[axis] as isize;
                    let end = start + win.kernel[axis] as isize;
                    let padded_end = end.min((len + win.pads[axis + 2]) as isize);
                    let clip = |v: isize| v.clamp(0, len as isize) as usize;
                    (clip(start), clip(end), (padded_end - start).max(0) as usize)
                })
                .collect()
        };
        let (kw, stride) = (win.kernel[1], win.strides[1]);
        let phase_len = ow + (kw - 1) / stride;
        PlanePool {
            win,
            kind,
            w,
            ys: spans(oh, 0, h),
            xs: spans(ow, 1, w),
            row: vec![0.0; (phase_len * stride).max(win.pads[1] + w)],
            phases: vec![0.0; stride * phase_len],
        }
    }

    #[inline(always)]
    fn run(&mut self, plane: &[f32], dst: &mut [f32]) {
        let buffers = (&mut self.row[..], &mut self.phases[..]);
        match self.kind {
            // A compare and select (not `f32::max`, whose NaN rule does not vectorise).
            Pool::Max => separable(
                plane,
                self.w,
                &self.ys,
                self.win,
                buffers,
                dst,
                f32::NEG_INFINITY,
                |a, b| {
                    if b > a { b } else { a }
                },
            ),
            Pool::Average { count_include_pad } => {
                separable(
                    plane,
                    self.w,
                    &self.ys,
                    self.win,
                    buffers,
                    dst,
                    0.0,
                    |a, b| a + b,
                );
                let ow = self.xs.len().max(1);
                for (row, &(y0, y1, ny)) in dst.chunks_exact_mut(ow).zip(&self.ys) {
                    for (o, &(x0, x1, nx)) in row.iter_mut().zip(&self.xs) {
                        let count = if count_include_pad {
                            ny * nx
                        } else {
                            (y1 - y0) * (x1 - x0)
                        };
                        *o /= count.max(1) as f32;
                    }
                }
            }
        }
    }
}

/// Reduces every window of `plane` with `combine` (starting from `empty`) into `dst`, given
/// each output row's clipped input rows.
///
/// Separable, rows first: for each output row, the input rows of its window are combined into
/// one row, laid in `row` padded with `empty` on both sides (so windows over an edge need no
/// clipping). That row is split into `stride` phases (phase `p` holds every `stride`-th value
/// from `p`), after which window tap `t` of every output is one contiguous run of phase
/// `t % stride`: each output row is `kw` contiguous, vectorised passes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn separable(
    plane: &[f32],
    w: usize,
    ys: &[(usize, usize, usize)],
    win: &Window,
    (row, phases): (&mut [f32], &mut [f32]),
    dst: &mut [f32],
    empty: f32,
    combine: impl Fn(f32, f32) -> f32 + Copy,
) {
    let (kw, stride, left) = (win.kernel[1], win.strides[1], win.pads[1]);
    let ow = dst.len() / ys.len().max(1);
    if ow == 0 {
        return;
    }
    let phase_len = ow + (kw - 1) / stride;
    row.fill(empty);
    for (out, &(y0, y1, _)) in dst.chunks_exact_mut(ow).zip(ys) {
        let middle = &mut row[left..left + w];
        if y0 < y1 {
            middle.copy_from_slice(&plane[y0 * w..(y0 + 1) * w]);
        } else {
            middle.fill(empty);
        }
        for y in (y0 + 1).min(y1)..y1 {
            for (r, &v) in middle.iter_mut().zip(&plane[y * w..(y + 1) * w]) {
                *r = combine(*r, v);
            }
        }
        let taps: &[f32] = match stride {
            1 => row,
            2 => {
                let (even, odd) = phases.split_at_mut(phase_len);
                for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
                    (*e, *o) = (pair[0], pair[1]);
                }
                phases
            }
            _ => {
                for (p, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
                    for (i, v) in phase.iter_mut().enumerate() {
                        *v = row[i * stride + p];
                    }
                }
                phases
            }
        };
        let tap = |t: usize| {
            let first = if stride == 1 {
                t
            } else {
                (t % stride) * phase_len + t / stride
            };
            &taps[first..first + ow]
        };
        out.copy_from_slice(tap(0));
        for t in 1..kw {
            for (o, &v) in out.iter_mut().zip(tap(t)) {
                *o = combine(*o, v);
            }
        }
    }
}

/// ONNX GlobalAveragePool: the mean of each channel plane, as N×C×1×1.
pub fn global_average_pool(x: &Tensor) -> Result<Tensor, String> {
    let [n, c, h, w] = nchw(x, "input")?;
    let data = x
        .data()
        .chunks(h * w)
        .map(|plane| sum(plane) / (h * w) as f32)
        .collect();
    Tensor::new(vec![n, c, 1, 1], data).map_err(|e| e.to_string())
}

/// The sum of `values` in 16 interleaved partial sums (a single running sum cannot be
/// vectorised: each addition would wait for the one before).
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Convolution by its definition, for comparison.
    pub(crate) fn naive_conv(
        x: &Tensor,
        wt: &Tensor,
        bias: &[f32],
        win: &Window,
        group: usize,
    ) -> Vec<f32> {
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

    pub(crate) fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) * 0.125)
            .collect()
    }

    #[test]
    fn conv_matches_the_definition_for_each_lowering() {
        // (input [n,c,h,w], filters m, kernel, stride, pad, dilation, group)
        let cases = [
            ([1, 3, 5, 5], 4, 1, 1, 0, 1, 1),    // 1×1: direct GEMM
            ([2, 4, 7, 6], 6, 3, 1, 1, 1, 2),    // grouped 3×3, padded
            ([1, 3, 9, 9], 2, 3, 2, 1, 2, 1),    // strided, dilated
            ([1, 3, 11, 10], 5, 3, 2, 1, 1, 1),  // stride 2, padded, even width
            ([1, 2, 9, 13], 3, 3, 2, 0, 1, 1),   // stride 2, odd width
            ([1, 2, 10, 11], 3, 2, 3, 1, 1, 1),  // stride 3
            ([1, 4, 6, 6], 4, 3, 1, 1, 1, 4),    // depthwise
            ([1, 16, 40, 40], 8, 3, 1, 1, 1, 1), // im2col large enough to split over threads
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

    /// The clipped-window path and the checked-position path agree wherever both apply.
    #[test]
    fn ceil_mode_drops_a_window_that_would_start_in_the_padding() {
        // 3 wide, kernel 2, stride 2, padded 1 at each end: windows start at -1 and 1; a third
        // (rounding up) would start at 3, inside the end padding only.
        let win = Window {
            kernel: [2, 2],
            strides: [2, 2],
            dilations: [1, 1],
            pads: [1; 4],
            ceil: true,
        };
        assert_eq!(win.output(3, 3).unwrap(), [2, 2]);
        // Without padding the rounded-up window starts inside the input and stays.
        let unpadded = Window {
            pads: [0; 4],
            ..win
        };
        assert_eq!(unpadded.output(5, 5).unwrap(), [3, 3]);
    }

    #[test]
    fn max_pool_3x3_stride_2_matches_the_checked_path() {
        if !max3x3s2::fits(&Window {
            kernel: [3, 3],
            strides: [2, 2],
            dilations: [1, 1],
            pads: [0; 4],
            ceil: false,
        }) {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        // Rows wider than one and two vectors of outputs, padding, ceil mode, a tiny plane.
        for ((h, w), pads, ceil) in [
            ((111, 111), [0; 4], false),
            ((14, 70), [1, 1, 1, 1], false),
            ((13, 36), [0, 1, 1, 0], true),
            ((3, 3), [0; 4], true),
        ] {
            let win = Window {
                kernel: [3, 3],
                strides: [2, 2],
                dilations: [1, 1],
                pads,
                ceil,
            };
            let [oh, ow] = win.output(h, w).unwrap();
            let planes = 3;
            let input = values(planes * h * w, 9);
            let mut fast = vec![f32::NAN; planes * oh * ow];
            // SAFETY: `fits` said yes above; `input` holds `planes` planes.
            unsafe { max3x3s2::planes(&input, [h, w], &win, [oh, ow], &mut fast) };
            for p in 0..planes {
                let mut checked = vec![0.0; oh * ow];
                let plane = &input[p * h * w..(p + 1) * h * w];
                pool_plane_dilated(plane, [h, w], &win, Pool::Max, [oh, ow], &mut checked);
                assert_eq!(
                    &fast[p * oh * ow..(p + 1) * oh * ow],
                    checked,
                    "{h}×{w} {win:?}"
                );
            }
        }
    }

    #[test]
    fn both_pool_paths_agree() {
        let (h, w) = (7, 6);
        let plane = values(h * w, 5);
        for (k, s, pads, ceil) in [
            (3, 2, [1, 1, 1, 1], false),
            (2, 1, [0, 1, 1, 0], true),
            (3, 3, [0; 4], true),
            (7, 1, [3, 3, 3, 3], false), // windows wider than the row: all clipped
        ] {
            let win = Window {
                kernel: [k, k],
                strides: [s, s],
                dilations: [1, 1],
                pads,
                ceil,
            };
            let [oh, ow] = win.output(h, w).unwrap();
            for kind in [
                Pool::Max,
                Pool::Average {
                    count_include_pad: true,
                },
                Pool::Average {
                    count_include_pad: false,
                },
            ] {
                let (mut fast, mut checked) = (vec![0.0; oh * ow], vec![0.0; oh * ow]);
                pool_plane(&plane, [h, w], &win, kind, [oh, ow], &mut fast);
                pool_plane_dilated(&plane, [h, w], &win, kind, [oh, ow], &mut checked);
                assert_eq!(fast, checked, "{win:?} {kind:?}");
            }
        }
    }
}
