//! Layout ops as rasters: given its input shapes and constant parameters, each layout op is one
//! [`Raster`] per output — strided blocks of its inputs, cut into 3-D regions. The same plan
//! serves shape inference, the load-time lowering to `Raster` nodes, and running the op when
//! its shapes are only known at run time.
//!
//! Ops whose output element reads one input element per axis (Slice, Split, Gather, Pad,
//! Expand) are planned from one index list per axis (`separable`); the others (Transpose,
//! Concat, Tile, DepthToSpace, SpaceToDepth, the views) are a few blocks each.

use super::elementwise::broadcast_shape;
use super::raster::{Block, Raster, elements, strides};
use super::{Op, shape};
use crate::Value;

/// How Pad fills the border.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

impl PadMode {
    /// The mode named by Pad's `mode` attribute.
    pub fn parse(name: &str) -> Option<PadMode> {
        Some(match name {
            "constant" => PadMode::Constant,
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            "wrap" => PadMode::Wrap,
            _ => return None,
        })
    }
}

/// Slice's parameters when they are attributes (before opset 10).
#[derive(Debug, Clone, PartialEq)]
pub struct SliceAttrs {
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
    pub axes: Option<Vec<i64>>,
}

/// Pad's parameters when they are attributes (before opset 11).
#[derive(Debug, Clone, PartialEq)]
pub struct PadAttrs {
    pub pads: Vec<i64>,
    pub value: f32,
}

/// A node's parameter inputs, by input index (`None`: omitted).
pub struct Params<'a>(pub &'a [Option<&'a Value>]);

impl<'a> Params<'a> {
    /// Input `i` as int64 values, if given.
    fn ints(&self, i: usize) -> Result<Option<&'a [i64]>, String> {
        match self.0.get(i).copied().flatten() {
            Some(Value::I64 { data, .. }) => Ok(Some(data)),
            Some(Value::F32(_)) => Err(format!("input {i} must be int64, not float")),
            None => Ok(None),
        }
    }

    fn required(&self, i: usize, what: &str) -> Result<&'a [i64], String> {
        self.ints(i)?
            .ok_or_else(|| format!("{what} (input {i}) is missing"))
    }

    /// Input `i` as one number, if given.
    fn scalar(&self, i: usize) -> Result<Option<f32>, String> {
        match self.0.get(i).copied().flatten() {
            Some(Value::F32(t)) if t.data().len() == 1 => Ok(Some(t.data()[0])),
            Some(Value::I64 { data, .. }) if data.len() == 1 => Ok(Some(data[0] as f32)),
            Some(_) => Err(format!("input {i} must hold one value")),
            None => Ok(None),
        }
    }
}

impl Op {
    /// Whether the op only moves values (it runs as a raster).
    pub fn is_layout(&self) -> bool {
        self.is_view()
            || matches!(
                self,
                Op::Concat { .. }
                    | Op::Transpose { .. }
                    | Op::Slice { .. }
                    | Op::Split { .. }
                    | Op::Gather { .. }
                    | Op::Pad { .. }
                    | Op::Expand
                    | Op::Tile
                    | Op::DepthToSpace { .. }
                    | Op::SpaceToDepth { .. }
                    | Op::Raster(_)
            )
    }

    /// Whether the op keeps the values as they lie and only renames the shape.
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. }
        )
    }

    /// How many of `given` inputs of a layout op are data (the rest are parameters).
    pub fn data_inputs(&self, given: usize) -> usize {
        match self {
            Op::Concat { .. } | Op::Raster(_) => given,
            _ => given.min(1),
        }
    }

    /// How many outputs the op has.
    pub fn outputs(&self) -> usize {
        match self {
            Op::Split { outputs, .. } => *outputs,
            _ => 1,
        }
    }

    /// The output shape of a view op for an input of `x`.
    pub fn view_shape(&self, x: &[usize], params: &Params) -> Result<Vec<usize>, String> {
        match self {
            Op::Flatten { axis } => shape::flatten(x, *axis),
            Op::Reshape { allow_zero } => {
                shape::reshape(x, params.required(1, "shape")?, *allow_zero)
            }
            Op::Unsqueeze { axes } => match axes {
                Some(a) => shape::unsqueeze(x, a),
                None => shape::unsqueeze(x, params.required(1, "axes")?),
            },
            Op::Squeeze { axes } => match axes {
                Some(a) => shape::squeeze(x, Some(a)),
                None => shape::squeeze(x, params.ints(1)?),
            },
            _ => Err(format!("{} is not a view", self.name())),
        }
    }

    /// The rasters (one per output) of a layout op for data inputs of `shapes`.
    pub fn plan(&self, shapes: &[&[usize]], params: &Params) -> Result<Vec<Raster>, String> {
        let x = *shapes.first().ok_or("no data input")?;
        for s in shapes {
            elements(s)?;
        }
        let one = |r: Result<Raster, String>| r.map(|r| vec![r]);
        match self {
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                let shape = self.view_shape(x, params)?;
                one(Raster::identity(shape))
            }
            Op::Transpose { perm } => one(transpose(x, perm.as_deref())),
            Op::Concat { axis } => one(concat(shapes, *axis)),
            Op::Slice { attrs } => one(slice(x, attrs.as_ref(), params)),
            Op::Split {
                axis,
                split,
                outputs,
            } => {
                let sizes = match split {
                    Some(s) => Some(s.as_slice()),
                    None => params.ints(1)?,
                };
                self::split(x, *axis, sizes, *outputs)
            }
            Op::Gather { axis } => {
                let indices = params.0.get(1).copied().flatten();
                let Some(Value::I64 { shape, data }) = indices else {
                    return Err("indices (input 1) must be an int64 constant".into());
                };
                one(gather(x, *axis, shape, data))
            }
            Op::Pad { mode, attrs } => one(pad(x, *mode, attrs.as_ref(), params)),
            Op::Expand => one(expand(x, params.required(1, "shape")?)),
            Op::Tile => one(tile(x, params.required(1, "repeats")?)),
            Op::DepthToSpace { block, crd } => one(depth_to_space(x, *block, *crd)),
            Op::SpaceToDepth { block } => one(space_to_depth(x, *block)),
            Op::Raster(r) => Ok(vec![r.clone()]),
            _ => Err(format!("{} is not a layout op", self.name())),
        }
    }

    /// Runs a layout op on values: a view renames the shape, any other runs its rasters.
    pub fn eval_layout(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
        let data: Vec<&Value> = inputs[..self.data_inputs(inputs.len())]
            .iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| format!("input {i} is missing")))
            .collect::<Result<_, _>>()?;
        let params = Params(inputs);
        if self.is_view() {
            let x = data.first().ok_or("no input")?;
            let shape = self.view_shape(x.shape(), &params)?;
            return Ok(vec![reshaped(x, shape)?]);
        }
        if let Op::Raster(r) = self {
            return Ok(vec![r.apply(&data)?]);
        }
        let shapes: Vec<&[usize]> = data.iter().map(|v| v.shape()).collect();
        self.plan(&shapes, &params)?
            .iter()
            .map(|r| r.apply(&data))
            .collect()
    }
}

/// The same values under another shape with as many elements.
fn reshaped(value: &Value, shape: Vec<usize>) -> Result<Value, String> {
    match value {
        Value::F32(t) => t
            .clone()
            .reshaped(shape)
            .map(Value::F32)
            .map_err(|e| e.to_string()),
        Value::I64 { data, .. } if elements(&shape)? == data.len() => Ok(Value::I64 {
            shape,
            data: data.clone(),
        }),
        Value::I64 { shape: from, .. } => Err(format!("cannot view {from:?} as {shape:?}")),
    }
}

/// A block reading all of input `input` (of `shape`) as it lies, to `dst` with `dst_strides`.
fn whole(input: usize, shape: &[usize], dst: usize, dst_strides: Vec<usize>) -> Block {
    Block {
        input,
        size: shape.to_vec(),
        src: 0,
        src_strides: strides(shape).iter().map(|&s| s as isize).collect(),
        dst,
        dst_strides,
    }
}

fn transpose(x: &[usize], perm: Option<&[i64]>) -> Result<Raster, String> {
    let perm = shape::transpose_perm(x.len(), perm)?;
    let out: Vec<usize> = perm.iter().map(|&a| x[a]).collect();
    let is = strides(x);
    let block = Block {
        input: 0,
        size: out.clone(),
        src: 0,
        src_strides: perm.iter().map(|&a| is[a] as isize).collect(),
        dst: 0,
        dst_strides: strides(&out),
    };
    Raster::new(out, &[block], 0.0)
}

fn concat(shapes: &[&[usize]], axis: i64) -> Result<Raster, String> {
    let (axis, out) = shape::concat_shape(shapes, axis)?;
    elements(&out)?;
    let os = strides(&out);
    let mut offset = 0;
    let blocks: Vec<Block> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let block = whole(i, s, offset * os[axis], os.clone());
            offset += s[axis];
            block
        })
        .collect();
    Raster::new(out, &blocks, 0.0)
}

/// One affine run of an index list: output positions `out..out + len` read
/// `src, src + step, …`.
struct Run {
    out: usize,
    src: usize,
    step: isize,
    len: usize,
}

/// An index list cut into affine runs (`None` entries, the fill, belong to no run).
fn runs(list: &[Option<usize>]) -> Vec<Run> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < list.len() {
        let Some(src) = list[p] else {
            p += 1;
            continue;
        };
        let step = match list.get(p + 1).copied().flatten() {
            Some(next) => next as isize - src as isize,
            None => 0,
        };
        let mut len = 1;
        while list.get(p + len).copied().flatten().map(|v| v as isize)
            == Some(src as isize + len as isize * step)
        {
            len += 1;
        }
        out.push(Run {
            out: p,
            src,
            step,
            len,
        });
        p += len;
    }
    out
}

/// The raster where output element `[o0, o1, …]` reads input element
/// `[lists[0][o0], lists[1][o1], …]` of an input of `view` (`None`: the fill value); the
/// output has `shape`, which holds as many elements as the lists span. The lists are only
/// made when the output is not empty (so their lengths are bounded by its element count).
fn separable(
    view: &[usize],
    shape: Vec<usize>,
    fill: f32,
    lists: impl FnOnce() -> Vec<Vec<Option<usize>>>,
) -> Result<Raster, String> {
    if elements(&shape)? == 0 {
        return Raster::new(shape, &[], fill);
    }
    let lists = lists();
    let out: Vec<usize> = lists.iter().map(Vec::len).collect();
    let (is, os) = (strides(view), strides(&out));
    let per_axis: Vec<Vec<Run>> = lists.iter().map(|l| runs(l)).collect();
    let count = per_axis
        .iter()
        .try_fold(1usize, |acc, r| acc.checked_mul(r.len()))
        .filter(|&c| c <= super::raster::MAX_REGIONS)
        .ok_or("the op needs too many regions")?;
    let mut blocks = Vec::with_capacity(count);
    let mut index = vec![0usize; lists.len()];
    for _ in 0..count {
        let chosen: Vec<&Run> = index.iter().zip(&per_axis).map(|(&i, r)| &r[i]).collect();
        blocks.push(Block {
            input: 0,
            size: chosen.iter().map(|r| r.len).collect(),
            src: chosen.iter().zip(&is).map(|(r, s)| r.src * s).sum(),
            src_strides: chosen
                .iter()
                .zip(&is)
                .map(|(r, &s)| r.step * s as isize)
                .collect(),
            dst: chosen.iter().zip(&os).map(|(r, s)| r.out * s).sum(),
            dst_strides: os.clone(),
        });
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < per_axis[axis].len() {
                break;
            }
            index[axis] = 0;
        }
    }
    Raster::new(shape, &blocks, fill)
}

/// The index list reading every element of an axis of `len` in order.
fn all(len: usize) -> Vec<Option<usize>> {
    (0..len).map(Some).collect()
}

/// Start, step and length of ONNX Slice on an axis of `dim` (clamped as the spec says).
fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> Result<(usize, i64, usize), String> {
    if step == 0 {
        return Err("slice step 0".into());
    }
    if dim == 0 {
        return Ok((0, step, 0));
    }
    let d = dim as i128;
    let (mut s, mut e, st) = (i128::from(start), i128::from(end), i128::from(step));
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let len = if st > 0 {
        (s, e) = (s.clamp(0, d), e.clamp(0, d));
        (e - s + st - 1).div_euclid(st)
    } else {
        (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
        (s - e - st - 1).div_euclid(-st)
    };
    Ok((s as usize, step, len.max(0) as usize))
}

fn slice(x: &[usize], attrs: Option<&SliceAttrs>, params: &Params) -> Result<Raster, String> {
    let (starts, ends, axes, steps) = match attrs {
        Some(a) => (
            a.starts.as_slice(),
            a.ends.as_slice(),
            a.axes.as_deref(),
            None,
        ),
        None => (
            params.required(1, "starts")?,
            params.required(2, "ends")?,
            params.ints(3)?,
            params.ints(4)?,
        ),
    };
    let count = starts.len();
    if ends.len() != count
        || axes.is_some_and(|a| a.len() != count)
        || steps.is_some_and(|s| s.len() != count)
    {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut axes_cut: Vec<Option<(usize, i64, usize)>> = vec![None; x.len()];
    for i in 0..count {
        let axis = match axes {
            Some(a) => shape::normalize_axis(a[i], x.len())?,
            None => i,
        };
        if axis >= x.len() || axes_cut[axis].is_some() {
            return Err(format!("axis {axis} is repeated or out of range"));
        }
        let step = steps.map_or(1, |s| s[i]);
        axes_cut[axis] = Some(slice_axis(x[axis], starts[i], ends[i], step)?);
    }
    let shape = x
        .iter()
        .zip(&axes_cut)
        .map(|(&d, cut)| cut.map_or(d, |c| c.2))
        .collect();
    separable(x, shape, 0.0, || {
        x.iter()
            .zip(&axes_cut)
            .map(|(&d, cut)| match *cut {
                Some((start, step, len)) => (0..len)
                    .map(|k| Some((start as i64 + k as i64 * step) as usize))
                    .collect(),
                None => all(d),
            })
            .collect()
    })
}

fn split(
    x: &[usize],
    axis: i64,
    sizes: Option<&[i64]>,
    outputs: usize,
) -> Result<Vec<Raster>, String> {
    let axis = shape::normalize_axis(axis, x.len())?;
    let dim = x[axis];
    let sizes: Vec<usize> = match sizes {
        Some(s) => {
            let s: Vec<usize> = s
                .iter()
                .map(|&v| usize::try_from(v).map_err(|_| format!("split size {v}")))
                .collect::<Result<_, _>>()?;
            if s.len() != outputs || s.iter().sum::<usize>() != dim {
                return Err(format!(
                    "split {s:?} does not cut {dim} into {outputs} outputs"
                ));
            }
            s
        }
        None if outputs == 0 => return Err("Split has no outputs".into()),
        None => {
            let chunk = dim.div_ceil(outputs);
            (0..outputs)
                .map(|k| dim.saturating_sub(k * chunk).min(chunk))
                .collect()
        }
    };
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let first = start;
            start += len;
            let mut shape = x.to_vec();
            shape[axis] = len;
            separable(x, shape, 0.0, || {
                let mut lists: Vec<Vec<Option<usize>>> = x.iter().map(|&d| all(d)).collect();
                lists[axis] = (first..first + len).map(Some).collect();
                lists
            })
        })
        .collect()
}

fn gather(x: &[usize], axis: i64, ind_shape: &[usize], indices: &[i64]) -> Result<Raster, String> {
    let axis = shape::normalize_axis(axis, x.len())?;
    let dim = x[axis];
    let list = indices
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < dim)
                .map(Some)
                .ok_or_else(|| format!("index {i} is out of range for an axis of {dim}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shape: Vec<usize> = x[..axis]
        .iter()
        .chain(ind_shape)
        .chain(&x[axis + 1..])
        .copied()
        .collect();
    let (outer, inner) = (x[..axis].iter().product(), x[axis + 1..].iter().product());
    separable(&[outer, dim, inner], shape, 0.0, || {
        vec![all(outer), list, all(inner)]
    })
}

/// The input element padding reads at position `i` (relative to the input's start) of an axis
/// of `dim` (`None`: the constant).
fn pad_source(i: i64, dim: usize, mode: PadMode) -> Option<usize> {
    let d = dim as i64;
    if (0..d).contains(&i) {
        return Some(i as usize);
    }
    let j = match mode {
        PadMode::Constant => return None,
        PadMode::Edge => i.clamp(0, d - 1),
        PadMode::Wrap => i.rem_euclid(d),
        PadMode::Reflect if d == 1 => 0,
        PadMode::Reflect => {
            let m = i.rem_euclid(2 * (d - 1));
            if m < d { m } else { 2 * (d - 1) - m }
        }
    };
    Some(j as usize)
}

fn pad(
    x: &[usize],
    mode: PadMode,
    attrs: Option<&PadAttrs>,
    params: &Params,
) -> Result<Raster, String> {
    let (pads, value, axes) = match attrs {
        Some(a) => (a.pads.as_slice(), a.value, None),
        None => (
            params.required(1, "pads")?,
            params.scalar(2)?.unwrap_or(0.0),
            params.ints(3)?,
        ),
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&v| shape::normalize_axis(v, x.len()))
            .collect::<Result<_, _>>()?,
        None => (0..x.len()).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("{} pads for {} axes", pads.len(), axes.len()));
    }
    let mut begin = vec![0i64; x.len()];
    let mut end = vec![0i64; x.len()];
    for (k, &axis) in axes.iter().enumerate() {
        (begin[axis], end[axis]) = (pads[k], pads[k + axes.len()]);
    }
    let mut shape = Vec::with_capacity(x.len());
    for axis in 0..x.len() {
        let len = i128::from(begin[axis]) + i128::from(end[axis]) + x[axis] as i128;
        let len = usize::try_from(len).map_err(|_| format!("axis {axis} pads to {len}"))?;
        if x[axis] == 0 && len > 0 && mode != PadMode::Constant {
            return Err(format!("cannot pad the empty axis {axis} in {mode:?} mode"));
        }
        shape.push(len);
    }
    separable(x, shape.clone(), value, || {
        (0..x.len())
            .map(|a| {
                (0..shape[a])
                    .map(|o| pad_source(o as i64 - begin[a], x[a], mode))
                    .collect()
            })
            .collect()
    })
}

fn expand(x: &[usize], target: &[i64]) -> Result<Raster, String> {
    let target: Vec<usize> = target
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} in the Expand shape")))
        .collect::<Result<_, _>>()?;
    let shape = broadcast_shape(x, &target)?;
    let mut view = vec![1; shape.len() - x.len()];
    view.extend_from_slice(x);
    separable(&view, shape.clone(), 0.0, || {
        view.iter()
            .zip(&shape)
            .map(|(&d, &o)| if d == 1 { vec![Some(0); o] } else { all(o) })
            .collect()
    })
}

/// Tile as one block of twice the rank: each axis split into (repeat, element).
fn tile(x: &[usize], repeats: &[i64]) -> Result<Raster, String> {
    if repeats.len() != x.len() {
        return Err(format!("{} repeats for rank {}", repeats.len(), x.len()));
    }
    let repeats: Vec<usize> = repeats
        .iter()
        .map(|&r| usize::try_from(r).map_err(|_| format!("repeat {r}")))
        .collect::<Result<_, _>>()?;
    let shape: Vec<usize> = x
        .iter()
        .zip(&repeats)
        .map(|(&d, &r)| d.checked_mul(r).ok_or("tiled shape overflows"))
        .collect::<Result<_, _>>()?;
    elements(&shape)?;
    let (is, os) = (strides(x), strides(&shape));
    let mut block = Block {
        input: 0,
        size: Vec::new(),
        src: 0,
        src_strides: Vec::new(),
        dst: 0,
        dst_strides: Vec::new(),
    };
    for axis in 0..x.len() {
        block.size.extend([repeats[axis], x[axis]]);
        block.src_strides.extend([0, is[axis] as isize]);
        block.dst_strides.extend([x[axis] * os[axis], os[axis]]);
    }
    Raster::new(shape, &[block], 0.0)
}

fn nchw(x: &[usize]) -> Result<[usize; 4], String> {
    match *x {
        [n, c, h, w] => Ok([n, c, h, w]),
        ref other => Err(format!("input must be 4-D (NCHW), got {other:?}")),
    }
}

/// DepthToSpace: channel groups become `block × block` pixel tiles (DCR: the block offset is
/// the outer part of the channel; CRD: the inner).
fn depth_to_space(x: &[usize], b: usize, crd: bool) -> Result<Raster, String> {
    let [n, c, h, w] = nchw(x)?;
    if b == 0 || !c.is_multiple_of(b * b) {
        return Err(format!("{c} channels do not split into {b}×{b} blocks"));
    }
    let oc = c / (b * b);
    let shape = vec![n, oc, h * b, w * b];
    let (is, os) = (strides(x), strides(&shape));
    // Axes (n, c', h, bh, w, bw) of the output.
    let (c_stride, bh_stride, bw_stride) = if crd {
        (b * b * is[1], b * is[1], is[1])
    } else {
        (is[1], b * oc * is[1], oc * is[1])
    };
    let block = Block {
        input: 0,
        size: vec![n, oc, h, b, w, b],
        src: 0,
        src_strides: [is[0], c_stride, is[2], bh_stride, 1, bw_stride]
            .map(|s| s as isize)
            .to_vec(),
        dst: 0,
        dst_strides: vec![os[0], os[1], b * os[2], os[2], b, 1],
    };
    Raster::new(shape, &[block], 0.0)
}

/// SpaceToDepth: `block × block` pixel tiles become channel groups (block offset outer).
fn space_to_depth(x: &[usize], b: usize) -> Result<Raster, String> {
    let [n, c, h, w] = nchw(x)?;
    if b == 0 || !h.is_multiple_of(b) || !w.is_multiple_of(b) {
        return Err(format!("{h}×{w} does not split into {b}×{b} blocks"));
    }
    let shape = vec![n, c * b * b, h / b, w / b];
    let (is, os) = (strides(x), strides(&shape));
    // Axes (n, c, oh, bh, ow, bw) of the input.
    let block = Block {
        input: 0,
        size: vec![n, c, h / b, b, w / b, b],
        src: 0,
        src_strides: [is[0], is[1], b * is[2], is[2], b, 1]
            .map(|s| s as isize)
            .to_vec(),
        dst: 0,
        dst_strides: vec![os[0], os[1], os[2], b * c * os[1], 1, c * os[1]],
    };
    Raster::new(shape, &[block], 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    /// A float input of `shape` holding 0, 1, 2, … (each value names its element).
    fn iota(shape: &[usize]) -> Value {
        let len = shape.iter().product::<usize>();
        Value::F32(Tensor::new(shape.to_vec(), (0..len).map(|v| v as f32).collect()).unwrap())
    }

    fn ints(values: &[i64]) -> Value {
        Value::I64 {
            shape: vec![values.len()],
            data: values.to_vec(),
        }
    }

    /// Runs `op` on `x` and constant parameters; returns the outputs' shapes and values.
    fn run(op: &Op, x: &[usize], params: &[Option<Value>]) -> Vec<(Vec<usize>, Vec<f32>)> {
        let x = iota(x);
        let mut inputs = vec![Some(&x)];
        inputs.extend(params.iter().map(Option::as_ref));
        op.eval_layout(&inputs)
            .unwrap()
            .into_iter()
            .map(|v| match v {
                Value::F32(t) => (t.shape().to_vec(), t.data().to_vec()),
                Value::I64 { .. } => panic!("float in, int out"),
            })
            .collect()
    }

    /// The values a naive reference gives: `source(out_index)` is the input multi-index read
    /// (`None`: `fill`), for an input of `x` and an output of `shape`.
    fn reference(
        x: &[usize],
        shape: &[usize],
        fill: f32,
        source: impl Fn(&[usize]) -> Option<Vec<usize>>,
    ) -> Vec<f32> {
        let (is, os) = (strides(x), strides(shape));
        (0..shape.iter().product::<usize>())
            .map(|flat| {
                let index: Vec<usize> = (0..shape.len()).map(|a| flat / os[a] % shape[a]).collect();
                source(&index).map_or(fill, |i| {
                    i.iter().zip(&is).map(|(i, s)| i * s).sum::<usize>() as f32
                })
            })
            .collect()
    }

    #[test]
    fn transpose_and_concat_match_the_definition() {
        let x = [2, 3, 4, 5];
        let out = run(
            &Op::Transpose {
                perm: Some(vec![2, 0, 3, 1]),
            },
            &x,
            &[],
        );
        let want = reference(&x, &[4, 2, 5, 3], 0.0, |o| {
            Some(vec![o[1], o[3], o[0], o[2]])
        });
        assert_eq!(out, [(vec![4, 2, 5, 3], want)]);

        let (a, b) = (iota(&[2, 1, 3]), iota(&[2, 2, 3]));
        let out = Op::Concat { axis: -2 }
            .eval_layout(&[Some(&a), Some(&b)])
            .unwrap();
        let Value::F32(t) = &out[0] else { panic!() };
        assert_eq!(t.shape(), [2, 3, 3]);
        let want: Vec<f32> = (0..18)
            .map(|f| {
                let (i, j, k) = (f / 9, f / 3 % 3, f % 3);
                if j == 0 {
                    (i * 3 + k) as f32
                } else {
                    ((i * 2 + j - 1) * 3 + k) as f32
                }
            })
            .collect();
        assert_eq!(t.data(), want);
    }

    #[test]
    fn slice_clamps_and_steps_backwards() {
        let x = [5, 6, 4];
        let op = Op::Slice { attrs: None };
        let params = [
            ints(&[4, -100, 1]),
            ints(&[0, 100, 4]),
            ints(&[0, 1, 2]),
            ints(&[-2, 2, 2]),
        ];
        let out = run(&op, &x, &params.map(Some));
        let want = reference(&x, &[2, 3, 2], 0.0, |o| {
            Some(vec![4 - 2 * o[0], 2 * o[1], 1 + 2 * o[2]])
        });
        assert_eq!(out, [(vec![2, 3, 2], want)]);
        let legacy = Op::Slice {
            attrs: Some(SliceAttrs {
                starts: vec![1],
                ends: vec![-1],
                axes: Some(vec![-1]),
            }),
        };
        let out = run(&legacy, &x, &[]);
        assert_eq!(
            out[0].1,
            reference(&x, &[5, 6, 2], 0.0, |o| Some(vec![o[0], o[1], o[2] + 1]))
        );
        let zero_step = [ints(&[0]), ints(&[1]), ints(&[0]), ints(&[0])];
        assert!(
            op.eval_layout(&[
                Some(&iota(&x)),
                Some(&zero_step[0]),
                Some(&zero_step[1]),
                Some(&zero_step[2]),
                Some(&zero_step[3])
            ])
            .is_err()
        );
    }

    #[test]
    fn split_cuts_given_sizes_or_equal_parts() {
        let x = [3, 7];
        let op = Op::Split {
            axis: 1,
            split: None,
            outputs: 3,
        };
        let out = run(&op, &x, &[Some(ints(&[2, 0, 5]))]);
        assert_eq!(
            out[0],
            (
                vec![3, 2],
                reference(&x, &[3, 2], 0.0, |o| Some(o.to_vec()))
            )
        );
        assert_eq!(out[1], (vec![3, 0], vec![]));
        assert_eq!(
            out[2].1,
            reference(&x, &[3, 5], 0.0, |o| Some(vec![o[0], o[1] + 2]))
        );
        let equal = run(&op, &x, &[]);
        let shapes: Vec<_> = equal.iter().map(|o| o.0.clone()).collect();
        assert_eq!(shapes, [vec![3, 3], vec![3, 3], vec![3, 1]]);
        assert_eq!(
            equal[2].1,
            reference(&x, &[3, 1], 0.0, |o| Some(vec![o[0], 6]))
        );
    }

    #[test]
    fn gather_takes_negative_and_repeated_indices_on_any_axis() {
        let x = [3, 4, 2];
        let indices = Value::I64 {
            shape: vec![2, 2],
            data: vec![3, -1, 0, 1],
        };
        let out = run(&Op::Gather { axis: 1 }, &x, &[Some(indices)]);
        let pick = [3, 3, 0, 1];
        let want = reference(&x, &[3, 2, 2, 2], 0.0, |o| {
            Some(vec![o[0], pick[o[1] * 2 + o[2]], o[3]])
        });
        assert_eq!(out, [(vec![3, 2, 2, 2], want)]);
        let scalar = Value::I64 {
            shape: vec![],
            data: vec![-3],
        };
        let out = run(&Op::Gather { axis: 0 }, &x, &[Some(scalar)]);
        assert_eq!(out[0], (vec![4, 2], (0..8).map(|v| v as f32).collect()));
        let far = Value::I64 {
            shape: vec![1],
            data: vec![4],
        };
        assert!(
            Op::Gather { axis: 1 }
                .eval_layout(&[Some(&iota(&x)), Some(&far)])
                .is_err()
        );
    }

    #[test]
    fn pad_fills_reflects_repeats_edges_and_wraps() {
        let x = [2, 3, 4];
        let pads = ints(&[0, 2, -1, 1, 1, 3]);
        let shape = [3, 6, 6];
        let value = Value::F32(Tensor::new(vec![], vec![-1.0]).unwrap());
        /// Which input index (of an axis of `d`) relative position `i` reads.
        type AxisSource = fn(i64, i64) -> Option<i64>;
        let cases: [(PadMode, AxisSource); 4] = [
            (PadMode::Constant, |i, d| (0..d).contains(&i).then_some(i)),
            (PadMode::Edge, |i, d| Some(i.clamp(0, d - 1))),
            (PadMode::Reflect, |i, d| {
                Some(if i < 0 {
                    -i
                } else if i >= d {
                    2 * (d - 1) - i
                } else {
                    i
                })
            }),
            (PadMode::Wrap, |i, d| Some(i.rem_euclid(d))),
        ];
        for (mode, axis_source) in cases {
            let op = Op::Pad { mode, attrs: None };
            let out = run(&op, &x, &[Some(pads.clone()), Some(value.clone())]);
            let want = reference(&x, &shape, -1.0, |o| {
                let begin = [0, 2, -1];
                (0..3)
                    .map(|a| axis_source(o[a] as i64 - begin[a], x[a] as i64).map(|v| v as usize))
                    .collect()
            });
            assert_eq!(out, [(shape.to_vec(), want)], "{mode:?}");
        }
        let huge = ints(&[0, 0, 0, 0, 1 << 40, 0]);
        assert!(
            Op::Pad {
                mode: PadMode::Constant,
                attrs: None
            }
            .eval_layout(&[Some(&iota(&x)), Some(&huge)])
            .is_err()
        );
    }

    #[test]
    fn expand_and_tile_repeat_values() {
        let x = [3, 1];
        let out = run(&Op::Expand, &x, &[Some(ints(&[2, 1, 4]))]);
        assert_eq!(
            out,
            [(
                vec![2, 3, 4],
                reference(&x, &[2, 3, 4], 0.0, |o| Some(vec![o[1], 0]))
            )]
        );
        let x = [2, 3];
        let out = run(&Op::Tile, &x, &[Some(ints(&[3, 2]))]);
        assert_eq!(
            out,
            [(
                vec![6, 6],
                reference(&x, &[6, 6], 0.0, |o| Some(vec![o[0] % 2, o[1] % 3]))
            )]
        );
        assert!(
            Op::Expand
                .eval_layout(&[Some(&iota(&x)), Some(&ints(&[1 << 30, 1 << 30, 3]))])
                .is_err()
        );
        assert!(
            Op::Tile
                .eval_layout(&[Some(&iota(&x)), Some(&ints(&[-1, 2]))])
                .is_err()
        );
    }

    #[test]
    fn depth_to_space_and_back() {
        let x = [2, 8, 2, 3];
        let shape = [2, 2, 4, 6];
        for crd in [false, true] {
            let out = run(&Op::DepthToSpace { block: 2, crd }, &x, &[]);
            let want = reference(&x, &shape, 0.0, |o| {
                let (bh, bw) = (o[2] % 2, o[3] % 2);
                let c = if crd {
                    o[1] * 4 + bh * 2 + bw
                } else {
                    (bh * 2 + bw) * 2 + o[1]
                };
                Some(vec![o[0], c, o[2] / 2, o[3] / 2])
            });
            assert_eq!(out, [(shape.to_vec(), want)], "crd {crd}");
        }
        let x = [1, 2, 4, 6];
        let out = run(&Op::SpaceToDepth { block: 2 }, &x, &[]);
        let want = reference(&x, &[1, 8, 2, 3], 0.0, |o| {
            let (offset, c) = (o[1] / 2, o[1] % 2);
            Some(vec![o[0], c, o[2] * 2 + offset / 2, o[3] * 2 + offset % 2])
        });
        assert_eq!(out, [(vec![1, 8, 2, 3], want)]);
        let dcr = run(
            &Op::DepthToSpace {
                block: 2,
                crd: false,
            },
            &[1, 8, 2, 3],
            &[],
        );
        let round = Op::SpaceToDepth { block: 2 }
            .eval_layout(&[Some(&Value::F32(
                Tensor::new(dcr[0].0.clone(), dcr[0].1.clone()).unwrap(),
            ))])
            .unwrap();
        assert_eq!(
            round[0],
            iota(&[1, 8, 2, 3]),
            "SpaceToDepth undoes DCR DepthToSpace"
        );
    }

    #[test]
    fn a_transpose_plans_a_constant_number_of_regions() {
        let op = Op::Transpose {
            perm: Some(vec![1, 2, 0]),
        };
        let rasters = op.plan(&[&[64, 56, 56]], &Params(&[])).unwrap();
        assert_eq!(rasters[0].regions.len(), 1);
        let op = Op::Transpose {
            perm: Some(vec![0, 2, 3, 1]),
        };
        let rasters = op.plan(&[&[8, 16, 7, 7]], &Params(&[])).unwrap();
        assert!(
            rasters[0].regions.len() <= 8,
            "{}",
            rasters[0].regions.len()
        );
    }

    #[test]
    fn int64_values_move_too() {
        let x = Value::I64 {
            shape: vec![4],
            data: vec![10, 20, 30, 40],
        };
        let out = Op::Gather { axis: 0 }
            .eval_layout(&[Some(&x), Some(&ints(&[3, 0]))])
            .unwrap();
        assert_eq!(
            out,
            [Value::I64 {
                shape: vec![2],
                data: vec![40, 10]
            }]
        );
    }
}
