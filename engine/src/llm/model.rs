//! A Llama-family transformer over a GGUF file's weights: loading, checking, and the forward
//! pass of a batch of tokens through a [`KvCache`].
//!
//! **Loading** ([`LlamaModel::from_gguf`]) reads the hyper-parameters ([`LlamaParams`]) and
//! finds every tensor the architecture needs, checking each one's dimensions against them
//! (ggml order, a row's length first):
//!
//! | tensor | dimensions |
//! |---|---|
//! | `token_embd.weight` | `[d, vocab]` |
//! | `blk.{i}.attn_norm.weight`, `blk.{i}.ffn_norm.weight` | `[d]` |
//! | `blk.{i}.attn_q.weight` / `attn_k` / `attn_v` | `[d, d]` / `[d, kv]` / `[d, kv]` |
//! | `blk.{i}.attn_q.bias` / `attn_k.bias` / `attn_v.bias` (qwen2; optional for llama) | `[d]` / `[kv]` / `[kv]` |
//! | `blk.{i}.attn_output.weight` | `[d, d]` |
//! | `blk.{i}.ffn_gate.weight`, `blk.{i}.ffn_up.weight` | `[d, ffn]` |
//! | `blk.{i}.ffn_down.weight` | `[ffn, d]` |
//! | `output_norm.weight` | `[d]` |
//! | `output.weight` (absent: tied to `token_embd.weight`) | `[d, vocab]` |
//!
//! where `d` is the width, `kv` = KV heads × head dimensions, `ffn` the feed-forward width. A
//! missing tensor is [`ModelError::MissingTensor`], a mis-shaped one
//! [`ModelError::TensorShape`] with both shapes; a tensor whose bytes do not make its shape
//! was already refused by the file's parser. The width and the feed-forward width must be
//! multiples of 32 (activations are quantized in blocks of 32), and RoPE scaling (Llama 3.1's
//! `rope_freqs`, `rope.scaling.type`) is refused, not ignored. Nothing a file holds can make
//! loading or a forward pass panic.
//!
//! The weight matrices stay in the file's map and are never copied; only the norms' and
//! biases' vectors (a few hundred kilobytes) are converted to f32 and owned. The model owns
//! its [`Gguf`] and is immutable once loaded: it is `Send + Sync`, shared between threads as
//! an `Arc<LlamaModel>`, one [`KvCache`] per conversation.
//!
//! **The forward pass** ([`LlamaModel::forward`]) of `n` tokens at positions
//! `cache.len()..cache.len() + n`, as llama.cpp computes it:
//! 1. each token's embedding: its row of `token_embd` dequantized;
//! 2. per layer: `h = RMSNorm(x) · attn_norm`; `q, k, v` = projections of `h` (+ biases);
//!    RoPE on `q` and `k`; `k, v` written to the cache; grouped-query attention of each query
//!    head `j` over the cache's keys and values of KV head `j / (heads / kv_heads)` at every
//!    position up to its own (causal), scores scaled by `1/√head_dim`, softmax in f32;
//!    `x += attn_output · attention`; `h = RMSNorm(x) · ffn_norm`;
//!    `x += ffn_down · (SiLU(ffn_gate · h) ⊙ (ffn_up · h))`;
//! 3. `RMSNorm(x) · output_norm`, times `output` (or the tied embedding): the logits, of the
//!    last position only or of all ([`Logits`]).
//!
//! RMSNorm is `x / √(mean(x²) + ε)` (the sum in f64). RoPE rotates pairs of a head's first
//! `rope.dimension_count` values by `position · base^(−2i/dims)` for pair `i` (computed in
//! f64, `base` = `rope.freq_base`): for `llama` the pairs are adjacent values `(2i, 2i + 1)`
//! (llama.cpp's "normal" mode: its converter permutes Hugging Face's q and k rows so that
//! adjacent pairs compute what HF's rotate-half does), for `qwen2` the halves
//! `(i, i + dims/2)` ("NeoX" mode, weights unpermuted).
//!
//! Every projection quantizes its input to 8 bits per value in blocks of 32 once
//! ([`Activation`]) and multiplies it on the detected [`Kernel`]: a single token by
//! [`QuantMatrix::matvec`], a batch by [`QuantMatrix::matmul`] (each weight row read once for
//! the whole batch). Both split rows over the current rayon pool, as attention splits its
//! (token, KV head) pairs: the caller chooses the threads by the pool it runs in. The same
//! token gives the same numbers whether it is computed alone or in a batch.
//!
//! A forward pass writes the cache's rows for its positions layer by layer and commits them
//! only when every layer is done, so a refused pass leaves the cache as it was.

use std::path::Path;

use rayon::prelude::*;

use super::gguf::{Architecture, Gguf, GgufError, LlamaParams, Tensor};
use super::kv::{KvCache, KvPrecision};
use super::quant::{Activation, BLOCK, Kernel, QuantError, QuantMatrix};

/// Why a model could not be loaded, or a forward pass was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file, a hyper-parameter or a tensor's data was refused.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tensor the architecture needs is not in the file.
    #[error("tensor `{tensor}` is missing")]
    MissingTensor {
        /// Its name.
        tensor: String,
    },
    /// A tensor's dimensions are not what the hyper-parameters make them.
    #[error("tensor `{tensor}` has dimensions {found:?}, expected {expected:?}")]
    TensorShape {
        /// Its name.
        tensor: String,
        /// The dimensions the hyper-parameters give (ggml order: a row's length first).
        expected: Vec<u64>,
        /// The dimensions in the file.
        found: Vec<u64>,
    },
    /// The model uses something this engine does not implement.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A token id past the vocabulary.
    #[error("token id {token} is not in the vocabulary of {vocab}")]
    UnknownToken {
        /// The id.
        token: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// More positions than the cache has room for.
    #[error("the context is full: {used} of {capacity} positions are used, {asked} more asked")]
    ContextFull {
        /// Positions in the cache.
        used: usize,
        /// The cache's capacity.
        capacity: usize,
        /// Positions asked for.
        asked: usize,
    },
    /// A cache made for a model of other dimensions.
    #[error(
        "the cache is for {layers} layers of {row} values, the model has {want_layers} of {want_row}"
    )]
    CacheMismatch {
        /// The cache's layers.
        layers: usize,
        /// The cache's values per position and layer.
        row: usize,
        /// The model's layers.
        want_layers: usize,
        /// The model's values per position and layer.
        want_row: usize,
    },
    /// A kernel refused its operands (a bug: shapes are checked at load).
    #[error("tensor `{tensor}`: {source}")]
    Kernel {
        /// The tensor being multiplied.
        tensor: String,
        /// The cause.
        #[source]
        source: QuantError,
    },
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last position's (generation).
    Last,
    /// Every position's, position after position (scoring).
    All,
}

/// A weight matrix of the file: the index of its tensor, found and shape-checked at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Weight(usize);

/// One transformer block's weights.
#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    q: Weight,
    k: Weight,
    v: Weight,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    output: Weight,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// How RoPE pairs a head's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// `(2i, 2i + 1)`: llama.cpp's normal mode (`llama`).
    Adjacent,
    /// `(i, i + dims/2)`: llama.cpp's NeoX mode (`qwen2`).
    Halves,
}

/// Rotary position embedding: which values rotate, and how fast.
#[derive(Debug, Clone)]
struct Rope {
    pairs: RopePairs,
    head_dim: usize,
    /// `base^(−2i/dims)` for each rotated pair `i`.
    frequencies: Vec<f64>,
}

impl Rope {
    fn new(params: &LlamaParams) -> Rope {
        let dims = params.rope_dimensions;
        let base = f64::from(params.rope_freq_base);
        Rope {
            pairs: match params.architecture {
                Architecture::Llama => RopePairs::Adjacent,
                Architecture::Qwen2 => RopePairs::Halves,
            },
            head_dim: params.head_dim(),
            frequencies: (0..dims / 2)
                .map(|i| base.powf(-2.0 * i as f64 / dims as f64))
                .collect(),
        }
    }

    /// `(cos, sin)` of every pair's angle at positions `start..start + n`.
    fn table(&self, start: usize, n: usize) -> Vec<(f32, f32)> {
        (start..start + n)
            .flat_map(|p| {
                self.frequencies.iter().map(move |f| {
                    let (sin, cos) = (p as f64 * f).sin_cos();
                    (cos as f32, sin as f32)
                })
            })
            .collect()
    }

    /// Rotates every head of `x` (`n` tokens of heads side by side) by its token's angles.
    fn apply(&self, x: &mut [f32], n: usize, table: &[(f32, f32)]) {
        let pairs = self.frequencies.len();
        if n == 0 || pairs == 0 {
            return;
        }
        let half = pairs;
        for (token, angles) in x
            .chunks_exact_mut(x.len() / n)
            .zip(table.chunks_exact(pairs))
        {
            for head in token.chunks_exact_mut(self.head_dim) {
                for (i, &(cos, sin)) in angles.iter().enumerate() {
                    let (a, b) = match self.pairs {
                        RopePairs::Adjacent => (2 * i, 2 * i + 1),
                        RopePairs::Halves => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

/// A Llama-family model: its hyper-parameters and its weights in the file's map.
pub struct LlamaModel {
    gguf: Gguf,
    params: LlamaParams,
    embedding: Weight,
    output: Weight,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: Rope,
    kernel: Kernel,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("params", &self.params)
            .field("kernel", &self.kernel)
            .finish()
    }
}

/// Finds tensors by name and checks their dimensions.
struct Finder<'a> {
    gguf: &'a Gguf,
}

impl Finder<'_> {
    fn tensor(&self, name: &str) -> Result<Option<(usize, Tensor<'_>)>, ModelError> {
        let Some(index) = self.gguf.tensors().iter().position(|t| t.name == name) else {
            return Ok(None);
        };
        Ok(Some((index, self.gguf.tensor(name)?)))
    }

    fn shaped(
        &self,
        name: &str,
        expected: &[usize],
    ) -> Result<Option<(usize, Tensor<'_>)>, ModelError> {
        let Some((index, tensor)) = self.tensor(name)? else {
            return Ok(None);
        };
        let expected: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
        if tensor.info.dims != expected {
            return Err(ModelError::TensorShape {
                tensor: name.into(),
                expected,
                found: tensor.info.dims.clone(),
            });
        }
        // The type and size make a matrix (whole blocks per row).
        tensor.matrix()?;
        Ok(Some((index, tensor)))
    }

    fn required(&self, name: &str, expected: &[usize]) -> Result<(usize, Tensor<'_>), ModelError> {
        self.shaped(name, expected)?
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.into(),
            })
    }

    /// A matrix of `rows` rows of `cols`.
    fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Weight, ModelError> {
        Ok(Weight(self.required(name, &[cols, rows])?.0))
    }

    /// A vector of `len` values, as f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(self.required(name, &[len])?.1.dequantize()?)
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.shaped(name, &[len])? {
            Some((_, t)) => Ok(Some(t.dequantize()?)),
            None => Ok(None),
        }
    }
}

impl LlamaModel {
    /// Maps the GGUF file at `path` and loads the model in it.
    pub fn open(path: &Path) -> Result<LlamaModel, ModelError> {
        LlamaModel::from_gguf(Gguf::open(path)?)
    }

    /// Loads the model of an open file, checking every tensor it needs (see the module docs).
    pub fn from_gguf(gguf: Gguf) -> Result<LlamaModel, ModelError> {
        let params = LlamaParams::from_gguf(&gguf)?;
        let arch = params.architecture.name();
        let d = params.embedding_length;
        let ffn = params.feed_forward_length;
        let kv = params.head_count_kv * params.head_dim();
        let vocab = params.vocab_size;
        for (what, size) in [("the width", d), ("the feed-forward width", ffn)] {
            if !size.is_multiple_of(BLOCK) {
                return Err(ModelError::Unsupported(format!(
                    "{what} {size} is not a multiple of {BLOCK} (activations are quantized in blocks of {BLOCK})"
                )));
            }
        }
        if let Some(scaling) = gguf.get(&format!("{arch}.rope.scaling.type"))
            && scaling.as_str() != Some("none")
        {
            return Err(ModelError::Unsupported(format!(
                "RoPE scaling {} ({arch}.rope.scaling.type)",
                scaling.as_str().unwrap_or("of a non-string type")
            )));
        }
        let find = Finder { gguf: &gguf };
        if find.tensor("rope_freqs.weight")?.is_some() {
            return Err(ModelError::Unsupported(
                "per-frequency RoPE factors (rope_freqs.weight)".into(),
            ));
        }
        let embedding = find.matrix("token_embd.weight", d, vocab)?;
        let output = match find.shaped("output.weight", &[d, vocab])? {
            Some((index, _)) => Weight(index),
            None => embedding,
        };
        let output_norm = find.vector("output_norm.weight", d)?;
        let layers = (0..params.block_count)
            .map(|i| {
                let name = |t: &str| format!("blk.{i}.{t}");
                Ok(Layer {
                    attn_norm: find.vector(&name("attn_norm.weight"), d)?,
                    q: find.matrix(&name("attn_q.weight"), d, d)?,
                    k: find.matrix(&name("attn_k.weight"), d, kv)?,
                    v: find.matrix(&name("attn_v.weight"), d, kv)?,
                    q_bias: find.optional_vector(&name("attn_q.bias"), d)?,
                    k_bias: find.optional_vector(&name("attn_k.bias"), kv)?,
                    v_bias: find.optional_vector(&name("attn_v.bias"), kv)?,
                    output: find.matrix(&name("attn_output.weight"), d, d)?,
                    ffn_norm: find.vector(&name("ffn_norm.weight"), d)?,
                    gate: find.matrix(&name("ffn_gate.weight"), d, ffn)?,
                    up: find.matrix(&name("ffn_up.weight"), d, ffn)?,
                    down: find.matrix(&name("ffn_down.weight"), ffn, d)?,
                })
            })
            .collect::<Result<Vec<Layer>, ModelError>>()?;
        if params.architecture == Architecture::Qwen2 {
            for (i, layer) in layers.iter().enumerate() {
                for (bias, t) in [
                    (&layer.q_bias, "q"),
                    (&layer.k_bias, "k"),
                    (&layer.v_bias, "v"),
                ] {
                    if bias.is_none() {
                        return Err(ModelError::MissingTensor {
                            tensor: format!("blk.{i}.attn_{t}.bias"),
                        });
                    }
                }
            }
        }
        Ok(LlamaModel {
            rope: Rope::new(&params),
            gguf,
            params,
            embedding,
            output,
            output_norm,
            layers,
            kernel: Kernel::detect(),
        })
    }

    /// The same model multiplying on `kernel` (the scalar reference, to test the others).
    pub fn with_kernel(mut self, kernel: Kernel) -> LlamaModel {
        self.kernel = if kernel.supported() {
            kernel
        } else {
            Kernel::Scalar
        };
        self
    }

    /// The hyper-parameters.
    pub fn params(&self) -> &LlamaParams {
        &self.params
    }

    /// The file the weights are in.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// How RoPE pairs values in this model.
    pub fn rope_pairs(&self) -> RopePairs {
        self.rope.pairs
    }

    /// The kernel the projections run on.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.params.vocab_size
    }

    /// Bytes of weights the model reads: the tensors it uses in the map (each once, the tied
    /// embedding included once) and the vectors it owns.
    pub fn weight_bytes(&self) -> usize {
        let mut used: Vec<usize> = vec![self.embedding.0, self.output.0];
        let mut owned = self.output_norm.len();
        for l in &self.layers {
            used.extend([l.q, l.k, l.v, l.output, l.gate, l.up, l.down].map(|w| w.0));
            owned += l.attn_norm.len() + l.ffn_norm.len();
            owned += [&l.q_bias, &l.k_bias, &l.v_bias]
                .iter()
                .map(|b| b.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
        }
        used.sort_unstable();
        used.dedup();
        let tensors = self.gguf.tensors();
        let mapped: u64 = used.iter().map(|&i| tensors[i].size).sum();
        usize::try_from(mapped).unwrap_or(usize::MAX) + owned * 4
    }

    /// An empty cache for this model holding up to `positions` positions (no more than the
    /// model's context length).
    pub fn new_cache(&self, precision: KvPrecision, positions: usize) -> KvCache {
        let p = &self.params;
        KvCache::new(
            precision,
            p.block_count,
            p.head_count_kv,
            p.head_dim(),
            positions.min(p.context_length),
        )
    }

    fn matrix(&self, w: Weight) -> Result<QuantMatrix<'_>, ModelError> {
        let info = &self.gguf.tensors()[w.0];
        let tensor = Tensor {
            info,
            data: self.gguf.tensor_data(info),
        };
        Ok(tensor.matrix()?)
    }

    /// `out = w · x` for each of `xs` (token-major).
    fn project(&self, w: Weight, xs: &[Activation], out: &mut [f32]) -> Result<(), ModelError> {
        let m = self.matrix(w)?;
        let result = if let [x] = xs {
            m.matvec_with(self.kernel, x, out)
        } else {
            m.matmul_with(self.kernel, xs, out)
        };
        result.map_err(|source| ModelError::Kernel {
            tensor: self.gguf.tensors()[w.0].name.clone(),
            source,
        })
    }

    /// Runs `tokens` through the model at the cache's next positions, appends their keys and
    /// values to it, and returns the logits asked for (`vocab` values per position).
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let p = &self.params;
        let (d, ffn, hd) = (p.embedding_length, p.feed_forward_length, p.head_dim());
        let kv = p.head_count_kv * hd;
        let n = tokens.len();
        if cache.layers() != p.block_count || cache.row() != kv {
            return Err(ModelError::CacheMismatch {
                layers: cache.layers(),
                row: cache.row(),
                want_layers: p.block_count,
                want_row: kv,
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > cache.room() {
            return Err(ModelError::ContextFull {
                used: cache.len(),
                capacity: cache.capacity(),
                asked: n,
            });
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= p.vocab_size) {
            return Err(ModelError::UnknownToken {
                token,
                vocab: p.vocab_size,
            });
        }
        let start = cache.len();
        let embedding = self.matrix(self.embedding)?;
        let mut x = vec![0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            embedding.dequantize_row(t as usize, row);
        }
        let angles = self.rope.table(start, n);
        let mut h = vec![0f32; n * d];
        let (mut q, mut att, mut o) = (vec![0f32; n * d], vec![0f32; n * d], vec![0f32; n * d]);
        let (mut k, mut v) = (vec![0f32; n * kv], vec![0f32; n * kv]);
        let (mut gate, mut up) = (vec![0f32; n * ffn], vec![0f32; n * ffn]);
        let mut kv_rows = (Vec::new(), Vec::new());
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, p.rms_epsilon, &mut h);
            let xs = quantize_rows(&h, d)?;
            self.project(layer.q, &xs, &mut q)?;
            self.project(layer.k, &xs, &mut k)?;
            self.project(layer.v, &xs, &mut v)?;
            for (out, bias) in [
                (&mut q, &layer.q_bias),
                (&mut k, &layer.k_bias),
                (&mut v, &layer.v_bias),
            ] {
                if let Some(bias) = bias {
                    add_rows(out, bias);
                }
            }
            self.rope.apply(&mut q, n, &angles);
            self.rope.apply(&mut k, n, &angles);
            cache.write(l, &k, &v);
            attend(
                cache,
                l,
                start,
                &q,
                &mut att,
                (p, self.kernel),
                &mut kv_rows,
            );
            let xs = quantize_rows(&att, d)?;
            self.project(layer.output, &xs, &mut o)?;
            add(&mut x, &o);
            rms_norm(&x, &layer.ffn_norm, p.rms_epsilon, &mut h);
            let xs = quantize_rows(&h, d)?;
            self.project(layer.gate, &xs, &mut gate)?;
            self.project(layer.up, &xs, &mut up)?;
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            let xs = quantize_rows(&gate, ffn)?;
            self.project(layer.down, &xs, &mut o)?;
            add(&mut x, &o);
        }
        cache.commit(n);
        let rows = match logits {
            Logits::Last => &x[(n - 1) * d..],
            Logits::All => &x[..],
        };
        let mut normed = vec![0f32; rows.len()];
        rms_norm(rows, &self.output_norm, p.rms_epsilon, &mut normed);
        let xs = quantize_rows(&normed, d)?;
        let mut out = vec![0f32; xs.len() * p.vocab_size];
        self.project(self.output, &xs, &mut out)?;
        Ok(out)
    }
}

/// Each row of `x` quantized for the kernels.
fn quantize_rows(x: &[f32], width: usize) -> Result<Vec<Activation>, ModelError> {
    x.par_chunks(width)
        .map(Activation::quantize)
        .collect::<Result<_, _>>()
        .map_err(|source| ModelError::Kernel {
            tensor: "(activations)".into(),
            source,
        })
}

/// `out = x / √(mean(x²) + ε) · weight`, row by row (rows of `weight.len()` values).
fn rms_norm(x: &[f32], weight: &[f32], epsilon: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let squares: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let scale = (1.0 / (squares / width as f64 + f64::from(epsilon)).sqrt()) as f32;
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `bias` to each row of `x`.
fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

/// `Σ a·b` in sixteen lanes (so it vectorizes, to one AVX-512 register or two AVX2 ones).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a8, b8) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((l, a), b) in lanes.iter_mut().zip(x).zip(y) {
            *l += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Causal grouped-query attention of the query tokens in `q` (at positions `start..`) over
/// layer `layer` of the cache, into `out` (both tokens × heads × head dimensions). One task
/// per (token, KV head): the group of query heads sharing that KV head reads each key and
/// value once. The layer's keys and values are converted to f32 once per pass (not once per
/// token), and the tasks run on the widest instructions the model's kernel allows.
fn attend(
    cache: &KvCache,
    layer: usize,
    start: usize,
    q: &[f32],
    out: &mut [f32],
    (params, kernel): (&LlamaParams, Kernel),
    scratch: &mut (Vec<f32>, Vec<f32>),
) {
    let (kv_heads, hd) = (params.head_count_kv, params.head_dim());
    let row = kv_heads * hd;
    let group = params.head_count / kv_heads;
    let width = group * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let tokens = q.len() / width.max(1) / kv_heads.max(1);
    let (keys, values) = cache.layer(layer, start + tokens, scratch);
    let task = Heads {
        keys,
        values,
        start,
        row,
        hd,
        kv_heads,
        group,
        scale,
    };
    out.par_chunks_mut(width)
        .zip(q.par_chunks(width))
        .enumerate()
        .for_each(|(i, (out, q))| task.run(kernel, i, q, out));
}

/// One attention task: the query heads of one token that share one KV head.
struct Heads<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    start: usize,
    row: usize,
    hd: usize,
    kv_heads: usize,
    group: usize,
    scale: f32,
}

impl Heads<'_> {
    /// Task `task` (token `task / kv_heads`, KV head `task % kv_heads`) on the widest
    /// instructions `kernel` allows: the same arithmetic in the same order on each, so the
    /// results do not depend on the CPU.
    fn run(&self, kernel: Kernel, task: usize, q: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512(h: &Heads<'_>, task: usize, q: &[f32], out: &mut [f32]) {
                h.body(task, q, out)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(h: &Heads<'_>, task: usize, q: &[f32], out: &mut [f32]) {
                h.body(task, q, out)
            }
            // SAFETY: a kernel other than Scalar is only chosen when the CPU supports it
            // (`Kernel::detect`, `LlamaModel::with_kernel`), and each needs these features.
            match kernel {
                Kernel::Avx512 | Kernel::Avx512Vnni if kernel.supported() => unsafe {
                    return avx512(self, task, q, out);
                },
                Kernel::Avx2 if kernel.supported() => unsafe { return avx2(self, task, q, out) },
                _ => {}
            }
        }
        let _ = kernel;
        self.body(task, q, out)
    }

    #[inline(always)]
    fn body(&self, task: usize, q: &[f32], out: &mut [f32]) {
        let Heads {
            keys,
            values,
            start,
            row,
            hd,
            kv_heads,
            group,
            scale,
        } = *self;
        let (token, kv_head) = (task / kv_heads, task % kv_heads);
        let positions = (start + token + 1).min(keys.len() / row.max(1));
        let at = |p: usize| p * row + kv_head * hd;
        let mut scores = vec![0f32; group * positions];
        for p in 0..positions {
            let key = &keys[at(p)..at(p) + hd];
            for (j, qh) in q.chunks_exact(hd).enumerate() {
                scores[j * positions + p] = dot(qh, key) * scale;
            }
        }
        for s in scores.chunks_exact_mut(positions.max(1)) {
            softmax(s);
        }
        out.fill(0.0);
        for p in 0..positions {
            let value = &values[at(p)..at(p) + hd];
            for (j, oh) in out.chunks_exact_mut(hd).enumerate() {
                let w = scores[j * positions + p];
                for (o, &v) in oh.iter_mut().zip(value) {
                    *o += w * v;
                }
            }
        }
    }
}

/// `x = exp(x − max x) / Σ exp(x − max x)`, in place.
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        for v in x.iter_mut() {
            *v /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<LlamaModel>();
        shareable::<KvCache>();
    }

    fn rope(pairs: RopePairs, dims: usize, head_dim: usize) -> Rope {
        Rope {
            pairs,
            head_dim,
            frequencies: (0..dims / 2)
                .map(|i| 10_000f64.powf(-2.0 * i as f64 / dims as f64))
                .collect(),
        }
    }

    #[test]
    fn rope_rotates_adjacent_pairs_or_halves() {
        let x: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        // Position 0 is the identity.
        let r = rope(RopePairs::Adjacent, 8, 8);
        let mut y = x.clone();
        r.apply(&mut y, 1, &r.table(0, 1));
        assert_eq!(y, x);
        // Pair 0 turns by 1 radian at position 1, in (0, 1) or in (0, 4).
        let (c, s) = (1f32.cos(), 1f32.sin());
        let mut y = x.clone();
        r.apply(&mut y, 1, &r.table(1, 1));
        assert!((y[0] - (c - 2.0 * s)).abs() < 1e-6 && (y[1] - (s + 2.0 * c)).abs() < 1e-6);
        let r = rope(RopePairs::Halves, 8, 8);
        let mut y = x.clone();
        r.apply(&mut y, 1, &r.table(1, 1));
        assert!((y[0] - (c - 5.0 * s)).abs() < 1e-6 && (y[4] - (s + 5.0 * c)).abs() < 1e-6);
        // Partial rotation leaves the last values alone; the norm of each pair is kept.
        let r = rope(RopePairs::Adjacent, 4, 8);
        let mut y = x.clone();
        r.apply(&mut y, 1, &r.table(7, 1));
        assert_eq!(&y[4..], &x[4..]);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&y[..2]) - norm(&x[..2])).abs() < 1e-4);
    }

    #[test]
    fn softmax_and_rms_norm() {
        let mut x = [1.0, 2.0, 3.0, f32::NEG_INFINITY];
        softmax(&mut x);
        let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
        let total: f32 = e.iter().sum();
        for (a, b) in x.iter().zip(e) {
            assert!((a - b / total).abs() < 1e-6);
        }
        assert_eq!(x[3], 0.0);
        let mut out = [0f32; 4];
        rms_norm(&[3.0, 4.0, 3.0, 4.0], &[1.0, 1.0, 2.0, 2.0], 0.0, &mut out);
        let r = 12.5f32.sqrt();
        assert_eq!(out, [3.0 / r, 4.0 / r, 6.0 / r, 8.0 / r]);
        assert_eq!(dot(&[1.0; 11], &[2.0; 11]), 22.0);
    }
}
