//! Matrix products: MatMul (with batch broadcasting) and Gemm.

use crate::Tensor;

/// `c[m×n] += a[m×k] · b[k×n]`, row-major (i-k-j order keeps the inner loop contiguous).
pub fn matmul_into(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        for p in 0..k {
            let x = a[i * k + p];
            if x == 0.0 {
                continue;
            }
            let b_row = &b[p * n..(p + 1) * n];
            for (out, &y) in row.iter_mut().zip(b_row) {
                *out += x * y;
            }
        }
    }
}

/// ONNX MatMul: numpy semantics (1-D operands promoted, batch dimensions broadcast).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
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
        matmul_into(
            &a.data()[ia * m * k..(ia + 1) * m * k],
            &b.data()[ib * k * n..(ib + 1) * k * n],
            &mut out[bi * m * n..(bi + 1) * m * n],
            m,
            k,
            n,
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

fn transposed(t: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; t.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = t[r * cols + c];
        }
    }
    out
}

/// ONNX Gemm: `alpha · A' · B' + beta · C` with optional transposes and C broadcast.
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
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
    let a_data = if trans_a {
        transposed(a.data(), ra, ca)
    } else {
        a.data().to_vec()
    };
    let b_data = if trans_b {
        transposed(b.data(), rb, cb)
    } else {
        b.data().to_vec()
    };
    let mut out = vec![0.0; m * n];
    matmul_into(&a_data, &b_data, &mut out, m, k, n);
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
        let out = matmul(&a, &b).unwrap();
        assert_eq!(out.shape(), [2, 3, 5]);
        for batch in 0..2 {
            let expected = naive(&a.data()[batch * 12..(batch + 1) * 12], b.data(), 3, 4, 5);
            assert_eq!(
                &out.data()[batch * 15..(batch + 1) * 15],
                expected.as_slice()
            );
        }
        assert!(matmul(&a, &Tensor::zeros(vec![3, 5])).is_err());
    }

    #[test]
    fn gemm_transposes_scales_and_broadcasts_c() {
        let a = Tensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Tensor::new(vec![4, 3], (0..12).map(|x| x as f32).collect()).unwrap();
        let c = Tensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let out = gemm(&a, &b, Some(&c), 2.0, 0.5, true, true).unwrap();
        let at = transposed(a.data(), 3, 2);
        let bt = transposed(b.data(), 4, 3);
        let expected: Vec<f32> = naive(&at, &bt, 2, 3, 4)
            .iter()
            .enumerate()
            .map(|(i, x)| 2.0 * x + 0.5 * c.data()[i % 4])
            .collect();
        assert_eq!(out.data(), expected.as_slice());
    }
}
