//! Walle's native tensor inference engine: ONNX in, tensors out.
//!
//! - [`onnx`]: the front end — decodes a model, reads initializers (inline or external data),
//!   parses every node into an [`ops::Op`] and checks the dataflow, all at load time;
//! - [`graph`]: the IR a session runs, with every value's type and (where static) shape from
//!   [`Graph::infer_shapes`];
//! - [`ops`]: operators and their kernels (the op table is in that module's docs);
//! - [`tensor`]: the tensor types.
//!
//! Use: [`Engine::load`] (or [`Engine::load_file`] for models with external data) gives a
//! [`Session`]; [`Session::run`] takes named inputs and returns the graph outputs.
//!
//! Loading runs, in order: constant folding, Conv + BatchNormalization folding and Relu
//! fusion, shape inference (a mismatch the shapes prove fails the load, naming the node), and
//! the raster lowering below.
//!
//! **Rasters** (MNN's geometric computing): every layout op — Transpose, Concat, Slice, Split,
//! Gather, Pad, Expand, Tile, DepthToSpace, SpaceToDepth, and the reshaping views — is, once
//! its input shapes are known, a [`ops::raster::Raster`]: an output shape, a list of strided
//! region copies (source input, offsets, three strides and three sizes each side), and a fill
//! value for elements no region writes. One kernel runs them all, contiguous inner runs as
//! slice copies. At load, a layout node with static shapes becomes a `Raster` node, and a
//! raster reading a raster nothing else reads is merged into it: their *index maps* (for each
//! output element, the input element it copies) compose exactly, and the regions of the
//! composed map are found again greedily — so ShuffleNet's Reshape → Transpose → Reshape is one
//! copy. Views stay zero-work views unless merged into a neighbouring raster.
//!
//! Still to come (issue 4): BatchNorm folding and activation fusion, Winograd and depthwise
//! kernels, and the semi-auto algorithm search. The engine must stay independent of the VM,
//! the device and the cloud.

pub mod graph;
mod lowering;
pub mod onnx;
pub mod ops;
pub mod tensor;

use std::collections::HashMap;
use std::path::Path;

pub use graph::{DType, Dim, Graph, IoSpec, ValueInfo};
pub use tensor::{Tensor, TensorError, Value};

/// Why a model could not be loaded. Every variant names what and where.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("{0}")]
    Decode(String),
    #[error("model has no graph")]
    NoGraph,
    #[error("operator set version {0} is not supported (7 to 21 are)")]
    UnsupportedOpset(i64),
    #[error("unsupported op {op} in node {node:?} (opset {opset})")]
    UnsupportedOp {
        op: String,
        node: String,
        opset: i64,
    },
    #[error("node {node:?}: attribute `{attribute}`: {reason}")]
    BadAttribute {
        node: String,
        attribute: String,
        reason: String,
    },
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor {name:?} has data type {data_type}, which the engine does not support")]
    UnsupportedType { name: String, data_type: i32 },
    #[error("tensor {name:?}: external data: {reason}")]
    ExternalData { name: String, reason: String },
    #[error("{node}: reads {value:?}, which no input, initializer or earlier node provides")]
    UnknownValue { node: String, value: String },
    #[error("node {node:?} ({op}): {reason}")]
    Shape {
        node: String,
        op: String,
        reason: String,
    },
    #[error("evaluating constants at load time: {0}")]
    Fold(String),
    #[error("cannot read model file {path}: {reason}")]
    File { path: String, reason: String },
}

/// Why a run failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("input {0:?} is missing")]
    MissingInput(String),
    #[error("{0:?} is not an input of this model (inputs: {1:?})")]
    UnknownInput(String, Vec<String>),
    #[error("input {name:?} has shape {got:?}; the model declares {expected}")]
    WrongShape {
        name: String,
        expected: String,
        got: Vec<usize>,
    },
    #[error("node {node:?} ({op}): {reason}")]
    Kernel {
        node: String,
        op: String,
        reason: String,
    },
}

/// For each node, the non-constant values it is the last to read (graph outputs excluded).
fn last_reads(graph: &Graph) -> Vec<Vec<String>> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (index, node) in graph.nodes.iter().enumerate() {
        for input in &node.inputs {
            last.insert(input, index);
        }
    }
    let mut out = vec![Vec::new(); graph.nodes.len()];
    for (name, index) in last {
        if !graph.outputs.iter().any(|o| o == name) && !graph.constants.contains_key(name) {
            out[index].push(name.to_owned());
        }
    }
    out
}

/// Loads models.
pub struct Engine;

impl Engine {
    /// Loads a model from its bytes (external data is refused: use [`Engine::load_file`]).
    pub fn load(bytes: &[u8]) -> Result<Session, LoadError> {
        Ok(Session::new(onnx::load(bytes, None)?))
    }

    /// Loads a model file; external data files are read relative to its directory.
    pub fn load_file(path: &Path) -> Result<Session, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Ok(Session::new(onnx::load(&bytes, Some(base))?))
    }
}

/// A loaded model, ready to run.
#[derive(Debug, Clone)]
pub struct Session {
    graph: Graph,
    ctx: ops::Ctx,
    /// For each node, the values no later node reads (freed once it ran).
    last_reads: Vec<Vec<String>>,
}

impl Session {
    fn new(graph: Graph) -> Session {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let last_reads = last_reads(&graph);
        Session {
            graph,
            ctx: ops::Ctx { threads },
            last_reads,
        }
    }

    /// Uses `threads` threads per kernel (default: the machine's cores).
    pub fn with_threads(mut self, threads: usize) -> Session {
        self.ctx.threads = threads.max(1);
        self
    }

    /// The graph inputs (names and declared dimensions).
    pub fn inputs(&self) -> &[IoSpec] {
        &self.graph.inputs
    }

    /// The graph output names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.graph.outputs
    }

    /// The loaded graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the model on named inputs; returns the outputs in [`Session::outputs`] order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RunError> {
        let mut values: HashMap<&str, Value> = HashMap::new();
        let mut given: HashMap<String, Tensor> = inputs.into_iter().collect();
        for spec in &self.graph.inputs {
            let tensor = given
                .remove(&spec.name)
                .ok_or_else(|| RunError::MissingInput(spec.name.clone()))?;
            if !spec.accepts(tensor.shape()) {
                return Err(RunError::WrongShape {
                    name: spec.name.clone(),
                    expected: format!("{:?}", spec.dims),
                    got: tensor.shape().to_vec(),
                });
            }
            values.insert(&spec.name, Value::F32(tensor));
        }
        if let Some(extra) = given.into_keys().next() {
            let names = self.graph.inputs.iter().map(|i| i.name.clone()).collect();
            return Err(RunError::UnknownInput(extra, names));
        }
        for (node, done) in self.graph.nodes.iter().zip(&self.last_reads) {
            let args: Vec<Option<&Value>> = node
                .inputs
                .iter()
                .map(|name| {
                    values
                        .get(name.as_str())
                        .or_else(|| self.graph.constants.get(name))
                })
                .collect();
            let results = node.op.eval(&self.ctx, &node.name, &args)?;
            for (name, value) in node.outputs.iter().zip(results) {
                values.insert(name, value);
            }
            for name in done {
                values.remove(name.as_str());
            }
        }
        self.graph
            .outputs
            .iter()
            .map(|name| {
                match values
                    .remove(name.as_str())
                    .or_else(|| self.graph.constants.get(name).cloned())
                {
                    Some(Value::F32(t)) => Ok((name.clone(), t)),
                    _ => Err(RunError::Kernel {
                        node: "graph output".into(),
                        op: "output".into(),
                        reason: format!("{name:?} is not a float tensor"),
                    }),
                }
            })
            .collect()
    }
}
