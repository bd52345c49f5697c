//! Shape and type inference: each op's output types and, where its input shapes (and constant
//! parameters) are known, its output shapes. A mismatch that the shapes prove is an error.

use super::elementwise::broadcast_shape;
use super::{Op, Spatial, layout};
use crate::Value;
use crate::graph::{DType, ValueInfo};

/// A float value of `shape`.
fn float(shape: Option<Vec<usize>>) -> ValueInfo {
    ValueInfo {
        dtype: DType::F32,
        shape,
    }
}

/// Inputs of one node as inference sees them: what is known of each value, and the constants.
struct Args<'a> {
    infos: &'a [Option<&'a ValueInfo>],
    constants: &'a [Option<&'a Value>],
}

impl<'a> Args<'a> {
    fn shape(&self, i: usize) -> Option<&'a [usize]> {
        self.infos.get(i).copied().flatten()?.shape.as_deref()
    }

    fn dtype(&self, i: usize) -> DType {
        self.infos
            .get(i)
            .copied()
            .flatten()
            .map_or(DType::F32, |v| v.dtype)
    }

    /// Input `i` as a constant int64 list: `Ok(None)` when absent or not constant.
    fn ints(&self, i: usize) -> Result<Option<&'a [i64]>, String> {
        match self.constants.get(i).copied().flatten() {
            Some(Value::I64 { data, .. }) => Ok(Some(data)),
            Some(Value::F32(_)) => Err(format!("input {i} must be int64, not float")),
            None => Ok(None),
        }
    }

    /// Whether input `i` is given (not an omitted optional input).
    fn given(&self, i: usize) -> bool {
        self.infos.get(i).copied().flatten().is_some()
    }

    /// The shapes of the first `n` inputs, when all are known.
    fn shapes(&self, n: usize) -> Option<Vec<&'a [usize]>> {
        (0..n).map(|i| self.shape(i)).collect()
    }
}

impl Op {
    /// Output types and shapes from what is known of the inputs (`None`: an omitted input) and
    /// the constant ones (`constants[i]` is input `i`'s value when it is a constant).
    pub fn infer(
        &self,
        infos: &[Option<&ValueInfo>],
        constants: &[Option<&Value>],
    ) -> Result<Vec<ValueInfo>, String> {
        let args = Args { infos, constants };
        let x = args.shape(0).map(<[usize]>::to_vec);
        let shape = match self {
            Op::Identity => {
                return Ok(vec![infos.first().copied().flatten().cloned().unwrap_or(
                    ValueInfo {
                        dtype: DType::F32,
                        shape: None,
                    },
                )]);
            }
            Op::Constant(value) => return Ok(vec![ValueInfo::of(value)]),
            Op::ConstantOfShape { value } => {
                let shape = args
                    .ints(0)?
                    .and_then(|d| d.iter().map(|&v| usize::try_from(v).ok()).collect());
                return Ok(vec![ValueInfo {
                    dtype: ValueInfo::of(value).dtype,
                    shape,
                }]);
            }
            Op::Lrn { .. } | Op::Softmax { .. } => x,
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
            | Op::ScatterElements { .. } => return self.infer_value(&args).map(|v| vec![v]),
            Op::TopK { axis, .. } => {
                need_ints(&args, 1)?;
                let shape = match (x, args.ints(1)?) {
                    (Some(mut shape), Some(&[k])) => {
                        let axis = super::reduce::normalize_axes(&[*axis], shape.len())?[0];
                        let k = usize::try_from(k).map_err(|_| format!("k = {k} is negative"))?;
                        if k > shape[axis] {
                            return Err(format!(
                                "k = {k} exceeds the axis' {} values",
                                shape[axis]
                            ));
                        }
                        shape[axis] = k;
                        Some(shape)
                    }
                    _ => None,
                };
                let values = ValueInfo {
                    dtype: args.dtype(0),
                    shape: shape.clone(),
                };
                return Ok(vec![
                    values,
                    ValueInfo {
                        dtype: DType::I64,
                        shape,
                    },
                ]);
            }
            Op::Composite(c) => {
                return Err(format!("{} should have been lowered at load", c.name()));
            }
            Op::MatMul => args
                .shapes(2)
                .map(|s| matmul_shape(s[0], s[1]))
                .transpose()?,
            Op::Gemm { beta, trans, .. } => gemm_shape(&args, *beta, *trans)?,
            Op::Conv { .. } | Op::Pool { .. } => self.window_shape(&args)?,
            Op::GlobalAveragePool => x
                .map(|s| match *s {
                    [n, c, _, _] => Ok(vec![n, c, 1, 1]),
                    ref other => Err(format!("input must be 4-D (NCHW), got {other:?}")),
                })
                .transpose()?,
            Op::BatchNorm { .. } => {
                check_channel_params(&args)?;
                x
            }
            _ => return self.infer_layout(&args),
        };
        Ok(vec![float(shape)])
    }

    /// The output of an op on values of either element type (see `value_op`), checking the
    /// operands' types agree.
    fn infer_value(&self, args: &Args) -> Result<ValueInfo, String> {
        let x = args.shape(0).map(<[usize]>::to_vec);
        let same_types = |inputs: std::ops::Range<usize>| {
            let types: Vec<DType> = inputs
                .filter(|&i| args.given(i))
                .map(|i| args.dtype(i))
                .collect();
            if types.windows(2).any(|w| w[0] != w[1]) {
                return Err(format!("{} mixes float and int64 operands", self.name()));
            }
            Ok(())
        };
        let need = |i: usize, dtype: DType| {
            if args.given(i) && args.dtype(i) != dtype {
                return Err(format!("input {i} must be {dtype:?}"));
            }
            Ok(())
        };
        let of = |dtype, shape| Ok(ValueInfo { dtype, shape });
        match self {
            Op::Unary(_) => of(args.dtype(0), x),
            Op::Binary(b) | Op::BinaryRelu(b) => {
                if *b != super::elementwise::Binary::Pow {
                    same_types(0..2)?;
                }
                if b.is_bitwise() {
                    need(0, DType::I64)?;
                }
                of(args.dtype(0), broadcast_all(args, 2)?)
            }
            Op::Compare(_) => {
                same_types(0..2)?;
                of(DType::I64, broadcast_all(args, 2)?)
            }
            Op::Logic(_) | Op::Not => {
                (0..args.infos.len()).try_for_each(|i| need(i, DType::I64))?;
                of(DType::I64, broadcast_all(args, args.infos.len())?)
            }
            Op::Where => {
                need(0, DType::I64)?;
                same_types(1..3)?;
                of(args.dtype(1), broadcast_all(args, 3)?)
            }
            Op::Cast(to) => of(to.dtype(), x),
            Op::Reduce { axes, .. } => {
                need(0, DType::F32)?;
                let shape = match (x, args.ints(1)?) {
                    (Some(x), given)
                        if axes.attr.is_some() || !args.given(1) || given.is_some() =>
                    {
                        match axes.resolve(given, x.len())? {
                            Some(list) => Some(axes.output_shape(&x, &list)),
                            None => Some(x),
                        }
                    }
                    _ => None,
                };
                of(DType::F32, shape)
            }
            Op::ArgExtreme { axis, keepdims, .. } => {
                need(0, DType::F32)?;
                let shape = x
                    .map(|x| {
                        let axes = super::reduce::normalize_axes(&[*axis], x.len())?;
                        Ok::<_, String>(super::reduce::reduced_shape(&x, &axes, *keepdims))
                    })
                    .transpose()?;
                of(DType::I64, shape)
            }
            Op::Shape { start, end } => of(
                DType::I64,
                x.map(|x| super::generate::shape(&x, *start, *end).shape().to_vec()),
            ),
            Op::Size => of(DType::I64, Some(vec![])),
            Op::Range => {
                same_types(0..3)?;
                for i in 0..3 {
                    if let Some(s) = args.shape(i).filter(|s| s.iter().product::<usize>() != 1) {
                        return Err(format!("input {i} has shape {s:?}, not a scalar"));
                    }
                }
                of(args.dtype(0), None)
            }
            Op::Trilu { .. } | Op::CumSum { .. } => {
                need(1, DType::I64)?;
                of(args.dtype(0), x)
            }
            Op::ScatterElements { .. } => {
                need(1, DType::I64)?;
                if args.given(2) && args.dtype(2) != args.dtype(0) {
                    return Err("data and updates differ in type".into());
                }
                of(args.dtype(0), x)
            }
            Op::GatherElements { .. } => {
                need(1, DType::I64)?;
                if let (Some(data), Some(indices)) = (&x, args.shape(1))
                    && data.len() != indices.len()
                {
                    return Err(format!(
                        "indices {indices:?} and data {data:?} differ in rank"
                    ));
                }
                of(args.dtype(0), args.shape(1).map(<[usize]>::to_vec))
            }
            _ => Err(format!("{} is not a value op", self.name())),
        }
    }

    /// A layout op's outputs: the input's type, and the shapes its plan gives when the data
    /// inputs' shapes and all parameters are known.
    fn infer_layout(&self, args: &Args) -> Result<Vec<ValueInfo>, String> {
        let known = |shape: Option<Vec<usize>>| ValueInfo {
            dtype: args.dtype(0),
            shape,
        };
        let given = args.infos.len();
        let data = self.data_inputs(given);
        let params_known = (data..given).all(|i| !args.given(i) || args.constants[i].is_some());
        let shapes = match args.shapes(data) {
            Some(shapes) if params_known && !shapes.is_empty() => shapes,
            _ => return Ok(vec![known(None); self.outputs()]),
        };
        let params = layout::Params(args.constants);
        if self.is_view() {
            return Ok(vec![known(Some(self.view_shape(shapes[0], &params)?))]);
        }
        Ok(self
            .plan(&shapes, &params)?
            .into_iter()
            .map(|r| known(Some(r.shape)))
            .collect())
    }

    /// Conv and pooling output shapes (NCHW), checking channels, groups and kernel.
    fn window_shape(&self, args: &Args) -> Result<Option<Vec<usize>>, String> {
        let Some(x) = args.shape(0) else {
            return Ok(None);
        };
        let &[n, c, h, w] = x else {
            return Err(format!("input must be 4-D (NCHW), got {x:?}"));
        };
        let (spatial, filters, kernel) = match self {
            Op::Conv { spatial, group, .. } => {
                let Some(weights) = args.shape(1) else {
                    return Ok(None);
                };
                let &[m, cg, kh, kw] = weights else {
                    return Err(format!("weights must be 4-D, got {weights:?}"));
                };
                if c != cg * group || m % group != 0 {
                    return Err(format!(
                        "{c} input channels, {m} filters of {cg} channels and group {group} do \
                         not fit"
                    ));
                }
                if spatial.kernel.is_some_and(|k| k != [kh, kw]) {
                    return Err(format!(
                        "kernel_shape {:?} differs from the weights' {kh}×{kw}",
                        spatial.kernel
                    ));
                }
                if let Some(bias) = args.shape(2)
                    && bias != [m]
                {
                    return Err(format!("bias has shape {bias:?}, expected [{m}]"));
                }
                (spatial, m, [kh, kw])
            }
            Op::Pool { spatial, .. } => (spatial, c, spatial.kernel.unwrap_or([1, 1])),
            _ => return Ok(None),
        };
        check_window(spatial, kernel, [h, w])?;
        let [oh, ow] = spatial.window(kernel, [h, w]).output(h, w)?;
        Ok(Some(vec![n, filters, oh, ow]))
    }
}

/// Refuses windows whose arithmetic would overflow or underflow (a hostile model's huge pads
/// or empty kernel), before any size is computed from them.
fn check_window(spatial: &Spatial, kernel: [usize; 2], input: [usize; 2]) -> Result<(), String> {
    const LIMIT: usize = 1 << 24;
    let sizes = kernel
        .iter()
        .chain(&input)
        .chain(&spatial.strides)
        .chain(&spatial.dilations);
    if kernel.contains(&0) || input.contains(&0) || sizes.chain(&spatial.pads).any(|&v| v > LIMIT) {
        return Err(format!(
            "window {spatial:?} with kernel {kernel:?} over {input:?} is out of range"
        ));
    }
    Ok(())
}

/// Input `i`, when given, must be int64.
fn need_ints(args: &Args, i: usize) -> Result<(), String> {
    if args.given(i) && args.dtype(i) != DType::I64 {
        return Err(format!("input {i} must be int64"));
    }
    Ok(())
}

/// The shape all inputs broadcast to, when every one is known.
fn broadcast_all(args: &Args, inputs: usize) -> Result<Option<Vec<usize>>, String> {
    let Some(shapes) = args.shapes(inputs) else {
        return Ok(None);
    };
    let mut out: Vec<usize> = Vec::new();
    for s in shapes {
        out = broadcast_shape(&out, s)?;
    }
    Ok(Some(out))
}

/// ONNX MatMul's output shape (numpy rules: 1-D operands promoted, batches broadcast).
fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let (mut sa, mut sb) = (a.to_vec(), b.to_vec());
    let (a_vector, b_vector) = (sa.len() == 1, sb.len() == 1);
    if a_vector {
        sa.insert(0, 1);
    }
    if b_vector {
        sb.push(1);
    }
    if sa.len() < 2 || sb.len() < 2 {
        return Err(format!("MatMul of shapes {a:?} and {b:?}"));
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != k2 {
        return Err(format!("MatMul inner dimensions differ: {a:?} · {b:?}"));
    }
    let mut shape = broadcast_shape(&sa[..sa.len() - 2], &sb[..sb.len() - 2])?;
    if !a_vector {
        shape.push(m);
    }
    if !b_vector {
        shape.push(n);
    }
    Ok(shape)
}

/// ONNX Gemm's output shape `[M, N]`, checking the inner dimensions and C's broadcast.
fn gemm_shape(
    args: &Args,
    beta: f32,
    (ta, tb): (bool, bool),
) -> Result<Option<Vec<usize>>, String> {
    let Some(s) = args.shapes(2) else {
        return Ok(None);
    };
    let (&[ra, ca], &[rb, cb]) = (s[0], s[1]) else {
        return Err(format!(
            "Gemm needs 2-D A and B, got {:?} and {:?}",
            s[0], s[1]
        ));
    };
    let (m, k) = if ta { (ca, ra) } else { (ra, ca) };
    let (k2, n) = if tb { (cb, rb) } else { (rb, cb) };
    if k != k2 {
        return Err(format!("Gemm inner dimensions differ: {k} and {k2}"));
    }
    if beta != 0.0
        && let Some(c) = args.shape(2)
        && broadcast_shape(&[m, n], c).ok().as_deref() != Some(&[m, n][..])
    {
        return Err(format!(
            "Gemm C of shape {c:?} does not broadcast to [{m}, {n}]"
        ));
    }
    Ok(Some(vec![m, n]))
}

/// BatchNormalization's scale, bias, mean and variance hold one value per channel.
fn check_channel_params(args: &Args) -> Result<(), String> {
    let Some(&c) = args.shape(0).and_then(|s| s.get(1)) else {
        return Ok(());
    };
    for (i, name) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
        if let Some(p) = args.shape(i) {
            let len: usize = p.iter().product();
            if len != c {
                return Err(format!("{name} has {len} values for {c} channels"));
            }
        }
    }
    Ok(())
}
