//! The engine's graph IR: inputs, constants and nodes in execution order.

use std::collections::HashMap;

use crate::ops::Op;
use crate::{Tensor, Value};

/// One dimension of a graph input as the model declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// Symbolic (e.g. `batch`) or unknown: any size is accepted.
    Named(String),
}

/// A graph input: its name, element type and declared dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl IoSpec {
    /// Whether a concrete shape fits the declaration.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        self.dims.is_empty()
            || (self.dims.len() == shape.len()
                && self.dims.iter().zip(shape).all(|(d, &s)| match d {
                    Dim::Fixed(n) => *n == s,
                    Dim::Named(_) => true,
                }))
    }
}

impl IoSpec {
    /// The declared shape when every dimension is fixed (`None`: symbolic or undeclared).
    pub fn fixed_shape(&self) -> Option<Vec<usize>> {
        if self.dims.is_empty() {
            return None;
        }
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Named(_) => None,
            })
            .collect()
    }
}

/// The element type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// Float (and double, computed as float).
    F32,
    /// Every integer type, and bool as 0/1.
    I64,
}

/// What is known of a value before running: its type and, when static, its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub dtype: DType,
    /// `None`: not known statically (e.g. it depends on a symbolic input dimension).
    pub shape: Option<Vec<usize>>,
}

impl ValueInfo {
    /// The type and shape of a known value.
    pub fn of(value: &Value) -> ValueInfo {
        ValueInfo {
            dtype: match value {
                Value::F32(_) => DType::F32,
                Value::I64 { .. } => DType::I64,
            },
            shape: Some(value.shape().to_vec()),
        }
    }
}

/// One operation: its op (with parsed attributes) and the names of the values it reads and
/// writes (an empty input name is an omitted optional input).
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// A loaded model.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Version of the default operator set.
    pub opset: i64,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<String>,
    /// Initializers by name.
    pub constants: HashMap<String, Value>,
    /// In an order where every value is produced before it is read.
    pub nodes: Vec<Node>,
    /// Type and shape of every value (inputs, constants, node outputs), from
    /// [`Graph::infer_shapes`] at load.
    pub value_info: HashMap<String, ValueInfo>,
}

impl Graph {
    /// Multiply-adds of one run in its convolutions and matrix products (where shapes are
    /// static; others count zero) — the figure GFLOP/s rates are computed from (2 FLOPs each).
    pub fn multiply_adds(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| self.node_multiply_adds(node).unwrap_or(0))
            .sum()
    }

    fn node_multiply_adds(&self, node: &Node) -> Option<u64> {
        let shape = |name: &String| self.value_info.get(name)?.shape.clone();
        let product = |dims: &[usize]| dims.iter().map(|&d| d as u64).product::<u64>();
        let out = product(&shape(node.outputs.first()?)?);
        match &node.op {
            // Each output element sums (input channels / group) × kernel area products.
            Op::Conv { .. } => Some(out * product(shape(node.inputs.get(1)?)?.get(1..)?)),
            // Each output element sums over the shared dimension: the first operand's last
            // (or, transposed, first) dimension.
            Op::MatMul | Op::Gemm { .. } => {
                let a = shape(node.inputs.first()?)?;
                let k = match &node.op {
                    Op::Gemm {
                        trans: (true, _), ..
                    } => a.first(),
                    _ => a.last(),
                };
                Some(out * *k? as u64)
            }
            _ => None,
        }
    }
}

impl Graph {
    /// Infers every value's type and, where the inputs' declared shapes allow, its shape; fails
    /// naming the node when the shapes prove an op cannot run.
    pub fn infer_shapes(&self) -> Result<HashMap<String, ValueInfo>, crate::LoadError> {
        let mut info: HashMap<String, ValueInfo> = HashMap::new();
        for spec in &self.inputs {
            let shape = spec.fixed_shape();
            info.insert(
                spec.name.clone(),
                ValueInfo {
                    dtype: spec.dtype,
                    shape,
                },
            );
        }
        for (name, value) in &self.constants {
            info.insert(name.clone(), ValueInfo::of(value));
        }
        for node in &self.nodes {
            let known: Vec<Option<&ValueInfo>> = node.inputs.iter().map(|i| info.get(i)).collect();
            let constants: Vec<Option<&Value>> =
                node.inputs.iter().map(|i| self.constants.get(i)).collect();
            let outputs =
                node.op
                    .infer(&known, &constants)
                    .map_err(|reason| crate::LoadError::Shape {
                        node: node.name.clone(),
                        op: node.op.name().to_owned(),
                        reason,
                    })?;
            for (name, value) in node.outputs.iter().zip(outputs) {
                info.insert(name.clone(), value);
            }
        }
        Ok(info)
    }

    /// Evaluates, at load time, every node whose inputs are all constants (e.g. the weights a
    /// `ConstantOfShape` produces, shape arithmetic), then drops nodes whose outputs nothing
    /// reads.
    pub fn fold_constants(&mut self) -> Result<(), crate::LoadError> {
        let ctx = crate::ops::Ctx { threads: 1 };
        let mut kept = Vec::with_capacity(self.nodes.len());
        for node in std::mem::take(&mut self.nodes) {
            let constant_inputs = node
                .inputs
                .iter()
                .all(|i| i.is_empty() || self.constants.contains_key(i));
            if !constant_inputs || matches!(node.op, Op::Composite(_)) {
                kept.push(node);
                continue;
            }
            let args: Vec<Option<&Value>> =
                node.inputs.iter().map(|i| self.constants.get(i)).collect();
            let results = node
                .op
                .eval(&ctx, &node.name, &args)
                .map_err(|e| crate::LoadError::Fold(e.to_string()))?;
            for (name, value) in node.outputs.iter().zip(results) {
                self.constants.insert(name.clone(), value);
            }
        }
        self.nodes = kept;
        self.remove_dead_nodes();
        Ok(())
    }

    /// Drops nodes none of whose outputs is read by a later node or is a graph output, and
    /// constants nothing reads.
    pub(crate) fn remove_dead_nodes(&mut self) {
        let mut needed: std::collections::HashSet<String> = self.outputs.iter().cloned().collect();
        let mut kept: Vec<Node> = Vec::with_capacity(self.nodes.len());
        for node in std::mem::take(&mut self.nodes).into_iter().rev() {
            if node.outputs.iter().any(|o| needed.contains(o)) {
                needed.extend(node.inputs.iter().cloned());
                kept.push(node);
            }
        }
        kept.reverse();
        self.nodes = kept;
        self.constants.retain(|name, _| needed.contains(name));
    }
}

/// How many times each value is read (by nodes, or as a graph output).
fn readers(graph: &Graph) -> HashMap<String, usize> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for name in graph
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter())
        .chain(&graph.outputs)
    {
        *count.entry(name.clone()).or_default() += 1;
    }
    count
}

impl Graph {
    /// Load-time rewrites: BatchNormalization folded into the Conv before it, then a Relu after
    /// a Conv fused into it.
    pub fn fuse(&mut self) {
        self.fold_batch_norms();
        self.fuse_relus();
    }

    /// The node at `index + 1` if it is the only reader of `index`'s single output.
    fn sole_successor(&self, index: usize, readers: &HashMap<String, usize>) -> Option<usize> {
        let output = self.nodes[index].outputs.first()?;
        let next = self.nodes.get(index + 1)?;
        let only = readers.get(output) == Some(&1)
            && !self.outputs.contains(output)
            && next.inputs.first() == Some(output);
        only.then_some(index + 1)
    }

    /// Conv (constant weights) → BatchNormalization (constant statistics) becomes one Conv
    /// with scaled weights and a shifted bias.
    fn fold_batch_norms(&mut self) {
        // Counted once: a fold removes the only reader of the conv's output and gives the conv
        // the norm's outputs, whose readers stay what they were.
        let readers = readers(self);
        let mut index = 0;
        while index < self.nodes.len() {
            if let Some(next) = self.sole_successor(index, &readers)
                && let Some((weights, bias)) = self.folded_conv_params(index, next)
            {
                let conv = &self.nodes[index].name;
                let (w_name, b_name) = (format!("{conv}::bn_weights"), format!("{conv}::bn_bias"));
                self.constants.insert(w_name.clone(), Value::F32(weights));
                self.constants.insert(b_name.clone(), Value::F32(bias));
                let bn = self.nodes.remove(next);
                let node = &mut self.nodes[index];
                node.inputs = vec![node.inputs[0].clone(), w_name, b_name];
                node.outputs = bn.outputs;
            }
            index += 1;
        }
        self.remove_dead_nodes();
    }

    fn constant(&self, name: Option<&String>) -> Option<&Tensor> {
        match self.constants.get(name?)? {
            Value::F32(t) => Some(t),
            Value::I64 { .. } => None,
        }
    }

    /// The weights and bias of Conv `conv` with BatchNormalization `bn` folded in, when both
    /// are foldable.
    fn folded_conv_params(&self, conv: usize, bn: usize) -> Option<(Tensor, Tensor)> {
        let (
            Op::Conv { relu: false, .. },
            Op::BatchNorm {
                epsilon,
                relu: false,
            },
        ) = (&self.nodes[conv].op, &self.nodes[bn].op)
        else {
            return None;
        };
        let (c, b) = (&self.nodes[conv], &self.nodes[bn]);
        let weights = self.constant(c.inputs.get(1))?;
        let params: Vec<&Tensor> = (1..5)
            .map(|i| self.constant(b.inputs.get(i)))
            .collect::<Option<_>>()?;
        let filters = *weights.shape().first()?;
        if params.iter().any(|p| p.data().len() != filters) {
            return None;
        }
        let (scale, shift, mean, var) = (
            params[0].data(),
            params[1].data(),
            params[2].data(),
            params[3].data(),
        );
        let old_bias = match c.inputs.get(2).filter(|n| !n.is_empty()) {
            Some(name) => self.constant(Some(name))?.data().to_vec(),
            None => vec![0.0; filters],
        };
        let per_filter = weights.data().len() / filters;
        let mut new_weights = weights.clone();
        let mut new_bias = Vec::with_capacity(filters);
        for f in 0..filters {
            let factor = scale[f] / (var[f] + epsilon).sqrt();
            new_weights.data_mut()[f * per_filter..(f + 1) * per_filter]
                .iter_mut()
                .for_each(|w| *w *= factor);
            new_bias.push((old_bias[f] - mean[f]) * factor + shift[f]);
        }
        Some((new_weights, Tensor::new(vec![filters], new_bias).ok()?))
    }

    /// Conv → Relu becomes one Conv that applies the Relu.
    fn fuse_relus(&mut self) {
        // Counted once, as in `fold_batch_norms` (recounting per node made loading quadratic).
        let readers = readers(self);
        let mut index = 0;
        while index < self.nodes.len() {
            let fusable = self.sole_successor(index, &readers).filter(|&next| {
                matches!(
                    self.nodes[index].op,
                    Op::Conv { relu: false, .. }
                        | Op::Binary(_)
                        | Op::BatchNorm { relu: false, .. }
                ) && self.nodes[next].op == Op::Unary(crate::ops::elementwise::Unary::Relu)
            });
            if let Some(next) = fusable {
                let relu = self.nodes.remove(next);
                let node = &mut self.nodes[index];
                match &mut node.op {
                    Op::Conv { relu, .. } | Op::BatchNorm { relu, .. } => *relu = true,
                    Op::Binary(b) => node.op = Op::BinaryRelu(*b),
                    _ => {}
                }
                node.outputs = relu.outputs;
            }
            index += 1;
        }
    }
}
