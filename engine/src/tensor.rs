//! Dense row-major tensors: `f32` data, plus `i64` for shape-like values (Reshape's shape input).

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

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let len = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; len],
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Takes the values out.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The same values under another shape with as many elements.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, self.data)
    }
}

/// A value flowing through a graph: f32 activations, or i64 shape-like data.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    F32(Tensor),
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl Value {
    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::F32(t) => t.shape(),
            Value::I64 { shape, .. } => shape,
        }
    }

    /// The element type's ONNX name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::F32(_) => "float",
            Value::I64 { .. } => "int64",
        }
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
