//! Winograd convolution for 3×3 kernels with stride 1 (Lavin & Gray's F(m×m, 3×3)).
//!
//! The output is cut into `m × m` tiles. Each `(m+2) × (m+2)` input tile and each filter are
//! transformed so that a tile's convolution becomes an elementwise product; summed over input
//! channels, that product is `(m+2)²` independent GEMMs (filters × channels × tiles). The
//! output transform turns each product tile back into `m × m` outputs, adding the bias and the
//! fused ReLU. F(2×2, 3×3) does 2.25× and F(4×4, 3×3) 4× fewer multiplications than the direct
//! form, at the cost of the transforms and (for F(4×4)) a little precision.
//!
//! Two kernels run it. Where the CPU has AVX-512, [`super::winograd_blocks`] works through
//! blocks of 48 tiles, keeping each block's transformed input and products in cache and the
//! transforms in registers. Elsewhere a portable kernel transforms whole planes and runs one
//! GEMM per tile position.

use super::linalg::{MatRef, sgemm};
use super::winograd_blocks;
use super::{Epilogue, SendPtr};

/// Which Winograd variant: the output tile edge `m` (the input tile is `m + 2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tile {
    F2,
    F4,
}

/// The transform matrices of one variant, stored for the largest tile (6).
pub(super) struct Matrices {
    /// Input transform `Bᵀ` (α × α).
    pub(super) bt: [[f32; 6]; 6],
    /// Filter transform `G` (α × 3).
    g: [[f32; 3]; 6],
    /// Output transform `Aᵀ` (m × α).
    pub(super) at: [[f32; 6]; 4],
}

/// The matrices of the variant with output tile edge `m` (2 or 4); a constant wherever `m` is.
#[inline(always)]
pub(super) fn matrices(m: usize) -> &'static Matrices {
    if m == 2 { &F2 } else { &F4 }
}

const F2: Matrices = Matrices {
    bt: [
        [1.0, 0.0, -1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, -1.0, 0.0, 0.0],
        [0.0; 6],
        [0.0; 6],
    ],
    g: [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
        [0.0; 3],
        [0.0; 3],
    ],
    at: [
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, -1.0, -1.0, 0.0, 0.0],
        [0.0; 6],
        [0.0; 6],
    ],
};

const F4: Matrices = Matrices {
    bt: [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    at: [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

impl Tile {
    /// Output tile edge.
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Input tile edge.
    fn alpha(self) -> usize {
        self.m() + 2
    }

    fn matrices(self) -> &'static Matrices {
        matrices(self.m())
    }
}

/// Filters of one 3×3 convolution in the Winograd domain: for each of the `α²` tile positions,
/// a `filters × channels` matrix.
#[derive(Debug, Clone)]
pub struct Winograd {
    tile: Tile,
    filters: usize,
    channels: usize,
    weights: Weights,
}

/// A [`Winograd`]'s filters, laid out for the kernel that runs them.
#[derive(Debug, Clone)]
enum Weights {
    /// `[α²][filters][channels]`, for the portable kernel (GEMMs on whole planes).
    Rows(Vec<f32>),
    /// Packed for the AVX-512 kernel that works in blocks of tiles ([`winograd_blocks`]).
    Blocks(winograd_blocks::Filters),
}

impl Winograd {
    /// Transforms `[filters, channels, 3, 3]` weights (`G g Gᵀ` per filter and channel), for
    /// the AVX-512 kernel where this CPU has it.
    pub fn new(tile: Tile, weights: &[f32], filters: usize, channels: usize) -> Winograd {
        let blocks = winograd_blocks::simd_fits();
        Winograd::with_kernel(tile, weights, [filters, channels], blocks)
    }

    /// [`Winograd::new`] for the blocked AVX-512 kernel (`blocks`) or the portable one.
    fn with_kernel(
        tile: Tile,
        weights: &[f32],
        [filters, channels]: [usize; 2],
        blocks: bool,
    ) -> Winograd {
        let (alpha, mats) = (tile.alpha(), tile.matrices());
        let plane = filters * channels;
        // Tap (a, b) of every filter and channel side by side, then G g Gᵀ for all of them
        // at once, in the [α²][filters × channels] layout the GEMMs read.
        let mut taps = vec![0.0; 9 * plane];
        for (fc, g) in weights.chunks_exact(9).enumerate().take(plane) {
            for (t, &value) in g.iter().enumerate() {
                taps[t * plane + fc] = value;
            }
        }
        let mut half = vec![0.0; alpha * 3 * plane];
        let mut out = vec![0.0; alpha * alpha * plane];
        super::simd(
            #[inline(always)]
            || {
                left(&mats.g, [alpha, 3, 3], plane, &taps, &mut half);
                right(&mats.g, [alpha, 3, alpha], plane, &half, &mut out);
            },
        );
        let weights = if blocks {
            let positions = alpha * alpha;
            Weights::Blocks(winograd_blocks::Filters::new(
                &out, positions, filters, channels,
            ))
        } else {
            Weights::Rows(out)
        };
        Winograd {
            tile,
            filters,
            channels,
            weights,
        }
    }

    /// The variant.
    pub fn tile(&self) -> Tile {
        self.tile
    }

    /// Convolves one image `[channels, h, w]` into `out` (`[filters, oh, ow]`), padding
    /// `(top, left)` with zeros; the epilogue adds the bias and applies the ReLU.
    pub fn run(
        &self,
        input: (&[f32], [usize; 2]),
        pads: (usize, usize),
        out: (&mut [f32], [usize; 2]),
        epilogue: Epilogue,
        threads: usize,
    ) {
        let operands = Operands {
            input,
            pads,
            out,
            epilogue,
            threads,
        };
        let mut scratch = SCRATCH.take();
        match &self.weights {
            Weights::Blocks(filters) => {
                winograd_blocks::run(filters, self.tile, operands, &mut scratch)
            }
            Weights::Rows(weights) => self.run_planes(weights, operands, &mut scratch),
        }
        SCRATCH.set(scratch);
    }

    /// [`Winograd::run`] without AVX-512: all tiles of a channel transformed at once, plane
    /// by plane, and one GEMM per position.
    fn run_planes(&self, weights: &[f32], operands: Operands, scratch: &mut Vec<f32>) {
        let Operands {
            input: (input, [h, w]),
            pads: (top, left),
            out: (out, [oh, ow]),
            epilogue,
            threads,
        } = operands;
        let (m, alpha) = (self.tile.m(), self.tile.alpha());
        let tiles = [oh.div_ceil(m), ow.div_ceil(m)];
        let count = tiles[0] * tiles[1];
        let (k, c) = (self.filters, self.channels);
        scratch.resize(alpha * alpha * (c + k) * count, 0.0);
        let (v, product) = scratch.split_at_mut(alpha * alpha * c * count);
        let geometry = Geometry {
            size: [h, w],
            pads: [top, left],
            tiles,
        };
        parallel_rows(c, threads, v, |row, dst| {
            let plane = &input[row * h * w..(row + 1) * h * w];
            super::simd(
                #[inline(always)]
                || self.transform_input(plane, &geometry, row, dst),
            )
        });
        let v = &*v;
        let product_ptr = SendPtr(product.as_mut_ptr());
        super::parallel_ranges(alpha * alpha, threads, |positions| {
            for pos in positions {
                // SAFETY: each position owns its own `k × count` block of `product`.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(product_ptr.at(pos * k * count), k * count)
                };
                sgemm(
                    (k, c, count),
                    MatRef::rows(&weights[pos * k * c..(pos + 1) * k * c], c),
                    MatRef::rows(&v[pos * c * count..(pos + 1) * c * count], count),
                    dst,
                    false,
                    1,
                );
            }
        });
        let product = &*product;
        parallel_rows(k, threads, out, |row, dst| {
            let shift = epilogue.bias.map_or(0.0, |b| b[row]);
            let relu = epilogue.relu;
            super::simd(
                #[inline(always)]
                || self.transform_output(product, row, &geometry, [oh, ow], shift, relu, dst),
            );
        });
    }

    /// `Bᵀ d B` for every tile of one channel, into row `channel` of each position's matrix.
    /// All tiles of the plane are done at once: the tile values are first gathered into one
    /// array per tile position, so every transform step is a pass over `tiles` contiguous
    /// values and vectorises.
    #[inline(always)]
    fn transform_input(&self, plane: &[f32], geo: &Geometry, channel: usize, v: SendPtr) {
        let (m, alpha) = (self.tile.m(), self.tile.alpha());
        let bt = &self.tile.matrices().bt;
        let [h, w] = geo.size;
        let [tiles_y, tiles_x] = geo.tiles;
        let count = tiles_y * tiles_x;
        let stride = self.channels * count;
        let mut gathered = vec![0.0f32; alpha * alpha * count];
        for i in 0..alpha {
            for j in 0..alpha {
                let dst = &mut gathered[(i * alpha + j) * count..][..count];
                for ty in 0..tiles_y {
                    let row = &mut dst[ty * tiles_x..(ty + 1) * tiles_x];
                    let y = (ty * m + i) as isize - geo.pads[0] as isize;
                    if y < 0 || y as usize >= h {
                        row.fill(0.0);
                        continue;
                    }
                    let line = &plane[y as usize * w..(y as usize + 1) * w];
                    // Tiles whose column x = tx·m + j - pad lies inside the row; the rest are
                    // padding.
                    let x0 = j as isize - geo.pads[1] as isize;
                    let lo = ((-x0).max(0) as usize).div_ceil(m).min(tiles_x);
                    let hi = ((w as isize - x0).max(0) as usize)
                        .div_ceil(m)
                        .clamp(lo, tiles_x);
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                    let start = (x0 + (lo * m) as isize) as usize;
                    let columns = line[start..].iter().step_by(m);
                    for (d, &x) in row[lo..hi].iter_mut().zip(columns) {
                        *d = x;
                    }
                }
            }
        }
        let mut half = vec![0.0f32; alpha * alpha * count];
        let mut done = vec![0.0f32; alpha * alpha * count];
        left(bt, [alpha, alpha, alpha], count, &gathered, &mut half);
        right(bt, [alpha, alpha, alpha], count, &half, &mut done);
        for position in 0..alpha * alpha {
            // SAFETY: `v` holds α² × channels × count values; this channel's entries are
            // written by this call only.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(v.at(position * stride + channel * count), count)
            };
            dst.copy_from_slice(&done[position * count..(position + 1) * count]);
        }
    }
    /// `Aᵀ M A` for every tile of one filter, plus bias and ReLU, into its output plane; all
    /// tiles at once, like [`Winograd::transform_input`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn transform_output(
        &self,
        product: &[f32],
        filter: usize,
        geo: &Geometry,
        [oh, ow]: [usize; 2],
        shift: f32,
        relu: bool,
        out: SendPtr,
    ) {
        let (m, alpha) = (self.tile.m(), self.tile.alpha());
        let at = &self.tile.matrices().at;
        let [tiles_y, tiles_x] = geo.tiles;
        let count = tiles_y * tiles_x;
        let stride = self.filters * count;
        let mut gathered = vec![0.0f32; alpha * alpha * count];
        for (position, dst) in gathered.chunks_exact_mut(count).enumerate() {
            dst.copy_from_slice(&product[position * stride + filter * count..][..count]);
        }
        let mut half = vec![0.0f32; m * alpha * count];
        let mut done = vec![0.0f32; m * m * count];
        left(at, [m, alpha, alpha], count, &gathered, &mut half);
        right(at, [m, alpha, m], count, &half, &mut done);
        // SAFETY: this filter's plane is written by this call only.
        let plane = unsafe { std::slice::from_raw_parts_mut(out.at(filter * oh * ow), oh * ow) };
        for r in 0..m {
            for c in 0..m {
                let values = &done[(r * m + c) * count..][..count];
                for ty in 0..tiles_y {
                    let y = ty * m + r;
                    if y >= oh {
                        break;
                    }
                    let row = &mut plane[y * ow..(y + 1) * ow];
                    let tiles = &values[ty * tiles_x..(ty + 1) * tiles_x];
                    for (tx, &value) in tiles.iter().enumerate() {
                        let x = tx * m + c;
                        if x < ow {
                            let v = value + shift;
                            row[x] = if relu { v.max(0.0) } else { v };
                        }
                    }
                }
            }
        }
    }
}

/// `dst[r][c] = Σ_a l[r][a] · src[a][c]` over arrays of `count` values: `src` is `n × cols`,
/// `dst` is `rows × cols` (`[rows, n, cols]`).
#[inline(always)]
fn left<const W: usize>(
    l: &[[f32; W]],
    [rows, n, cols]: [usize; 3],
    count: usize,
    src: &[f32],
    dst: &mut [f32],
) {
    for r in 0..rows {
        for c in 0..cols {
            let terms = (0..n).map(|a| (l[r][a], &src[(a * cols + c) * count..][..count]));
            mix(&mut dst[(r * cols + c) * count..][..count], terms);
        }
    }
}

/// `dst[r][c] = Σ_b l[c][b] · src[r][b]`: `src` is `rows × n`, `dst` is `rows × cols`
/// (`[rows, n, cols]`).
#[inline(always)]
fn right<const W: usize>(
    l: &[[f32; W]],
    [rows, n, cols]: [usize; 3],
    count: usize,
    src: &[f32],
    dst: &mut [f32],
) {
    for r in 0..rows {
        for c in 0..cols {
            let terms = (0..n).map(|b| (l[c][b], &src[(r * n + b) * count..][..count]));
            mix(&mut dst[(r * cols + c) * count..][..count], terms);
        }
    }
}

/// `out = Σ coefficient · array`, skipping zero coefficients.
#[inline(always)]
fn mix<'a>(out: &mut [f32], terms: impl Iterator<Item = (f32, &'a [f32])>) {
    out.fill(0.0);
    for (coefficient, input) in terms.filter(|t| t.0 != 0.0) {
        out.iter_mut()
            .zip(input)
            .for_each(|(o, &x)| *o += coefficient * x);
    }
}

/// What one [`Winograd::run`] works on: the input image and its size, the padding before its
/// first row and column, the output planes and their size, the epilogue and the threads.
pub(super) struct Operands<'a> {
    pub(super) input: (&'a [f32], [usize; 2]),
    pub(super) pads: (usize, usize),
    pub(super) out: (&'a mut [f32], [usize; 2]),
    pub(super) epilogue: Epilogue<'a>,
    pub(super) threads: usize,
}

/// Input size, leading padding and tile counts of one run.
struct Geometry {
    size: [usize; 2],
    pads: [usize; 2],
    tiles: [usize; 2],
}

/// Runs `f(row, buffer)` for `rows` independent rows, split over `threads` threads; each call
/// writes only its own row's share of `buffer`.
fn parallel_rows(
    rows: usize,
    threads: usize,
    buffer: &mut [f32],
    f: impl Fn(usize, SendPtr) + Sync,
) {
    let ptr = SendPtr(buffer.as_mut_ptr());
    super::parallel_ranges(rows, threads, |range| range.for_each(|row| f(row, ptr)));
}

thread_local! {
    /// Transformed inputs and products, reused across runs on this thread.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;
    use crate::ops::conv::Window;
    use crate::ops::conv::tests::{naive_conv, values};

    #[test]
    fn winograd_matches_the_definition_for_both_tiles() {
        // (channels, filters, h, w, pad): odd sizes leave partial tiles at the edges.
        // The third has 2 blocks of F(4×4) tiles (the second a single run) and 5 of F(2×2),
        // and a partial panel of filters.
        let cases = [
            (3, 4, 7, 9, 1),
            (8, 5, 6, 6, 0),
            (16, 16, 14, 13, 1),
            (20, 13, 29, 31, 1),
        ];
        let kernels = if winograd_blocks::simd_fits() {
            &[true, false][..]
        } else {
            &[false]
        };
        for (c, k, h, w, pad) in cases {
            let x = Tensor::new(vec![1, c, h, w], values(c * h * w, 1)).unwrap();
            let wt = Tensor::new(vec![k, c, 3, 3], values(k * c * 9, 2)).unwrap();
            let bias = values(k, 3);
            let win = Window {
                kernel: [3, 3],
                strides: [1, 1],
                dilations: [1, 1],
                pads: [pad; 4],
                ceil: false,
            };
            let [oh, ow] = win.output(h, w).unwrap();
            let expected = naive_conv(&x, &wt, &bias, &win, 1);
            let runs = [Tile::F2, Tile::F4]
                .into_iter()
                .flat_map(|tile| kernels.iter().map(move |&blocks| (tile, blocks)));
            for (tile, blocks) in runs {
                for (threads, relu) in [(1, false), (2, true)] {
                    let plan = Winograd::with_kernel(tile, wt.data(), [k, c], blocks);
                    assert_eq!(matches!(plan.weights, Weights::Blocks(_)), blocks);
                    let mut out = vec![f32::NAN; k * oh * ow];
                    let epilogue = Epilogue {
                        bias: Some(&bias),
                        relu,
                    };
                    plan.run(
                        (x.data(), [h, w]),
                        (pad, pad),
                        (&mut out, [oh, ow]),
                        epilogue,
                        threads,
                    );
                    for (i, (g, e)) in out.iter().zip(&expected).enumerate() {
                        let e = if relu { e.max(0.0) } else { *e };
                        assert!(
                            (g - e).abs() < 1e-3 * (1.0 + e.abs()),
                            "{tile:?} blocks {blocks} c{c} k{k} {h}×{w} pad {pad} threads {threads} [{i}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
