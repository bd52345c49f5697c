//! Matrix products: MatMul (with batch broadcasting) and Gemm.

use crate::Tensor;

/// A read-only matrix view: element (r, c) is at `r * row_stride + c * col_stride`, so a
/// transpose is a view with the strides swapped.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// Products smaller than this many multiply-adds run on one thread (splitting costs more).
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// `c[m×n] (+)= a[m×k] · b[k×n]` (row-major `c`; added to `c` when `accumulate`), on the `gemm`
/// crate's vectorised kernels. With `threads > 1` a large product runs on that many threads of
/// the current rayon pool, through the crate's own split, which shares the packed operands
/// between them (splitting `c` into blocks ourselves packed them once per block).
pub fn sgemm(
    (m, k, n): (usize, usize, usize),
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    assert!(
        a.fits(m, k) && b.fits(k, n) && c.len() >= m * n,
        "sgemm operands smaller than {m}×{k}·{k}×{n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // One thread streams a row's matrix faster through the crate (its kernels measured ~10 %
    // ahead on AlexNet's fully connected layers at one thread); two or more through ours.
    if m == 1 && threads > 1 && (b.row_stride == 1 || b.col_stride == 1) {
        return vector_times_matrix((k, n), a, b, &mut c[..n], accumulate, threads);
    }
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above bounds every index of the product, and `c` does not alias `a`
    // or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Products of one row by a matrix with fewer multiply-adds than this stay on one thread.
const PARALLEL_MIN_VECTOR_MACS: usize = 1 << 16;

/// `c[1×n] (+)= a[1×k] · b[k×n]`, where `b` has contiguous rows or contiguous columns: a
/// fully connected layer at batch 1, on more than one thread. It reads each value of `b` once,
/// so memory bandwidth bounds it, and the threads split the output to stream `b` side by side:
/// ranges of outputs, each a dot product with a column of `b`, when the columns are
/// contiguous; ranges of columns, each accumulated row by row, when the rows are.
fn vector_times_matrix(
    (k, n): (usize, usize),
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    let row: Vec<f32> = (0..k).map(|i| a.data[i * a.col_stride]).collect();
    let threads = if k * n >= PARALLEL_MIN_VECTOR_MACS {
        threads
    } else {
        1
    };
    let out = super::SendPtr(c.as_mut_ptr());
    super::parallel_ranges(n, threads, |columns| {
        // SAFETY: each range of outputs is written by the one thread that claimed it.
        let c = unsafe { std::slice::from_raw_parts_mut(out.at(columns.start), columns.len()) };
        if !accumulate {
            c.fill(0.0);
        }
        super::simd(
            #[inline(always)]
            || {
                if b.row_stride == 1 {
                    for (j, c) in columns.clone().zip(c.iter_mut()) {
                        *c += dot(&row, &b.data[j * b.col_stride..][..k]);
                    }
                } else {
                    for (i, &x) in row.iter().enumerate() {
                        let line = &b.data[i * b.row_stride + columns.start..][..columns.len()];
                        c.iter_mut().zip(line).for_each(|(c, &v)| *c += x * v);
                    }
                }
            },
        );
    });
}

/// `Σ a[i] · b[i]`, in independent partial sums the compiler keeps in vector registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const WIDTH: usize = 64;
    let (chunks_a, chunks_b) = (a.chunks_exact(WIDTH), b.chunks_exact(WIDTH));
    let tail: f32 = (chunks_a.remainder().iter())
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut sums = [0.0f32; WIDTH];
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..WIDTH {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// ONNX MatMul: numpy semantics (1-D operands promoted, batch dimensions broadcast).
pub fn matmul(a: &Tensor, b: &Tensor, threads: usize) -> Result<Tensor, String> {
    let (mut sa, mut sb) = (a.shape().to_vec(), b.shape().to_vec());
    let (a_vector, b_vector) = (sa.len() == 1, sb.len() == 1);
    if a_vector {
        sa.insert(0, 1);
    }
    if b_vector {
        sb.push(1);
    }
    if sa.len() < 2 || sb.len() < 2 {
        return Err(format!(
            "MatMul of shapes {:?} and {:?}",
            a.shape(),
            b.shape()
        ));
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != k2 {
        return Err(format!(
            "MatMul inner dimensions differ: {:?} · {:?}",
            a.shape(),
            b.shape()
        ));
    }
    let batch = super::elementwise::broadcast_shape(&sa[..sa.len() - 2], &sb[..sb.len() - 2])?;
    let batches: usize = batch.iter().product();
    let mut out = vec![0.0; batches * m * n];
    for bi in 0..batches {
        let ia = batch_index(bi, &batch, &sa[..sa.len() - 2]);
        let ib = batch_index(bi, &batch, &sb[..sb.len() - 2]);
        sgemm(
            (m, k, n),
            MatRef::rows(&a.data()[ia * m * k..(ia + 1) * m * k], k),
            MatRef::rows(&b.data()[ib * k * n..(ib + 1) * k * n], n),
            &mut out[bi * m * n..(bi + 1) * m * n],
            false,
            threads,
        );
    }
    let mut shape = batch;
    if !a_vector {
        shape.push(m);
    }
    if !b_vector {
        shape.push(n);
    }
    Tensor::new(shape, out).map_err(|e| e.to_string())
}

/// The flat batch index into an operand of batch shape `own` for output batch `flat` of `full`.
fn batch_index(flat: usize, full: &[usize], own: &[usize]) -> usize {
    let offset = full.len() - own.len();
    let (mut rest, mut index, mut stride) = (flat, 0, 1);
    for axis in (0..full.len()).rev() {
        let i = rest % full[axis];
        rest /= full[axis];
        if axis >= offset {
            let dim = own[axis - offset];
            index += if dim == 1 { 0 } else { i * stride };
            stride *= dim;
        }
    }
    index
}

/// ONNX Gemm: `alpha · A' · B' + beta · C` with optional transposes and C broadcast.
pub fn gemm<'a>(
    a: &'a Tensor,
    b: &'a Tensor,
    c: Option<&Tensor>,
    alpha: f32,
    beta: f32,
    (trans_a, trans_b): (bool, bool),
    threads: usize,
) -> Result<Tensor, String> {
    let (&[ra, ca], &[rb, cb]) = (a.shape(), b.shape()) else {
        return Err(format!(
            "Gemm needs 2-D A and B, got {:?} and {:?}",
            a.shape(),
            b.shape()
        ));
    };
    let (m, k) = if trans_a { (ca, ra) } else { (ra, ca) };
    let (k2, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    if k != k2 {
        return Err(format!("Gemm inner dimensions differ: {k} and {k2}"));
    }
    let view = |t: &'a Tensor, cols: usize, transpose: bool| {
        if transpose {
            MatRef::transposed(t.data(), cols)
        } else {
            MatRef::rows(t.data(), cols)
        }
    };
    let mut out = vec![0.0; m * n];
    sgemm(
        (m, k, n),
        view(a, ca, trans_a),
        view(b, cb, trans_b),
        &mut out,
        false,
        threads,
    );
    let mut product = Tensor::new(vec![m, n], out).map_err(|e| e.to_string())?;
    product.data_mut().iter_mut().for_each(|x| *x *= alpha);
    match c {
        Some(c) if beta != 0.0 => {
            let scaled = Tensor::new(
                c.shape().to_vec(),
                c.data().iter().map(|x| x * beta).collect(),
            )
            .map_err(|e| e.to_string())?;
            let sum = super::elementwise::Binary::Add.apply(&product, &scaled)?;
            if sum.shape() != [m, n] {
                return Err(format!(
                    "Gemm C of shape {:?} does not broadcast to [{m}, {n}]",
                    c.shape()
                ));
            }
            Ok(sum)
        }
        _ => Ok(product),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m * n)
            .map(|i| (0..k).map(|p| a[(i / n) * k + p] * b[p * n + i % n]).sum())
            .collect()
    }

    #[test]
    fn matmul_matches_the_naive_product_with_batches() {
        let a = Tensor::new(
            vec![2, 3, 4],
            (0..24).map(|x| x as f32 * 0.5 - 3.0).collect(),
        )
        .unwrap();
        let b = Tensor::new(vec![4, 5], (0..20).map(|x| (x % 7) as f32 - 2.0).collect()).unwrap();
        let out = matmul(&a, &b, 2).unwrap();
        assert_eq!(out.shape(), [2, 3, 5]);
        for batch in 0..2 {
            let expected = naive(&a.data()[batch * 12..(batch + 1) * 12], b.data(), 3, 4, 5);
            assert_eq!(
                &out.data()[batch * 15..(batch + 1) * 15],
                expected.as_slice()
            );
        }
        assert!(matmul(&a, &Tensor::zeros(vec![3, 5]), 1).is_err());
    }

    #[test]
    fn gemm_transposes_scales_and_broadcasts_c() {
        let a = Tensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Tensor::new(vec![4, 3], (0..12).map(|x| x as f32).collect()).unwrap();
        let c = Tensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let out = gemm(&a, &b, Some(&c), 2.0, 0.5, (true, true), 1).unwrap();
        let at = transpose(a.data(), 3, 2);
        let bt = transpose(b.data(), 4, 3);
        let expected: Vec<f32> = naive(&at, &bt, 2, 3, 4)
            .iter()
            .enumerate()
            .map(|(i, x)| 2.0 * x + 0.5 * c.data()[i % 4])
            .collect();
        close(out.data(), &expected);
    }

    fn transpose(t: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| t[(i % rows) * cols + i / rows])
            .collect()
    }

    fn close(got: &[f32], expected: &[f32]) {
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                "{got:?} vs {expected:?}"
            );
        }
    }

    /// Odd sizes, split by rows and by columns above the threading threshold, both thread
    /// counts, `b` row-major and transposed, added to `c` or not; one-row products (a fully
    /// connected layer at batch 1) below and above their threading threshold.
    #[test]
    fn sgemm_matches_the_naive_product_at_any_size_and_thread_count() {
        for (m, k, n) in [
            (1, 1, 1),
            (7, 13, 5),
            (70, 90, 65),
            (129, 64, 3),
            (257, 130, 70),
            (3, 700, 1001),
            (1, 37, 21),
            (1, 300, 257),
            (1, 1000, 131),
        ] {
            let a: Vec<f32> = (0..m * k).map(|x| ((x * 7) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|x| ((x * 3) % 13) as f32 * 0.25).collect();
            let bt = transpose(&b, k, n);
            let product = naive(&a, &b, m, k, n);
            let layouts = [MatRef::rows(&b, n), MatRef::transposed(&bt, k)];
            for (threads, accumulate, b) in [1, 2]
                .into_iter()
                .flat_map(|t| [(t, true), (t, false)])
                .flat_map(|(t, acc)| layouts.map(|b| (t, acc, b)))
            {
                let mut c = vec![1.0; m * n];
                sgemm(
                    (m, k, n),
                    MatRef::rows(&a, k),
                    b,
                    &mut c,
                    accumulate,
                    threads,
                );
                let start = if accumulate { 1.0 } else { 0.0 };
                let expected: Vec<f32> = product.iter().map(|x| x + start).collect();
                close(&c, &expected);
            }
        }
    }
}
