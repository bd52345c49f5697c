//! Weight element types and the quantized kernels over them.
//!
//! **Types** ([`GgmlType`]): F32, F16, and ggml's blocks of 32 weights, stored as they are in
//! a GGUF file (little-endian, unaligned, blocks back to back along a row):
//!
//! | type | bytes | layout | weight `j` of the block |
//! |---|---|---|---|
//! | Q8_0 | 34 | f16 `d`, 32 × i8 `q` | `q[j] · d` |
//! | Q4_0 | 18 | f16 `d`, 16 bytes of nibbles | `(n_j − 8) · d` |
//! | Q4_1 | 20 | f16 `d`, f16 `m`, 16 bytes of nibbles | `n_j · d + m` |
//!
//! where `n_j` is the low nibble of byte `j` for `j < 16` and the high nibble of byte `j − 16`
//! otherwise. Other ggml types are named ([`ggml_type_name`]) but refused.
//!
//! **Matrix × vector** ([`QuantMatrix::matvec`]), as ggml does it: the vector is quantized once
//! ([`Activation::quantize`]) to blocks of 32 i8 with an f32 scale `d_x = max|x| / 127` and the
//! block's integer sum, so a weight block times a vector block is an integer dot product
//! scaled once: `d_w · d_x · Σ q_w q_x` (Q4_0 subtracts `8 · Σ q_x` first, Q4_1 adds
//! `m · d_x · Σ q_x`). F32 and F16 rows are multiplied by the vector's f32 values.
//!
//! Each dot product has a portable scalar version (the reference) and AVX2, AVX-512BW and
//! AVX-512 VNNI (`vpdpbusd`) versions; [`Kernel::detect`] picks the widest this CPU has, under
//! the engine's instruction-set cap (`WALLE_ENGINE_ISA`, see [`crate::ops::packed::Isa`]). The
//! integer part of a block is exact on every path — vector values are in −127..=127, so no
//! 16-bit pair sum saturates — and only the order of the f32 sums differs. A matvec splits the
//! rows over the current rayon pool.
//!
//! The VNNI kernel (`x86::dots_vnni`, the one this project's usual host runs) takes
//! [`GROUP`] = 4 blocks per step, as ggml's Q4_1 × Q8_1 does the minimum: the vector is
//! quantized once per product into the order the step wants (each block's first 16 values for
//! the 4 blocks, then their last 16) with each block's `[d_x, d_x · Σ q_x]` beside it, so a
//! step is 2 `vpdpbusd` on the unpacked nibbles (`vpand`, `vpsrlw`), one f16 → f32 conversion
//! of the 4 blocks' `d, m` pairs, one multiply by the vector's pairs (which gives both the
//! scales and the minimum's terms) and one FMA. Q4_0 and Q8_0 go through the same step
//! (their constant −8 and, for Q8_0's signed weights made unsigned, −128 in place of the
//! minimum). For a batch ([`QuantMatrix::matmul`]) the step unpacks a group once and
//! multiplies it by 4 tokens' vectors, in the same instructions per token as a matvec, so
//! the two stay equal bit for bit.
//!
//! Everything here is checked once where a [`QuantMatrix`] or [`Activation`] is built (sizes
//! and whole blocks); after that the kernels cannot fail.

use half::f16;
use rayon::prelude::*;

/// Weights per quantized block.
pub const BLOCK: usize = 32;

/// The element type of a tensor the engine can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// Blocks of 32 × 4 bits with a scale, centred on 8.
    Q4_0,
    /// Blocks of 32 × 4 bits with a scale and a minimum.
    Q4_1,
    /// Blocks of 32 × 8 bits with a scale.
    Q8_0,
}

impl GgmlType {
    /// The type with ggml's id `id` (`ggml_type`), if the engine reads it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        match id {
            0 => Some(GgmlType::F32),
            1 => Some(GgmlType::F16),
            2 => Some(GgmlType::Q4_0),
            3 => Some(GgmlType::Q4_1),
            8 => Some(GgmlType::Q8_0),
            _ => None,
        }
    }

    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
        }
    }

    /// ggml's name of the type (`Q4_0`, …).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => BLOCK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
        }
    }

    /// The bytes of `elements` elements, if they are whole blocks and the size fits a `u64`.
    pub fn bytes_of(self, elements: u64) -> Option<u64> {
        let per = self.block_elems() as u64;
        elements.is_multiple_of(per).then_some(())?;
        (elements / per).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// ggml's name for a type id the engine does not read, for error messages (`Q4_K`, …).
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2 (removed)",
        5 => "Q4_3 (removed)",
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        other => return GgmlType::from_id(other).map(GgmlType::name),
    })
}

/// Why a matrix or vector could not be built over the given data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// A row of a block type must be a whole number of blocks.
    #[error("a {ty} row of {cols} elements is not a whole number of blocks of {}", ty.block_elems())]
    PartialBlock {
        /// The element type.
        ty: GgmlType,
        /// The row length.
        cols: usize,
    },
    /// The data is not the size the shape and type make.
    #[error("{rows} × {cols} {ty} takes {expected} bytes, not {got}")]
    Size {
        /// The element type.
        ty: GgmlType,
        /// Rows.
        rows: usize,
        /// Elements per row.
        cols: usize,
        /// The bytes the shape needs (saturated at `usize::MAX`).
        expected: usize,
        /// The bytes given.
        got: usize,
    },
    /// A vector of a length that is not whole blocks.
    #[error("a vector of {0} values is not a whole number of blocks of {BLOCK}")]
    VectorLength(usize),
    /// The vector or output does not match the matrix.
    #[error("a {rows} × {cols} matrix cannot multiply a vector of {vector} into {out} outputs")]
    Mismatch {
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
        /// Length of the vector.
        vector: usize,
        /// Length of the output.
        out: usize,
    },
}

fn half(bytes: [u8; 2]) -> f32 {
    f16::from_le_bytes(bytes).to_f32()
}

/// Reads the f16 at `at` of a block (callers pass blocks of the type's full size).
fn half_at(block: &[u8], at: usize) -> f32 {
    half([block[at], block[at + 1]])
}

/// Dequantizes one row (`src`: exactly the row's bytes) into `out` (its elements).
fn dequantize_into(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half([b[0], b[1]]);
            }
        }
        GgmlType::Q8_0 => {
            for (o, block) in out.chunks_exact_mut(BLOCK).zip(src.chunks_exact(34)) {
                let d = half_at(block, 0);
                for (o, &q) in o.iter_mut().zip(&block[2..]) {
                    *o = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, block) in out.chunks_exact_mut(BLOCK).zip(src.chunks_exact(18)) {
                let d = half_at(block, 0);
                let (low, high) = o.split_at_mut(16);
                for ((l, h), &q) in low.iter_mut().zip(high).zip(&block[2..]) {
                    *l = (f32::from(q & 0x0F) - 8.0) * d;
                    *h = (f32::from(q >> 4) - 8.0) * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, block) in out.chunks_exact_mut(BLOCK).zip(src.chunks_exact(20)) {
                let (d, m) = (half_at(block, 0), half_at(block, 2));
                let (low, high) = o.split_at_mut(16);
                for ((l, h), &q) in low.iter_mut().zip(high).zip(&block[4..]) {
                    *l = f32::from(q & 0x0F) * d + m;
                    *h = f32::from(q >> 4) * d + m;
                }
            }
        }
    }
}

/// A vector ready to be multiplied by a [`QuantMatrix`]: its f32 values (for F32 and F16
/// rows) and the same values quantized to blocks of 32 (for the block types).
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    values: Vec<f32>,
    /// The quantized values, 32 per block.
    qs: Vec<i8>,
    /// Each block's scale: `max |x| / 127`.
    scales: Vec<f32>,
    /// Each block's sum of its quantized values.
    sums: Vec<i32>,
    /// The quantized values in the order of the grouped kernels ([`GROUP`] blocks at a time:
    /// the first 16 values of each block of the group, then the last 16; the last group may
    /// hold fewer blocks).
    grouped: Vec<i8>,
    /// Per block, `[d_x, d_x · Σ q_x]`: what a weight block's scale and its minimum (or
    /// constant offset) multiply.
    terms: Vec<f32>,
}

/// Blocks the grouped kernels handle per step.
const GROUP: usize = 4;

/// `qs` (whole blocks) in the grouped kernels' order (see [`Activation`]).
fn group_values(qs: &[i8]) -> Vec<i8> {
    let mut out = Vec::with_capacity(qs.len());
    for group in qs.chunks(GROUP * BLOCK) {
        for half in 0..2 {
            for block in group.chunks_exact(BLOCK) {
                out.extend_from_slice(&block[half * 16..half * 16 + 16]);
            }
        }
    }
    out
}

fn block_terms(scales: &[f32], sums: &[i32]) -> Vec<f32> {
    scales
        .iter()
        .zip(sums)
        .flat_map(|(&d, &s)| [d, d * s as f32])
        .collect()
}

impl Activation {
    /// Quantizes `x` (a whole number of blocks of 32 values) the way ggml's `q8_0` does,
    /// keeping the scale in f32.
    pub fn quantize(x: &[f32]) -> Result<Activation, QuantError> {
        if !x.len().is_multiple_of(BLOCK) {
            return Err(QuantError::VectorLength(x.len()));
        }
        let blocks = x.len() / BLOCK;
        let mut qs = Vec::with_capacity(x.len());
        let mut scales = Vec::with_capacity(blocks);
        let mut sums = Vec::with_capacity(blocks);
        for block in x.chunks_exact(BLOCK) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max / 127.0;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for &v in block {
                // In −127..=127 by construction; the clamp only guards against rounding.
                let q = (v * inverse).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(q);
                qs.push(q);
            }
            scales.push(d);
            sums.push(sum);
        }
        Ok(Activation {
            values: x.to_vec(),
            grouped: group_values(&qs),
            terms: block_terms(&scales, &sums),
            qs,
            scales,
            sums,
        })
    }

    /// A vector given by its blocks directly: `qs` (−127..=127) and one scale per 32 of them.
    /// For tests of the kernels' integer parts (unit scales make every sum exact).
    pub fn from_blocks(qs: Vec<i8>, scales: Vec<f32>) -> Result<Activation, QuantError> {
        if !qs.len().is_multiple_of(BLOCK) || qs.len() / BLOCK != scales.len() {
            return Err(QuantError::VectorLength(qs.len()));
        }
        let qs: Vec<i8> = qs.into_iter().map(|q| q.max(-127)).collect();
        let sums: Vec<i32> = qs
            .chunks_exact(BLOCK)
            .map(|b| b.iter().map(|&q| i32::from(q)).sum())
            .collect();
        let values = qs
            .chunks_exact(BLOCK)
            .zip(&scales)
            .flat_map(|(b, &d)| b.iter().map(move |&q| f32::from(q) * d))
            .collect();
        Ok(Activation {
            values,
            grouped: group_values(&qs),
            terms: block_terms(&scales, &sums),
            qs,
            scales,
            sums,
        })
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The f32 values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
}

/// A dot-product implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust: the reference.
    Scalar,
    /// AVX2 + FMA + F16C, 32 bytes at a time (`vpmaddubsw`).
    Avx2,
    /// AVX-512F/BW, two blocks at a time (`vpmaddubsw` on 64 bytes).
    Avx512,
    /// AVX-512 with VNNI: two blocks at a time, `vpdpbusd`.
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs, under the engine's instruction-set cap.
    pub fn detect() -> Kernel {
        use crate::ops::packed::Isa;
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let widest: &[Kernel] = match Isa::detect() {
                Some(Isa::Avx512) => &[Kernel::Avx512Vnni, Kernel::Avx512, Kernel::Avx2],
                Some(Isa::Avx2) => &[Kernel::Avx2],
                None => &[],
            };
            widest
                .iter()
                .copied()
                .find(|k| k.supported())
                .unwrap_or(Kernel::Scalar)
        })
    }

    /// Whether this CPU can run `self` (whatever the cap).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            match self {
                Kernel::Scalar => true,
                Kernel::Avx2 => avx2,
                Kernel::Avx512 => avx2 && has!("avx512f") && has!("avx512bw"),
                Kernel::Avx512Vnni => {
                    Kernel::Avx512.supported() && has!("avx512vnni") && has!("avx512vl")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Scalar
        }
    }

    /// Every kernel this CPU runs, the reference first.
    pub fn available() -> Vec<Kernel> {
        [
            Kernel::Scalar,
            Kernel::Avx2,
            Kernel::Avx512,
            Kernel::Avx512Vnni,
        ]
        .into_iter()
        .filter(|k| k.supported())
        .collect()
    }
}

/// A matrix of `rows` rows of `cols` elements of one type, over borrowed bytes (a tensor of
/// a memory-mapped file: nothing is copied).
#[derive(Debug, Clone, Copy)]
pub struct QuantMatrix<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
}

impl<'a> QuantMatrix<'a> {
    /// Checks that `data` is exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<QuantMatrix<'a>, QuantError> {
        if !cols.is_multiple_of(ty.block_elems()) {
            return Err(QuantError::PartialBlock { ty, cols });
        }
        let row_bytes = cols / ty.block_elems() * ty.block_bytes();
        let expected = row_bytes.checked_mul(rows);
        if expected != Some(data.len()) {
            return Err(QuantError::Size {
                ty,
                rows,
                cols,
                expected: expected.unwrap_or(usize::MAX),
                got: data.len(),
            });
        }
        Ok(QuantMatrix {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// The element type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The bytes of row `row` (empty past the last row).
    pub fn row_data(&self, row: usize) -> &'a [u8] {
        let start = row.saturating_mul(self.row_bytes);
        self.data
            .get(start..start.saturating_add(self.row_bytes))
            .unwrap_or(&[])
    }

    /// Row `row` as f32, written into `out` (which must hold [`QuantMatrix::cols`] values;
    /// nothing is written past the row or for a row past the last).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let src = self.row_data(row);
        if src.len() == self.row_bytes && out.len() == self.cols {
            dequantize_into(self.ty, src, out);
        }
    }

    /// The whole matrix as f32, row after row.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (row, o) in out.chunks_exact_mut(self.cols).enumerate() {
                self.dequantize_row(row, o);
            }
        }
        out
    }

    /// The dot product of row `row` with `x`, on `kernel` (which the CPU must support;
    /// an unsupported one falls back to [`Kernel::Scalar`]).
    pub fn dot(&self, kernel: Kernel, row: usize, x: &Activation) -> f32 {
        let w = self.row_data(row);
        if w.len() != self.row_bytes || x.len() != self.cols {
            return 0.0;
        }
        dot(self.ty, kernel, w, x)
    }

    /// `out = self · x`, rows split over the current rayon pool, on [`Kernel::detect`].
    pub fn matvec(&self, x: &Activation, out: &mut [f32]) -> Result<(), QuantError> {
        self.matvec_with(Kernel::detect(), x, out)
    }

    /// [`QuantMatrix::matvec`] on a chosen kernel.
    pub fn matvec_with(
        &self,
        kernel: Kernel,
        x: &Activation,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        if x.len() != self.cols || out.len() != self.rows {
            return Err(QuantError::Mismatch {
                rows: self.rows,
                cols: self.cols,
                vector: x.len(),
                out: out.len(),
            });
        }
        let kernel = if kernel.supported() {
            kernel
        } else {
            Kernel::Scalar
        };
        // Enough rows per task that a task streams tens of kilobytes, and enough tasks that
        // every thread gets several (rows differ little in cost, but threads in time).
        let per_task = (64 * 1024 / self.row_bytes.max(1))
            .min(self.rows.div_ceil(4 * rayon::current_num_threads()))
            .max(1);
        out.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(task, outs)| {
                let first = task * per_task;
                for (i, o) in outs.iter_mut().enumerate() {
                    *o = dot(self.ty, kernel, self.row_data(first + i), x);
                }
            });
        Ok(())
    }

    /// `out[t · rows + r] = row r · xs[t]` for every vector `t` of a batch (a prompt's tokens),
    /// rows split over the current rayon pool, on [`Kernel::detect`]. Each weight row is read
    /// from memory once and multiplied by every vector of the batch while it is in cache, so a
    /// batch of `n` vectors costs one pass over the weights, not `n`. Each product is the
    /// same dot product [`QuantMatrix::matvec`] computes, so the results are equal to `n`
    /// matvecs bit for bit.
    pub fn matmul(&self, xs: &[Activation], out: &mut [f32]) -> Result<(), QuantError> {
        self.matmul_with(Kernel::detect(), xs, out)
    }

    /// [`QuantMatrix::matmul`] on a chosen kernel.
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        xs: &[Activation],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        let n = xs.len();
        let mismatch = |vector| QuantError::Mismatch {
            rows: self.rows,
            cols: self.cols,
            vector,
            out: out.len(),
        };
        if let Some(x) = xs.iter().find(|x| x.len() != self.cols) {
            return Err(mismatch(x.len()));
        }
        if self.rows.checked_mul(n) != Some(out.len()) {
            return Err(mismatch(self.cols));
        }
        if n == 0 || self.rows == 0 {
            return Ok(());
        }
        let kernel = if kernel.supported() {
            kernel
        } else {
            Kernel::Scalar
        };
        let per_task = (64 * 1024 / self.row_bytes.max(1))
            .min(self.rows.div_ceil(4 * rayon::current_num_threads()))
            .max(1);
        // Row-major while computing (a task owns whole rows), token-major when returned.
        let mut by_row = vec![0f32; out.len()];
        by_row
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(task, outs)| {
                let first = task * per_task;
                for (i, row_out) in outs.chunks_exact_mut(n).enumerate() {
                    let w = self.row_data(first + i);
                    if !dots_batch(self.ty, kernel, w, xs, row_out) {
                        for (o, x) in row_out.iter_mut().zip(xs) {
                            *o = dot(self.ty, kernel, w, x);
                        }
                    }
                }
            });
        for (r, row) in by_row.chunks_exact(n).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                out[t * self.rows + r] = v;
            }
        }
        Ok(())
    }
}

/// One row (`w`, whole blocks) times `x` (as many values), on a supported `kernel`.
fn dot(ty: GgmlType, kernel: Kernel, w: &[u8], x: &Activation) -> f32 {
    match ty {
        GgmlType::F32 => w
            .chunks_exact(4)
            .zip(&x.values)
            .map(|(b, v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
            .sum(),
        GgmlType::F16 => w
            .chunks_exact(2)
            .zip(&x.values)
            .map(|(b, v)| half([b[0], b[1]]) * v)
            .sum(),
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: `kernel` was checked to be supported by this CPU, and `w` holds
                // exactly as many blocks as `x` (checked by the callers).
                unsafe {
                    match kernel {
                        Kernel::Scalar => {}
                        Kernel::Avx2 => return x86::dot_avx2(ty, w, x),
                        Kernel::Avx512 => return x86::dot_avx512::<false>(ty, w, x),
                        Kernel::Avx512Vnni => return x86::dots_vnni::<1>(ty, w, &[x])[0],
                    }
                }
            }
            let _ = kernel;
            dot_scalar(ty, w, x)
        }
    }
}

/// `out[t] = w · xs[t]` for every vector of a batch on a kernel that unpacks each weight
/// block once for several vectors, if `kernel` has one for `ty` (false: nothing written).
fn dots_batch(ty: GgmlType, kernel: Kernel, w: &[u8], xs: &[Activation], out: &mut [f32]) -> bool {
    let blocks = matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1);
    if kernel != Kernel::Avx512Vnni || !blocks {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Tiles of 4 vectors: 4 accumulator pairs and the unpacked group fit the registers.
        let mut tiles = xs.chunks_exact(4);
        let mut outs = out.chunks_exact_mut(4);
        for (x, o) in (&mut tiles).zip(&mut outs) {
            // SAFETY: the kernel was checked to be supported by this CPU, and `w` holds
            // exactly as many blocks as each vector (checked by the caller).
            o.copy_from_slice(&unsafe {
                x86::dots_vnni::<4>(ty, w, &[&x[0], &x[1], &x[2], &x[3]])
            });
        }
        // SAFETY: as above.
        unsafe {
            match (tiles.remainder(), outs.into_remainder()) {
                ([a], [o]) => *o = x86::dots_vnni::<1>(ty, w, &[a])[0],
                ([a, b], o) => o.copy_from_slice(&x86::dots_vnni::<2>(ty, w, &[a, b])),
                ([a, b, c], o) => o.copy_from_slice(&x86::dots_vnni::<3>(ty, w, &[a, b, c])),
                _ => {}
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, xs, out);
        false
    }
}

/// The reference: each block's integer dot product, scaled.
fn dot_scalar(ty: GgmlType, w: &[u8], x: &Activation) -> f32 {
    let blocks = w
        .chunks_exact(ty.block_bytes())
        .zip(x.qs.chunks_exact(BLOCK))
        .zip(x.scales.iter().zip(&x.sums));
    let mut acc = 0f32;
    for ((block, a), (&dx, &sum)) in blocks {
        acc += match ty {
            GgmlType::Q8_0 => {
                let dot: i32 = block[2..]
                    .iter()
                    .zip(a)
                    .map(|(&q, &a)| i32::from(q as i8) * i32::from(a))
                    .sum();
                half_at(block, 0) * dx * dot as f32
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let nibbles = if ty == GgmlType::Q4_0 {
                    &block[2..]
                } else {
                    &block[4..]
                };
                let dot: i32 = nibbles
                    .iter()
                    .zip(a.iter().zip(&a[16..]))
                    .map(|(&q, (&l, &h))| {
                        i32::from(q & 0x0F) * i32::from(l) + i32::from(q >> 4) * i32::from(h)
                    })
                    .sum();
                let d = half_at(block, 0);
                if ty == GgmlType::Q4_0 {
                    d * dx * (dot - 8 * sum) as f32
                } else {
                    d * dx * dot as f32 + half_at(block, 2) * dx * sum as f32
                }
            }
            GgmlType::F32 | GgmlType::F16 => 0.0,
        };
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD dot products. Nibbles are spread to one byte per weight in block order
    //! (low nibbles, then high: `[n_0..n_16 | n_16..n_32]`), so a block lines up with its 32
    //! vector values; `u8 × i8` products then sum in 32-bit lanes. Q8_0 weights are signed:
    //! their absolute value multiplies the vector value with the weight's sign.

    use super::{Activation, BLOCK, GROUP, GgmlType};
    use std::arch::x86_64::*;

    /// The f16 at `p` (unaligned) as f32.
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        unsafe {
            let bits = u16::from_le_bytes([*p, *p.add(1)]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }
    }

    /// The 16 nibble bytes at `p` as 32 bytes, one weight each, in block order.
    #[inline(always)]
    unsafe fn nibbles256(p: *const u8) -> __m256i {
        unsafe {
            let raw = _mm_loadu_si128(p.cast());
            let mask = _mm_set1_epi8(0x0F);
            let low = _mm_and_si128(raw, mask);
            let high = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            _mm256_set_m128i(high, low)
        }
    }

    #[inline(always)]
    fn hsum256(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// Sums of `u × s` in eight 32-bit lanes (u: 0..=128, s: −127..=127, so no pair of
    /// products saturates 16 bits).
    #[inline(always)]
    fn dot_u8i8_256(u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
    }

    /// `|w|` and `x` with the sign of `w`: `|w| · (x · sign w) = w · x` term by term.
    #[inline(always)]
    fn signed_pair256(w: __m256i, x: __m256i) -> (__m256i, __m256i) {
        unsafe { (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)) }
    }

    /// One block (`p`: its first byte) times the vector's block `b`: the 8 lanes of its
    /// integer dot product (before Q4_0's −8 and Q4_1's minimum).
    #[inline(always)]
    unsafe fn block256(ty: GgmlType, p: *const u8, a: *const i8) -> __m256i {
        unsafe {
            let x = _mm256_loadu_si256(a.cast());
            match ty {
                GgmlType::Q8_0 => {
                    let w = _mm256_loadu_si256(p.add(2).cast());
                    let (u, s) = signed_pair256(w, x);
                    dot_u8i8_256(u, s)
                }
                GgmlType::Q4_0 => dot_u8i8_256(nibbles256(p.add(2)), x),
                _ => dot_u8i8_256(nibbles256(p.add(4)), x),
            }
        }
    }

    /// The scale of a block's integer dot product and the term added per unit of the vector
    /// block's sum (Q4_0: −8 · scale; Q4_1: m · d_x; Q8_0: 0).
    #[inline(always)]
    unsafe fn scales(ty: GgmlType, p: *const u8, dx: f32) -> (f32, f32) {
        unsafe {
            let scale = half(p) * dx;
            match ty {
                GgmlType::Q8_0 => (scale, 0.0),
                GgmlType::Q4_0 => (scale, -8.0 * scale),
                _ => (scale, half(p.add(2)) * dx),
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `w` must hold as many blocks of `ty` as `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(ty: GgmlType, w: &[u8], x: &Activation) -> f32 {
        let size = ty.block_bytes();
        let blocks = x.scales.len().min(w.len() / size);
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for b in 0..blocks {
            unsafe {
                let p = w.as_ptr().add(b * size);
                let (scale, per_sum) = scales(ty, p, x.scales[b]);
                let lanes = block256(ty, p, x.qs.as_ptr().add(b * BLOCK));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(scale), acc);
                offsets += per_sum * x.sums[b] as f32;
            }
        }
        hsum256(acc) + offsets
    }

    /// Two blocks' weights (`p`, `q`: first bytes) as 64 bytes, each lined up with its 32
    /// vector values, and the vector values (`a`: the first block's), signed as the kernel
    /// needs them.
    #[inline(always)]
    unsafe fn pair512(
        ty: GgmlType,
        p: *const u8,
        q: *const u8,
        a: *const i8,
    ) -> (__m512i, __m512i) {
        unsafe {
            let x = _mm512_loadu_si512(a.cast());
            match ty {
                GgmlType::Q8_0 => {
                    let w0 = _mm256_loadu_si256(p.add(2).cast());
                    let w1 = _mm256_loadu_si256(q.add(2).cast());
                    let w = _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
                    let negative = _mm512_movepi8_mask(w);
                    let s = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
                    (_mm512_abs_epi8(w), s)
                }
                _ => {
                    let at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                    let w0 = nibbles256(p.add(at));
                    let w1 = nibbles256(q.add(at));
                    (_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), x)
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F/BW, AVX2, FMA and F16C (and AVX-512 VNNI + VL when `VNNI`);
    /// `w` must hold as many blocks of `ty` as `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx512<const VNNI: bool>(
        ty: GgmlType,
        w: &[u8],
        x: &Activation,
    ) -> f32 {
        unsafe {
            if VNNI {
                dot_avx512_vnni(ty, w, x)
            } else {
                dot_avx512_body::<false>(ty, w, x)
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
    unsafe fn dot_avx512_vnni(ty: GgmlType, w: &[u8], x: &Activation) -> f32 {
        unsafe { dot_avx512_body::<true>(ty, w, x) }
    }

    /// Two blocks per step: 16 lanes of integer sums (8 per block), scaled per half.
    #[inline(always)]
    unsafe fn dot_avx512_body<const VNNI: bool>(ty: GgmlType, w: &[u8], x: &Activation) -> f32 {
        let size = ty.block_bytes();
        let blocks = x.scales.len().min(w.len() / size);
        unsafe {
            let mut acc = _mm512_setzero_ps();
            let mut offsets = 0f32;
            let mut b = 0;
            while b + 1 < blocks {
                let p = w.as_ptr().add(b * size);
                let q = p.add(size);
                let (s0, o0) = scales(ty, p, x.scales[b]);
                let (s1, o1) = scales(ty, q, x.scales[b + 1]);
                let (u, s) = pair512(ty, p, q, x.qs.as_ptr().add(b * BLOCK));
                let lanes = if VNNI {
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
                } else {
                    _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
                };
                let scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), scale, acc);
                offsets += o0 * x.sums[b] as f32 + o1 * x.sums[b + 1] as f32;
                b += 2;
            }
            let mut total = _mm512_reduce_add_ps(acc) + offsets;
            if b < blocks {
                let p = w.as_ptr().add(b * size);
                let (scale, per_sum) = scales(ty, p, x.scales[b]);
                let lanes = block256(ty, p, x.qs.as_ptr().add(b * BLOCK));
                total += hsum256(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(lanes),
                    _mm256_set1_ps(scale),
                )) + per_sum * x.sums[b] as f32;
            }
            total
        }
    }
    /// A group of [`GROUP`] blocks of `ty` (`p`: the first block's first byte) for
    /// `vpdpbusd`: the first 16 weights of each block (64 unsigned bytes), the last 16, and
    /// the blocks' `[d, c]` pairs as f32, where `c` is what multiplies `d_x · Σ q_x`: Q4_1's
    /// minimum, Q4_0's `−8 · d` (its nibbles are unsigned, centred on 8), Q8_0's `−128 · d`
    /// (its signed weights are made unsigned by adding 128).
    #[inline(always)]
    unsafe fn group4(ty: GgmlType, p: *const u8) -> (__m512i, __m512i, __m256) {
        unsafe {
            let size = ty.block_bytes();
            let at = |i: usize, offset: usize| _mm_loadu_si128(p.add(i * size + offset).cast());
            let gather = |offset: usize| {
                let v = _mm512_castsi128_si512(at(0, offset));
                let v = _mm512_inserti32x4(v, at(1, offset), 1);
                let v = _mm512_inserti32x4(v, at(2, offset), 2);
                _mm512_inserti32x4(v, at(3, offset), 3)
            };
            let word = |i: usize| (p.add(i * size) as *const u32).read_unaligned() as i32;
            let half = |i: usize| i32::from((p.add(i * size) as *const u16).read_unaligned());
            match ty {
                GgmlType::Q4_1 => {
                    let raw = gather(4);
                    let mask = _mm512_set1_epi8(0x0F);
                    let heads = _mm_setr_epi32(word(0), word(1), word(2), word(3));
                    (
                        _mm512_and_si512(raw, mask),
                        _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask),
                        _mm256_cvtph_ps(heads),
                    )
                }
                GgmlType::Q4_0 => {
                    let raw = gather(2);
                    let mask = _mm512_set1_epi8(0x0F);
                    let d = _mm_mullo_epi32(
                        _mm_setr_epi32(half(0), half(1), half(2), half(3)),
                        _mm_set1_epi32(0x0001_0001),
                    );
                    let c = _mm256_setr_ps(1.0, -8.0, 1.0, -8.0, 1.0, -8.0, 1.0, -8.0);
                    (
                        _mm512_and_si512(raw, mask),
                        _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask),
                        _mm256_mul_ps(_mm256_cvtph_ps(d), c),
                    )
                }
                _ => {
                    let flip = _mm512_set1_epi8(-128);
                    let d = _mm_mullo_epi32(
                        _mm_setr_epi32(half(0), half(1), half(2), half(3)),
                        _mm_set1_epi32(0x0001_0001),
                    );
                    let c = _mm256_setr_ps(1.0, -128.0, 1.0, -128.0, 1.0, -128.0, 1.0, -128.0);
                    (
                        _mm512_xor_si512(gather(2), flip),
                        _mm512_xor_si512(gather(18), flip),
                        _mm256_mul_ps(_mm256_cvtph_ps(d), c),
                    )
                }
            }
        }
    }

    /// One block of `ty` as [`group4`] makes a group: its two halves and `(d, c)`.
    #[inline(always)]
    unsafe fn block128(ty: GgmlType, p: *const u8) -> (__m128i, __m128i, f32, f32) {
        unsafe {
            let mask = _mm_set1_epi8(0x0F);
            match ty {
                GgmlType::Q4_1 => {
                    let raw = _mm_loadu_si128(p.add(4).cast());
                    let low = _mm_and_si128(raw, mask);
                    let high = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    (low, high, half(p), half(p.add(2)))
                }
                GgmlType::Q4_0 => {
                    let raw = _mm_loadu_si128(p.add(2).cast());
                    let low = _mm_and_si128(raw, mask);
                    let high = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    let d = half(p);
                    (low, high, d, -8.0 * d)
                }
                _ => {
                    let flip = _mm_set1_epi8(-128);
                    let low = _mm_xor_si128(_mm_loadu_si128(p.add(2).cast()), flip);
                    let high = _mm_xor_si128(_mm_loadu_si128(p.add(18).cast()), flip);
                    let d = half(p);
                    (low, high, d, -128.0 * d)
                }
            }
        }
    }

    /// Row `w` (whole blocks of a block type) times each of `T` vectors of as many values,
    /// with AVX-512 VNNI. The weights of each group of [`GROUP`] blocks are unpacked once
    /// and multiplied by every vector, so a batch pays the unpacking once per `T` tokens;
    /// each vector's result is computed by the same instructions in the same order whatever
    /// `T` is, so a batch equals one product per vector bit for bit.
    ///
    /// Per group: `vpdpbusd` of the unsigned weights with the grouped vector values (lanes
    /// `4i..4i + 4` hold block `i`'s integer sums), converted to f32 and multiplied by each
    /// block's `d · d_x` spread over its lanes; the blocks' `c · d_x · Σ q_x` terms are
    /// summed in a separate vector (its odd lanes).
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW/VL/VNNI, AVX2, FMA and F16C; every vector in `xs` must
    /// have as many blocks as `w`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn dots_vnni<const T: usize>(
        ty: GgmlType,
        w: &[u8],
        xs: &[&Activation; T],
    ) -> [f32; T] {
        let size = ty.block_bytes();
        let blocks = w.len() / size;
        let groups = blocks / GROUP;
        let mut out = [0f32; T];
        unsafe {
            // Lanes 4i..4i + 4 take block i's `d · d_x` (lane 2i of the pairs).
            let spread = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
            let mut acc = [_mm512_setzero_ps(); T];
            let mut offsets = [_mm256_setzero_ps(); T];
            for g in 0..groups {
                let (low, high, heads) = group4(ty, w.as_ptr().add(g * GROUP * size));
                for t in 0..T {
                    let x = xs[t].grouped.as_ptr().add(g * GROUP * BLOCK);
                    let ints = _mm512_dpbusd_epi32(
                        _mm512_setzero_si512(),
                        low,
                        _mm512_loadu_si512(x.cast()),
                    );
                    let ints =
                        _mm512_dpbusd_epi32(ints, high, _mm512_loadu_si512(x.add(64).cast()));
                    let terms = _mm256_loadu_ps(xs[t].terms.as_ptr().add(g * 2 * GROUP));
                    let products = _mm256_mul_ps(heads, terms);
                    let scale = _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(products));
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), scale, acc[t]);
                    offsets[t] = _mm256_add_ps(offsets[t], products);
                }
            }
            for t in 0..T {
                let odd = _mm256_blend_ps(_mm256_setzero_ps(), offsets[t], 0b1010_1010);
                out[t] = _mm512_reduce_add_ps(acc[t]) + hsum256(odd);
            }
            let tail = blocks - groups * GROUP;
            for j in 0..tail {
                let b = groups * GROUP + j;
                let (low, high, d, c) = block128(ty, w.as_ptr().add(b * size));
                for t in 0..T {
                    let x = xs[t].grouped.as_ptr().add(groups * GROUP * BLOCK);
                    let ints = _mm_dpbusd_epi32(
                        _mm_setzero_si128(),
                        low,
                        _mm_loadu_si128(x.add(16 * j).cast()),
                    );
                    let ints = _mm_dpbusd_epi32(
                        ints,
                        high,
                        _mm_loadu_si128(x.add(16 * (tail + j)).cast()),
                    );
                    let ints = _mm_add_epi32(ints, _mm_shuffle_epi32(ints, 0b01_00_11_10));
                    let ints = _mm_add_epi32(ints, _mm_shuffle_epi32(ints, 0b10_11_00_01));
                    let dot = _mm_cvtsi128_si32(ints) as f32;
                    let (dx, dxs) = (xs[t].terms[2 * b], xs[t].terms[2 * b + 1]);
                    out[t] += d * dx * dot + c * dxs;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// A random row of `blocks` blocks of `ty`, with scales of `scale` (or random ones).
    fn random_row(rng: &mut StdRng, ty: GgmlType, blocks: usize, unit: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..blocks {
            let d = if unit {
                1.0
            } else {
                rng.gen_range(-0.1f32..0.1)
            };
            out.extend(f16::from_f32(d).to_le_bytes());
            if ty == GgmlType::Q4_1 {
                let m = if unit {
                    0.0
                } else {
                    rng.gen_range(-0.5f32..0.5)
                };
                out.extend(f16::from_f32(m).to_le_bytes());
            }
            let n = if ty == GgmlType::Q8_0 { 32 } else { 16 };
            for _ in 0..n {
                out.push(rng.r#gen::<u8>());
            }
        }
        out
    }

    fn random_matrix(
        rng: &mut StdRng,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        unit: bool,
    ) -> Vec<u8> {
        (0..rows)
            .flat_map(|_| random_row(rng, ty, cols / BLOCK, unit))
            .collect()
    }

    const TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

    #[test]
    fn dequantize_matches_the_block_formulas() {
        // Q4_0: d = 2, nibbles 0x_lo = 3 (element 0), hi = 12 (element 16).
        let mut q4 = f16::from_f32(2.0).to_le_bytes().to_vec();
        q4.extend([0xC3u8; 16]);
        let m = QuantMatrix::new(GgmlType::Q4_0, 1, 32, &q4).unwrap();
        let v = m.dequantize();
        assert_eq!((v[0], v[15], v[16], v[31]), (-10.0, -10.0, 8.0, 8.0));
        let mut q41 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q41.extend(f16::from_f32(-1.0).to_le_bytes());
        q41.extend([0xF1u8; 16]);
        let v = QuantMatrix::new(GgmlType::Q4_1, 1, 32, &q41)
            .unwrap()
            .dequantize();
        assert_eq!((v[0], v[16]), (-0.5, 6.5));
        let mut q8 = f16::from_f32(0.25).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = QuantMatrix::new(GgmlType::Q8_0, 1, 32, &q8)
            .unwrap()
            .dequantize();
        assert_eq!((v[0], v[16], v[31]), (-4.0, 0.0, 3.75));
    }

    #[test]
    fn matrices_of_the_wrong_size_are_refused() {
        let data = vec![0u8; 34 * 3];
        assert!(QuantMatrix::new(GgmlType::Q8_0, 3, 32, &data).is_ok());
        assert_eq!(
            QuantMatrix::new(GgmlType::Q8_0, 3, 33, &data).unwrap_err(),
            QuantError::PartialBlock {
                ty: GgmlType::Q8_0,
                cols: 33
            }
        );
        assert!(matches!(
            QuantMatrix::new(GgmlType::Q8_0, 4, 32, &data),
            Err(QuantError::Size {
                expected: 136,
                got: 102,
                ..
            })
        ));
        assert!(matches!(
            QuantMatrix::new(GgmlType::Q8_0, usize::MAX, 64, &data),
            Err(QuantError::Size { .. })
        ));
        assert_eq!(
            Activation::quantize(&[0.0; 31]),
            Err(QuantError::VectorLength(31))
        );
    }

    #[test]
    fn simd_integer_parts_equal_the_scalar_exactly() {
        let mut rng = StdRng::seed_from_u64(7);
        for ty in TYPES {
            for (rows, cols) in [(1, 32), (7, 64), (13, 96), (4, 128), (9, 160), (33, 576)] {
                let data = random_matrix(&mut rng, ty, rows, cols, true);
                let m = QuantMatrix::new(ty, rows, cols, &data).unwrap();
                let qs = (0..cols).map(|_| rng.gen_range(-127i8..=127)).collect();
                let x = Activation::from_blocks(qs, vec![1.0; cols / BLOCK]).unwrap();
                let mut reference = vec![0f32; rows];
                m.matvec_with(Kernel::Scalar, &x, &mut reference).unwrap();
                // The scalar path is the dequantized product, exactly (integers below 2^24).
                let dense = m.dequantize();
                for (r, want) in reference.iter().enumerate() {
                    let row = &dense[r * cols..(r + 1) * cols];
                    let exact: f64 = row
                        .iter()
                        .zip(x.values())
                        .map(|(a, b)| f64::from(a * b))
                        .sum();
                    assert_eq!(f64::from(*want), exact, "{ty} scalar row {r}");
                }
                for kernel in Kernel::available() {
                    let mut out = vec![0f32; rows];
                    m.matvec_with(kernel, &x, &mut out).unwrap();
                    assert_eq!(out, reference, "{ty} {kernel:?} {rows}×{cols}");
                }
            }
        }
    }

    #[test]
    fn simd_paths_equal_the_scalar_within_float_tolerance() {
        let mut rng = StdRng::seed_from_u64(11);
        for ty in TYPES {
            for (rows, cols) in [(1, 32), (5, 160), (31, 576), (77, 1536)] {
                let data = random_matrix(&mut rng, ty, rows, cols, false);
                let m = QuantMatrix::new(ty, rows, cols, &data).unwrap();
                let values: Vec<f32> = (0..cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
                let x = Activation::quantize(&values).unwrap();
                let mut reference = vec![0f32; rows];
                m.matvec_with(Kernel::Scalar, &x, &mut reference).unwrap();
                // The quantized product is close to the dense one.
                let dense = m.dequantize();
                for (r, got) in reference.iter().enumerate() {
                    let row = &dense[r * cols..(r + 1) * cols];
                    let exact: f32 = row.iter().zip(&values).map(|(a, b)| a * b).sum();
                    let scale: f32 = row.iter().zip(&values).map(|(a, b)| (a * b).abs()).sum();
                    assert!(
                        (got - exact).abs() <= 0.02 * scale + 1e-3,
                        "{ty} row {r}: {got} vs {exact}"
                    );
                }
                for kernel in Kernel::available() {
                    let mut out = vec![0f32; rows];
                    m.matvec_with(kernel, &x, &mut out).unwrap();
                    for (r, (a, b)) in out.iter().zip(&reference).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                            "{ty} {kernel:?} row {r}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn float_rows_multiply_the_f32_values() {
        let w: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
        let f32_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = w
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let x = Activation::quantize(&[1.0; 32]).unwrap();
        for (ty, bytes) in [(GgmlType::F32, &f32_bytes), (GgmlType::F16, &f16_bytes)] {
            let m = QuantMatrix::new(ty, 2, 32, bytes).unwrap();
            let mut out = [0f32; 2];
            m.matvec(&x, &mut out).unwrap();
            assert_eq!(out, [w[..32].iter().sum(), w[32..].iter().sum()]);
        }
    }

    #[test]
    fn matmul_equals_one_matvec_per_vector_on_every_kernel() {
        let mut rng = StdRng::seed_from_u64(5);
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::F32,
        ] {
            for (rows, cols, n) in [
                (1, 32, 1),
                (7, 64, 3),
                (9, 160, 6),
                (130, 96, 17),
                (5, 576, 8),
            ] {
                let data = if ty == GgmlType::F32 {
                    (0..rows * cols)
                        .flat_map(|_| rng.gen_range(-1.0f32..1.0).to_le_bytes())
                        .collect()
                } else {
                    random_matrix(&mut rng, ty, rows, cols, false)
                };
                let m = QuantMatrix::new(ty, rows, cols, &data).unwrap();
                let xs: Vec<Activation> = (0..n)
                    .map(|_| {
                        let v: Vec<f32> = (0..cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                        Activation::quantize(&v).unwrap()
                    })
                    .collect();
                for kernel in Kernel::available() {
                    let mut batch = vec![0f32; rows * n];
                    m.matmul_with(kernel, &xs, &mut batch).unwrap();
                    for (t, x) in xs.iter().enumerate() {
                        let mut one = vec![0f32; rows];
                        m.matvec_with(kernel, x, &mut one).unwrap();
                        assert_eq!(
                            &batch[t * rows..(t + 1) * rows],
                            &one[..],
                            "{ty} {kernel:?}"
                        );
                    }
                }
            }
        }
        let data = vec![0u8; 34 * 2];
        let m = QuantMatrix::new(GgmlType::Q8_0, 2, 32, &data).unwrap();
        let x = Activation::quantize(&[0.0; 32]).unwrap();
        let wide = Activation::quantize(&[0.0; 64]).unwrap();
        assert!(m.matmul(&[x.clone(), x.clone()], &mut [0.0; 4]).is_ok());
        assert!(m.matmul(&[x.clone(), wide], &mut [0.0; 4]).is_err());
        assert!(m.matmul(&[x], &mut [0.0; 4]).is_err());
    }

    #[test]
    fn a_mismatched_vector_is_refused() {
        let data = vec![0u8; 34 * 2];
        let m = QuantMatrix::new(GgmlType::Q8_0, 2, 32, &data).unwrap();
        let x = Activation::quantize(&[0.0; 64]).unwrap();
        assert!(matches!(
            m.matvec(&x, &mut [0.0; 2]),
            Err(QuantError::Mismatch { .. })
        ));
    }
}
