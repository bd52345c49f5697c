//! Operators: each ONNX op the engine runs, parsed with its attributes at load time, and its
//! kernel. An op not listed here fails the load with [`LoadError::UnsupportedOp`].
//!
//! | ONNX op | opsets | kernel |
//! |---|---|---|
//! | Identity, Dropout (inference) | 7–21 | pass-through |
//! | Relu, Sigmoid, Tanh, Exp, Neg, Sqrt | 7–21 | [`elementwise::Unary`] |
//! | Add, Sub, Mul, Div | 7–21 | [`elementwise::Binary`], numpy broadcasting |
//! | MatMul | 7–21 | [`linalg::matmul`], batch broadcasting |
//! | Gemm | 7–21 | [`linalg::gemm`] |
//! | Flatten, Reshape | 7–21 | [`shape`] (views, no copy) |
//! | Softmax | 7–21 | [`shape::softmax`] (2-D coercion before opset 13) |
//! | Constant | 7–21 | its `value` tensor |

pub mod attrs;
pub mod elementwise;
pub mod linalg;
pub mod shape;

use std::path::Path;

use attrs::Attrs;
use elementwise::{Binary, Unary, kernel_error};

use crate::onnx::pb::NodeProto;
use crate::{LoadError, RunError, Tensor, Value};

/// An operator with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Identity,
    Unary(Unary),
    Binary(Binary),
    MatMul,
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    Flatten {
        axis: i64,
    },
    Reshape {
        allow_zero: bool,
    },
    Softmax {
        axis: i64,
        opset: i64,
    },
    Constant(Value),
}

impl Op {
    /// Parses a node of the default domain; `name` is used in errors.
    pub fn parse(
        node: &NodeProto,
        name: &str,
        opset: i64,
        base_dir: Option<&Path>,
    ) -> Result<Op, LoadError> {
        let attrs = Attrs::new(node, name);
        Ok(match node.op_type.as_str() {
            "Identity" | "Dropout" => Op::Identity,
            "Relu" => Op::Unary(Unary::Relu),
            "Sigmoid" => Op::Unary(Unary::Sigmoid),
            "Tanh" => Op::Unary(Unary::Tanh),
            "Exp" => Op::Unary(Unary::Exp),
            "Neg" => Op::Unary(Unary::Neg),
            "Sqrt" => Op::Unary(Unary::Sqrt),
            "Add" | "Sub" | "Mul" | "Div" if opset < 7 || attrs.int("broadcast", 0) != 0 => {
                return Err(attrs.bad("broadcast", "legacy broadcast attribute (opset < 7)"));
            }
            "Add" => Op::Binary(Binary::Add),
            "Sub" => Op::Binary(Binary::Sub),
            "Mul" => Op::Binary(Binary::Mul),
            "Div" => Op::Binary(Binary::Div),
            "MatMul" => Op::MatMul,
            "Gemm" => Op::Gemm {
                alpha: attrs.float("alpha", 1.0),
                beta: attrs.float("beta", 1.0),
                trans_a: attrs.int("transA", 0) != 0,
                trans_b: attrs.int("transB", 0) != 0,
            },
            "Flatten" => Op::Flatten {
                axis: attrs.int("axis", 1),
            },
            "Reshape" => Op::Reshape {
                allow_zero: attrs.int("allowzero", 0) != 0,
            },
            "Softmax" => Op::Softmax {
                axis: attrs.int("axis", if opset < 13 { 1 } else { -1 }),
                opset,
            },
            "Constant" => {
                let tensor = attrs.tensor("value").ok_or_else(|| {
                    attrs.bad("value", "only tensor-valued Constant is supported")
                })?;
                Op::Constant(crate::onnx::tensor_value(tensor, base_dir)?)
            }
            other => {
                return Err(LoadError::UnsupportedOp {
                    op: other.to_owned(),
                    node: name.to_owned(),
                    opset,
                });
            }
        })
    }

    /// The op's ONNX name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::Unary(_) => "Unary",
            Op::Binary(_) => "Binary",
            Op::MatMul => "MatMul",
            Op::Gemm { .. } => "Gemm",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Softmax { .. } => "Softmax",
            Op::Constant(_) => "Constant",
        }
    }

    /// Runs the op on its inputs (`None`: an omitted optional input).
    pub fn eval(&self, node: &str, inputs: &[Option<&Value>]) -> Result<Vec<Value>, RunError> {
        let fail = |reason: String| kernel_error(node, self.name(), reason);
        let float = |i: usize| -> Result<&Tensor, RunError> {
            match inputs.get(i).copied().flatten() {
                Some(Value::F32(t)) => Ok(t),
                Some(other) => Err(fail(format!(
                    "input {i} is {}, not float",
                    other.type_name()
                ))),
                None => Err(fail(format!("input {i} is missing"))),
            }
        };
        let out = match self {
            Op::Identity => {
                return Ok(vec![
                    inputs
                        .first()
                        .copied()
                        .flatten()
                        .cloned()
                        .ok_or_else(|| fail("no input".into()))?,
                ]);
            }
            Op::Constant(value) => return Ok(vec![value.clone()]),
            Op::Unary(u) => u.apply(float(0)?.clone()),
            Op::Binary(b) => b.apply(float(0)?, float(1)?).map_err(fail)?,
            Op::MatMul => linalg::matmul(float(0)?, float(1)?).map_err(fail)?,
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let c = match inputs.get(2).copied().flatten() {
                    Some(_) => Some(float(2)?),
                    None => None,
                };
                linalg::gemm(float(0)?, float(1)?, c, *alpha, *beta, *trans_a, *trans_b)
                    .map_err(fail)?
            }
            Op::Flatten { axis } => shape::flatten(float(0)?.clone(), *axis).map_err(fail)?,
            Op::Reshape { allow_zero } => {
                let Some(Value::I64 { data, .. }) = inputs.get(1).copied().flatten() else {
                    return Err(fail("the shape input must be an int64 tensor".into()));
                };
                shape::reshape(float(0)?.clone(), data, *allow_zero).map_err(fail)?
            }
            Op::Softmax { axis, opset } => {
                shape::softmax(float(0)?.clone(), *axis, *opset).map_err(fail)?
            }
        };
        Ok(vec![Value::F32(out)])
    }
}
