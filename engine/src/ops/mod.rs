//! Operators: each ONNX op the engine runs, parsed with its attributes at load time, its shape
//! inference rule ([`Op::infer`]) and its kernel. An op not listed here fails the load with
//! [`LoadError::UnsupportedOp`].
//!
//! | ONNX op | decomposition or kernel |
//! |---|---|
//! | Identity | pass-through |
//! | Relu, Sigmoid, Tanh, Exp, Neg, Sqrt, Abs, Log, Reciprocal, Floor, Ceil, Round, Sign, Erf, Sin, Cos, Tan, Asin, Acos, Atan, Sinh, Cosh, Asinh, Acosh, Atanh | kernel: [`elementwise::Unary`] (Abs, Neg, Sign, Relu and the roundings on int64 too) |
//! | Add, Sub, Mul, Div, Pow, Mod | kernel: [`elementwise::Binary`], numpy broadcasting, float or int64; in place when the first operand is not read later; a following Relu fused |
//! | BitwiseAnd, BitwiseOr, BitwiseXor, BitShift | kernel: [`elementwise::Binary`], int64 only |
//! | Equal, Less, Greater, LessOrEqual, GreaterOrEqual | kernel: [`elementwise::Compare`] (bool out) |
//! | And, Or, Xor, Not | kernel: [`elementwise::Logic`], `Op::Not` |
//! | Where | kernel: [`elementwise::where_`], three-way broadcasting |
//! | Cast | kernel: [`elementwise::CastTo`] (to float, double, any integer type, bool) |
//! | ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd | kernel: [`reduce::Reduce`], axes as attribute or input |
//! | ArgMax, ArgMin | kernel: [`reduce::arg_extreme`] |
//! | Shape, Size | kernel ([`generate::shape`]); a constant at load when the input's shape is static |
//! | Range | kernel: [`generate::range`] |
//! | Trilu, CumSum, GatherElements, ScatterElements, TopK | kernel: [`index`], float or int64 |
//! | Sum, Max, Min, Mean | decomposition: a chain of Add/Max/Min (Mean: then Div) |
//! | Clip | decomposition: Max then Min |
//! | LeakyRelu, PRelu, Elu, Selu, Celu | decomposition: Max/Min with 0, Exp, Mul, Add |
//! | HardSigmoid, HardSwish, Softplus, Softsign, Mish, Swish, Gelu | decomposition: elementwise ops (Softplus as max(x,0) + log(1 + exp(−\|x\|))) |
//! | ThresholdedRelu, Shrink | decomposition: Greater/Less and Where |
//! | LogSoftmax | decomposition: ReduceMax, Sub, Exp, ReduceSum, Log, Sub |
//! | Hardmax | decomposition: ArgMax, Equal with a constant iota, Cast |
//! | ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, ReduceLogSumExp | decomposition: ReduceSum (and ReduceMax) with elementwise ops |
//! | InstanceNormalization, LayerNormalization, GroupNormalization, MeanVarianceNormalization | decomposition: ReduceMean, Sub, Mul, Sqrt, Div (and Reshape for groups) |
//! | CastLike | decomposition: Cast to the second input's type |
//! | Dropout (inference) | decomposition: the input, and a ConstantOfShape mask of ones |
//! | RMSNormalization, LpNormalization (p = 1, 2), GlobalMaxPool | decomposition: reductions and elementwise ops |
//! | IsNaN, IsInf | decomposition: Equal (and Not, Abs, Neg) |
//! | NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss | decomposition: (LogSoftmax,) GatherElements, Gather of the weights, Where for the ignored index, reductions |
//! | Attention | decomposition: (Reshape, Transpose for 3-D,) Concat of the caches, Tile for grouped heads, Mul, MatMul, Add of the mask/causal/padding bias, Tanh softcap, Softmax, MatMul |
//! | ConvTranspose (1-D, 2-D) | decomposition: zeros inserted between the input's values (Unsqueeze, Pad, Reshape, Slice: one raster), a stride-1 Conv by the flipped channel-swapped weights (Reshape, Transpose, Slice: folded when constant), Slice to the output |
//! | LpPool | decomposition: Abs, Pow, AveragePool counting the padding, Mul by the window size, Pow |
//! | OneHot, EyeLike (static shape) | decomposition: Cast, Where, Equal with a Range along the axis, Slice of the values; a constant |
//! | Scatter (opset ≤ 10) | ScatterElements |
//! | CenterCropPad (static shape, constant target) | decomposition: a centred Slice or constant Pad per axis |
//! | DequantizeLinear (per tensor or per axis) | decomposition: Cast, Sub, Mul |
//! | 1-D Conv, MaxPool, AveragePool | decomposition: Unsqueeze to a unit width, the 2-D op, Squeeze |
//! | Add/Sub/Mul/Div with opset 6's `broadcast` and `axis` | decomposition: Unsqueeze of B, then the numpy-broadcast op |
//! | MatMul, Gemm | kernel: [`linalg`], the `gemm` crate's kernels through strided views; a product of one row (a fully connected layer at batch 1) on more than one thread our own, streaming the matrix on all of them |
//! | Conv | kernel chosen per node by the [search](crate::search): [`conv::conv`] (1×1 as one GEMM, otherwise im2col + GEMM, per group, on the `gemm` crate), [`packed::conv`] (the same on filters packed at load, per group, our AVX-512 or AVX2 kernel), [`packed::implicit`] (the input read under the window, no im2col), [`winograd`] F(2×2,3×3) / F(4×4,3×3), [`depthwise`] direct (AVX-512: one register per 16 outputs over the taps); bias and a fused Relu applied as the output is written |
//! | MaxPool, AveragePool, GlobalAveragePool | kernel: [`conv::pool`] (separable passes; 3×3 stride-2 MaxPool in AVX-512), [`conv::global_average_pool`] |
//! | BatchNormalization, LRN | kernel: [`nn`] (BatchNormalization after a Conv folds into it; otherwise it works in place on a last read and fuses a following Relu) |
//! | Softmax | kernel: [`shape::softmax`] (2-D coercion before opset 13) |
//! | Flatten, Reshape, Squeeze, Unsqueeze | view (same values, new shape); a raster when merged with a neighbouring raster |
//! | Transpose | raster: one block, source strides permuted |
//! | Concat | raster: one block per input |
//! | Slice (constant parameters, negative steps) | raster: one affine run per axis |
//! | Split (attribute or input sizes, equal parts) | raster per output (a Slice each) |
//! | Gather (constant indices, any axis, negative indices) | raster: a run per stretch of affine indices |
//! | Pad (constant, reflect, edge, wrap) | raster: runs per axis, the constant as the fill |
//! | Expand | raster: source stride 0 on broadcast axes |
//! | Tile | raster: one block of twice the rank (repeat, element) per axis |
//! | DepthToSpace (DCR, CRD), SpaceToDepth | raster: one 6-D block |
//! | Constant (tensor, float(s), int(s)), ConstantOfShape (float or int) | constants (folded at load) |
//!
//! Decompositions ([`composite`]) are applied at load, before constant folding and fusion, so
//! a backend implements only the kernels and rasters above. Values are f32 or i64: every
//! integer type is widened to i64 and bool is i64 0/1 (a Cast to a narrower integer type wraps
//! to its range); double computes as f32.
//!
//! Layout ops ([`layout`]) are planned as [`raster::Raster`]s: with static shapes they become
//! `Raster` nodes at load (and rasters in a row merge into one); otherwise the same plan runs
//! at each call. Layout ops move int64 values too, so shape arithmetic on constants folds.
//!
//! Opsets 6–24 are accepted; where an op changed (Softmax at 13, Squeeze/Unsqueeze/Split taking
//! `axes`/`split` as an input from 13, Slice its parameters from 10, Pad from 11, the
//! reductions their axes from 13 (ReduceSum) or 18, Clip its bounds from 11, LogSoftmax and
//! Hardmax their 2-D coercion until 13, GroupNormalization's scale per channel from 21), both
//! forms are read. Opsets 22–24 only added element types to the ops the engine runs.

pub mod attrs;
pub mod composite;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod generate;
pub mod index;
mod infer;
pub mod layout;
pub mod linalg;
pub mod nn;
pub mod packed;
pub mod raster;
pub mod reduce;
pub mod shape;
mod simd;
pub mod winograd;
mod winograd_blocks;

use std::ops::Range;
use std::path::Path;

use attrs::Attrs;
use conv::{Pool, Window};
use elementwise::{Binary, CastTo, Compare, Logic, Unary};

use crate::onnx::pb::NodeProto;
use crate::{LoadError, RunError, Tensor, Value};

/// A kernel's failure, as a run error of `node`.
fn kernel_error(node: &str, op: &str, reason: String) -> RunError {
    RunError::Kernel {
        node: node.to_owned(),
        op: op.to_owned(),
        reason,
    }
}

/// Runs `f` compiled for the widest vector unit this CPU has. The crate is built for the
/// baseline of its target (SSE2 on x86_64), so loops the compiler vectorises would otherwise
/// use 4 lanes on a CPU with 16. `f` (and what it inlines) is instantiated inside functions
/// that enable AVX-512 or AVX2 + FMA, and the one this CPU supports is picked at run time.
/// Kernels mark their inner functions `#[inline(always)]` so they are compiled there.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        // Under the cap of `simd::ISA_CAP_ENV`, as the engine's own kernels.
        let isa = packed::Isa::detect();
        if isa == Some(packed::Isa::Avx512)
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: AVX-512F was detected by `Isa::detect`, the others above.
            return unsafe { with_avx512(f) };
        }
        if isa.is_some() {
            // SAFETY: AVX2 and FMA were detected by `Isa::detect` (for either ISA).
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Elementwise work smaller than this stays on one thread (splitting costs more).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Runs `f(offset, chunk)` over `data` cut into one contiguous chunk per thread of the rayon
/// pool the session runs in (`offset`: where the chunk starts), or once over all of it when
/// the pool has one thread or `data` is small. Each chunk runs under [`simd`].
pub(crate) fn for_chunks(data: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if threads <= 1 || data.len() < PARALLEL_MIN_ELEMENTS {
        return simd(
            #[inline(always)]
            || f(0, data),
        );
    }
    let per = data.len().div_ceil(threads);
    data.par_chunks_mut(per).enumerate().for_each(|(i, chunk)| {
        simd(
            #[inline(always)]
            || f(i * per, chunk),
        )
    });
}

/// Ranges each thread of [`parallel_ranges`] claims, on average.
const RANGES_PER_THREAD: usize = 4;

/// Runs `f` over `0..count` cut into ranges that `threads` threads (the caller one of them)
/// claim in order until none is left. A thread slowed down — its core taken by another
/// process, or a worker slow to start — then takes fewer ranges instead of holding the others
/// up, and neighbouring items still mostly run on the same thread.
pub(crate) fn parallel_ranges(count: usize, threads: usize, f: impl Fn(Range<usize>) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if threads <= 1 || count < 2 {
        return f(0..count);
    }
    let len = count.div_ceil(threads * RANGES_PER_THREAD);
    let next = AtomicUsize::new(0);
    let claim = || {
        loop {
            let first = next.fetch_add(len, Ordering::Relaxed);
            if first >= count {
                break;
            }
            f(first..(first + len).min(count));
        }
    };
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| claim());
        }
        claim();
    });
}

/// What a convolution kernel does to each output as it stores it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to every value of output channel `i` (`bias[i]`).
    pub bias: Option<&'a [f32]>,
    /// Clamp at zero after the bias (a fused Relu).
    pub relu: bool,
}

impl<'a> Epilogue<'a> {
    /// The epilogue of the output channels from `first` on (a group's filters).
    pub(crate) fn for_channels_from(self, first: usize) -> Epilogue<'a> {
        Epilogue {
            bias: self.bias.map(|b| &b[first..]),
            relu: self.relu,
        }
    }
}

/// A raw output pointer that the threads of a kernel share, each writing its own part.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

// SAFETY: kernels hand it only to threads that write disjoint elements through it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `offset` elements on.
    ///
    /// # Safety
    /// `offset` must stay inside the buffer the pointer came from.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// What every kernel may use while running.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// Threads a kernel may use.
    pub threads: usize,
}

/// How a convolution or pool pads its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AutoPad {
    /// The explicit `pads`.
    Explicit,
    /// Output size `ceil(input / stride)`; extra padding at the end (`SAME_UPPER`) or start.
    Same { upper: bool },
}

/// Spatial attributes of Conv and the pools, as written in the node.
#[derive(Debug, Clone, PartialEq)]
pub struct Spatial {
    /// Absent for Conv: taken from the weights.
    pub kernel: Option<[usize; 2]>,
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [usize; 4],
    pub auto_pad: AutoPad,
    pub ceil: bool,
}

/// An operator with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Identity,
    Unary(Unary),
    Binary(Binary),
    /// A Binary followed by a Relu that was its only reader (fused at load).
    BinaryRelu(Binary),
    Compare(Compare),
    Logic(Logic),
    Not,
    Where,
    Cast(CastTo),
    Reduce {
        kind: reduce::Reduce,
        axes: reduce::Axes,
    },
    /// ArgMax (`max`) or ArgMin; `last`: the last index of a tie.
    ArgExtreme {
        max: bool,
        axis: i64,
        keepdims: bool,
        last: bool,
    },
    /// The dimensions `start..end` of the input's shape.
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Size,
    Range,
    /// `upper`: keep the upper triangle (else the lower); the diagonal offset is input 1.
    Trilu {
        upper: bool,
    },
    /// The axis is input 1.
    CumSum {
        exclusive: bool,
        reverse: bool,
    },
    GatherElements {
        axis: i64,
    },
    /// `reduction`: how an update combines with the value it lands on (`None`: replaces it).
    ScatterElements {
        axis: i64,
        reduction: Option<Binary>,
    },
    /// Outputs the values and their indices; `k` is input 1.
    TopK {
        axis: i64,
        largest: bool,
    },
    /// An op that load lowers to atomic ones (see [`composite`]); never run.
    Composite(Box<composite::Composite>),
    MatMul,
    Gemm {
        alpha: f32,
        beta: f32,
        trans: (bool, bool),
    },
    /// `relu`: a following Relu fused in (applied in the same pass as the bias).
    Conv {
        spatial: Spatial,
        group: usize,
        relu: bool,
    },
    Pool {
        spatial: Spatial,
        kind: Pool,
    },
    GlobalAveragePool,
    /// `relu`: a following Relu fused in (applied in the same pass).
    BatchNorm {
        epsilon: f32,
        relu: bool,
    },
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        bias: f32,
    },
    Flatten {
        axis: i64,
    },
    Reshape {
        allow_zero: bool,
    },
    /// Axes from the attribute (before opset 13) or, when `None`, from input 1.
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Concat {
        axis: i64,
    },
    Transpose {
        perm: Option<Vec<i64>>,
    },
    Softmax {
        axis: i64,
        opset: i64,
    },
    Constant(Value),
    /// `value`: a one-element tensor of the element type to fill with.
    ConstantOfShape {
        value: Value,
    },
    /// Parameters from attributes before opset 10 (`Some`), else inputs 1–4.
    Slice {
        attrs: Option<layout::SliceAttrs>,
    },
    /// `split`: sizes from the attribute before opset 13, else input 1; equal parts without.
    Split {
        axis: i64,
        split: Option<Vec<i64>>,
        outputs: usize,
    },
    Gather {
        axis: i64,
    },
    /// Pads and value from attributes before opset 11 (`Some`), else inputs 1–3.
    Pad {
        mode: layout::PadMode,
        attrs: Option<layout::PadAttrs>,
    },
    Expand,
    Tile,
    /// `crd`: column-row-depth order (else depth-column-row, DCR).
    DepthToSpace {
        block: usize,
        crd: bool,
    },
    SpaceToDepth {
        block: usize,
    },
    /// Layout ops lowered at load (see [`raster`]).
    Raster(raster::Raster),
}

fn pair(attrs: &Attrs, name: &str, default: usize) -> Result<[usize; 2], LoadError> {
    match attrs.ints(name) {
        None => Ok([default; 2]),
        Some([a, b]) if *a > 0 && *b > 0 => Ok([*a as usize, *b as usize]),
        Some(other) => Err(attrs.bad(
            name,
            format!("{other:?}: only 2-D (two positive values) is supported"),
        )),
    }
}

fn spatial(attrs: &Attrs, kernel_required: bool) -> Result<Spatial, LoadError> {
    let kernel = match attrs.ints("kernel_shape") {
        None if kernel_required => return Err(attrs.bad("kernel_shape", "is required")),
        None => None,
        Some(_) => Some(pair(attrs, "kernel_shape", 1)?),
    };
    let pads = match attrs.ints("pads") {
        None => [0; 4],
        Some(p) if p.len() == 4 && p.iter().all(|&v| v >= 0) => {
            [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
        }
        Some(other) => {
            return Err(attrs.bad("pads", format!("{other:?}: give 4 non-negative values")));
        }
    };
    let auto_pad = match attrs.string("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => AutoPad::Explicit,
        Some("VALID") => AutoPad::Explicit,
        Some("SAME_UPPER") => AutoPad::Same { upper: true },
        Some("SAME_LOWER") => AutoPad::Same { upper: false },
        Some(other) => {
            return Err(attrs.bad("auto_pad", format!("{other:?} is not a padding mode")));
        }
    };
    Ok(Spatial {
        kernel,
        strides: pair(attrs, "strides", 1)?,
        dilations: pair(attrs, "dilations", 1)?,
        pads: if attrs.string("auto_pad").as_deref() == Some("VALID") {
            [0; 4]
        } else {
            pads
        },
        auto_pad,
        ceil: attrs.int("ceil_mode", 0) != 0,
    })
}

impl Spatial {
    /// The window for an input of `h × w` and a kernel of `kernel`.
    pub fn window(&self, kernel: [usize; 2], [h, w]: [usize; 2]) -> Window {
        let mut pads = self.pads;
        if let AutoPad::Same { upper } = self.auto_pad {
            for (axis, input) in [h, w].into_iter().enumerate() {
                let span = self.dilations[axis] * (kernel[axis] - 1) + 1;
                let out = input.div_ceil(self.strides[axis]);
                let total = ((out - 1) * self.strides[axis] + span).saturating_sub(input);
                let (small, big) = (total / 2, total - total / 2);
                (pads[axis], pads[axis + 2]) = if upper { (small, big) } else { (big, small) };
            }
        }
        Window {
            kernel,
            strides: self.strides,
            dilations: self.dilations,
            pads,
            ceil: self.ceil,
        }
    }
}

/// Parses the layout ops new to the engine's raster decomposition.
fn layout_op(node: &NodeProto, attrs: &Attrs, opset: i64) -> Result<Op, LoadError> {
    let block = || {
        usize::try_from(attrs.int("blocksize", 0))
            .ok()
            .filter(|&b| b > 0)
            .ok_or_else(|| attrs.bad("blocksize", "is required and must be positive"))
    };
    Ok(match node.op_type.as_str() {
        "Slice" if opset < 10 => Op::Slice {
            attrs: Some(layout::SliceAttrs {
                starts: attrs.ints("starts").unwrap_or_default().to_vec(),
                ends: attrs.ints("ends").unwrap_or_default().to_vec(),
                axes: attrs.ints("axes").map(<[i64]>::to_vec),
            }),
        },
        "Slice" => Op::Slice { attrs: None },
        "Split" => Op::Split {
            axis: attrs.int("axis", 0),
            split: if opset < 13 {
                attrs.ints("split").map(<[i64]>::to_vec)
            } else {
                None
            },
            outputs: match attrs.int("num_outputs", 0) {
                0 => node.output.len(),
                n => usize::try_from(n)
                    .ok()
                    .filter(|&n| n == node.output.len())
                    .ok_or_else(|| attrs.bad("num_outputs", "differs from the outputs"))?,
            },
        },
        "Gather" => Op::Gather {
            axis: attrs.int("axis", 0),
        },
        "Pad" => {
            let name = attrs.string("mode").unwrap_or_else(|| "constant".into());
            let mode = layout::PadMode::parse(&name)
                .ok_or_else(|| attrs.bad("mode", format!("{name:?} is not a padding mode")))?;
            Op::Pad {
                mode,
                attrs: (opset < 11).then(|| layout::PadAttrs {
                    pads: attrs.ints("pads").unwrap_or_default().to_vec(),
                    value: attrs.float("value", 0.0),
                }),
            }
        }
        "Expand" => Op::Expand,
        "Tile" => Op::Tile,
        "DepthToSpace" => Op::DepthToSpace {
            block: block()?,
            crd: match attrs.string("mode").as_deref() {
                None | Some("DCR") => false,
                Some("CRD") => true,
                Some(other) => {
                    return Err(attrs.bad("mode", format!("{other:?} is not DCR or CRD")));
                }
            },
        },
        _ => Op::SpaceToDepth { block: block()? },
    })
}

fn spatial_size(t: &Tensor) -> Result<[usize; 2], String> {
    match *t.shape() {
        [_, _, h, w] => Ok([h, w]),
        ref other => Err(format!("input must be 4-D (NCHW), got {other:?}")),
    }
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
        let axes_attr = |attrs: &Attrs| {
            if opset < 13 {
                attrs.ints("axes").map(<[i64]>::to_vec)
            } else {
                None
            }
        };
        if let Some(unary) = Unary::parse(&node.op_type) {
            return Ok(Op::Unary(unary));
        }
        if let Some(op) = composite::Composite::parse(node, &attrs, opset)? {
            return Ok(Op::Composite(Box::new(op)));
        }
        if let Some(op) = value_op(node, &attrs, opset)? {
            return Ok(op);
        }
        Ok(match node.op_type.as_str() {
            "Identity" => Op::Identity,
            "Add" | "Sub" | "Mul" | "Div" if attrs.int("broadcast", 0) != 0 && opset >= 7 => {
                return Err(attrs.bad("broadcast", "is an opset 6 attribute"));
            }
            "Add" => Op::Binary(Binary::Add),
            "Sub" => Op::Binary(Binary::Sub),
            "Mul" => Op::Binary(Binary::Mul),
            "Div" => Op::Binary(Binary::Div),
            "Pow" => Op::Binary(Binary::Pow),
            "Mod" if attrs.int("fmod", 0) != 0 => Op::Binary(Binary::FMod),
            "BitwiseAnd" => Op::Binary(Binary::BitAnd),
            "BitwiseOr" => Op::Binary(Binary::BitOr),
            "BitwiseXor" => Op::Binary(Binary::BitXor),
            "BitShift" => match attrs.string("direction").as_deref() {
                Some("LEFT") => Op::Binary(Binary::ShiftLeft),
                Some("RIGHT") => Op::Binary(Binary::ShiftRight),
                _ => return Err(attrs.bad("direction", "must be LEFT or RIGHT")),
            },
            "Mod" => Op::Binary(Binary::Mod),
            "MatMul" => Op::MatMul,
            "Gemm" => Op::Gemm {
                alpha: attrs.float("alpha", 1.0),
                beta: attrs.float("beta", 1.0),
                trans: (attrs.int("transA", 0) != 0, attrs.int("transB", 0) != 0),
            },
            "Conv" => Op::Conv {
                spatial: spatial(&attrs, false)?,
                group: usize::try_from(attrs.int("group", 1))
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or_else(|| attrs.bad("group", "must be at least 1"))?,
                relu: false,
            },
            "MaxPool" => {
                if node.output.len() > 1 {
                    return Err(
                        attrs.bad("Indices", "the second (indices) output is not supported")
                    );
                }
                Op::Pool {
                    spatial: spatial(&attrs, true)?,
                    kind: Pool::Max,
                }
            }
            "AveragePool" => Op::Pool {
                spatial: spatial(&attrs, true)?,
                kind: Pool::Average {
                    count_include_pad: attrs.int("count_include_pad", 0) != 0,
                },
            },
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "BatchNormalization" => {
                if attrs.int("training_mode", 0) != 0 || node.output.len() > 1 {
                    return Err(attrs.bad("training_mode", "only inference mode is supported"));
                }
                if attrs.int("spatial", 1) == 0 {
                    return Err(attrs.bad("spatial", "per-activation statistics (opset 6–8)"));
                }
                Op::BatchNorm {
                    epsilon: attrs.float("epsilon", 1e-5),
                    relu: false,
                }
            }
            "LRN" => Op::Lrn {
                size: usize::try_from(attrs.int("size", 0))
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| attrs.bad("size", "is required and must be positive"))?,
                alpha: attrs.float("alpha", 1e-4),
                beta: attrs.float("beta", 0.75),
                bias: attrs.float("bias", 1.0),
            },
            "Flatten" => Op::Flatten {
                axis: attrs.int("axis", 1),
            },
            "Reshape" => Op::Reshape {
                allow_zero: attrs.int("allowzero", 0) != 0,
            },
            "Unsqueeze" => {
                let axes = axes_attr(&attrs);
                if opset < 13 && axes.is_none() {
                    return Err(attrs.bad("axes", "is required before opset 13"));
                }
                Op::Unsqueeze { axes }
            }
            "Squeeze" => Op::Squeeze {
                axes: axes_attr(&attrs),
            },
            "Concat" => Op::Concat {
                axis: attrs.int("axis", 1),
            },
            "Transpose" => Op::Transpose {
                perm: attrs.ints("perm").map(<[i64]>::to_vec),
            },
            "Softmax" => Op::Softmax {
                axis: attrs.int("axis", if opset < 13 { 1 } else { -1 }),
                opset,
            },
            "Constant" => Op::Constant(constant(&attrs, base_dir)?),
            "ConstantOfShape" => {
                let value = match attrs.tensor("value") {
                    None => Value::F32(Tensor::zeros(vec![1])),
                    Some(t) => crate::onnx::tensor_value(t, base_dir)?,
                };
                if value.shape().iter().product::<usize>() != 1 {
                    return Err(attrs.bad("value", "must hold one value"));
                }
                Op::ConstantOfShape { value }
            }
            "Slice" | "Split" | "Gather" | "Pad" | "Expand" | "Tile" | "DepthToSpace"
            | "SpaceToDepth" => layout_op(node, &attrs, opset)?,
            other => {
                return Err(LoadError::UnsupportedOp {
                    op: other.to_owned(),
                    node: name.to_owned(),
                    opset,
                });
            }
        })
    }

    /// The op's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::Unary(_) => "Unary",
            Op::Binary(_) => "Binary",
            Op::BinaryRelu(_) => "Binary+Relu",
            Op::Compare(_) => "Compare",
            Op::Logic(_) => "Logic",
            Op::Not => "Not",
            Op::Where => "Where",
            Op::Cast(_) => "Cast",
            Op::Reduce { .. } => "Reduce",
            Op::ArgExtreme { max: true, .. } => "ArgMax",
            Op::ArgExtreme { .. } => "ArgMin",
            Op::Shape { .. } => "Shape",
            Op::Size => "Size",
            Op::Range => "Range",
            Op::Trilu { .. } => "Trilu",
            Op::CumSum { .. } => "CumSum",
            Op::GatherElements { .. } => "GatherElements",
            Op::ScatterElements { .. } => "ScatterElements",
            Op::TopK { .. } => "TopK",
            Op::Composite(c) => c.name(),
            Op::MatMul => "MatMul",
            Op::Gemm { .. } => "Gemm",
            Op::Conv { .. } => "Conv",
            Op::Pool { .. } => "Pool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Lrn { .. } => "LRN",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Squeeze { .. } => "Squeeze",
            Op::Concat { .. } => "Concat",
            Op::Transpose { .. } => "Transpose",
            Op::Softmax { .. } => "Softmax",
            Op::Constant(_) => "Constant",
            Op::ConstantOfShape { .. } => "ConstantOfShape",
            Op::Slice { .. } => "Slice",
            Op::Split { .. } => "Split",
            Op::Gather { .. } => "Gather",
            Op::Pad { .. } => "Pad",
            Op::Expand => "Expand",
            Op::Tile => "Tile",
            Op::DepthToSpace { .. } => "DepthToSpace",
            Op::SpaceToDepth { .. } => "SpaceToDepth",
            Op::Raster(_) => "Raster",
        }
    }

    /// Whether [`Op::eval_owning_first`] can reuse the first input's buffer.
    pub fn reuses_first_input(&self) -> bool {
        matches!(
            self,
            Op::Identity
                | Op::Unary(_)
                | Op::Binary(_)
                | Op::BinaryRelu(_)
                | Op::BatchNorm { .. }
                | Op::Flatten { .. }
                | Op::Reshape { .. }
                | Op::Softmax { .. }
        )
    }

    /// Like [`Op::eval`], but the first input is given by value (its last reader is this node),
    /// so an elementwise op writes into its buffer and a reshape moves it instead of copying.
    pub fn eval_owning_first(
        &self,
        ctx: &Ctx,
        node: &str,
        first: Value,
        others: &[Option<&Value>],
    ) -> Result<Vec<Value>, RunError> {
        let fail = |reason: String| kernel_error(node, self.name(), reason);
        let Value::F32(mut x) = first else {
            let mut all = vec![Some(&first)];
            all.extend_from_slice(others);
            return self.eval(ctx, node, &all);
        };
        let second = || match others.first().copied().flatten() {
            Some(Value::F32(t)) => Some(t),
            _ => None,
        };
        let out = match self {
            Op::Identity => x,
            Op::Unary(u) => u.apply(x),
            Op::Binary(b) | Op::BinaryRelu(b) => {
                let relu = matches!(self, Op::BinaryRelu(_));
                let done = second().is_some_and(|y| b.apply_in_place(&mut x, y, relu));
                if !done {
                    let x = Value::F32(x);
                    let mut all = vec![Some(&x)];
                    all.extend_from_slice(others);
                    return self.eval(ctx, node, &all);
                }
                x
            }
            Op::Flatten { axis } => {
                let shape = shape::flatten(x.shape(), *axis).map_err(fail)?;
                x.reshaped(shape).map_err(|e| fail(e.to_string()))?
            }
            Op::Reshape { allow_zero } => match others.first().copied().flatten() {
                Some(Value::I64 { data, .. }) => {
                    let shape = shape::reshape(x.shape(), data, *allow_zero).map_err(fail)?;
                    x.reshaped(shape).map_err(|e| fail(e.to_string()))?
                }
                _ => return Err(fail("input 1 must be an int64 tensor".into())),
            },
            Op::Softmax { axis, opset } => shape::softmax(x, *axis, *opset).map_err(fail)?,
            Op::BatchNorm { epsilon, relu } => {
                let mut params = [None; 4];
                for (slot, value) in params.iter_mut().zip(others) {
                    if let Some(Value::F32(t)) = value {
                        *slot = Some(t);
                    }
                }
                let [Some(scale), Some(bias), Some(mean), Some(var)] = params else {
                    return Err(fail("scale, B, mean and var must be float tensors".into()));
                };
                nn::batch_norm(x, [scale, bias, mean, var], *epsilon, *relu).map_err(fail)?
            }
            _ => {
                let x = Value::F32(x);
                let mut all = vec![Some(&x)];
                all.extend_from_slice(others);
                return self.eval(ctx, node, &all);
            }
        };
        Ok(vec![Value::F32(out)])
    }

    /// Runs the op on its inputs (`None`: an omitted optional input).
    pub fn eval(
        &self,
        ctx: &Ctx,
        node: &str,
        inputs: &[Option<&Value>],
    ) -> Result<Vec<Value>, RunError> {
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
        let ints = |i: usize| -> Result<&[i64], RunError> {
            match inputs.get(i).copied().flatten() {
                Some(Value::I64 { data, .. }) => Ok(data),
                _ => Err(fail(format!("input {i} must be an int64 tensor"))),
            }
        };
        let optional = |i: usize| inputs.get(i).copied().flatten().is_some();
        let out = match self {
            Op::Identity => {
                let value = inputs
                    .first()
                    .copied()
                    .flatten()
                    .ok_or_else(|| fail("no input".into()))?;
                return Ok(vec![value.clone()]);
            }
            Op::Constant(value) => return Ok(vec![value.clone()]),
            Op::ConstantOfShape { value } => {
                let shape = ints(0)?
                    .iter()
                    .map(|&d| {
                        usize::try_from(d).map_err(|_| fail(format!("negative dimension {d}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let len = raster::elements(&shape).map_err(fail)?;
                return Ok(vec![match value {
                    Value::F32(t) => Value::F32(
                        Tensor::new(shape, vec![t.data()[0]; len])
                            .map_err(|e| fail(e.to_string()))?,
                    ),
                    Value::I64 { data, .. } => Value::I64 {
                        shape,
                        data: vec![data[0]; len],
                    },
                }]);
            }
            Op::Unary(_)
            | Op::Binary(_)
            | Op::BinaryRelu(_)
            | Op::Compare(_)
            | Op::Logic(_)
            | Op::Not
            | Op::Where
            | Op::Cast(_)
            | Op::Reduce { .. }
            | Op::ArgExtreme { .. }
            | Op::Shape { .. }
            | Op::Size
            | Op::Range
            | Op::Trilu { .. }
            | Op::CumSum { .. }
            | Op::GatherElements { .. }
            | Op::ScatterElements { .. }
            | Op::Composite(_) => {
                let value = self.eval_value(inputs).map_err(fail)?;
                return Ok(vec![value]);
            }
            Op::TopK { axis, largest } => {
                let x = inputs
                    .first()
                    .copied()
                    .flatten()
                    .ok_or_else(|| fail("input 0 is missing".into()))?;
                let k = match ints(1)? {
                    [k] => usize::try_from(*k).map_err(|_| fail(format!("k = {k} is negative")))?,
                    other => return Err(fail(format!("k must be one value, got {}", other.len()))),
                };
                let axis = reduce::normalize_axes(&[*axis], x.shape().len()).map_err(fail)?[0];
                let (values, indices) = index::top_k(x, k, axis, *largest).map_err(fail)?;
                return Ok(vec![values, indices]);
            }
            Op::MatMul => linalg::matmul(float(0)?, float(1)?, ctx.threads).map_err(fail)?,
            Op::Gemm { alpha, beta, trans } => {
                let c = if optional(2) { Some(float(2)?) } else { None };
                linalg::gemm(float(0)?, float(1)?, c, *alpha, *beta, *trans, ctx.threads)
                    .map_err(fail)?
            }
            Op::Conv {
                spatial,
                group,
                relu,
            } => {
                let (x, weights) = (float(0)?, float(1)?);
                let kernel = match *weights.shape() {
                    [_, _, kh, kw] => [kh, kw],
                    ref other => return Err(fail(format!("weights must be 4-D, got {other:?}"))),
                };
                if spatial.kernel.is_some_and(|k| k != kernel) {
                    return Err(fail(format!(
                        "kernel_shape {:?} differs from the weights' {kernel:?}",
                        spatial.kernel
                    )));
                }
                let window = spatial.window(kernel, spatial_size(x).map_err(fail)?);
                let bias = if optional(2) { Some(float(2)?) } else { None };
                let out =
                    conv::conv(x, weights, bias, &window, *group, ctx.threads).map_err(fail)?;
                if *relu { Unary::Relu.apply(out) } else { out }
            }
            Op::Pool { spatial, kind } => {
                let x = float(0)?;
                let kernel = spatial.kernel.unwrap_or([1, 1]);
                let window = spatial.window(kernel, spatial_size(x).map_err(fail)?);
                conv::pool(x, &window, *kind).map_err(fail)?
            }
            Op::GlobalAveragePool => conv::global_average_pool(float(0)?).map_err(fail)?,
            Op::BatchNorm { epsilon, relu } => nn::batch_norm(
                float(0)?.clone(),
                [float(1)?, float(2)?, float(3)?, float(4)?],
                *epsilon,
                *relu,
            )
            .map_err(fail)?,
            Op::Lrn {
                size,
                alpha,
                beta,
                bias,
            } => nn::lrn(float(0)?, *size, *alpha, *beta, *bias).map_err(fail)?,
            Op::Softmax { axis, opset } => {
                shape::softmax(float(0)?.clone(), *axis, *opset).map_err(fail)?
            }
            Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Unsqueeze { .. }
            | Op::Squeeze { .. }
            | Op::Concat { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Split { .. }
            | Op::Gather { .. }
            | Op::Pad { .. }
            | Op::Expand
            | Op::Tile
            | Op::DepthToSpace { .. }
            | Op::SpaceToDepth { .. }
            | Op::Raster(_) => return self.eval_layout(inputs).map_err(fail),
        };
        Ok(vec![Value::F32(out)])
    }
}

/// Parses the ops on values of either element type: comparisons, logic, Where, Cast, the
/// atomic reductions, ArgMax/ArgMin, Shape, Size and Range (`None`: not one of them).
fn value_op(node: &NodeProto, attrs: &Attrs, opset: i64) -> Result<Option<Op>, LoadError> {
    let reduce = |kind, axes_input_from: i64| Op::Reduce {
        kind,
        axes: reduce::Axes {
            attr: if opset < axes_input_from {
                Some(attrs.ints("axes").unwrap_or_default().to_vec())
            } else {
                None
            },
            keepdims: attrs.int("keepdims", 1) != 0,
            noop_with_empty_axes: attrs.int("noop_with_empty_axes", 0) != 0,
        },
    };
    let arg = |max| Op::ArgExtreme {
        max,
        axis: attrs.int("axis", 0),
        keepdims: attrs.int("keepdims", 1) != 0,
        last: attrs.int("select_last_index", 0) != 0,
    };
    Ok(Some(match node.op_type.as_str() {
        "Equal" => Op::Compare(Compare::Equal),
        "Less" => Op::Compare(Compare::Less),
        "Greater" => Op::Compare(Compare::Greater),
        "LessOrEqual" => Op::Compare(Compare::LessOrEqual),
        "GreaterOrEqual" => Op::Compare(Compare::GreaterOrEqual),
        "And" => Op::Logic(Logic::And),
        "Or" => Op::Logic(Logic::Or),
        "Xor" => Op::Logic(Logic::Xor),
        "Not" => Op::Not,
        "Where" => Op::Where,
        "Cast" => {
            let to = attrs.int("to", 0);
            Op::Cast(
                CastTo::from_onnx(to).ok_or_else(|| {
                    attrs.bad("to", format!("casting to type {to} is not supported"))
                })?,
            )
        }
        "ReduceSum" => reduce(reduce::Reduce::Sum, 13),
        "ReduceMean" => reduce(reduce::Reduce::Mean, 18),
        "ReduceMax" => reduce(reduce::Reduce::Max, 18),
        "ReduceMin" => reduce(reduce::Reduce::Min, 18),
        "ReduceProd" => reduce(reduce::Reduce::Prod, 18),
        "ArgMax" => arg(true),
        "ArgMin" => arg(false),
        "Shape" => Op::Shape {
            start: attrs.int("start", 0),
            end: attrs.has("end").then(|| attrs.int("end", 0)),
        },
        "Size" => Op::Size,
        "Range" => Op::Range,
        "Trilu" => Op::Trilu {
            upper: attrs.int("upper", 1) != 0,
        },
        "CumSum" => Op::CumSum {
            exclusive: attrs.int("exclusive", 0) != 0,
            reverse: attrs.int("reverse", 0) != 0,
        },
        "GatherElements" => Op::GatherElements {
            axis: attrs.int("axis", 0),
        },
        "ScatterElements" | "Scatter" => Op::ScatterElements {
            axis: attrs.int("axis", 0),
            reduction: match attrs.string("reduction").as_deref() {
                None | Some("none") => None,
                Some("add") => Some(Binary::Add),
                Some("mul") => Some(Binary::Mul),
                Some("max") => Some(Binary::Max),
                Some("min") => Some(Binary::Min),
                Some(other) => {
                    return Err(attrs.bad("reduction", format!("{other:?} is not a reduction")));
                }
            },
        },
        "TopK" if opset < 10 => {
            return Err(attrs.bad("k", "TopK before opset 10 (k as an attribute)"));
        }
        "TopK" => Op::TopK {
            axis: attrs.int("axis", -1),
            largest: attrs.int("largest", 1) != 0,
        },
        _ => return Ok(None),
    }))
}

/// A Constant's value: the `value` tensor, or one of the scalar and list forms (opset 12+).
fn constant(attrs: &Attrs, base_dir: Option<&Path>) -> Result<Value, LoadError> {
    if let Some(tensor) = attrs.tensor("value") {
        return crate::onnx::tensor_value(tensor, base_dir);
    }
    let floats = |data: Vec<f32>, shape| {
        Tensor::new(shape, data)
            .map(Value::F32)
            .map_err(|e| attrs.bad("value_floats", e.to_string()))
    };
    if attrs.has("value_float") {
        return floats(vec![attrs.float("value_float", 0.0)], vec![]);
    }
    if let Some(values) = attrs.floats("value_floats") {
        return floats(values.to_vec(), vec![values.len()]);
    }
    if attrs.has("value_int") {
        return Ok(Value::I64 {
            shape: vec![],
            data: vec![attrs.int("value_int", 0)],
        });
    }
    if let Some(values) = attrs.ints("value_ints") {
        return Ok(Value::I64 {
            shape: vec![values.len()],
            data: values.to_vec(),
        });
    }
    Err(attrs.bad(
        "value",
        "only tensor, float(s) and int(s) Constants are supported",
    ))
}

impl Op {
    /// Runs an op on values of either element type (see [`value_op`]), and the unary and
    /// binary ops off their in-place path.
    fn eval_value(&self, inputs: &[Option<&Value>]) -> Result<Value, String> {
        let input = |i: usize| {
            inputs
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| format!("input {i} is missing"))
        };
        let ints = |i: usize| match input(i)? {
            Value::I64 { shape, data } => Ok((shape.as_slice(), data.as_slice())),
            Value::F32(_) => Err(format!("input {i} must be int64 (or bool), not float")),
        };
        let float = |i: usize| match input(i)? {
            Value::F32(t) => Ok(t),
            Value::I64 { .. } => Err(format!("input {i} must be float, not int64")),
        };
        Ok(match self {
            Op::Unary(u) => match input(0)? {
                Value::F32(t) => Value::F32(u.apply(t.clone())),
                Value::I64 { shape, data } => Value::I64 {
                    shape: shape.clone(),
                    data: u.apply_ints(data.clone())?,
                },
            },
            Op::Binary(b) => b.apply_values(input(0)?, input(1)?)?,
            Op::BinaryRelu(b) => {
                let value = b.apply_values(input(0)?, input(1)?)?;
                return Op::Unary(Unary::Relu).eval_value(&[Some(&value)]);
            }
            Op::Compare(c) => c.apply(input(0)?, input(1)?)?,
            Op::Logic(l) => l.apply(ints(0)?, ints(1)?)?,
            Op::Not => {
                let (shape, data) = ints(0)?;
                Value::I64 {
                    shape: shape.to_vec(),
                    data: data.iter().map(|&v| i64::from(v == 0)).collect(),
                }
            }
            Op::Where => elementwise::where_(ints(0)?, input(1)?, input(2)?)?,
            Op::Cast(to) => to.apply(input(0)?)?,
            Op::Reduce { kind, axes } => {
                let x = float(0)?;
                let given = match inputs.get(1).copied().flatten() {
                    Some(_) => Some(ints(1)?.1),
                    None => None,
                };
                match axes.resolve(given, x.shape().len())? {
                    Some(list) => Value::F32(kind.apply(x, &list, axes.keepdims)?),
                    None => Value::F32(x.clone()),
                }
            }
            Op::ArgExtreme {
                max,
                axis,
                keepdims,
                last,
            } => {
                let x = float(0)?;
                let axis = reduce::normalize_axes(&[*axis], x.shape().len())?[0];
                let (shape, data) = reduce::arg_extreme(x, axis, *keepdims, *max, *last)?;
                Value::I64 { shape, data }
            }
            Op::Shape { start, end } => generate::shape(input(0)?.shape(), *start, *end),
            Op::Size => Value::I64 {
                shape: vec![],
                data: vec![input(0)?.shape().iter().product::<usize>() as i64],
            },
            Op::Range => generate::range(input(0)?, input(1)?, input(2)?)?,
            Op::Trilu { upper } => {
                let k = match inputs.get(1).copied().flatten() {
                    Some(_) => *ints(1)?.1.first().ok_or("k is empty")?,
                    None => 0,
                };
                index::trilu(input(0)?, k, *upper)?
            }
            Op::CumSum { exclusive, reverse } => {
                let x = input(0)?;
                let axis = *ints(1)?.1.first().ok_or("the axis is empty")?;
                let axis = reduce::normalize_axes(&[axis], x.shape().len())?[0];
                index::cumsum(x, axis, *exclusive, *reverse)?
            }
            Op::GatherElements { axis } => {
                let data = input(0)?;
                let axis = reduce::normalize_axes(&[*axis], data.shape().len())?[0];
                index::gather_elements(data, ints(1)?, axis)?
            }
            Op::ScatterElements { axis, reduction } => {
                let data = input(0)?;
                let axis = reduce::normalize_axes(&[*axis], data.shape().len())?[0];
                index::scatter_elements(data, ints(1)?, input(2)?, axis, *reduction)?
            }
            Op::Composite(c) => {
                return Err(format!("{} should have been lowered at load", c.name()));
            }
            other => return Err(format!("{} is not a value op", other.name())),
        })
    }
}
