//! Walle's native tensor inference engine: ONNX in, tensors out.
//!
//! - [`onnx`]: the front end — decodes a model, reads initializers (inline or external data),
//!   parses every node into an [`ops::Op`] and checks the dataflow, all at load time;
//! - [`graph`]: the IR a session runs, with every value's type and (where static) shape from
//!   [`Graph::infer_shapes`];
//! - [`ops`]: operators and their kernels (the op table is in that module's docs);
//! - [`tensor`]: the tensor types.
//!
//! Use: [`Engine::load`] (or [`Engine::load_file`] for models with external data;
//! [`Engine::load_with`] / [`Engine::load_file_with`] take [`Options`]) gives a [`Session`];
//! [`Session::inputs`], [`Session::outputs`] and [`Session::output_info`] describe it;
//! [`Session::run`] takes named float inputs (and [`Session::run_values`] inputs of any element
//! type) and returns the graph outputs. A run happens on a rayon pool of the session's thread
//! count, shared by the sessions of the process. [`Session::run_profiled`] also times each
//! node (the `time_model` example prints it with `WALLE_PROFILE=1`).
//!
//! Loading runs, in order: constant folding, the decomposition of composite ops (LayerNorm,
//! Gelu, LogSoftmax, Attention, ConvTranspose, … — see [`ops::composite`]) into atomic ones
//! and constant folding again, Conv + BatchNormalization folding and Relu fusion, shape
//! inference (a mismatch the shapes prove fails the load, naming the node), and the raster
//! lowering below.
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
//! **Semi-auto search** ([`search`]): when a session is created, each convolution's candidate
//! algorithms (im2col + GEMM, a packed GEMM on im2col or in place, an implicit convolution,
//! Winograd F(2×2)/F(4×4) for 3×3 stride-1 kernels — in blocks of tiles on AVX-512 — and direct
//! depthwise) and thread counts are timed on this machine and the fastest is kept; the
//! choices are cached on disk per model, device, engine version and thread count
//! ([`Options::cache_dir`]),
//! and [`Session::search_report`] says what was chosen and what it cost.
//! [`Search::CostModel`] skips the measuring.
//!
//! **Instruction sets**: the engine's own kernels run on AVX-512 or, without it, AVX2 + FMA
//! (packed and implicit convolution; the blocked Winograd, vectorised depthwise and pooling
//! kernels are AVX-512 only); elsewhere convolutions run on the `gemm` crate and portable
//! kernels. `WALLE_ENGINE_ISA=avx2` (or `none`) caps what is used, to reproduce on a server
//! what a CPU without AVX-512 sees ([`ops::packed::Isa`]).
//!
//! **Small LLMs** ([`llm`]): GGUF files of Llama-family models, memory-mapped and checked
//! ([`llm::Gguf`]), their quantized weights (Q4_0, Q4_1, Q8_0) multiplied by vectors on AVX2 /
//! AVX-512 / VNNI kernels ([`llm::QuantMatrix`]), their byte-level BPE tokenizer
//! ([`llm::Tokenizer`]), the transformer's forward pass over the mapped weights
//! ([`llm::LlamaModel`]), and one conversation's KV cache, generation and scoring
//! ([`llm::Session`]). This side shares only the instruction-set cap with the ONNX side.
//!
//! The engine stays independent of the VM, the device and the cloud.

mod assemble;
mod decompose;
pub mod graph;
pub mod llm;
mod lowering;
pub mod onnx;
pub mod ops;
pub mod search;
pub mod tensor;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use assemble::{Assembly, Buffers};
use ops::Op;
use search::{ConvArgs, ConvPlan};

pub use graph::{DType, Dim, Graph, IoSpec, ValueInfo};
pub use search::{Algorithm, Choice, Options, Search, SearchReport, Threads};
pub use tensor::{Tensor, TensorError, Value};

/// The oldest default-domain operator set accepted (opset 6's legacy `broadcast` attribute is
/// read).
pub const MIN_OPSET: i64 = 6;
/// The newest default-domain operator set accepted (the `onnx` 1.19 wheel's).
pub const MAX_OPSET: i64 = 24;

/// Why a model could not be loaded. Every variant names what and where.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("{0}")]
    Decode(String),
    #[error("model has no graph")]
    NoGraph,
    #[error("operator set version {0} is not supported ({MIN_OPSET} to {MAX_OPSET} are)")]
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
    #[error("input {name:?} is {got:?}; the model declares {expected:?}")]
    WrongType {
        name: String,
        expected: DType,
        got: DType,
    },
    #[error("node {node:?} ({op}): {reason}")]
    Kernel {
        node: String,
        op: String,
        reason: String,
    },
    #[error("stopped by its caller before node {node:?}")]
    Stopped { node: String },
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
    /// Loads a model from its bytes (external data is refused: use [`Engine::load_file`]),
    /// with the default [`Options`] (all cores, measured algorithm search, no cache).
    pub fn load(bytes: &[u8]) -> Result<Session, LoadError> {
        Engine::load_with(bytes, &Options::default())
    }

    /// [`Engine::load`] with options.
    pub fn load_with(bytes: &[u8], options: &Options) -> Result<Session, LoadError> {
        Ok(Session::new(
            onnx::load(bytes, None)?,
            digest(bytes, options),
            options,
        ))
    }

    /// Loads a model file; external data files are read relative to its directory.
    pub fn load_file(path: &Path) -> Result<Session, LoadError> {
        Engine::load_file_with(path, &Options::default())
    }

    /// [`Engine::load_file`] with options.
    pub fn load_file_with(path: &Path, options: &Options) -> Result<Session, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let graph = onnx::load(&bytes, Some(base))?;
        Ok(Session::new(graph, digest(&bytes, options), options))
    }
}

/// The model's identity for the search cache: the SHA-256 of its bytes, computed only when
/// there is a cache to key (hashing a 100 MB model costs a fifth of a second). Weights in
/// external files are not hashed: the choices depend on shapes, which the model bytes fix.
fn digest(bytes: &[u8], options: &Options) -> Option<String> {
    use sha2::Digest;
    let cached = options.search == Search::Measure && options.cache_dir.is_some();
    cached.then(|| hex::encode(sha2::Sha256::digest(bytes)))
}

/// What [`Session::run_profiled`] returns: the outputs and each node's time.
#[derive(Debug, Clone)]
pub struct Profiled {
    /// The outputs, as [`Session::run_values`] returns them.
    pub outputs: Vec<(String, Value)>,
    /// Each node's time, in the order the nodes ran.
    pub nodes: Vec<NodeTime>,
}

/// How long one node took in a profiled run.
#[derive(Debug, Clone)]
pub struct NodeTime {
    /// The node's name (generated for nodes the load-time rewrites created).
    pub node: String,
    /// The op it ran, e.g. `Conv` or `Raster`.
    pub op: &'static str,
    /// For convolutions, the algorithm and threads the search chose.
    pub algorithm: Option<Choice>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A loaded model, ready to run.
#[derive(Debug, Clone)]
pub struct Session {
    graph: Graph,
    ctx: ops::Ctx,
    /// For each node, the values no later node reads (freed once it ran).
    last_reads: Vec<Vec<String>>,
    /// For each node, the planned convolution algorithm (None: the op's own kernel).
    plans: Vec<Option<ConvPlan>>,
    /// The concats whose inputs are written in place (see [`assemble`]).
    assembly: Assembly,
    search: SearchReport,
    /// The threads kernels run on. A whole run happens inside the pool, so the calling thread
    /// waits asleep instead of competing with spinning workers for the cores.
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// A one-thread pool whose thread is the calling one (built once per thread and kept: rayon
/// leaks a pool that uses the current thread), so kernels run where the caller runs.
fn calling_thread_pool() -> Option<Arc<rayon::ThreadPool>> {
    thread_local! {
        static HERE: Option<Arc<rayon::ThreadPool>> = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .use_current_thread()
            .thread_name(|_| "walle-engine-here".to_owned())
            .build()
            .ok()
            .map(Arc::new);
    }
    HERE.with(Clone::clone)
}

/// Runs `f` with every kernel it starts on the calling thread (a pool of one whose thread is
/// this one), for a caller that must keep the work where it is: the task VM, whose memory
/// budget and deadline follow the thread. The LLM's kernels split their rows over the current
/// rayon pool, which outside this would be rayon's global one.
pub fn on_calling_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match calling_thread_pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// The process-wide pool of `threads` workers (one per thread count, shared by sessions);
/// `None` if the OS refuses threads, and kernels then run on the caller and rayon's default.
fn thread_pool(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(pool) = pools.get(&threads) {
        return Some(pool.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("walle-engine-{threads}-{i}"))
        .build()
        .ok()
        .map(Arc::new)?;
    pools.insert(threads, pool.clone());
    Some(pool)
}

/// Runs `f` (on a worker of the session's pool) while the pool's other workers stay awake:
/// each runs a job that takes whatever work the kernels split off, and spins in between, until
/// `f` returns. A parked worker takes tens of microseconds to wake, as long as a small kernel
/// takes on all threads, and a run starts dozens of them.
///
/// A spinner that finds no work for [`AWAKE_IDLE`] returns, so a long single-threaded stretch
/// does not burn a core, and a spinner that the calling thread itself picked up while waiting
/// for a kernel's other half (rayon lets a waiting thread run queued jobs) cannot hold that
/// kernel up for longer than that.
pub(crate) fn awake<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    if threads <= 1 || rayon::current_thread_index().is_none() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                let mut idle_since = Instant::now();
                while !done.load(Ordering::Relaxed) && idle_since.elapsed() < AWAKE_IDLE {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => idle_since = Instant::now(),
                        _ => std::hint::spin_loop(),
                    }
                }
            });
        }
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// How long a worker kept awake during a run spins without work before it parks.
const AWAKE_IDLE: std::time::Duration = std::time::Duration::from_millis(5);

/// Runs `f` on a worker of `pool` (or here, without one).
fn in_pool<T: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

impl Session {
    fn new(graph: Graph, model_digest: Option<String>, options: &Options) -> Session {
        let last_reads = last_reads(&graph);
        let (threads, pool) = if options.on_calling_thread {
            (1, calling_thread_pool())
        } else {
            let threads = options.threads.max(1);
            (threads, thread_pool(threads))
        };
        let (plans, search) = in_pool(pool.as_deref(), || {
            search::plan_graph(&graph, model_digest.as_deref(), options)
        });
        let assembly = Assembly::plan(&graph, &plans);
        Session {
            graph,
            ctx: ops::Ctx { threads },
            last_reads,
            plans,
            assembly,
            search,
            pool,
        }
    }

    /// What the algorithm search chose, and what it cost, when the session was created.
    pub fn search_report(&self) -> &SearchReport {
        &self.search
    }

    /// How many concats the session assembles in place: their convolutions write straight
    /// into the concat's output (see the `assemble` module).
    pub fn in_place_concats(&self) -> usize {
        self.assembly.count()
    }

    /// Uses `threads` threads per kernel (default: the machine's cores).
    pub fn with_threads(mut self, threads: usize) -> Session {
        self.ctx.threads = threads.max(1);
        self.pool = thread_pool(self.ctx.threads);
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

    /// Each output's element type and, where the inputs' declared shapes fix it, its shape
    /// (`None` for an output that shape inference could not type).
    pub fn output_info(&self) -> Vec<(&str, Option<&ValueInfo>)> {
        self.graph
            .outputs
            .iter()
            .map(|name| (name.as_str(), self.graph.value_info.get(name)))
            .collect()
    }

    /// The loaded graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the model on named float inputs; returns the outputs in [`Session::outputs`]
    /// order (all must be float: use [`Session::run_values`] for int64 ones).
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RunError> {
        let inputs = inputs
            .into_iter()
            .map(|(n, t)| (n, Value::F32(t)))
            .collect();
        self.run_values(inputs)?
            .into_iter()
            .map(|(name, value)| match value {
                Value::F32(t) => Ok((name, t)),
                other => Err(RunError::Kernel {
                    node: "graph output".into(),
                    op: "output".into(),
                    reason: format!("{name:?} is {}, not float", other.type_name()),
                }),
            })
            .collect()
    }

    /// Runs the model on named inputs of any element type (int64 carries every integer type
    /// and bool); returns the outputs in [`Session::outputs`] order.
    pub fn run_values(
        &self,
        inputs: Vec<(String, Value)>,
    ) -> Result<Vec<(String, Value)>, RunError> {
        self.run_values_until(inputs, &|_| true)
    }

    /// [`Session::run_values`], asking `admit` before each node whether it may run, with the
    /// bytes its outputs will take when shape inference knows them (`None` otherwise, or when
    /// the node works in place). Once `admit` says no, the run ends with [`RunError::Stopped`]
    /// (a node in flight finishes first): an embedder stops a run at a deadline, or refuses a
    /// node that would take more memory than it has to give.
    pub fn run_values_until(
        &self,
        inputs: Vec<(String, Value)>,
        admit: &(dyn Fn(Option<u64>) -> bool + Sync),
    ) -> Result<Vec<(String, Value)>, RunError> {
        in_pool(self.pool.as_deref(), || {
            awake(self.ctx.threads, || self.run_here(inputs, None, admit))
        })
    }

    /// Bytes `node`'s outputs take when their shapes are known statically; `None` when they are
    /// not, or when the node may write over its first input instead of allocating.
    fn output_bytes(&self, node: &graph::Node) -> Option<u64> {
        if node.op.reuses_first_input() {
            return None;
        }
        node.outputs.iter().try_fold(0u64, |total, name| {
            let info = self.graph.value_info.get(name)?;
            let width = match info.dtype {
                DType::F32 => 4,
                DType::I64 => 8,
            };
            let elements = info
                .shape
                .as_ref()?
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))?;
            total.checked_add(elements.checked_mul(width)?)
        })
    }

    /// [`Session::run_values`], also timing each node: where a model spends its time, in
    /// graph order (after the load-time rewrites, so fused and decomposed nodes appear as run).
    pub fn run_profiled(&self, inputs: Vec<(String, Value)>) -> Result<Profiled, RunError> {
        let mut nodes = Vec::with_capacity(self.graph.nodes.len());
        let outputs = in_pool(self.pool.as_deref(), || {
            awake(self.ctx.threads, || {
                self.run_here(inputs, Some(&mut nodes), &|_| true)
            })
        })?;
        Ok(Profiled { outputs, nodes })
    }

    /// [`Session::run_values`] on the calling thread (a worker of the session's pool); with
    /// `profile`, each node's time is pushed to it.
    fn run_here(
        &self,
        inputs: Vec<(String, Value)>,
        mut profile: Option<&mut Vec<NodeTime>>,
        admit: &(dyn Fn(Option<u64>) -> bool + Sync),
    ) -> Result<Vec<(String, Value)>, RunError> {
        let mut values: HashMap<&str, Value> = HashMap::new();
        let mut given: HashMap<String, Value> = inputs.into_iter().collect();
        for spec in &self.graph.inputs {
            let value = given
                .remove(&spec.name)
                .ok_or_else(|| RunError::MissingInput(spec.name.clone()))?;
            if !spec.accepts(value.shape()) {
                return Err(RunError::WrongShape {
                    name: spec.name.clone(),
                    expected: format!("{:?}", spec.dims),
                    got: value.shape().to_vec(),
                });
            }
            let dtype = ValueInfo::of(&value).dtype;
            if dtype != spec.dtype {
                return Err(RunError::WrongType {
                    name: spec.name.clone(),
                    expected: spec.dtype,
                    got: dtype,
                });
            }
            values.insert(&spec.name, value);
        }
        if let Some(extra) = given.into_keys().next() {
            let names = self.graph.inputs.iter().map(|i| i.name.clone()).collect();
            return Err(RunError::UnknownInput(extra, names));
        }
        let steps = self
            .graph
            .nodes
            .iter()
            .zip(&self.last_reads)
            .zip(&self.plans);
        let mut buffers = Buffers::default();
        for (index, ((node, done), plan)) in steps.enumerate() {
            if !admit(self.output_bytes(node)) {
                return Err(RunError::Stopped {
                    node: node.name.clone(),
                });
            }
            let started = profile.is_some().then(Instant::now);
            let results = match (self.assembly.concat(index), self.assembly.part(index), plan) {
                (Some(parts), _, _) => {
                    vec![self.finish_concat(node, index, parts, &mut buffers)?]
                }
                (None, Some(part), Some(plan)) => {
                    let args = self.arguments(&node.inputs, &values);
                    let conv = conv_args(node, &args)?;
                    buffers.write(part, |out| {
                        plan.run_into(&conv, self.ctx.threads, out)
                            .map_err(|reason| conv_error(node, reason))
                    })?;
                    Vec::new()
                }
                _ => self.run_node(node, done, plan.as_ref(), &mut values)?,
            };
            if let (Some(profile), Some(started)) = (profile.as_deref_mut(), started) {
                profile.push(NodeTime {
                    node: node.name.clone(),
                    op: node.op.name(),
                    algorithm: plan.as_ref().map(|p| p.choice()),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
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
                values
                    .remove(name.as_str())
                    .or_else(|| self.graph.constants.get(name).cloned())
                    .map(|value| (name.clone(), value))
                    .ok_or_else(|| RunError::Kernel {
                        node: "graph output".into(),
                        op: "output".into(),
                        reason: format!("{name:?} was not computed"),
                    })
            })
            .collect()
    }
}

impl Session {
    /// The values of `names` (computed or constant; `None` for one not there).
    fn arguments<'v>(
        &'v self,
        names: &[String],
        values: &'v HashMap<&str, Value>,
    ) -> Vec<Option<&'v Value>> {
        names
            .iter()
            .map(|name| {
                values
                    .get(name.as_str())
                    .or_else(|| self.graph.constants.get(name))
            })
            .collect()
    }

    /// Runs one node the ordinary way: its planned convolution or its op's kernel, giving
    /// the op its first input to reuse when nothing later reads it.
    fn run_node(
        &self,
        node: &graph::Node,
        done: &[String],
        plan: Option<&ConvPlan>,
        values: &mut HashMap<&str, Value>,
    ) -> Result<Vec<Value>, RunError> {
        let owned_first = match node.inputs.first() {
            Some(first)
                if node.op.reuses_first_input()
                    && done.contains(first)
                    && !node.inputs[1..].contains(first) =>
            {
                values.remove(first.as_str())
            }
            _ => None,
        };
        match (plan, owned_first) {
            (Some(plan), _) => {
                let args = self.arguments(&node.inputs, values);
                match node.op {
                    Op::Conv { .. } => {
                        let out = plan
                            .run(&conv_args(node, &args)?, self.ctx.threads)
                            .map_err(|reason| conv_error(node, reason))?;
                        Ok(vec![Value::F32(out)])
                    }
                    _ => node.op.eval(&self.ctx, &node.name, &args),
                }
            }
            (None, Some(first)) => {
                let others = self.arguments(&node.inputs[1..], values);
                node.op
                    .eval_owning_first(&self.ctx, &node.name, first, &others)
            }
            (None, None) => {
                let args = self.arguments(&node.inputs, values);
                node.op.eval(&self.ctx, &node.name, &args)
            }
        }
    }

    /// The output of an assembled concat (node `index`, of `parts` parts), whose inputs
    /// wrote it in place.
    fn finish_concat(
        &self,
        node: &graph::Node,
        index: usize,
        parts: usize,
        buffers: &mut Buffers,
    ) -> Result<Value, RunError> {
        let fail = |reason: String| RunError::Kernel {
            node: node.name.clone(),
            op: node.op.name().into(),
            reason,
        };
        let Op::Raster(raster) = &node.op else {
            return Err(fail("an assembled concat must be a raster".into()));
        };
        let data = buffers
            .finish(index, parts, raster.elements())
            .ok_or_else(|| fail(format!("its {parts} inputs were not all written in place")))?;
        Tensor::new(raster.shape.clone(), data)
            .map(Value::F32)
            .map_err(|e| fail(e.to_string()))
    }
}

/// A convolution node's arguments, checked, for its planned algorithm.
fn conv_args<'a>(node: &graph::Node, args: &[Option<&'a Value>]) -> Result<ConvArgs<'a>, RunError> {
    let fail = |reason: String| conv_error(node, reason);
    let Op::Conv {
        spatial,
        group,
        relu,
    } = &node.op
    else {
        return Err(fail("a planned node must be a convolution".into()));
    };
    let float = |i: usize| match args.get(i).copied().flatten() {
        Some(Value::F32(t)) => Ok(Some(t)),
        None => Ok(None),
        Some(_) => Err(fail(format!("input {i} must be a float tensor"))),
    };
    let (Some(x), Some(weights)) = (float(0)?, float(1)?) else {
        return Err(fail("the input and the weights are required".into()));
    };
    let [kh, kw] = match *weights.shape() {
        [_, _, kh, kw] => [kh, kw],
        ref other => return Err(fail(format!("weights must be 4-D, got {other:?}"))),
    };
    let [h, w] = match *x.shape() {
        [_, _, h, w] => [h, w],
        ref other => return Err(fail(format!("input must be 4-D (NCHW), got {other:?}"))),
    };
    Ok(ConvArgs {
        x,
        weights,
        bias: float(2)?,
        window: spatial.window([kh, kw], [h, w]),
        group: *group,
        relu: *relu,
    })
}

fn conv_error(node: &graph::Node, reason: String) -> RunError {
    RunError::Kernel {
        node: node.name.clone(),
        op: "Conv".into(),
        reason,
    }
}
