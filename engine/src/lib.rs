//! Walle's native tensor inference engine (ONNX in, tensors out).
//!
//! Today this crate holds the [`Tensor`] type that the task VM and the engine will exchange. The
//! ONNX front end, graph IR, operator decomposition, kernels and semi-auto search land here next
//! (see ARCHITECTURE §8); the engine must stay independent of the VM, the device and the cloud.

/// A dense, row-major f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Why a tensor could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} values but {actual} were given")]
    ShapeMismatch {
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
}

impl Tensor {
    /// A tensor from its shape and row-major values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, TensorError> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(TensorError::ShapeMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_match_data() {
        assert_eq!(
            Tensor::new(vec![2, 3], vec![0.0; 6]).unwrap().shape(),
            [2, 3]
        );
        assert_eq!(
            Tensor::new(vec![2, 3], vec![0.0; 5]),
            Err(TensorError::ShapeMismatch {
                shape: vec![2, 3],
                expected: 6,
                actual: 5
            })
        );
    }
}
