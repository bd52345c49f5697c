//! Convolution as a GEMM on filters packed once, when the session is created:
//! `out[m × n] = filters[m × k] · cols[k × n]`, where `cols` is the NCHW input itself (a 1×1,
//! stride-1, unpadded convolution) or its im2col unfolding.
//!
//! `cols` is read where it lies, never packed: each step of the inner loop loads 48 consecutive
//! pixels of one row of `cols` (three AVX-512 vectors, masked at the right edge) and multiplies
//! them by 8 filter values broadcast from the packed panel, into 24 accumulators. The bias is
//! the accumulators' first value and a fused Relu is applied as they are stored, so the output
//! is written once. Work is split over threads by output tiles, with no packing shared between
//! them, which keeps small convolutions worth splitting.
//!
//! With AVX2 (8 lanes, 16 registers) a tile's runs are 8 pixels wide and computed one at a
//! time: 8 filters × 8 pixels in 8 accumulators (see [`super::simd`]).
//!
//! [`available`] says whether this CPU has either; the search offers the algorithms only where
//! it does.

use super::conv::{Window, im2col, return_columns, take_columns};
pub use super::simd::{ISA_CAP_ENV, Isa};
#[cfg(target_arch = "x86_64")]
use super::simd::{Simd, multiply_add};
use super::{Epilogue, SendPtr};
use std::mem::MaybeUninit;

/// Filter rows per panel (rows of an AVX-512 output tile).
pub(crate) const ROWS: usize = 8;
/// f32 lanes of one AVX-512 vector.
pub(crate) const LANES: usize = 16;
/// Vectors per output tile: a tile is `ROWS` filters × `VECTORS` runs of up to 16 pixels
/// (8 with AVX2).
const VECTORS: usize = 3;

/// Floats a core's cache is taken to hold (2 MiB, a server core's L2).
const CACHED_FLOATS: usize = 1 << 19;
/// The largest kernel side and stride the implicit kernel takes.
pub const MAX_IMPLICIT_KERNEL: usize = 7;
pub const MAX_IMPLICIT_STRIDE: usize = 4;

/// Whether this CPU can run the packed kernels (it has AVX-512 or AVX2).
pub fn available() -> bool {
    Isa::detect().is_some()
}

/// Whether the kernels written for AVX-512 alone may run: the CPU has it, and
/// [`super::simd::ISA_CAP_ENV`] does not rule it out.
pub(crate) fn avx512() -> bool {
    Isa::detect() == Some(Isa::Avx512)
}

/// Whether [`implicit`] can run a convolution with this window: kernel sides up to
/// [`MAX_IMPLICIT_KERNEL`], strides up to [`MAX_IMPLICIT_STRIDE`], and not a 1×1 kernel of
/// stride 1 (that one [`conv`] reads in place already).
pub fn implicit_fits(window: &Window) -> bool {
    window.kernel.iter().all(|&k| k <= MAX_IMPLICIT_KERNEL)
        && window
            .strides
            .iter()
            .all(|&s| (1..=MAX_IMPLICIT_STRIDE).contains(&s))
        && !(window.kernel == [1, 1] && window.strides == [1, 1])
}

/// An `m × k` filter matrix as panels of [`ROWS`] rows, each stored column by column
/// (`panel[kk·ROWS + r]`), the last panel padded with zero rows; and the instruction set the
/// kernels multiply it with (this CPU's widest, unless [`PackedFilters::with_isa`] says).
#[derive(Debug, Clone)]
pub struct PackedFilters {
    m: usize,
    k: usize,
    data: Vec<f32>,
    isa: Isa,
}

impl PackedFilters {
    /// Packs row-major `filters` (`m` rows of `k`), in im2col order (`k = channel·taps + tap`).
    pub fn new(filters: &[f32], m: usize, k: usize) -> PackedFilters {
        assert!(filters.len() >= m * k, "filters smaller than {m}×{k}");
        let panels = m.div_ceil(ROWS);
        let mut data = vec![0.0; panels * k * ROWS];
        for (row, filter) in filters.chunks_exact(k.max(1)).take(m).enumerate() {
            let panel = &mut data[(row / ROWS) * k * ROWS..];
            for (kk, &value) in filter.iter().enumerate() {
                panel[kk * ROWS + row % ROWS] = value;
            }
        }
        let isa = Isa::detect().unwrap_or(Isa::Avx2);
        PackedFilters { m, k, data, isa }
    }

    /// The same filters, multiplied with `isa`'s kernels (which the CPU must have when they
    /// run).
    pub fn with_isa(self, isa: Isa) -> PackedFilters {
        PackedFilters { isa, ..self }
    }

    /// Packs `[m, channels, kh, kw]` weights tap by tap (`k = tap·channels + channel`), the
    /// order the [`implicit`] kernel reads them in.
    pub fn by_taps(weights: &[f32], m: usize, channels: usize, taps: usize) -> PackedFilters {
        let k = channels * taps;
        assert!(weights.len() >= m * k, "weights smaller than {m}×{k}");
        let reordered: Vec<f32> = (0..m * k)
            .map(|i| {
                let (filter, kk) = (i / k, i % k);
                let (tap, channel) = (kk / channels, kk % channels);
                weights[filter * k + channel * taps + tap]
            })
            .collect();
        PackedFilters::new(&reordered, m, k)
    }

    /// Rows (filters) of the matrix.
    pub(crate) fn m(&self) -> usize {
        self.m
    }

    /// Panel `index`: its `k · ROWS` values, column by column.
    pub(crate) fn panel(&self, index: usize) -> &[f32] {
        &self.data[index * self.k * ROWS..(index + 1) * self.k * ROWS]
    }
}

/// Convolves every image of `x` (NCHW) with `filters`, one per group, packed by
/// [`PackedFilters::new`] from each group's `[m / groups, c / groups, kh, kw]` weights: a 1×1,
/// stride-1, unpadded convolution reads the input in place, any other its im2col unfolding.
pub fn conv(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    filters: &[PackedFilters],
    window: &Window,
    (out, [oh, ow]): (&mut [MaybeUninit<f32>], [usize; 2]),
    epilogue: Epilogue,
    threads: usize,
) {
    let [kh, kw] = window.kernel;
    let (cg, mg) = group_shape(filters, c);
    let (k, pixels) = (cg * kh * kw, oh * ow);
    assert!(
        filters.iter().all(|f| f.k == k),
        "input channels do not match the packed filters"
    );
    let direct = [kh, kw] == [1, 1] && window.strides == [1, 1] && window.pads == [0; 4];
    let mut columns = take_columns();
    if !direct && columns.len() < k * pixels {
        columns.resize(k * pixels, 0.0);
    }
    let m = mg * filters.len();
    for image in 0..n {
        for (g, filters) in filters.iter().enumerate() {
            let input = &x[(image * c + g * cg) * h * w..][..cg * h * w];
            let cols: &[f32] = if direct {
                input
            } else {
                im2col(input, [cg, h, w], window, [oh, ow], &mut columns, threads);
                &columns[..k * pixels]
            };
            let dst = &mut out[(image * m + g * mg) * pixels..][..mg * pixels];
            let epilogue = epilogue.for_channels_from(g * mg);
            gemm(filters, cols, pixels, dst, epilogue, threads);
        }
    }
    return_columns(columns);
}

/// The input channels and the filters of each group, for `c` input channels and `filters`
/// (one per group, all of one size).
fn group_shape(filters: &[PackedFilters], c: usize) -> (usize, usize) {
    let groups = filters.len();
    assert!(
        groups > 0 && c.is_multiple_of(groups) && filters.iter().all(|f| f.m == filters[0].m),
        "{groups} filter groups do not divide {c} input channels evenly"
    );
    (c / groups, filters[0].m)
}

/// `out[m × n] = filters · cols[k × n]` (both row-major), then the epilogue.
pub fn gemm(
    filters: &PackedFilters,
    cols: &[f32],
    n: usize,
    out: &mut [MaybeUninit<f32>],
    epilogue: Epilogue,
    threads: usize,
) {
    let PackedFilters { m, k, isa, .. } = *filters;
    assert!(
        cols.len() >= k * n && out.len() >= m * n,
        "operands smaller than {m}×{k}·{k}×{n}"
    );
    // Runs of a vector's worth of consecutive pixels.
    let lanes = isa.lanes();
    let runs: Vec<Run> = (0..n)
        .step_by(lanes)
        .map(|pixel| Run {
            pixel,
            lanes: (n - pixel).min(lanes),
            at: [0, pixel as isize],
        })
        .collect();
    let source = Source::Rows { cols, stride: n };
    let order = Order::for_sizes(m, n, k * n);
    tiles(filters, &source, &runs, (out, n), epilogue, order, threads);
}

/// Convolves every image of `x` (NCHW) with `window` (see [`implicit_fits`]) and `filters`
/// packed by [`PackedFilters::by_taps`], without unfolding the input: each vector of a tile is
/// up to 16 pixels of one output row, and for each kernel tap it loads the input row those
/// pixels read, masked where the window hangs over an edge.
///
/// With a horizontal stride `s > 1` the pixels of a vector read every `s`-th input column, so
/// each input row is first split into `s` phases (phase `p` holds columns `p, p + s, …`), one
/// pass over the input instead of im2col's `kh·kw`; a tap then reads one phase contiguously.
pub fn implicit(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    filters: &[PackedFilters],
    window: &Window,
    (out, [oh, ow]): (&mut [MaybeUninit<f32>], [usize; 2]),
    epilogue: Epilogue,
    threads: usize,
) {
    assert!(
        implicit_fits(window),
        "the implicit kernel cannot take {window:?}"
    );
    let (cg, mg) = group_shape(filters, c);
    let m = mg * filters.len();
    assert!(
        filters
            .iter()
            .all(|f| f.k == cg * window.kernel[0] * window.kernel[1])
    );
    assert!(x.len() >= n * c * h * w && out.len() >= n * m * oh * ow);
    let pixels = oh * ow;
    let lanes = filters[0].isa.lanes();
    // A stride-1 window whose output is as large as its input reads, for output pixel `p`
    // and each tap, input element `p + offset(tap)` of the flattened plane: runs need not stop
    // at the end of an output row, only their lanes that wrap over an edge are masked (per
    // run and tap, worked out here once).
    let flat = window.strides == [1, 1] && [oh, ow] == [h, w];
    let runs: Vec<Run> = if flat {
        (0..pixels)
            .step_by(lanes)
            .enumerate()
            .map(|(index, pixel)| Run {
                pixel,
                lanes: (pixels - pixel).min(lanes),
                at: [index as isize, 0],
            })
            .collect()
    } else {
        (0..oh)
            .flat_map(|oy| {
                (0..ow).step_by(lanes).map(move |ox| Run {
                    pixel: oy * ow + ox,
                    lanes: (ow - ox).min(lanes),
                    at: [oy as isize, ox as isize],
                })
            })
            .collect()
    };
    let flat_masks = flat.then(|| flat_masks(&runs, [h, w], window));
    let stride = window.strides[1];
    let phase_width = w.div_ceil(stride);
    let mut phases = take_columns();
    if stride > 1 && phases.len() < c * stride * h * phase_width {
        phases.resize(c * stride * h * phase_width, 0.0);
    }
    let taps = Tap::all(window, w);
    let order = Order::for_sizes(mg, pixels, cg * h * w);
    let strides = window.strides.map(|s| s as isize);
    for image in 0..n {
        let mut input = &x[image * c * h * w..(image + 1) * c * h * w];
        if stride > 1 {
            split_phases(input, [c, h, w], window, &mut phases);
            input = &phases[..c * stride * h * phase_width];
        }
        // A channel's input (or its phases) is this long.
        let plane = input.len() / c;
        for (g, filters) in filters.iter().enumerate() {
            let source = Source::Window {
                input: &input[g * cg * plane..(g + 1) * cg * plane],
                shape: [cg, h, w],
                taps: &taps,
                strides,
                phase_width,
                flat_masks: flat_masks.as_deref(),
            };
            let dst = &mut out[(image * m + g * mg) * pixels..][..mg * pixels];
            let epilogue = epilogue.for_channels_from(g * mg);
            tiles(
                filters,
                &source,
                &runs,
                (dst, pixels),
                epilogue,
                order,
                threads,
            );
        }
    }
    return_columns(phases);
}

/// For runs over a flattened `[h, w]` plane (output as large as the input, stride 1): the mask
/// of each run's lanes whose input element under each tap lies inside the plane (not over the
/// edge of a row, above the first or below the last), `masks[run · taps + tap]`.
fn flat_masks(runs: &[Run], [h, w]: [usize; 2], window: &Window) -> Vec<u16> {
    let [kh, kw] = window.kernel;
    let mut masks = Vec::with_capacity(runs.len() * kh * kw);
    for run in runs {
        for ky in 0..kh {
            let dy = (ky * window.dilations[0]) as isize - window.pads[0] as isize;
            for kx in 0..kw {
                let dx = (kx * window.dilations[1]) as isize - window.pads[1] as isize;
                masks.push(flat_mask((run.pixel, run.lanes), [dy, dx], [h, w]));
            }
        }
    }
    masks
}

/// The lanes of the run of `lanes` pixels from `pixel` of a flattened `[h, w]` plane whose
/// pixel shifted by `[dy, dx]` lies inside the plane (not over a row's end, above the first
/// row or below the last).
pub(crate) fn flat_mask(
    (pixel, lanes): (usize, usize),
    [dy, dx]: [isize; 2],
    [h, w]: [usize; 2],
) -> u16 {
    let inside = |lane: usize| {
        let p = pixel + lane;
        let (y, x) = ((p / w) as isize + dy, (p % w) as isize + dx);
        (0..h as isize).contains(&y) && (0..w as isize).contains(&x)
    };
    (0..lanes).filter(|&l| inside(l)).fold(0, |m, l| m | 1 << l)
}

/// Where a tap whose input column is `ox·sx + offset` for output column `ox` reads in a row
/// `w` wide split into `sx` phases (see [`split_phases`]): its phase, the `shift` that makes
/// that column `ox + shift` of the phase, and how many columns of the phase lie in the row.
pub(crate) fn phase_columns(offset: isize, sx: isize, w: usize) -> (isize, isize, isize) {
    let (phase, shift) = (offset.rem_euclid(sx), offset.div_euclid(sx));
    let columns = (w as isize - phase).max(0).div_euclid(sx)
        + ((w as isize - phase).max(0) % sx != 0) as isize;
    (phase, shift, columns)
}

/// Writes one image's `[c, h, w]` input as `[c, stride, h, ⌈w / stride⌉]`: phase `p` of a row
/// holds its columns `p, p + stride, …` (zero past the row's end). Only the phases some kernel
/// tap reads are written.
pub(crate) fn split_phases(input: &[f32], [c, h, w]: [usize; 3], window: &Window, out: &mut [f32]) {
    let stride = window.strides[1];
    let width = w.div_ceil(stride);
    let used: Vec<bool> = (0..stride)
        .map(|p| {
            (0..window.kernel[1]).any(|kx| {
                let offset = (kx * window.dilations[1]) as isize - window.pads[1] as isize;
                offset.rem_euclid(stride as isize) as usize == p
            })
        })
        .collect();
    for (channel, plane) in input.chunks_exact(h * w).take(c).enumerate() {
        if stride == 2 && used[0] && used[1] && avx512() {
            let phases = &mut out[channel * 2 * h * width..][..2 * h * width];
            let (even, odd) = phases.split_at_mut(h * width);
            let rows = even
                .chunks_exact_mut(width)
                .zip(odd.chunks_exact_mut(width));
            for (row, (even, odd)) in plane.chunks_exact(w).zip(rows) {
                // SAFETY: AVX-512F is available; both phases hold ⌈w / 2⌉ columns.
                unsafe { deinterleave(row, even, odd) };
            }
            continue;
        }
        for p in (0..stride).filter(|&p| used[p]) {
            let phase = &mut out[(channel * stride + p) * h * width..][..h * width];
            for (row, dst) in plane.chunks_exact(w).zip(phase.chunks_exact_mut(width)) {
                let columns = row.get(p..).unwrap_or_default().iter().step_by(stride);
                let filled = dst.iter_mut().zip(columns).map(|(d, &v)| *d = v).count();
                dst[filled..].fill(0.0);
            }
        }
    }
}

/// Splits `row` into its even columns and its odd ones (the last zero when the row's width is
/// odd), 32 columns at a time.
///
/// # Safety
/// AVX-512F; `even` and `odd` must hold `⌈row.len() / 2⌉` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    use std::arch::x86_64::*;
    let width = row.len().div_ceil(2);
    assert!(even.len() >= width && odd.len() >= width);
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
    for start in (0..row.len()).step_by(2 * LANES) {
        let columns = (row.len() - start).min(2 * LANES);
        let (low, high) = (
            lane_mask(0, columns as isize),
            lane_mask(0, columns as isize - LANES as isize),
        );
        let outputs = lane_mask(0, columns.div_ceil(2) as isize);
        // SAFETY: the masks keep the loads inside `row` and the stores inside the phases'
        // first `width` values.
        unsafe {
            let src = row.as_ptr().add(start);
            let a = _mm512_maskz_loadu_ps(low, src);
            let b = _mm512_maskz_loadu_ps(high, src.add(LANES));
            let (e, o) = (
                _mm512_permutex2var_ps(a, evens, b),
                _mm512_permutex2var_ps(a, odds, b),
            );
            _mm512_mask_storeu_ps(even.as_mut_ptr().add(start / 2), outputs, e);
            _mm512_mask_storeu_ps(odd.as_mut_ptr().add(start / 2), outputs, o);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn deinterleave(_: &[f32], _: &mut [f32], _: &mut [f32]) {
    unreachable!("split_phases deinterleaves only where avx512() is true")
}

/// Up to a vector's worth of consecutive output pixels: where they start in the output plane, how many, and
/// their position (output row and column; for [`Source::Rows`], row 0 and the pixel; for a
/// flattened window, the run's index and 0).
#[derive(Clone, Copy)]
struct Run {
    pixel: usize,
    lanes: usize,
    at: [isize; 2],
}

/// Where a tile's input vectors come from.
enum Source<'a> {
    /// A `k × n` matrix: row `kk` of a run starts at `cols[kk·stride + pixel]`.
    Rows { cols: &'a [f32], stride: usize },
    /// One image's `[c, h, w]` input under a window; with a horizontal stride above 1, as
    /// split by [`split_phases`] into phases `phase_width` wide. With `flat_masks`, the runs
    /// are over the flattened plane (see [`flat_masks`]).
    Window {
        input: &'a [f32],
        shape: [usize; 3],
        taps: &'a [Tap],
        strides: [isize; 2],
        phase_width: usize,
        flat_masks: Option<&'a [u16]>,
    },
}

/// Where one kernel tap reads, worked out once per convolution (the divisions in it would
/// otherwise cost more than the multiply-adds of a tile whose input has few channels).
#[derive(Clone, Copy)]
struct Tap {
    /// Input row of output row `oy` is `oy·sy + dy`.
    dy: isize,
    /// Input column of output column `ox` is `ox·sx + dx`.
    dx: isize,
    /// That column is column `ox + shift` of phase `phase`, which has `columns` columns.
    phase: usize,
    shift: isize,
    columns: isize,
}

impl Tap {
    /// The taps of `window` over rows `w` wide, row by row.
    fn all(window: &Window, w: usize) -> Vec<Tap> {
        let [kh, kw] = window.kernel;
        let sx = window.strides[1] as isize;
        let mut taps = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            let dy = (ky * window.dilations[0]) as isize - window.pads[0] as isize;
            for kx in 0..kw {
                let dx = (kx * window.dilations[1]) as isize - window.pads[1] as isize;
                let (phase, shift, columns) = phase_columns(dx, sx, w);
                let phase = phase as usize;
                taps.push(Tap {
                    dy,
                    dx,
                    phase,
                    shift,
                    columns,
                });
            }
        }
        taps
    }
}

/// The order tiles are handed out in, so the tiles of one thread share an operand.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// All filter panels of one group of runs, then the next group.
    Runs,
    /// All runs of one filter panel, then the next panel.
    Panels,
}

impl Order {
    /// The order for `m` filters over `n` pixels that read `input` values in all.
    ///
    /// One panel's tiles in a row write its rows front to back (store streams a prefetcher
    /// follows) but read all the input once per panel: worth it when there are more filters
    /// than pixels, or when the output is too large to stay in cache and the input is not.
    /// Tiles run by run instead write all `m` rows at once, a store stream per row.
    fn for_sizes(m: usize, n: usize, input: usize) -> Order {
        if m > n || (m * n > CACHED_FLOATS && input <= CACHED_FLOATS) {
            Order::Panels
        } else {
            Order::Runs
        }
    }
}

/// Computes every tile (a filter panel × [`VECTORS`] runs) of `out` (`m` rows of `stride`
/// pixels), over `threads` threads that claim ranges of `order` in turn. Every output of the runs is
/// written (once), so `out` need not be initialised.
fn tiles(
    filters: &PackedFilters,
    source: &Source,
    runs: &[Run],
    (out, stride): (&mut [MaybeUninit<f32>], usize),
    epilogue: Epilogue,
    order: Order,
    threads: usize,
) {
    let m = filters.m;
    assert!(
        epilogue.bias.is_none_or(|b| b.len() >= m),
        "bias shorter than {m}"
    );
    assert!(
        runs.iter().all(|r| r.pixel + r.lanes <= stride) && out.len() >= m * stride,
        "output smaller than {m}×{stride}"
    );
    let isa = filters.isa;
    assert!(isa.supported(), "this CPU cannot run the {isa:?} kernels");
    assert!(runs.iter().all(|r| r.lanes <= isa.lanes()));
    let panels = m.div_ceil(ROWS);
    let groups: Vec<&[Run]> = runs.chunks(VECTORS).collect();
    let count = groups.len() * panels;
    let dst = SendPtr(out.as_mut_ptr().cast());
    let run = |range: std::ops::Range<usize>| {
        for index in range {
            let (group, panel) = match order {
                Order::Runs => (index / panels, index % panels),
                Order::Panels => (index % groups.len(), index / groups.len()),
            };
            let tile = Tile::new(filters, panel, groups[group], epilogue);
            // SAFETY: the CPU has `isa` and the runs fit its vectors (asserted above); the
            // tile writes rows `panel·ROWS..` (at most `m`) of its own runs, inside `out`
            // (asserted above), and no other tile writes them. Its loads are masked to its
            // runs' lanes inside the source.
            unsafe { tile.compute(isa, source, (dst, stride)) };
        }
    };
    super::parallel_ranges(count, threads, run);
}

/// One output tile: a panel of up to [`ROWS`] filters × up to [`VECTORS`] runs.
#[derive(Clone, Copy)]
struct Tile<'a> {
    panel: &'a [f32],
    k: usize,
    runs: &'a [Run],
    first_row: usize,
    rows: usize,
    bias: [f32; ROWS],
    relu: bool,
}

impl<'a> Tile<'a> {
    fn new(filters: &'a PackedFilters, panel: usize, runs: &'a [Run], epilogue: Epilogue) -> Self {
        let rows = (filters.m - panel * ROWS).min(ROWS);
        let mut bias = [0.0; ROWS];
        if let Some(b) = epilogue.bias {
            bias[..rows].copy_from_slice(&b[panel * ROWS..panel * ROWS + rows]);
        }
        Tile {
            panel: filters.panel(panel),
            k: filters.k,
            runs,
            first_row: panel * ROWS,
            rows,
            bias,
            relu: epilogue.relu,
        }
    }

    /// # Safety
    /// The CPU must have `isa`, the runs must fit its vectors, and `out` must hold the tile's
    /// rows of `stride` pixels.
    #[cfg(target_arch = "x86_64")]
    unsafe fn compute(&self, isa: Isa, source: &Source, out: (SendPtr, usize)) {
        // SAFETY: as this function's contract.
        unsafe {
            match isa {
                Isa::Avx512 => self.compute_avx512(source, out),
                Isa::Avx2 => self.compute_avx2(source, out),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn compute(&self, _: Isa, _: &Source, _: (SendPtr, usize)) {
        unreachable!("the packed kernels are planned only where available() is true")
    }

    /// # Safety
    /// As [`Tile::compute`], for AVX-512.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn compute_avx512(&self, source: &Source, out: (SendPtr, usize)) {
        use super::simd::Avx512;
        // SAFETY: as this function's contract.
        unsafe {
            match self.runs.len() {
                1 => self.compute_with::<Avx512, 1>(source, out),
                2 => self.compute_with::<Avx512, 2>(source, out),
                _ => self.compute_with::<Avx512, 3>(source, out),
            }
        }
    }

    /// # Safety
    /// As [`Tile::compute`], for AVX2: one run at a time, in 8 accumulators (two runs' 16
    /// would leave no register for the operands); every input vector loaded feeds 8 filters.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn compute_avx2(&self, source: &Source, out: (SendPtr, usize)) {
        use super::simd::Avx2;
        for v in 0..self.runs.len() {
            let run = Tile {
                runs: &self.runs[v..v + 1],
                ..*self
            };
            // SAFETY: as this function's contract.
            unsafe { run.compute_with::<Avx2, 1>(source, out) };
        }
    }

    /// Computes the tile over its first `V` runs.
    ///
    /// # Safety
    /// As [`Tile::compute`], in a function that enables `S`'s instruction set.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn compute_with<S: Simd, const V: usize>(
        &self,
        source: &Source,
        (out, stride): (SendPtr, usize),
    ) {
        let runs: [Run; V] = std::array::from_fn(|v| self.runs[v]);
        // SAFETY (of every `S` operation below): the caller enabled `S`'s instruction set.
        let lanes: [S::Mask; V] =
            std::array::from_fn(|v| unsafe { S::mask(lane_mask(0, runs[v].lanes as isize)) });
        let mut acc: [[S::Vector; V]; ROWS] =
            std::array::from_fn(|r| [unsafe { S::splat(self.bias[r]) }; V]);
        let panel = self.panel.as_ptr();
        match *source {
            Source::Rows { cols, stride } => {
                let base: [*const f32; V] =
                    std::array::from_fn(|v| cols.as_ptr().wrapping_add(runs[v].pixel));
                // SAFETY: each row `kk < k` of the runs' lanes lies inside `cols` (the caller
                // asserted `cols` holds `k × stride`), and the panel holds `k · ROWS` values.
                unsafe { multiply_add::<S, V>(&mut acc, panel, self.k, base, lanes, stride) };
            }
            Source::Window {
                input,
                shape: [c, h, w],
                taps,
                strides: [sy, sx],
                phase_width,
                flat_masks,
            } => {
                let phase_plane = h * phase_width;
                // A channel's phases lie one after the other.
                let step = sx as usize * phase_plane;
                for (index, tap) in taps.iter().enumerate() {
                    let plane = input.as_ptr().wrapping_add(tap.phase * phase_plane);
                    let mut masks = [0u16; V];
                    let mut base = [plane; V];
                    if let Some(table) = flat_masks {
                        for v in 0..V {
                            masks[v] = table[runs[v].at[0] as usize * taps.len() + index];
                            let p = runs[v].pixel as isize;
                            base[v] = plane.wrapping_offset(p + tap.dy * w as isize + tap.dx);
                        }
                    } else {
                        for v in 0..V {
                            let [oy, ox] = runs[v].at;
                            let (y, x) = (oy * sy + tap.dy, ox + tap.shift);
                            if (0..h as isize).contains(&y) {
                                // Lanes whose input column is inside the row.
                                let to = (tap.columns - x).min(runs[v].lanes as isize);
                                masks[v] = lane_mask(-x, to);
                            }
                            base[v] = plane.wrapping_offset(y * phase_width as isize + x);
                        }
                    }
                    // SAFETY: unmasked lanes read columns `0..columns` of rows `0..h` of
                    // phase `phase` of each of the `c` channels of `input`; the tap's
                    // `c · ROWS` panel values are inside the panel.
                    unsafe {
                        let masks = masks.map(|bits| S::mask(bits));
                        let weights = panel.add(index * c * ROWS);
                        multiply_add::<S, V>(&mut acc, weights, c, base, masks, step)
                    };
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(self.rows) {
            let row = (self.first_row + r) * stride;
            for v in 0..V {
                // SAFETY: the run's lanes of output row `first_row + r` are inside
                // `out`.
                unsafe {
                    let value = if self.relu { S::relu(acc[v]) } else { acc[v] };
                    let full = runs[v].lanes == S::LANES;
                    S::store(out.at(row + runs[v].pixel), lanes[v], full, value)
                };
            }
        }
    }
}

/// The mask of lanes `from..to` (clamped to one vector; empty when `to ≤ from`).
pub(crate) fn lane_mask(from: isize, to: isize) -> u16 {
    let (from, to) = (from.clamp(0, 16) as u32, to.clamp(0, 16) as u32);
    if to <= from {
        return 0;
    }
    (((1u32 << to) - 1) & !((1u32 << from) - 1)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;
    use crate::ops::conv::tests::naive_conv;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5) - 1.0)
            .collect()
    }

    fn window(kernel: [usize; 2], stride: usize, dilation: usize, pads: [usize; 4]) -> Window {
        Window {
            kernel,
            strides: [stride; 2],
            dilations: [dilation; 2],
            pads,
            ceil: false,
        }
    }

    /// Runs `kernel` on `x` and `weights` at 1 thread without Relu and 2 threads with, against
    /// the naive convolution.
    fn check(
        (x, weights, group): (&Tensor, &Tensor, usize),
        window: &Window,
        kernel: impl Fn(&[f32], &mut [MaybeUninit<f32>], [usize; 2], Epilogue, usize),
    ) {
        let [n, c, h, w] = x.shape().try_into().unwrap();
        let m = weights.shape()[0];
        let bias = values(m, 3);
        let [oh, ow] = window.output(h, w).unwrap();
        let expected = naive_conv(x, weights, &bias, window, group);
        for (threads, relu) in [(1, false), (2, true)] {
            let mut out = vec![MaybeUninit::new(f32::NAN); n * m * oh * ow];
            let epilogue = Epilogue {
                bias: Some(&bias),
                relu,
            };
            kernel(x.data(), &mut out, [oh, ow], epilogue, threads);
            // SAFETY: every element was initialised (to NaN) before the kernel ran.
            let out: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
            for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                let want = if relu { want.max(0.0) } else { *want };
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{:?} {window:?} m={m} group={group} threads={threads} at {i}: {got} vs {want}",
                    [n, c, h, w]
                );
            }
        }
    }

    type Kernel = fn(
        &[f32],
        [usize; 4],
        &[PackedFilters],
        &Window,
        (&mut [MaybeUninit<f32>], [usize; 2]),
        Epilogue,
        usize,
    );

    /// Runs `kernel` on each case (input shape, `[filters, kh, kw]`, window) in `group`
    /// groups, with each group's filters packed by `pack` (weights, filters, channels, taps),
    /// against the naive convolution.
    fn check_cases(
        cases: &[([usize; 4], [usize; 3], Window)],
        group: usize,
        pack: impl Fn(&[f32], usize, usize, usize) -> PackedFilters,
        kernel: Kernel,
    ) {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| isa.supported())
            .collect();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has neither AVX-512 nor AVX2");
        }
        for (isa, (shape, [m, kh, kw], window)) in isas
            .iter()
            .flat_map(|&isa| cases.iter().map(move |case| (isa, case)))
        {
            eprintln!("{isa:?}: {shape:?} {m}×{kh}×{kw} {window:?}");
            let (cg, mg, shape) = (shape[1] / group, m / group, *shape);
            let x = Tensor::new(shape.to_vec(), values(shape.iter().product(), 1)).unwrap();
            let len = m * cg * kh * kw;
            let weights = Tensor::new(vec![*m, cg, *kh, *kw], values(len, 2)).unwrap();
            let filters: Vec<PackedFilters> = weights
                .data()
                .chunks_exact(len / group)
                .map(|w| pack(w, mg, cg, kh * kw).with_isa(isa))
                .collect();
            let operands = (&x, &weights, group);
            check(operands, window, |x, out, size, epilogue, threads| {
                kernel(x, shape, &filters, window, (out, size), epilogue, threads)
            });
        }
    }

    /// Every tail: filters not a multiple of 8 (or 4), pixels not a multiple of 16 or 48 (8
    /// or 24), bias and Relu, 1 and 2 threads; 1×1 read in place and 3×3 strided and padded
    /// through im2col. On AVX-512 and AVX2, where the CPU has them.
    #[test]
    fn packed_convolution_matches_the_naive_one() {
        let cases = [
            ([1, 5, 7, 9], [13, 1, 1], window([1, 1], 1, 1, [0; 4])),
            ([2, 16, 13, 13], [64, 1, 1], window([1, 1], 1, 1, [0; 4])),
            ([1, 3, 23, 21], [8, 3, 3], window([3, 3], 2, 1, [0; 4])),
            ([1, 12, 11, 10], [17, 3, 3], window([3, 3], 1, 1, [1; 4])),
            ([1, 1, 4, 4], [1, 1, 1], window([1, 1], 1, 1, [0; 4])),
            // More filters than pixels: tiles go panel by panel.
            ([1, 8, 3, 3], [40, 1, 1], window([1, 1], 1, 1, [0; 4])),
        ];
        let pack = |w: &[f32], m, c, taps| PackedFilters::new(w, m, c * taps);
        check_cases(&cases, 1, pack, conv);
        // Groups: 1×1 read in place, 3×3 through im2col, filters per group not a multiple of 8.
        let grouped = [
            ([1, 12, 9, 11], [36, 1, 1], window([1, 1], 1, 1, [0; 4])),
            ([2, 8, 10, 7], [20, 3, 3], window([3, 3], 2, 1, [1; 4])),
        ];
        check_cases(&grouped, 4, pack, conv);
    }

    /// The implicit kernel over edges: padding on every side (uneven too), dilation, a 5×5
    /// window on a plane narrower than a vector, rows wider than three vectors, and tiles whose
    /// vectors lie on different output rows.
    #[test]
    fn implicit_convolution_matches_the_naive_one() {
        let cases = [
            ([1, 16, 13, 13], [24, 3, 3], window([3, 3], 1, 1, [1; 4])),
            ([2, 5, 9, 55], [11, 3, 3], window([3, 3], 1, 1, [1; 4])),
            ([1, 3, 8, 7], [9, 5, 5], window([5, 5], 1, 2, [2, 1, 3, 2])),
            ([1, 4, 6, 20], [8, 3, 1], window([3, 1], 1, 1, [0; 4])),
            ([1, 2, 4, 4], [3, 3, 3], window([3, 3], 1, 1, [0; 4])),
            // Output as large as the input (flattened runs over row ends): 5×5, dilated 3×3.
            ([1, 6, 11, 7], [10, 5, 5], window([5, 5], 1, 1, [2; 4])),
            ([1, 5, 9, 10], [8, 3, 3], window([3, 3], 1, 2, [2; 4])),
            ([1, 3, 6, 6], [8, 3, 3], window([3, 3], 1, 1, [0, 0, 2, 2])),
            // Strided: phases of the input rows, some taps before the row's start.
            ([1, 3, 23, 29], [16, 7, 7], window([7, 7], 2, 1, [3; 4])),
            ([1, 8, 13, 13], [12, 3, 3], window([3, 3], 2, 1, [1; 4])),
            ([2, 16, 9, 9], [8, 1, 1], window([1, 1], 2, 1, [0; 4])),
            // More filters than pixels: tiles go panel by panel.
            ([1, 4, 5, 5], [24, 3, 3], window([3, 3], 2, 1, [1; 4])),
            (
                [1, 4, 12, 17],
                [9, 3, 3],
                window([3, 3], 3, 2, [2, 1, 1, 3]),
            ),
        ];
        assert!(cases.iter().all(|(_, _, window)| implicit_fits(window)));
        check_cases(&cases, 1, PackedFilters::by_taps, implicit);
        // Groups: flattened runs, and phases of a strided window.
        let grouped = [
            ([1, 12, 11, 7], [18, 3, 3], window([3, 3], 1, 1, [1; 4])),
            (
                [1, 6, 13, 17],
                [10, 3, 3],
                window([3, 3], 2, 1, [1, 0, 0, 1]),
            ),
        ];
        check_cases(&grouped, 2, PackedFilters::by_taps, implicit);
        assert!(!implicit_fits(&window([3, 3], 5, 1, [1; 4])));
        assert!(!implicit_fits(&window([9, 9], 1, 1, [1; 4])));
        assert!(!implicit_fits(&window([1, 1], 1, 1, [0; 4])));
    }
}
