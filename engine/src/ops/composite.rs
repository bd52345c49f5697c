//! Composite ops: ONNX ops that load rewrites into atomic ones (MNN-style decomposition), so a
//! backend implements only the atomic set. Each [`Composite`] is parsed with its attributes
//! like any op, then [`Composite::expand`] emits the atomic nodes; rank-dependent expansions
//! (LogSoftmax before opset 13, the normalizations, Hardmax, opset 6's axis broadcast) read the
//! ranks and shapes shape inference knows so far, and fail the load, naming the node, without
//! them.

use std::collections::HashMap;

use super::attrs::Attrs;
use super::elementwise::{Binary, CastTo, Compare, Unary};
use super::reduce::{Axes, Reduce};
use super::{Op, reduce};
use crate::graph::{DType, Node, ValueInfo};
use crate::onnx::pb::NodeProto;
use crate::{LoadError, Tensor, Value};

/// The reductions made of a sum (or max) and elementwise ops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReduceOf {
    /// ReduceL1: Σ|x|.
    L1,
    /// ReduceL2: √Σx².
    L2,
    /// ReduceSumSquare: Σx².
    SumSquare,
    /// ReduceLogSum: log Σx.
    LogSum,
    /// ReduceLogSumExp: m + log Σ exp(x − m), m the max (so large inputs stay finite).
    LogSumExp,
}

/// ConvTranspose's attributes, per spatial axis (as written: 1 or 2 axes).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvTransposeAttrs {
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    /// Begins then ends; `None`: from `auto_pad` (SAME_UPPER, SAME_LOWER) or zero.
    pub pads: Option<Vec<i64>>,
    pub same_upper: Option<bool>,
    pub output_padding: Vec<i64>,
    pub output_shape: Option<Vec<i64>>,
    pub group: i64,
}

/// Attention's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionAttrs {
    /// `None`: 1/√(head size).
    pub scale: Option<f32>,
    pub causal: bool,
    /// Heads of 3-D Q and of K and V (required for 3-D inputs).
    pub heads: Option<(i64, i64)>,
    /// Tanh soft capping of the scores (0: none).
    pub softcap: f32,
    /// Which scores the fourth output holds: 0 Q·Kᵀ, 1 plus the bias, 2 softcapped, 3 softmax.
    pub qk_output: i64,
}

/// How a loss reduces its per-element values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reduction {
    None,
    Sum,
    /// The weighted mean: the sum over the sum of the weights.
    Mean,
}

/// An op load decomposes into atomic ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Composite {
    /// max(x, 0) + α·min(x, 0).
    LeakyRelu {
        alpha: f32,
    },
    /// max(x, 0) + slope·min(x, 0); a per-channel 1-D slope is aligned to axis 1.
    PRelu,
    /// max(x, 0) + α·(exp(min(x, 0)) − 1), times γ for Selu.
    Elu {
        alpha: f32,
        gamma: f32,
    },
    /// max(x, 0) + min(0, α·(exp(x/α) − 1)).
    Celu {
        alpha: f32,
    },
    /// clamp(α·x + β, 0, 1).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// x · HardSigmoid(x; 1/6, 1/2).
    HardSwish,
    /// max(x, 0) + log(1 + exp(−|x|)), stable for large |x|.
    Softplus,
    /// x / (1 + |x|).
    Softsign,
    /// x · tanh(softplus(x)).
    Mish,
    /// x · sigmoid(α·x).
    Swish {
        alpha: f32,
    },
    /// x/2 · (1 + erf(x/√2)), or the tanh approximation.
    Gelu {
        tanh: bool,
    },
    /// x where x > α, else 0.
    ThresholdedRelu {
        alpha: f32,
    },
    /// x + bias where x < −λ, x − bias where x > λ, else 0.
    Shrink {
        lambd: f32,
        bias: f32,
    },
    /// max(min(x, hi), lo) with bounds as attributes (before opset 11) or inputs 1 and 2.
    Clip {
        attrs: Option<(f32, f32)>,
    },
    /// Sum, Max, Min (a chain of binary ops) and Mean (the sum divided by the count).
    Variadic {
        op: Binary,
        mean: bool,
    },
    /// x − m − log Σ exp(x − m) over the axis (before opset 13: all axes from it).
    LogSoftmax {
        axis: i64,
        opset: i64,
    },
    /// One-hot of the (first) ArgMax along the axis (before opset 13: of the flattened rows).
    Hardmax {
        axis: i64,
        opset: i64,
    },
    Reduce {
        of: ReduceOf,
        axes: Axes,
    },
    /// (x − mean) / √(var + ε) over the spatial axes, then per-channel scale and bias.
    InstanceNorm {
        epsilon: f32,
    },
    /// (x − mean) / √(var + ε) over the axes from `axis`, then scale and bias; the optional
    /// Mean and InvStdDev outputs are the intermediate values.
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    /// Normalised over each group of channels; scale and bias per group before opset 21, per
    /// channel from it.
    GroupNorm {
        epsilon: f32,
        groups: i64,
        per_channel: bool,
    },
    /// (x − mean) / (√var + 1e-9) over `axes`.
    MeanVarianceNorm {
        axes: Vec<i64>,
    },
    /// Opset 6's `broadcast = 1` with an `axis`: B aligned to A's dimensions from `axis`.
    LegacyBroadcast {
        op: Binary,
        axis: i64,
    },
    /// Cast to the type of input 1.
    CastLike,
    /// Inference: the input, and (if asked for) a mask of ones; training mode is refused.
    Dropout,
    /// x / √(mean(x²) + ε) over the axes from `axis`, times the scale.
    RmsNorm {
        axis: i64,
        epsilon: f32,
    },
    /// x / ‖x‖ₚ along the axis (p = 1 or 2).
    LpNorm {
        axis: i64,
        p: i64,
    },
    /// ReduceMax over the spatial axes.
    GlobalMaxPool,
    /// Not(Equal(x, x)).
    IsNaN,
    /// Equal(|x|, ∞), restricted to a sign by `positive`/`negative`.
    IsInf {
        positive: bool,
        negative: bool,
    },
    /// NegativeLogLikelihoodLoss, or SoftmaxCrossEntropyLoss (`softmax`: on the LogSoftmax of
    /// the scores, which is its optional second output): −x\[target\] per element, weighted,
    /// ignored targets weighing 0, then reduced.
    Loss {
        softmax: bool,
        reduction: Reduction,
        ignore_index: Option<i64>,
    },
    /// Scaled dot-product attention (opset 23): softmax(Q·Kᵀ·scale + bias)·V, with the key and
    /// value caches, grouped-query heads, causal and padding masks, softcap, 3-D inputs, and the
    /// optional present and QK outputs.
    Attention(Box<AttentionAttrs>),
    /// ConvTranspose (1-D or 2-D): a stride-1 Conv of the input with zeros inserted between
    /// its values, by the flipped, channel-swapped weights, cropped to the output.
    ConvTranspose(Box<ConvTransposeAttrs>),
    /// LpPool: (Σ|x|ᵖ over the window)^(1/p), the sum an AveragePool counting the (zero)
    /// padding times the window size. `pool` is that AveragePool (itself 1-D composite or not).
    LpPool {
        pool: Box<Op>,
        p: f32,
        window: usize,
    },
    /// OneHot: Where(Equal(indices, Range(0, depth) along the axis), on, off); negative
    /// indices count from the depth.
    OneHot {
        axis: i64,
    },
    /// EyeLike: a constant (the input's shape must be static).
    EyeLike {
        k: i64,
        float: Option<bool>,
    },
    /// CenterCropPad: per axis, a centred Slice where the target is smaller and a centred zero
    /// Pad where it is larger (static input shape, constant target shape).
    CenterCropPad {
        axes: Option<Vec<i64>>,
    },
    /// DequantizeLinear: (Cast(x) − Cast(zero point)) · scale, a 1-D scale along `axis`.
    Dequantize {
        axis: i64,
    },
    /// A 1-D Conv, MaxPool or AveragePool: its 2-D form (given here) on the input with a unit
    /// width axis appended, which is then dropped.
    OneD(Box<Op>),
}

fn binary_of(op_type: &str) -> Option<Binary> {
    Some(match op_type {
        "Add" | "Sum" => Binary::Add,
        "Sub" => Binary::Sub,
        "Mul" => Binary::Mul,
        "Div" => Binary::Div,
        "Max" => Binary::Max,
        "Min" => Binary::Min,
        "Mean" => Binary::Add,
        _ => return None,
    })
}

impl Composite {
    /// The composite op a node is (`None`: not a composite).
    pub fn parse(
        node: &NodeProto,
        attrs: &Attrs,
        opset: i64,
    ) -> Result<Option<Composite>, LoadError> {
        use Composite::*;
        let alpha = |default| attrs.float("alpha", default);
        let epsilon = attrs.float("epsilon", 1e-5);
        let reduce = |of, axes_input_from: i64| Reduce {
            of,
            axes: Axes {
                attr: (opset < axes_input_from)
                    .then(|| attrs.ints("axes").unwrap_or_default().to_vec()),
                keepdims: attrs.int("keepdims", 1) != 0,
                noop_with_empty_axes: attrs.int("noop_with_empty_axes", 0) != 0,
            },
        };
        let op_type = node.op_type.as_str();
        Ok(Some(match op_type {
            "Add" | "Sub" | "Mul" | "Div"
                if opset < 7 && attrs.int("broadcast", 0) != 0 && attrs.has("axis") =>
            {
                LegacyBroadcast {
                    op: binary_of(op_type).unwrap_or(Binary::Add),
                    axis: attrs.int("axis", 0),
                }
            }
            "Sum" | "Max" | "Min" | "Mean" => Variadic {
                op: binary_of(op_type).unwrap_or(Binary::Add),
                mean: op_type == "Mean",
            },
            "LeakyRelu" => LeakyRelu { alpha: alpha(0.01) },
            "PRelu" => PRelu,
            "Elu" => Elu {
                alpha: alpha(1.0),
                gamma: 1.0,
            },
            "Selu" => Elu {
                alpha: alpha(1.673_263_2),
                gamma: attrs.float("gamma", 1.050_701),
            },
            "Celu" => Celu { alpha: alpha(1.0) },
            "HardSigmoid" => HardSigmoid {
                alpha: alpha(0.2),
                beta: attrs.float("beta", 0.5),
            },
            "HardSwish" => HardSwish,
            "Softplus" => Softplus,
            "Softsign" => Softsign,
            "Mish" => Mish,
            "Swish" => Swish { alpha: alpha(1.0) },
            "Gelu" => Gelu {
                tanh: match attrs.string("approximate").as_deref() {
                    None | Some("none") => false,
                    Some("tanh") => true,
                    Some(other) => {
                        return Err(
                            attrs.bad("approximate", format!("{other:?} is not none or tanh"))
                        );
                    }
                },
            },
            "ThresholdedRelu" => ThresholdedRelu { alpha: alpha(1.0) },
            "Shrink" => Shrink {
                lambd: attrs.float("lambd", 0.5),
                bias: attrs.float("bias", 0.0),
            },
            "Clip" => Clip {
                attrs: (opset < 11).then(|| {
                    (
                        attrs.float("min", f32::NEG_INFINITY),
                        attrs.float("max", f32::INFINITY),
                    )
                }),
            },
            "LogSoftmax" => LogSoftmax {
                axis: attrs.int("axis", if opset < 13 { 1 } else { -1 }),
                opset,
            },
            "Hardmax" => Hardmax {
                axis: attrs.int("axis", if opset < 13 { 1 } else { -1 }),
                opset,
            },
            "ReduceL1" => reduce(ReduceOf::L1, 18),
            "ReduceL2" => reduce(ReduceOf::L2, 18),
            "ReduceSumSquare" => reduce(ReduceOf::SumSquare, 18),
            "ReduceLogSum" => reduce(ReduceOf::LogSum, 18),
            "ReduceLogSumExp" => reduce(ReduceOf::LogSumExp, 18),
            "InstanceNormalization" => InstanceNorm { epsilon },
            "LayerNormalization" => LayerNorm {
                axis: attrs.int("axis", -1),
                epsilon,
            },
            "GroupNormalization" => GroupNorm {
                epsilon,
                groups: attrs.int("num_groups", 0),
                per_channel: opset >= 21,
            },
            "MeanVarianceNormalization" => MeanVarianceNorm {
                axes: attrs.ints("axes").unwrap_or(&[0, 2, 3]).to_vec(),
            },
            "CastLike" => CastLike,
            "Dropout" => Dropout,
            "RMSNormalization" => RmsNorm {
                axis: attrs.int("axis", -1),
                epsilon,
            },
            "LpNormalization" => match attrs.int("p", 2) {
                p @ (1 | 2) => LpNorm {
                    axis: attrs.int("axis", -1),
                    p,
                },
                p => return Err(attrs.bad("p", format!("{p}: only 1 and 2 are defined"))),
            },
            "GlobalMaxPool" => GlobalMaxPool,
            "LpPool" => {
                let mut average = node.clone();
                average.op_type = "AveragePool".into();
                average.attribute.retain(|a| a.name != "p");
                average.attribute.push(crate::onnx::pb::AttributeProto {
                    name: "count_include_pad".into(),
                    i: 1,
                    ..Default::default()
                });
                let window = attrs.ints("kernel_shape").unwrap_or_default();
                let window = window.iter().try_fold(1usize, |acc, &k| {
                    usize::try_from(k).ok().and_then(|k| acc.checked_mul(k))
                });
                LpPool {
                    pool: Box::new(Op::parse(&average, attrs.node_name(), opset, None)?),
                    p: attrs.int("p", 2) as f32,
                    window: window.ok_or_else(|| attrs.bad("kernel_shape", "is out of range"))?,
                }
            }
            "CenterCropPad" => CenterCropPad {
                axes: attrs.ints("axes").map(<[i64]>::to_vec),
            },
            "DequantizeLinear" if attrs.int("block_size", 0) != 0 => {
                return Err(attrs.bad("block_size", "blocked quantization is not supported"));
            }
            "DequantizeLinear" => Dequantize {
                axis: attrs.int("axis", 1),
            },
            "OneHot" => OneHot {
                axis: attrs.int("axis", -1),
            },
            "EyeLike" => EyeLike {
                k: attrs.int("k", 0),
                float: attrs.has("dtype").then(|| {
                    CastTo::from_onnx(attrs.int("dtype", 1)).is_none_or(|t| t == CastTo::Float)
                }),
            },
            "ConvTranspose" => ConvTranspose(Box::new(ConvTransposeAttrs {
                strides: attrs.ints("strides").unwrap_or_default().to_vec(),
                dilations: attrs.ints("dilations").unwrap_or_default().to_vec(),
                pads: attrs.ints("pads").map(<[i64]>::to_vec),
                same_upper: match attrs.string("auto_pad").as_deref() {
                    Some("SAME_UPPER") => Some(true),
                    Some("SAME_LOWER") => Some(false),
                    _ => None,
                },
                output_padding: attrs.ints("output_padding").unwrap_or_default().to_vec(),
                output_shape: attrs.ints("output_shape").map(<[i64]>::to_vec),
                group: attrs.int("group", 1),
            })),
            "Attention" => Attention(Box::new(AttentionAttrs {
                scale: attrs.has("scale").then(|| attrs.float("scale", 1.0)),
                causal: attrs.int("is_causal", 0) != 0,
                heads: (attrs.has("q_num_heads") && attrs.has("kv_num_heads"))
                    .then(|| (attrs.int("q_num_heads", 0), attrs.int("kv_num_heads", 0))),
                softcap: attrs.float("softcap", 0.0),
                qk_output: attrs.int("qk_matmul_output_mode", 0),
            })),
            "NegativeLogLikelihoodLoss" | "SoftmaxCrossEntropyLoss" => Loss {
                softmax: op_type == "SoftmaxCrossEntropyLoss",
                reduction: match attrs.string("reduction").as_deref() {
                    None | Some("mean") => Reduction::Mean,
                    Some("sum") => Reduction::Sum,
                    Some("none") => Reduction::None,
                    Some(other) => {
                        return Err(
                            attrs.bad("reduction", format!("{other:?} is not none, sum or mean"))
                        );
                    }
                },
                ignore_index: attrs
                    .has("ignore_index")
                    .then(|| attrs.int("ignore_index", 0)),
            },
            "IsNaN" => IsNaN,
            "IsInf" => IsInf {
                positive: attrs.int("detect_positive", 1) != 0,
                negative: attrs.int("detect_negative", 1) != 0,
            },
            "Conv" | "MaxPool" | "AveragePool" => match widen_1d(node) {
                Some(wide) => OneD(Box::new(Op::parse(&wide, attrs.node_name(), opset, None)?)),
                None => return Ok(None),
            },
            _ => return Ok(None),
        }))
    }

    /// The ONNX op's name, for errors.
    pub fn name(&self) -> &'static str {
        use Composite::*;
        match self {
            LeakyRelu { .. } => "LeakyRelu",
            PRelu => "PRelu",
            Elu { gamma, .. } if *gamma != 1.0 => "Selu",
            Elu { .. } => "Elu",
            Celu { .. } => "Celu",
            HardSigmoid { .. } => "HardSigmoid",
            HardSwish => "HardSwish",
            Softplus => "Softplus",
            Softsign => "Softsign",
            Mish => "Mish",
            Swish { .. } => "Swish",
            Gelu { .. } => "Gelu",
            ThresholdedRelu { .. } => "ThresholdedRelu",
            Shrink { .. } => "Shrink",
            Clip { .. } => "Clip",
            Variadic { mean: true, .. } => "Mean",
            Variadic { .. } => "Sum/Max/Min",
            LogSoftmax { .. } => "LogSoftmax",
            Hardmax { .. } => "Hardmax",
            Reduce { .. } => "Reduce (composite)",
            InstanceNorm { .. } => "InstanceNormalization",
            LayerNorm { .. } => "LayerNormalization",
            GroupNorm { .. } => "GroupNormalization",
            MeanVarianceNorm { .. } => "MeanVarianceNormalization",
            LegacyBroadcast { .. } => "Binary (opset 6 broadcast)",
            CastLike => "CastLike",
            Dropout => "Dropout",
            RmsNorm { .. } => "RMSNormalization",
            LpNorm { .. } => "LpNormalization",
            GlobalMaxPool => "GlobalMaxPool",
            IsNaN => "IsNaN",
            IsInf { .. } => "IsInf",
            OneD(_) => "1-D Conv/pool",
            Attention(_) => "Attention",
            LpPool { .. } => "LpPool",
            OneHot { .. } => "OneHot",
            CenterCropPad { .. } => "CenterCropPad",
            Dequantize { .. } => "DequantizeLinear",
            EyeLike { .. } => "EyeLike",
            ConvTranspose(_) => "ConvTranspose",
            Loss { softmax: true, .. } => "SoftmaxCrossEntropyLoss",
            Loss { .. } => "NegativeLogLikelihoodLoss",
        }
    }
}

/// Emits the atomic nodes of one composite node: fresh names for its intermediate values and
/// constants, and what shape inference knows of the values it reads.
pub struct Builder<'a> {
    prefix: String,
    nodes: Vec<Node>,
    constants: &'a mut HashMap<String, Value>,
    infos: &'a HashMap<String, ValueInfo>,
    count: usize,
}

impl<'a> Builder<'a> {
    /// A builder for the node named `prefix`, adding its constants to `constants`.
    pub fn new(
        prefix: &str,
        constants: &'a mut HashMap<String, Value>,
        infos: &'a HashMap<String, ValueInfo>,
    ) -> Builder<'a> {
        Builder {
            prefix: prefix.to_owned(),
            nodes: Vec::new(),
            constants,
            infos,
            count: 0,
        }
    }

    fn fresh(&mut self) -> String {
        self.count += 1;
        format!("{}::{}", self.prefix, self.count)
    }

    /// Adds a node; returns its output.
    fn op(&mut self, op: Op, inputs: &[&str]) -> String {
        let output = self.fresh();
        self.nodes.push(Node {
            name: output.clone(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.clone()],
        });
        output
    }

    fn constant(&mut self, value: Value) -> String {
        let name = self.fresh();
        self.constants.insert(name.clone(), value);
        name
    }

    fn scalar(&mut self, v: f32) -> String {
        self.constant(Value::F32(
            Tensor::new(vec![], vec![v]).unwrap_or_else(|_| Tensor::zeros(vec![])),
        ))
    }

    fn ints(&mut self, data: Vec<i64>) -> String {
        self.constant(Value::I64 {
            shape: vec![data.len()],
            data,
        })
    }

    fn unary(&mut self, u: Unary, x: &str) -> String {
        self.op(Op::Unary(u), &[x])
    }

    fn binary(&mut self, b: Binary, x: &str, y: &str) -> String {
        self.op(Op::Binary(b), &[x, y])
    }

    /// `x ∘ c` for a scalar constant `c`.
    fn with(&mut self, b: Binary, x: &str, c: f32) -> String {
        let c = self.scalar(c);
        self.binary(b, x, &c)
    }

    fn reduce(&mut self, kind: Reduce, x: &str, axes: Vec<i64>, keepdims: bool) -> String {
        let axes = Axes {
            attr: Some(axes),
            keepdims,
            noop_with_empty_axes: false,
        };
        self.op(Op::Reduce { kind, axes }, &[x])
    }

    fn unsqueeze(&mut self, x: &str, axes: Vec<i64>) -> String {
        self.op(Op::Unsqueeze { axes: Some(axes) }, &[x])
    }

    fn reshape(&mut self, x: &str, shape: Vec<i64>) -> String {
        let shape = self.ints(shape);
        self.op(Op::Reshape { allow_zero: false }, &[x, &shape])
    }

    /// `x`'s shape: a constant when shape inference knows it, else a Shape node.
    fn shape_value(&mut self, x: &str) -> String {
        match self.shape(x) {
            Some(s) => {
                let dims = s.iter().map(|&d| d as i64).collect();
                self.ints(dims)
            }
            None => self.op(
                Op::Shape {
                    start: 0,
                    end: None,
                },
                &[x],
            ),
        }
    }

    fn shape(&self, x: &str) -> Option<Vec<usize>> {
        self.infos.get(x)?.shape.clone()
    }

    fn rank(&self, x: &str) -> Result<usize, String> {
        self.shape(x)
            .map(|s| s.len())
            .ok_or_else(|| format!("needs the rank of {x:?}, which is not known at load"))
    }

    /// max(x, 0) and min(x, 0).
    fn split_sign(&mut self, x: &str) -> (String, String) {
        (
            self.with(Binary::Max, x, 0.0),
            self.with(Binary::Min, x, 0.0),
        )
    }

    /// mean over `axes` and the centred values and variance: (x − mean, var).
    fn moments(&mut self, x: &str, axes: Vec<i64>) -> (String, String, String) {
        let mean = self.reduce(Reduce::Mean, x, axes.clone(), true);
        let centred = self.binary(Binary::Sub, x, &mean);
        let square = self.binary(Binary::Mul, &centred, &centred);
        let var = self.reduce(Reduce::Mean, &square, axes, true);
        (mean, centred, var)
    }

    /// The emitted nodes, with each `(value, output)` pair's value renamed to the composite's
    /// output (an Identity when the value is not computed here).
    pub fn finish(mut self, results: &[(String, &str)]) -> Vec<Node> {
        for (value, output) in results {
            if output.is_empty() {
                continue;
            }
            let produced = self.nodes.iter().any(|n| n.outputs.contains(value));
            if !produced {
                self.nodes.push(Node {
                    name: format!("{}::identity", self.prefix),
                    op: Op::Identity,
                    inputs: vec![value.clone()],
                    outputs: vec![output.to_string()],
                });
                continue;
            }
            for node in &mut self.nodes {
                for name in node.inputs.iter_mut().chain(node.outputs.iter_mut()) {
                    if name == value {
                        *name = output.to_string();
                    }
                }
            }
        }
        self.nodes
    }
}

impl Composite {
    /// Emits the atomic nodes computing the op on `inputs` (empty: omitted) into `b`; returns
    /// the value of each output, in order.
    pub fn expand(&self, b: &mut Builder, inputs: &[String]) -> Result<Vec<String>, String> {
        use Composite::*;
        let input = |i: usize| -> Result<&str, String> {
            inputs
                .get(i)
                .filter(|n| !n.is_empty())
                .map(String::as_str)
                .ok_or_else(|| format!("input {i} is missing"))
        };
        let optional = |i: usize| inputs.get(i).filter(|n| !n.is_empty()).map(String::as_str);
        let x = input(0)?;
        let y = match self {
            LeakyRelu { alpha } => {
                let (pos, neg) = b.split_sign(x);
                let scaled = b.with(Binary::Mul, &neg, *alpha);
                b.binary(Binary::Add, &pos, &scaled)
            }
            PRelu => {
                let slope = prelu_slope(b, x, input(1)?)?;
                let (pos, neg) = b.split_sign(x);
                let scaled = b.binary(Binary::Mul, &neg, &slope);
                b.binary(Binary::Add, &pos, &scaled)
            }
            Elu { alpha, gamma } => {
                let (pos, neg) = b.split_sign(x);
                let e = b.unary(Unary::Exp, &neg);
                let e = b.with(Binary::Sub, &e, 1.0);
                let e = b.with(Binary::Mul, &e, *alpha);
                let sum = b.binary(Binary::Add, &pos, &e);
                if *gamma == 1.0 {
                    sum
                } else {
                    b.with(Binary::Mul, &sum, *gamma)
                }
            }
            Celu { alpha } => {
                let pos = b.with(Binary::Max, x, 0.0);
                let e = b.with(Binary::Div, x, *alpha);
                let e = b.unary(Unary::Exp, &e);
                let e = b.with(Binary::Sub, &e, 1.0);
                let e = b.with(Binary::Mul, &e, *alpha);
                let neg = b.with(Binary::Min, &e, 0.0);
                b.binary(Binary::Add, &pos, &neg)
            }
            HardSigmoid { alpha, beta } => hard_sigmoid(b, x, *alpha, *beta),
            HardSwish => {
                let gate = hard_sigmoid(b, x, 1.0 / 6.0, 0.5);
                b.binary(Binary::Mul, x, &gate)
            }
            Softplus => softplus(b, x),
            Softsign => {
                let a = b.unary(Unary::Abs, x);
                let d = b.with(Binary::Add, &a, 1.0);
                b.binary(Binary::Div, x, &d)
            }
            Mish => {
                let s = softplus(b, x);
                let t = b.unary(Unary::Tanh, &s);
                b.binary(Binary::Mul, x, &t)
            }
            Swish { alpha } => {
                let ax = b.with(Binary::Mul, x, *alpha);
                let s = b.unary(Unary::Sigmoid, &ax);
                b.binary(Binary::Mul, x, &s)
            }
            Gelu { tanh } => gelu(b, x, *tanh),
            ThresholdedRelu { alpha } => {
                let threshold = b.scalar(*alpha);
                let keep = b.op(Op::Compare(Compare::Greater), &[x, &threshold]);
                let zero = b.scalar(0.0);
                b.op(Op::Where, &[&keep, x, &zero])
            }
            Shrink { lambd, bias } => {
                let (low, high) = (b.scalar(-*lambd), b.scalar(*lambd));
                let below = b.op(Op::Compare(Compare::Less), &[x, &low]);
                let above = b.op(Op::Compare(Compare::Greater), &[x, &high]);
                let (up, down) = (b.with(Binary::Add, x, *bias), b.with(Binary::Sub, x, *bias));
                let zero = b.scalar(0.0);
                let inner = b.op(Op::Where, &[&above, &down, &zero]);
                b.op(Op::Where, &[&below, &up, &inner])
            }
            Clip { attrs } => clip(b, x, *attrs, optional(1), optional(2)),
            Variadic { op, mean } => {
                let mut acc = x.to_owned();
                for i in 1..inputs.len() {
                    acc = b.binary(*op, &acc, input(i)?);
                }
                if *mean && inputs.len() > 1 {
                    b.with(Binary::Div, &acc, inputs.len() as f32)
                } else {
                    acc
                }
            }
            LogSoftmax { axis, opset } => {
                let axes = softmax_axes(b, x, *axis, *opset)?;
                let max = b.reduce(reduce::Reduce::Max, x, axes.clone(), true);
                let d = b.binary(Binary::Sub, x, &max);
                let e = b.unary(Unary::Exp, &d);
                let s = b.reduce(reduce::Reduce::Sum, &e, axes, true);
                let l = b.unary(Unary::Log, &s);
                b.binary(Binary::Sub, &d, &l)
            }
            Hardmax { axis, opset } => hardmax(b, x, *axis, *opset)?,
            Reduce { of, axes } => reduce_of(b, *of, axes, x, optional(1)),
            InstanceNorm { epsilon } => {
                let rank = b.rank(x)?;
                let (_, centred, var) = b.moments(x, (2..rank as i64).collect());
                let n = normalize(b, &centred, &var, *epsilon);
                let channel_axes: Vec<i64> = (1..rank.saturating_sub(1) as i64).collect();
                let scale = b.unsqueeze(input(1)?, channel_axes.clone());
                let bias = b.unsqueeze(input(2)?, channel_axes);
                let scaled = b.binary(Binary::Mul, &n, &scale);
                b.binary(Binary::Add, &scaled, &bias)
            }
            LayerNorm { axis, epsilon } => return layer_norm(b, inputs, *axis, *epsilon),
            GroupNorm {
                epsilon,
                groups,
                per_channel,
            } => group_norm(b, inputs, *epsilon, *groups, *per_channel)?,
            MeanVarianceNorm { axes } => {
                let (_, centred, var) = b.moments(x, axes.clone());
                let std = b.unary(Unary::Sqrt, &var);
                let std = b.with(Binary::Add, &std, 1e-9);
                b.binary(Binary::Div, &centred, &std)
            }
            LegacyBroadcast { op, axis } => {
                let (ra, rb) = (b.rank(x)? as i64, b.rank(input(1)?)? as i64);
                if !(0..=ra - rb).contains(axis) {
                    return Err(format!(
                        "axis {axis} does not align rank {rb} with rank {ra}"
                    ));
                }
                let trailing = ra - axis - rb;
                let aligned = if trailing == 0 {
                    input(1)?.to_owned()
                } else {
                    b.unsqueeze(input(1)?, (rb..rb + trailing).collect())
                };
                b.binary(*op, x, &aligned)
            }
            CastLike => {
                let like = b.infos.get(input(1)?).map_or(DType::F32, |i| i.dtype);
                let to = match like {
                    DType::F32 => CastTo::Float,
                    DType::I64 => CastTo::Int {
                        bits: 64,
                        signed: true,
                    },
                };
                b.op(Op::Cast(to), &[x])
            }
            Dropout => return dropout(b, x, optional(2)),
            Attention(attrs) => return attention(b, inputs, attrs),
            LpPool { pool, p, window } => {
                let a = b.unary(Unary::Abs, x);
                let powered = b.with(Binary::Pow, &a, *p);
                let mean = match &**pool {
                    Op::Composite(c) => c.expand(b, &[powered])?.remove(0),
                    op => b.op(op.clone(), &[&powered]),
                };
                let sum = b.with(Binary::Mul, &mean, *window as f32);
                b.with(Binary::Pow, &sum, 1.0 / *p)
            }
            OneHot { axis } => one_hot(b, x, input(1)?, input(2)?, *axis)?,
            CenterCropPad { axes } => center_crop_pad(b, x, input(1)?, axes.as_deref())?,
            Dequantize { axis } => {
                let float = b.op(Op::Cast(CastTo::Float), &[x]);
                let shifted = match optional(2) {
                    Some(zero) => {
                        let zero = per_axis_param(b, zero, x, *axis)?;
                        let zero = b.op(Op::Cast(CastTo::Float), &[&zero]);
                        b.binary(Binary::Sub, &float, &zero)
                    }
                    None => float,
                };
                let scale = per_axis_param(b, input(1)?, x, *axis)?;
                b.binary(Binary::Mul, &shifted, &scale)
            }
            EyeLike { k, float } => {
                let shape = b.shape(x).ok_or("needs the input's shape")?;
                let &[rows, cols] = &shape[..] else {
                    return Err(format!("EyeLike needs a 2-D input, got {shape:?}"));
                };
                super::raster::elements(&shape)?;
                let on = |i: usize, j: usize| j as i64 - i as i64 == *k;
                let float = float.unwrap_or(b.infos.get(x).is_none_or(|i| i.dtype == DType::F32));
                let value = if float {
                    let data =
                        (0..rows * cols).map(|a| f32::from(u8::from(on(a / cols, a % cols))));
                    Value::F32(Tensor::new(shape, data.collect()).map_err(|e| e.to_string())?)
                } else {
                    let data = (0..rows * cols).map(|a| i64::from(on(a / cols, a % cols)));
                    Value::I64 {
                        shape,
                        data: data.collect(),
                    }
                };
                b.constant(value)
            }
            ConvTranspose(attrs) => conv_transpose(b, x, input(1)?, optional(2), attrs)?,
            Loss {
                softmax,
                reduction,
                ignore_index,
            } => {
                let scores = if *softmax {
                    let max = b.reduce(reduce::Reduce::Max, x, vec![1], true);
                    let d = b.binary(Binary::Sub, x, &max);
                    let e = b.unary(Unary::Exp, &d);
                    let s = b.reduce(reduce::Reduce::Sum, &e, vec![1], true);
                    let l = b.unary(Unary::Log, &s);
                    b.binary(Binary::Sub, &d, &l)
                } else {
                    x.to_owned()
                };
                let loss = loss(
                    b,
                    &scores,
                    input(1)?,
                    optional(2),
                    *reduction,
                    *ignore_index,
                );
                return Ok(vec![loss, scores]);
            }
            RmsNorm { axis, epsilon } => {
                let rank = b.rank(x)?;
                let from = reduce::normalize_axes(&[*axis], rank)?[0] as i64;
                let sq = b.binary(Binary::Mul, x, x);
                let ms = b.reduce(
                    reduce::Reduce::Mean,
                    &sq,
                    (from..rank as i64).collect(),
                    true,
                );
                let v = b.with(Binary::Add, &ms, *epsilon);
                let rms = b.unary(Unary::Sqrt, &v);
                let n = b.binary(Binary::Div, x, &rms);
                b.binary(Binary::Mul, &n, input(1)?)
            }
            LpNorm { axis, p } => {
                let norm = if *p == 1 {
                    let a = b.unary(Unary::Abs, x);
                    b.reduce(reduce::Reduce::Sum, &a, vec![*axis], true)
                } else {
                    let sq = b.binary(Binary::Mul, x, x);
                    let s = b.reduce(reduce::Reduce::Sum, &sq, vec![*axis], true);
                    b.unary(Unary::Sqrt, &s)
                };
                b.binary(Binary::Div, x, &norm)
            }
            GlobalMaxPool => {
                let rank = b.rank(x)?;
                b.reduce(reduce::Reduce::Max, x, (2..rank as i64).collect(), true)
            }
            IsNaN => {
                let same = b.op(Op::Compare(Compare::Equal), &[x, x]);
                b.op(Op::Not, &[&same])
            }
            IsInf { positive, negative } => {
                let inf = b.scalar(f32::INFINITY);
                let target = match (positive, negative) {
                    (true, true) => b.unary(Unary::Abs, x),
                    (true, false) => x.to_owned(),
                    (false, true) => b.unary(Unary::Neg, x),
                    (false, false) => b.with(Binary::Mul, x, 0.0),
                };
                b.op(Op::Compare(Compare::Equal), &[&target, &inf])
            }
            OneD(op) => {
                let wide = b.unsqueeze(x, vec![3]);
                let mut args = vec![wide];
                if let Some(weights) = optional(1) {
                    args.push(b.unsqueeze(weights, vec![3]));
                }
                args.extend(optional(2).map(str::to_owned));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let y = b.op((**op).clone(), &args);
                b.op(
                    Op::Squeeze {
                        axes: Some(vec![3]),
                    },
                    &[&y],
                )
            }
        };
        Ok(vec![y])
    }
}

/// The loss of (log-)probabilities `scores` `[N, C, …]` at `target` `[N, …]`.
fn loss(
    b: &mut Builder,
    scores: &str,
    target: &str,
    weight: Option<&str>,
    reduction: Reduction,
    ignore_index: Option<i64>,
) -> String {
    let int = |b: &mut Builder, v: i64| {
        b.constant(Value::I64 {
            shape: vec![],
            data: vec![v],
        })
    };
    // Ignored targets may lie outside 0..C: they are read as class 0 and weigh 0.
    let (target, valid) = match ignore_index {
        Some(ignored) => {
            let ignored = int(b, ignored);
            let hit = b.op(Op::Compare(Compare::Equal), &[target, &ignored]);
            let valid = b.op(Op::Not, &[&hit]);
            let zero = int(b, 0);
            (b.op(Op::Where, &[&valid, target, &zero]), Some(valid))
        }
        None => (target.to_owned(), None),
    };
    let index = b.unsqueeze(&target, vec![1]);
    let picked = b.op(Op::GatherElements { axis: 1 }, &[scores, &index]);
    let picked = b.op(
        Op::Squeeze {
            axes: Some(vec![1]),
        },
        &[&picked],
    );
    let mut loss = b.unary(Unary::Neg, &picked);
    let weights = match (weight, &valid) {
        (Some(w), valid) => {
            let w = b.op(Op::Gather { axis: 0 }, &[w, &target]);
            Some(match valid {
                Some(valid) => {
                    let zero = b.scalar(0.0);
                    b.op(Op::Where, &[valid, &w, &zero])
                }
                None => w,
            })
        }
        (None, Some(valid)) => Some(b.op(Op::Cast(CastTo::Float), &[valid])),
        (None, None) => None,
    };
    if let Some(w) = &weights {
        loss = b.binary(Binary::Mul, &loss, w);
    }
    let total = |b: &mut Builder, kind, x: &str| b.reduce(kind, x, vec![], false);
    match (reduction, weights) {
        (Reduction::None, _) => loss,
        (Reduction::Sum, _) => total(b, reduce::Reduce::Sum, &loss),
        (Reduction::Mean, Some(w)) => {
            let sum = total(b, reduce::Reduce::Sum, &loss);
            let weight = total(b, reduce::Reduce::Sum, &w);
            b.binary(Binary::Div, &sum, &weight)
        }
        (Reduction::Mean, None) => total(b, reduce::Reduce::Mean, &loss),
    }
}

/// Attribute `i` of a per-axis list, or `default` when the list is absent.
fn per_axis(list: &[i64], i: usize, default: i64) -> Result<i64, String> {
    match list.get(i) {
        Some(&v) => Ok(v),
        None if list.is_empty() => Ok(default),
        None => Err(format!("{list:?} has too few values")),
    }
}

/// One spatial axis of a ConvTranspose: its input length, stride, dilation, kernel, and the
/// output's start and length within the full transposed convolution.
struct TransposedAxis {
    input: usize,
    stride: usize,
    dilation: usize,
    kernel: usize,
    start: usize,
    len: usize,
}

/// The geometry of spatial axis `i` of a ConvTranspose (see the ONNX reference).
fn transposed_axis(
    attrs: &ConvTransposeAttrs,
    i: usize,
    axes: usize,
    input: usize,
    kernel: usize,
) -> Result<TransposedAxis, String> {
    let positive = |v: i64, what: &str| {
        usize::try_from(v)
            .ok()
            .filter(|&v| (1..1 << 16).contains(&v))
            .ok_or_else(|| format!("{what} {v} is out of range"))
    };
    if input == 0 || kernel == 0 {
        return Err(format!("input length {input} or kernel {kernel} is empty"));
    }
    let stride = positive(per_axis(&attrs.strides, i, 1)?, "stride")?;
    let dilation = positive(per_axis(&attrs.dilations, i, 1)?, "dilation")?;
    let extra = per_axis(&attrs.output_padding, i, 0)?;
    let natural = (stride * (input - 1) + (kernel - 1) * dilation + 1) as i64 + extra;
    let wanted = |pads: (i64, i64)| natural - pads.0 - pads.1;
    let output = match &attrs.output_shape {
        Some(shape) => {
            let at = shape.len().checked_sub(axes).map(|first| first + i);
            Some(
                *at.and_then(|k| shape.get(k))
                    .ok_or("output_shape is short")?,
            )
        }
        None => None,
    };
    let (start, len) = match (&attrs.pads, attrs.same_upper) {
        (None, Some(upper)) => {
            let out = output.unwrap_or((input * stride) as i64);
            let total = natural - out;
            let begin = if upper { total / 2 } else { total - total / 2 };
            (begin, out)
        }
        (pads, _) => {
            let (begin, end) = match pads {
                Some(p) => (per_axis(p, i, 0)?, per_axis(p, i + axes, 0)?),
                None => (0, 0),
            };
            (begin, output.unwrap_or(wanted((begin, end))))
        }
    };
    let start = usize::try_from(start)
        .ok()
        .filter(|&s| s < 1 << 24)
        .ok_or_else(|| format!("padding {start} is out of range"))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l > 0 && l < 1 << 24)
        .ok_or_else(|| format!("output length {len} is out of range"))?;
    Ok(TransposedAxis {
        input,
        stride,
        dilation,
        kernel,
        start,
        len,
    })
}

fn conv_transpose(
    b: &mut Builder,
    x: &str,
    weights: &str,
    bias: Option<&str>,
    attrs: &ConvTransposeAttrs,
) -> Result<String, String> {
    let (xs, ws) = match (b.shape(x), b.shape(weights)) {
        (Some(xs), Some(ws)) if xs.len() == ws.len() && (3..=4).contains(&xs.len()) => (xs, ws),
        _ => return Err("needs 3-D or 4-D input and weights of known shapes".into()),
    };
    let axes = xs.len() - 2;
    let group = usize::try_from(attrs.group)
        .ok()
        .filter(|&g| g > 0 && ws[0] % g == 0);
    let group = group.ok_or_else(|| format!("group {} does not divide {}", attrs.group, ws[0]))?;
    let mut geometry = Vec::with_capacity(2);
    for i in 0..axes {
        geometry.push(transposed_axis(attrs, i, axes, xs[2 + i], ws[2 + i])?);
    }
    let (mut x, mut w) = (x.to_owned(), weights.to_owned());
    if axes == 1 {
        x = b.unsqueeze(&x, vec![3]);
        w = b.unsqueeze(&w, vec![3]);
        geometry.push(TransposedAxis {
            input: 1,
            stride: 1,
            dilation: 1,
            kernel: 1,
            start: 0,
            len: 1,
        });
    }
    let (g, cin, cout_g) = (group as i64, ws[0] as i64, ws[1] as i64);
    // [Cin, Cout/g, k…] → [Cout, Cin/g, k…] with the kernel flipped.
    let [kh, kw] = [geometry[0].kernel as i64, geometry[1].kernel as i64];
    let w = b.reshape(&w, vec![g, cin / g, cout_g, kh, kw]);
    let w = b.op(
        Op::Transpose {
            perm: Some(vec![0, 2, 1, 3, 4]),
        },
        &[&w],
    );
    let w = b.reshape(&w, vec![g * cout_g, cin / g, kh, kw]);
    let w = slice(b, &w, [-1, -1], [i64::MIN, i64::MIN], [2, 3], [-1, -1]);
    let x = insert_zeros(b, &x, &xs, &geometry)?;
    let spread = |a: &TransposedAxis| a.dilation * (a.kernel - 1);
    let full = |a: &TransposedAxis| (a.input - 1) * a.stride + spread(a) + 1;
    let end = |a: &TransposedAxis| spread(a) + (a.start + a.len).saturating_sub(full(a));
    let spatial = super::Spatial {
        kernel: Some([geometry[0].kernel, geometry[1].kernel]),
        strides: [1, 1],
        dilations: [geometry[0].dilation, geometry[1].dilation],
        pads: [
            spread(&geometry[0]),
            spread(&geometry[1]),
            end(&geometry[0]),
            end(&geometry[1]),
        ],
        auto_pad: super::AutoPad::Explicit,
        ceil: false,
    };
    let conv = Op::Conv {
        spatial,
        group,
        relu: false,
    };
    let args: Vec<&str> = [x.as_str(), w.as_str()].into_iter().chain(bias).collect();
    let y = b.op(conv, &args);
    let (s0, s1) = (geometry[0].start as i64, geometry[1].start as i64);
    let (e0, e1) = (s0 + geometry[0].len as i64, s1 + geometry[1].len as i64);
    let y = slice(b, &y, [s0, s1], [e0, e1], [2, 3], [1, 1]);
    Ok(if axes == 1 {
        b.op(
            Op::Squeeze {
                axes: Some(vec![3]),
            },
            &[&y],
        )
    } else {
        y
    })
}

/// Slice of `x` on two axes.
fn slice(
    b: &mut Builder,
    x: &str,
    starts: [i64; 2],
    ends: [i64; 2],
    axes: [i64; 2],
    steps: [i64; 2],
) -> String {
    let params = [starts, ends, axes, steps].map(|p| b.ints(p.to_vec()));
    let args: Vec<&str> = std::iter::once(x)
        .chain(params.iter().map(String::as_str))
        .collect();
    b.op(Op::Slice { attrs: None }, &args)
}

/// `x` `[N, C, H, W]` with `stride − 1` zeros between neighbours on each spatial axis: each
/// value gets a block of zeros after it (Unsqueeze, Pad), the blocks are laid in a row
/// (Reshape), and the trailing zeros cut (Slice). All four are rasters, merged into one.
fn insert_zeros(
    b: &mut Builder,
    x: &str,
    shape: &[usize],
    geometry: &[TransposedAxis],
) -> Result<String, String> {
    let (s0, s1) = (geometry[0].stride, geometry[1].stride);
    if s0 == 1 && s1 == 1 {
        return Ok(x.to_owned());
    }
    let (n, c, h, w) = (shape[0], shape[1], geometry[0].input, geometry[1].input);
    super::raster::elements(&[n, c, h, s0, w, s1])?;
    let spread = b.unsqueeze(x, vec![3, 5]);
    let pads = super::layout::PadAttrs {
        pads: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, s0 as i64 - 1, 0, s1 as i64 - 1],
        value: 0.0,
    };
    let pad = Op::Pad {
        mode: super::layout::PadMode::Constant,
        attrs: Some(pads),
    };
    let padded = b.op(pad, &[&spread]);
    let dims = [n, c, h * s0, w * s1].map(|d| d as i64).to_vec();
    let laid = b.reshape(&padded, dims);
    let ends = [((h - 1) * s0 + 1) as i64, ((w - 1) * s1 + 1) as i64];
    Ok(slice(b, &laid, [0, 0], ends, [2, 3], [1, 1]))
}

/// OneHot of `indices` (any numeric type, truncated) with a constant `depth` and `values`
/// `[off, on]`.
fn one_hot(
    b: &mut Builder,
    indices: &str,
    depth: &str,
    values: &str,
    axis: i64,
) -> Result<String, String> {
    let rank = b.rank(indices)? + 1;
    let axis = reduce::normalize_axes(&[axis], rank)?[0];
    let int = CastTo::Int {
        bits: 64,
        signed: true,
    };
    let index = b.op(Op::Cast(int), &[indices]);
    let depth = b.op(Op::Cast(int), &[depth]);
    let scalar = b.constant(Value::I64 {
        shape: vec![0],
        data: vec![],
    });
    let depth = b.op(Op::Reshape { allow_zero: false }, &[&depth, &scalar]);
    let [zero, one] = [0, 1].map(|v| {
        b.constant(Value::I64 {
            shape: vec![],
            data: vec![v],
        })
    });
    let negative = b.op(Op::Compare(Compare::Less), &[&index, &zero]);
    let wrapped = b.binary(Binary::Add, &index, &depth);
    let index = b.op(Op::Where, &[&negative, &wrapped, &index]);
    let index = b.unsqueeze(&index, vec![axis as i64]);
    let iota = b.op(Op::Range, &[&zero, &depth, &one]);
    let iota = b.unsqueeze(&iota, (1..(rank - axis) as i64).collect());
    let hot = b.op(Op::Compare(Compare::Equal), &[&index, &iota]);
    let bounds = [0, 1, 2].map(|v| b.ints(vec![v]));
    let off = b.op(Op::Slice { attrs: None }, &[values, &bounds[0], &bounds[1]]);
    let on = b.op(Op::Slice { attrs: None }, &[values, &bounds[1], &bounds[2]]);
    Ok(b.op(Op::Where, &[&hot, &on, &off]))
}

/// A quantization parameter: a scalar as it is, a 1-D one unsqueezed to lie along `axis` of
/// `x`.
fn per_axis_param(b: &mut Builder, param: &str, x: &str, axis: i64) -> Result<String, String> {
    let rank = b.rank(x)?;
    let one_d = b.shape(param).is_some_and(|s| s.len() == 1 && s[0] != 1);
    if !one_d {
        return Ok(param.to_owned());
    }
    let axis = reduce::normalize_axes(&[axis], rank)?[0];
    Ok(b.unsqueeze(param, (1..(rank - axis) as i64).collect()))
}

fn center_crop_pad(
    b: &mut Builder,
    x: &str,
    target: &str,
    axes: Option<&[i64]>,
) -> Result<String, String> {
    let shape = b.shape(x).ok_or("needs the input's shape")?;
    let sizes = match b.constants.get(target) {
        Some(Value::I64 { data, .. }) => data.clone(),
        _ => return Err("the target shape must be an int64 constant".into()),
    };
    let all: Vec<i64> = (0..shape.len() as i64).collect();
    let axes = reduce::normalize_axes(axes.unwrap_or(&all), shape.len())?;
    if axes.len() != sizes.len() {
        return Err(format!("{} sizes for {} axes", sizes.len(), axes.len()));
    }
    let mut y = x.to_owned();
    let rank = shape.len();
    for (&axis, &size) in axes.iter().zip(&sizes) {
        let size = usize::try_from(size).map_err(|_| format!("size {size} is negative"))?;
        let dim = shape[axis];
        if size < dim {
            let start = ((dim - size) / 2) as i64;
            let params =
                [vec![start], vec![start + size as i64], vec![axis as i64]].map(|p| b.ints(p));
            let args = [y.as_str(), &params[0], &params[1], &params[2]];
            y = b.op(Op::Slice { attrs: None }, &args);
        } else if size > dim {
            super::raster::elements(&[size])?;
            let mut pads = vec![0; 2 * rank];
            pads[axis] = ((size - dim) / 2) as i64;
            pads[rank + axis] = (size - dim - (size - dim) / 2) as i64;
            let pad = Op::Pad {
                mode: super::layout::PadMode::Constant,
                attrs: Some(super::layout::PadAttrs { pads, value: 0.0 }),
            };
            y = b.op(pad, &[&y]);
        }
    }
    Ok(y)
}

/// A static dimension of a value, or why it is not known.
fn dim(b: &Builder, x: &str, axis: usize) -> Result<usize, String> {
    b.shape(x)
        .and_then(|s| s.get(axis).copied())
        .ok_or_else(|| format!("needs dimension {axis} of {x:?}, which is not known at load"))
}

/// Attention's expansion: outputs Y, present key, present value, QK scores.
fn attention(
    b: &mut Builder,
    inputs: &[String],
    attrs: &AttentionAttrs,
) -> Result<Vec<String>, String> {
    let given = |i: usize| inputs.get(i).filter(|n| !n.is_empty()).map(String::as_str);
    let (Some(q), Some(k), Some(v)) = (given(0), given(1), given(2)) else {
        return Err("Q, K and V are required".into());
    };
    let three_d = b.rank(q)? == 3;
    let heads = |b: &mut Builder, x: &str, n: i64| {
        let split = b.reshape(x, vec![0, 0, n, -1]);
        b.op(
            Op::Transpose {
                perm: Some(vec![0, 2, 1, 3]),
            },
            &[&split],
        )
    };
    let (mut q, mut k, mut v) = (q.to_owned(), k.to_owned(), v.to_owned());
    if three_d {
        let (qh, kvh) = attrs
            .heads
            .ok_or("3-D inputs need q_num_heads and kv_num_heads")?;
        q = heads(b, &q, qh);
        k = heads(b, &k, kvh);
        v = heads(b, &v, kvh);
    }
    let head_size = if three_d {
        let (qh, _) = attrs.heads.unwrap_or((1, 1));
        dim(b, given(0).unwrap_or_default(), 2)? as f32 / qh.max(1) as f32
    } else {
        dim(b, &q, 3)? as f32
    };
    let scale = attrs.scale.unwrap_or(1.0 / head_size.sqrt()).sqrt();
    if let Some(past) = given(4) {
        k = b.op(Op::Concat { axis: 2 }, &[past, &k]);
    }
    if let Some(past) = given(5) {
        v = b.op(Op::Concat { axis: 2 }, &[past, &v]);
    }
    let (present_k, present_v) = (k.clone(), v.clone());
    let q_seq = dim(b, given(0).unwrap_or_default(), if three_d { 1 } else { 2 })?;
    let kv_seq = dim(b, given(1).unwrap_or_default(), if three_d { 1 } else { 2 })?
        + given(4).map_or(Ok(0), |p| dim(b, p, 2))?;
    let bias = attention_bias(b, attrs.causal, given(3), given(6), (q_seq, kv_seq))?;
    let (q_heads, kv_heads) = match attrs.heads {
        Some(h) if three_d => h,
        _ => (
            dim(b, given(0).unwrap_or_default(), 1)? as i64,
            dim(b, given(1).unwrap_or_default(), 1)? as i64,
        ),
    };
    if q_heads != kv_heads && kv_heads > 0 && q_heads % kv_heads == 0 {
        let reps = b.ints(vec![1, q_heads / kv_heads, 1, 1]);
        k = b.op(Op::Tile, &[&k, &reps]);
        v = b.op(Op::Tile, &[&v, &reps]);
    }
    let qs = b.with(Binary::Mul, &q, scale);
    let ks = b.with(Binary::Mul, &k, scale);
    let kt = b.op(
        Op::Transpose {
            perm: Some(vec![0, 1, 3, 2]),
        },
        &[&ks],
    );
    let raw = b.op(Op::MatMul, &[&qs, &kt]);
    let mut scores = match &bias {
        Some(bias) => b.binary(Binary::Add, &raw, bias),
        None => raw.clone(),
    };
    let biased = scores.clone();
    if attrs.softcap > 0.0 {
        let t = b.with(Binary::Div, &scores, attrs.softcap);
        let t = b.unary(Unary::Tanh, &t);
        scores = b.with(Binary::Mul, &t, attrs.softcap);
    }
    let capped = scores.clone();
    let probs = b.op(
        Op::Softmax {
            axis: -1,
            opset: 13,
        },
        &[&scores],
    );
    let mut y = b.op(Op::MatMul, &[&probs, &v]);
    if three_d {
        let t = b.op(
            Op::Transpose {
                perm: Some(vec![0, 2, 1, 3]),
            },
            &[&y],
        );
        y = b.reshape(&t, vec![0, 0, -1]);
    }
    let qk = match attrs.qk_output {
        1 => biased,
        2 => capped,
        3 => probs,
        _ => raw,
    };
    Ok(vec![y, present_k, present_v, qk])
}

/// The additive bias of Attention's scores `[L, S]`-broadcastable: the mask (bool: 0 where
/// true, −∞ where false; padded with −∞ to the keys' length), the causal mask, and the padding
/// of keys past each batch's `nonpad_kv_seqlen`.
fn attention_bias(
    b: &mut Builder,
    causal: bool,
    mask: Option<&str>,
    nonpad: Option<&str>,
    (q_seq, kv_seq): (usize, usize),
) -> Result<Option<String>, String> {
    super::raster::elements(&[q_seq, kv_seq])?;
    let mut terms = Vec::new();
    if let Some(mask) = mask {
        let is_bool = b.infos.get(mask).is_some_and(|i| i.dtype == DType::I64);
        let mut bias = if is_bool {
            let (zero, minus) = (b.scalar(0.0), b.scalar(f32::NEG_INFINITY));
            b.op(Op::Where, &[mask, &zero, &minus])
        } else {
            mask.to_owned()
        };
        let rank = b.rank(mask)?;
        let last = rank
            .checked_sub(1)
            .ok_or("attn_mask must have a dimension")?;
        let short = kv_seq.saturating_sub(dim(b, mask, last)?);
        if short > 0 {
            let mut pads = vec![0; 2 * rank];
            pads[2 * rank - 1] = short as i64;
            let attrs = super::layout::PadAttrs {
                pads,
                value: f32::NEG_INFINITY,
            };
            let pad = Op::Pad {
                mode: super::layout::PadMode::Constant,
                attrs: Some(attrs),
            };
            bias = b.op(pad, &[&bias]);
        }
        terms.push(bias);
    }
    if causal {
        let data = (0..q_seq)
            .flat_map(|i| (0..kv_seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let tensor = Tensor::new(vec![q_seq, kv_seq], data).map_err(|e| e.to_string())?;
        terms.push(b.constant(Value::F32(tensor)));
    }
    if let Some(lengths) = nonpad {
        let iota = b.constant(Value::I64 {
            shape: vec![kv_seq],
            data: (0..kv_seq as i64).collect(),
        });
        let lengths = b.unsqueeze(lengths, vec![1]);
        let valid = b.op(Op::Compare(Compare::Less), &[&iota, &lengths]);
        let valid = b.unsqueeze(&valid, vec![1, 2]);
        let (zero, minus) = (b.scalar(0.0), b.scalar(f32::NEG_INFINITY));
        terms.push(b.op(Op::Where, &[&valid, &zero, &minus]));
    }
    let mut sum = terms.pop();
    while let (Some(acc), Some(term)) = (sum.clone(), terms.pop()) {
        sum = Some(b.binary(Binary::Add, &term, &acc));
    }
    Ok(sum)
}

/// Dropout at inference: the input, and a mask of ones; a training mode that is not a
/// constant false is refused (its output is random).
fn dropout(b: &mut Builder, x: &str, training: Option<&str>) -> Result<Vec<String>, String> {
    if let Some(training) = training {
        match b.constants.get(training) {
            Some(Value::I64 { data, .. }) if data.iter().all(|&v| v == 0) => {}
            _ => return Err("training mode (random output) is not supported".into()),
        }
    }
    let shape = b.shape_value(x);
    let one = Value::I64 {
        shape: vec![1],
        data: vec![1],
    };
    let mask = b.op(Op::ConstantOfShape { value: one }, &[&shape]);
    Ok(vec![x.to_owned(), mask])
}

/// A 1-D Conv or pool node rewritten with 2-D attributes (a unit second axis), when its
/// spatial attributes are 1-D (`None` otherwise).
fn widen_1d(node: &NodeProto) -> Option<NodeProto> {
    let one_d = node.attribute.iter().any(|a| match a.name.as_str() {
        "kernel_shape" | "strides" | "dilations" => a.ints.len() == 1,
        "pads" => a.ints.len() == 2,
        _ => false,
    });
    if !one_d {
        return None;
    }
    let mut wide = node.clone();
    for a in &mut wide.attribute {
        a.ints = match (a.name.as_str(), a.ints.as_slice()) {
            ("kernel_shape" | "strides" | "dilations", &[v]) => vec![v, 1],
            ("pads", &[begin, end]) => vec![begin, 0, end, 0],
            _ => continue,
        };
    }
    Some(wide)
}

/// PRelu's slope, unsqueezed to `[C, 1, …]` when it is a per-channel 1-D slope that numpy
/// broadcasting would align with the last axis instead (older exporters' form).
fn prelu_slope(b: &mut Builder, x: &str, slope: &str) -> Result<String, String> {
    if let (Some(xs), Some(ss)) = (b.shape(x), b.shape(slope))
        && let [c] = ss[..]
        && xs.len() > 2
        && xs[1] == c
        && xs.last() != Some(&c)
    {
        return Ok(b.unsqueeze(slope, (1..xs.len() as i64 - 1).collect()));
    }
    Ok(slope.to_owned())
}

fn hard_sigmoid(b: &mut Builder, x: &str, alpha: f32, beta: f32) -> String {
    let ax = b.with(Binary::Mul, x, alpha);
    let y = b.with(Binary::Add, &ax, beta);
    let y = b.with(Binary::Max, &y, 0.0);
    b.with(Binary::Min, &y, 1.0)
}

fn softplus(b: &mut Builder, x: &str) -> String {
    let pos = b.with(Binary::Max, x, 0.0);
    let a = b.unary(Unary::Abs, x);
    let n = b.unary(Unary::Neg, &a);
    let e = b.unary(Unary::Exp, &n);
    let e = b.with(Binary::Add, &e, 1.0);
    let l = b.unary(Unary::Log, &e);
    b.binary(Binary::Add, &pos, &l)
}

fn gelu(b: &mut Builder, x: &str, tanh: bool) -> String {
    let inner = if tanh {
        let x2 = b.binary(Binary::Mul, x, x);
        let x3 = b.binary(Binary::Mul, &x2, x);
        let c = b.with(Binary::Mul, &x3, 0.044_715);
        let s = b.binary(Binary::Add, x, &c);
        let s = b.with(Binary::Mul, &s, (2.0 / std::f32::consts::PI).sqrt());
        b.unary(Unary::Tanh, &s)
    } else {
        let s = b.with(Binary::Mul, x, std::f32::consts::FRAC_1_SQRT_2);
        b.unary(Unary::Erf, &s)
    };
    let one_plus = b.with(Binary::Add, &inner, 1.0);
    let half = b.with(Binary::Mul, x, 0.5);
    b.binary(Binary::Mul, &half, &one_plus)
}

fn clip(
    b: &mut Builder,
    x: &str,
    attrs: Option<(f32, f32)>,
    min: Option<&str>,
    max: Option<&str>,
) -> String {
    let (min, max) = match attrs {
        Some((lo, hi)) => (
            (lo > f32::MIN).then(|| b.scalar(lo)),
            (hi < f32::MAX).then(|| b.scalar(hi)),
        ),
        None => (min.map(str::to_owned), max.map(str::to_owned)),
    };
    let mut y = x.to_owned();
    if let Some(min) = min {
        y = b.binary(Binary::Max, &y, &min);
    }
    if let Some(max) = max {
        y = b.binary(Binary::Min, &y, &max);
    }
    y
}

/// The axes LogSoftmax normalises over: `[axis]`, or before opset 13 every axis from it.
fn softmax_axes(b: &Builder, x: &str, axis: i64, opset: i64) -> Result<Vec<i64>, String> {
    if opset >= 13 {
        return Ok(vec![axis]);
    }
    let rank = b.rank(x)?;
    let from = reduce::normalize_axes(&[axis], rank)?[0];
    Ok((from as i64..rank as i64).collect())
}

/// Hardmax: 1 at the first maximum along the axis: Equal(ArgMax, iota) cast to float. Before
/// opset 13 the input is seen as 2-D rows split at the axis, so it is flattened and reshaped
/// back.
fn hardmax(b: &mut Builder, x: &str, axis: i64, opset: i64) -> Result<String, String> {
    let shape = b
        .shape(x)
        .ok_or_else(|| format!("needs the shape of {x:?}, which is not known at load"))?;
    let rank = shape.len();
    let (rows, axis_index) = if opset < 13 {
        let flat = b.op(Op::Flatten { axis }, &[x]);
        (flat, 1)
    } else {
        (x.to_owned(), reduce::normalize_axes(&[axis], rank)?[0])
    };
    let row_shape = match opset < 13 {
        true => super::shape::flatten(&shape, axis)?,
        false => shape.clone(),
    };
    let len = row_shape[axis_index];
    super::raster::elements(&[len])?;
    let arg = b.op(
        Op::ArgExtreme {
            max: true,
            axis: axis_index as i64,
            keepdims: true,
            last: false,
        },
        &[&rows],
    );
    let mut iota_shape = vec![1; row_shape.len()];
    iota_shape[axis_index] = len;
    let iota = b.constant(Value::I64 {
        shape: iota_shape,
        data: (0..len as i64).collect(),
    });
    let hot = b.op(Op::Compare(Compare::Equal), &[&arg, &iota]);
    let hot = b.op(Op::Cast(CastTo::Float), &[&hot]);
    Ok(if opset < 13 {
        b.reshape(&hot, shape.iter().map(|&d| d as i64).collect())
    } else {
        hot
    })
}

fn reduce_of(b: &mut Builder, of: ReduceOf, axes: &Axes, x: &str, given: Option<&str>) -> String {
    let reduce = |b: &mut Builder, kind, x: &str, keepdims| {
        let axes = Axes {
            keepdims,
            ..axes.clone()
        };
        let inputs: Vec<&str> = std::iter::once(x).chain(given).collect();
        b.op(Op::Reduce { kind, axes }, &inputs)
    };
    let keep = axes.keepdims;
    match of {
        ReduceOf::L1 => {
            let a = b.unary(Unary::Abs, x);
            reduce(b, Reduce::Sum, &a, keep)
        }
        ReduceOf::L2 | ReduceOf::SumSquare => {
            let sq = b.binary(Binary::Mul, x, x);
            let s = reduce(b, Reduce::Sum, &sq, keep);
            if of == ReduceOf::L2 {
                b.unary(Unary::Sqrt, &s)
            } else {
                s
            }
        }
        ReduceOf::LogSum => {
            let s = reduce(b, Reduce::Sum, x, keep);
            b.unary(Unary::Log, &s)
        }
        ReduceOf::LogSumExp => {
            let max = reduce(b, Reduce::Max, x, true);
            let d = b.binary(Binary::Sub, x, &max);
            let e = b.unary(Unary::Exp, &d);
            let s = reduce(b, Reduce::Sum, &e, keep);
            let l = b.unary(Unary::Log, &s);
            let m = if keep {
                max
            } else {
                reduce(b, Reduce::Max, x, false)
            };
            b.binary(Binary::Add, &l, &m)
        }
    }
}

/// centred / √(var + ε).
fn normalize(b: &mut Builder, centred: &str, var: &str, epsilon: f32) -> String {
    let v = b.with(Binary::Add, var, epsilon);
    let std = b.unary(Unary::Sqrt, &v);
    b.binary(Binary::Div, centred, &std)
}

fn layer_norm(
    b: &mut Builder,
    inputs: &[String],
    axis: i64,
    epsilon: f32,
) -> Result<Vec<String>, String> {
    let x = inputs.first().ok_or("input 0 is missing")?;
    let scale = inputs
        .get(1)
        .filter(|s| !s.is_empty())
        .ok_or("the scale (input 1) is missing")?;
    let rank = b.rank(x)?;
    let from = reduce::normalize_axes(&[axis], rank)?[0] as i64;
    let (mean, centred, var) = b.moments(x, (from..rank as i64).collect());
    let v = b.with(Binary::Add, &var, epsilon);
    let std = b.unary(Unary::Sqrt, &v);
    let inv = b.unary(Unary::Reciprocal, &std);
    let n = b.binary(Binary::Mul, &centred, &inv);
    let mut y = b.binary(Binary::Mul, &n, scale);
    if let Some(bias) = inputs.get(2).filter(|s| !s.is_empty()) {
        y = b.binary(Binary::Add, &y, bias);
    }
    Ok(vec![y, mean, inv])
}

fn group_norm(
    b: &mut Builder,
    inputs: &[String],
    epsilon: f32,
    groups: i64,
    per_channel: bool,
) -> Result<String, String> {
    let [x, scale, bias] = match inputs {
        [x, s, b] => [x, s, b],
        _ => return Err("needs X, scale and bias".into()),
    };
    if groups < 1 {
        return Err(format!("num_groups {groups} must be at least 1"));
    }
    let rank = b.rank(x)?;
    let grouped = b.reshape(x, vec![0, groups, -1]);
    let (_, centred, var) = b.moments(&grouped, vec![2]);
    let mut n = normalize(b, &centred, &var, epsilon);
    if !per_channel {
        let s = b.reshape(scale, vec![groups, 1]);
        let t = b.reshape(bias, vec![groups, 1]);
        n = b.binary(Binary::Mul, &n, &s);
        n = b.binary(Binary::Add, &n, &t);
    }
    let shape = b.shape_value(x);
    let back = b.op(Op::Reshape { allow_zero: false }, &[&n, &shape]);
    if !per_channel {
        return Ok(back);
    }
    let channel_axes: Vec<i64> = (1..rank.saturating_sub(1) as i64).collect();
    let s = b.unsqueeze(scale, channel_axes.clone());
    let t = b.unsqueeze(bias, channel_axes);
    let y = b.binary(Binary::Mul, &back, &s);
    Ok(b.binary(Binary::Add, &y, &t))
}
