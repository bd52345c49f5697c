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
    /// counts.
    #[test]
    fn sgemm_matches_the_naive_product_at_any_size_and_thread_count() {
        for (m, k, n) in [
            (1, 1, 1),
            (7, 13, 5),
            (70, 90, 65),
            (129, 64, 3),
            (257, 130, 70),
            (3, 700, 1001),
        ] {
            let a: Vec<f32> = (0..m * k).map(|x| ((x * 7) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|x| ((x * 3) % 13) as f32 * 0.25).collect();
            for threads in [1, 2] {
                let mut c = vec![1.0; m * n];
                sgemm(
                    (m, k, n),
                    MatRef::rows(&a, k),
                    MatRef::rows(&b, n),
                    &mut c,
                    true,
                    threads,
                );
                let expected: Vec<f32> = naive(&a, &b, m, k, n).iter().map(|x| x + 1.0).collect();
                close(&c, &expected);
            }
        }
    }
}
