//! Winograd convolution in blocks of tiles on AVX-512, the way MNN lays out its Winograd
//! kernels: one vector holds one value of sixteen tiles.
//!
//! The output tiles are numbered row by row and cut into runs of 16 and blocks of up to three
//! runs. Two passes over the blocks:
//! 1. **Input transform**, per block and channel: each `α × α` input patch of a run's tiles is
//!    gathered (masked where it hangs over the padding), transformed in registers (`Bᵀ d B`)
//!    and stored as `v[block][position][channel][48]`, so one position of one block is a
//!    contiguous `channels × 48` matrix.
//! 2. **Products and output transform**, per block and filter panel: for each of the `α²`
//!    positions the packed-GEMM micro-kernel ([`super::packed`]) multiplies the panel's
//!    8 filters by that matrix, reading it front to back; the 8 × 48 products of every
//!    position stay in registers and on the stack, and `Aᵀ M A` turns them straight into
//!    output pixels (bias and ReLU included), scattered into the NCHW planes.
//!
//! Nothing but the transformed block is written between the passes, and a block (up to
//! 1.7 MB at 256 channels and F(4×4)) stays in a core's cache while its panels read it.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::packed::{LANES, PackedFilters, ROWS};
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx512, multiply_add};
use super::winograd::{Operands, Tile};
use super::{Epilogue, SendPtr};
use std::mem::MaybeUninit;

/// Runs (vectors of 16 tiles) per block.
const RUNS: usize = 3;
/// Tiles per block, the row length of a transformed position.
const BLOCK: usize = RUNS * LANES;

/// The transformed filters of each position, packed in panels of 8 for the micro-kernel.
#[derive(Debug, Clone)]
pub struct Filters {
    positions: Vec<PackedFilters>,
    channels: usize,
}

impl Filters {
    /// Packs `[α²][filters][channels]` Winograd-domain weights.
    pub fn new(weights: &[f32], positions: usize, filters: usize, channels: usize) -> Filters {
        let plane = filters * channels;
        Filters {
            positions: (0..positions)
                .map(|p| {
                    PackedFilters::new(&weights[p * plane..(p + 1) * plane], filters, channels)
                })
                .collect(),
            channels,
        }
    }
}

/// Where the 16 tiles of one run are, one lane per tile: the input element under the tile's
/// patch corner (which may lie in the padding), the output pixel at its corner, and which
/// lanes hold a tile at all.
#[derive(Clone, Copy)]
struct Run {
    /// Input row and column of the patch corner (negative in the padding).
    corner_y: [i32; LANES],
    corner_x: [i32; LANES],
    /// Output row and column of the tile corner.
    out_y: [i32; LANES],
    out_x: [i32; LANES],
    tiles: u16,
}

impl Run {
    /// The run of tiles `first..` (at most 16, fewer at the end) of a `[tiles_y, tiles_x]`
    /// grid of `m × m` tiles, the input padded by `(top, left)`.
    fn new(
        first: usize,
        count: usize,
        tiles_x: usize,
        m: usize,
        (top, left): (usize, usize),
    ) -> Run {
        let mut run = Run {
            corner_y: [0; LANES],
            corner_x: [0; LANES],
            out_y: [0; LANES],
            out_x: [0; LANES],
            tiles: 0,
        };
        for lane in 0..LANES.min(count.saturating_sub(first)) {
            let tile = first + lane;
            let (y, x) = ((tile / tiles_x * m) as i32, (tile % tiles_x * m) as i32);
            run.corner_y[lane] = y - top as i32;
            run.corner_x[lane] = x - left as i32;
            run.out_y[lane] = y;
            run.out_x[lane] = x;
            run.tiles |= 1 << lane;
        }
        run
    }
}

/// Convolves one image `[channels, h, w]` into `out` (`[filters, oh, ow]`) with F(m×m, 3×3)
/// filters, padding `(top, left)` with zeros.
///
/// # Panics
/// If `input` or `out` is smaller than its shape, or a plane has 2³¹ elements or more.
pub(super) fn run(filters: &Filters, tile: Tile, operands: Operands, scratch: &mut Vec<f32>) {
    let Operands {
        input: (input, [h, w]),
        pads,
        out: (out, [oh, ow]),
        epilogue,
        threads,
    } = operands;
    assert!(simd_fits(), "the blocked Winograd kernel needs AVX-512");
    let (c, k) = (filters.channels, filters.positions[0].m());
    assert!(input.len() >= c * h * w && out.len() >= k * oh * ow);
    assert!(
        (h * w).max(oh * ow) < i32::MAX as usize / 2,
        "a {h}×{w} plane is too large for 32-bit gather offsets"
    );
    assert!(
        epilogue.bias.is_none_or(|b| b.len() >= k),
        "bias shorter than {k}"
    );
    let m = tile.m();
    let tiles_x = ow.div_ceil(m);
    let count = oh.div_ceil(m) * tiles_x;
    let runs: Vec<Run> = (0..count)
        .step_by(LANES)
        .map(|first| Run::new(first, count, tiles_x, m, pads))
        .collect();
    let blocks: Vec<&[Run]> = runs.chunks(RUNS).collect();
    let positions = filters.positions.len();
    let block_len = positions * c * BLOCK;
    scratch.resize(blocks.len() * block_len, 0.0);
    let v = SendPtr(scratch.as_mut_ptr());
    // SAFETY (both passes): `simd_fits()` was asserted above; every index is
    // inside the buffers asserted above, and each item writes only its own part of `v` or
    // `out` (its block and channel; its block's tiles of its panel's filters).
    split(blocks.len() * c, threads, |item| unsafe {
        let (block, channel) = (item / c, item % c);
        let dst = v.at(block * block_len + channel * BLOCK);
        let plane = input.as_ptr().add(channel * h * w);
        transform_input(tile, plane, [h, w], blocks[block], dst, c * BLOCK);
    });
    let panels = k.div_ceil(ROWS);
    let out = SendPtr(out.as_mut_ptr());
    let v = &*scratch;
    split(blocks.len() * panels, threads, |item| unsafe {
        let (block, panel) = (item / panels, item % panels);
        let block_input = &v[block * block_len..(block + 1) * block_len];
        let target = Target {
            out,
            size: [oh, ow],
            epilogue,
        };
        products(tile, filters, panel, block_input, blocks[block], &target);
    });
}

/// Runs `f(item)` for `0..count` on `threads` threads.
fn split(count: usize, threads: usize, f: impl Fn(usize) + Sync) {
    super::parallel_ranges(count, threads, |range| range.for_each(&f));
}

/// Where a panel's outputs go.
struct Target<'a> {
    out: SendPtr,
    size: [usize; 2],
    epilogue: Epilogue<'a>,
}

/// Whether this CPU can run the blocked kernels.
pub fn simd_fits() -> bool {
    super::packed::avx512()
}

/// Transforms the patches of one channel under a block's runs into `dst` (position `p` at
/// `dst + p·stride`, run `r` at lane offset `16·r`).
///
/// # Safety
/// AVX-512F; `plane` holds `h × w` values and `dst` the block's positions.
#[cfg(target_arch = "x86_64")]
unsafe fn transform_input(
    tile: Tile,
    plane: *const f32,
    size: [usize; 2],
    runs: &[Run],
    dst: *mut f32,
    stride: usize,
) {
    for (r, run) in runs.iter().enumerate() {
        // SAFETY: as this function's contract.
        unsafe {
            let dst = dst.add(r * LANES);
            match tile {
                Tile::F2 => input_run::<2, 4>(plane, size, run, dst, stride),
                Tile::F4 => input_run::<4, 6>(plane, size, run, dst, stride),
            }
        }
    }
}

/// `Bᵀ d B` for the 16 patches of one run, `d` gathered row by row.
///
/// # Safety
/// As [`transform_input`]; `A = M + 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_run<const M: usize, const A: usize>(
    plane: *const f32,
    [h, w]: [usize; 2],
    run: &Run,
    dst: *mut f32,
    stride: usize,
) {
    let bt = &super::winograd::matrices(M).bt;
    // SAFETY: gathered lanes are masked to elements inside the
    // plane; stores go to the run's 16 lanes of each position.
    unsafe {
        let [corner_y, corner_x, offsets] = lanes(&run.corner_y, &run.corner_x, w);
        let column_masks: [u16; A] = std::array::from_fn(|j| {
            inside(_mm512_add_epi32(corner_x, _mm512_set1_epi32(j as i32)), w) & run.tiles
        });
        let zero = _mm512_setzero_ps();
        let mut rows = [[zero; A]; A];
        for (i, row) in rows.iter_mut().enumerate() {
            let in_rows = inside(_mm512_add_epi32(corner_y, _mm512_set1_epi32(i as i32)), h);
            let d: [__m512; A] = std::array::from_fn(|j| {
                let at = _mm512_add_epi32(offsets, _mm512_set1_epi32((i * w + j) as i32));
                _mm512_mask_i32gather_ps::<4>(zero, in_rows & column_masks[j], at, plane.cast())
            });
            // (d B)[b] = Σ_j d[j] · Bᵀ[b][j]
            *row = std::array::from_fn(|b| combine(&bt[b], &d));
        }
        // (Bᵀ (d B))[a][b] = Σ_i Bᵀ[a][i] · (d B)[i][b]
        let transposed: [[__m512; A]; A] =
            std::array::from_fn(|b| std::array::from_fn(|i| rows[i][b]));
        for (a, coefficients) in bt.iter().enumerate().take(A) {
            for (b, column) in transposed.iter().enumerate() {
                _mm512_storeu_ps(dst.add((a * A + b) * stride), combine(coefficients, column));
            }
        }
    }
}

/// The 16 lanes' rows, columns, and offsets `row · width + column` in a plane `width` wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn lanes(rows: &[i32; LANES], columns: &[i32; LANES], width: usize) -> [__m512i; 3] {
    // SAFETY: each array holds the 16 i32 one load reads.
    let (rows, columns) = unsafe {
        (
            _mm512_loadu_si512(rows.as_ptr().cast()),
            _mm512_loadu_si512(columns.as_ptr().cast()),
        )
    };
    let offsets = _mm512_add_epi32(
        _mm512_mullo_epi32(rows, _mm512_set1_epi32(width as i32)),
        columns,
    );
    [rows, columns, offsets]
}

/// The lanes whose value lies in `0..limit`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn inside(values: __m512i, limit: usize) -> u16 {
    _mm512_cmpge_epi32_mask(values, _mm512_setzero_si512())
        & _mm512_cmplt_epi32_mask(values, _mm512_set1_epi32(limit as i32))
}

/// `Σ_i coefficients[i] · values[i]`, skipping zero coefficients (the matrices are constants,
/// so this unrolls into the transform's few adds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn combine<const N: usize>(coefficients: &[f32; 6], values: &[__m512; N]) -> __m512 {
    let mut sum = _mm512_setzero_ps();
    for (&c, &v) in coefficients.iter().zip(values) {
        if c == 1.0 {
            sum = _mm512_add_ps(sum, v);
        } else if c == -1.0 {
            sum = _mm512_sub_ps(sum, v);
        } else if c != 0.0 {
            sum = _mm512_fmadd_ps(_mm512_set1_ps(c), v, sum);
        }
    }
    sum
}

/// One filter panel over one block: the products at every position, then the output
/// transform of each filter and run.
///
/// # Safety
/// AVX-512F; `block` is the block's transformed input and `target` holds every filter's plane.
#[cfg(target_arch = "x86_64")]
unsafe fn products(
    tile: Tile,
    filters: &Filters,
    panel: usize,
    block: &[f32],
    runs: &[Run],
    target: &Target,
) {
    // SAFETY: as this function's contract.
    unsafe {
        match (tile, runs.len()) {
            (Tile::F2, 1) => panel_block::<1, 2, 4>(filters, panel, block, runs, target),
            (Tile::F2, 2) => panel_block::<2, 2, 4>(filters, panel, block, runs, target),
            (Tile::F2, _) => panel_block::<3, 2, 4>(filters, panel, block, runs, target),
            (Tile::F4, 1) => panel_block::<1, 4, 6>(filters, panel, block, runs, target),
            (Tile::F4, 2) => panel_block::<2, 4, 6>(filters, panel, block, runs, target),
            (Tile::F4, _) => panel_block::<3, 4, 6>(filters, panel, block, runs, target),
        }
    }
}

/// [`products`] for `V` runs of F(M×M, 3×3), `A = M + 2`.
///
/// # Safety
/// As [`products`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_block<const V: usize, const M: usize, const A: usize>(
    filters: &Filters,
    panel: usize,
    block: &[f32],
    runs: &[Run],
    target: &Target,
) {
    let c = filters.channels;
    let zero = _mm512_setzero_ps();
    let mut products = [MaybeUninit::<[[__m512; V]; ROWS]>::uninit(); 36];
    for (position, packed) in filters.positions.iter().enumerate() {
        let mut acc = [[zero; V]; ROWS];
        let input = block[position * c * BLOCK..].as_ptr();
        let base: [*const f32; V] = std::array::from_fn(|v| input.wrapping_add(v * LANES));
        let weights = packed.panel(panel).as_ptr();
        // SAFETY: the position's matrix holds `c` rows of 48, the panel `c · 8` values.
        unsafe { multiply_add::<Avx512, V>(&mut acc, weights, c, base, [u16::MAX; V], BLOCK) };
        products[position].write(acc);
    }
    // SAFETY: the first `A²` positions (all the filters have) were written above.
    let product = |position: usize| unsafe { products[position].assume_init_ref() };
    let first = panel * ROWS;
    let rows = (filters.positions[0].m() - first).min(ROWS);
    for r in 0..rows {
        let filter = first + r;
        let bias = target.epilogue.bias.map_or(0.0, |b| b[filter]);
        for (v, run) in runs.iter().enumerate().take(V) {
            let values: [[__m512; A]; A] =
                std::array::from_fn(|a| std::array::from_fn(|b| product(a * A + b)[r][v]));
            // SAFETY: the filter's plane is inside the output (asserted by `run`).
            unsafe { output_run::<M, A>(&values, bias, filter, run, target) };
        }
    }
}

/// `Aᵀ M A` for one filter and run, plus bias and ReLU, scattered to the tiles' pixels inside
/// the output.
///
/// # Safety
/// AVX-512F; the filter's output plane is inside `target`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_run<const M: usize, const A: usize>(
    values: &[[__m512; A]; A],
    bias: f32,
    filter: usize,
    run: &Run,
    target: &Target,
) {
    let at = &super::winograd::matrices(M).at;
    let [oh, ow] = target.size;
    // SAFETY: scattered lanes are masked to pixels inside the
    // filter's plane.
    unsafe {
        let [out_y, out_x, offsets] = lanes(&run.out_y, &run.out_x, ow);
        let plane = target.out.at(filter * oh * ow);
        let shift = _mm512_set1_ps(bias);
        for i in 0..M {
            // (Aᵀ M)[i][b] = Σ_a Aᵀ[i][a] · M[a][b]
            let half: [__m512; A] = std::array::from_fn(|b| {
                let column: [__m512; A] = std::array::from_fn(|a| values[a][b]);
                combine(&at[i], &column)
            });
            let in_rows = inside(_mm512_add_epi32(out_y, _mm512_set1_epi32(i as i32)), oh);
            for j in 0..M {
                let mut value = _mm512_add_ps(combine(&at[j], &half), shift);
                if target.epilogue.relu {
                    value = _mm512_max_ps(value, _mm512_setzero_ps());
                }
                let mask = in_rows
                    & inside(_mm512_add_epi32(out_x, _mm512_set1_epi32(j as i32)), ow)
                    & run.tiles;
                let at = _mm512_add_epi32(offsets, _mm512_set1_epi32((i * ow + j) as i32));
                _mm512_mask_i32scatter_ps::<4>(plane.cast(), mask, at, value);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_input(_: Tile, _: *const f32, _: [usize; 2], _: &[Run], _: *mut f32, _: usize) {
    unreachable!("the blocked Winograd kernels are planned only where simd_fits() is true")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn products(_: Tile, _: &Filters, _: usize, _: &[f32], _: &[Run], _: &Target) {
    unreachable!("the blocked Winograd kernels are planned only where simd_fits() is true")
}
