//! Small language models from GGUF files: the room for issue 25's on-device LLM.
//!
//! - [`gguf`]: the file — header, metadata, tensor table, tensors' bytes memory-mapped in place
//!   — and [`gguf::LlamaParams`], the typed hyper-parameters of a Llama-family model. Every
//!   refusal of a file is a [`gguf::GgufError`] naming the key, tensor and byte offset;
//! - [`quant`]: the weight types (F32, F16, Q8_0, Q4_0, Q4_1), their dequantization and the
//!   matrix × vector and matrix × batch kernels (scalar reference, AVX2, AVX-512, AVX-512
//!   VNNI) over rows split on the rayon pool;
//! - [`tokenizer`]: byte-level BPE from the file's `tokenizer.*` metadata, special tokens and
//!   the chat prompt of one user turn;
//! - [`model`]: [`LlamaModel`], the transformer over the file's weights (checked by name and
//!   shape at load) and its forward pass of a batch of tokens;
//! - [`kv`]: [`KvCache`], the keys and values of one conversation's positions (f32 or f16);
//! - [`sample`]: choosing a token from logits (greedy, temperature, top-k, top-p, repetition
//!   penalty, a seeded generator of our own);
//! - [`generate`]: [`Session`], one conversation — prefill, generation streamed to a
//!   callback with stop tokens and stop strings, scoring, and the memory it holds.
//!
//! Data flows one way: a [`gguf::Gguf`] is opened once; the tokenizer and the hyper-parameters
//! read its metadata; [`LlamaModel`] takes the file and borrows its tensors' bytes as
//! [`quant::QuantMatrix`]es, which multiply [`quant::Activation`]s. A [`Session`] holds an
//! `Arc` of the model and of the tokenizer, shared by every session, and owns its cache.
//! Nothing here touches the ONNX side of the engine besides its instruction-set cap. What
//! must not live here: task-facing APIs (`walle.llm` is the VM's).

pub mod generate;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod quant;
pub mod sample;
pub mod tokenizer;

pub use generate::{
    GenerateOptions, Generation, Piece, Score, Session, SessionError, SessionOptions, StopReason,
};
pub use gguf::{Gguf, GgufError, LlamaParams};
pub use kv::{KvCache, KvPrecision};
pub use model::{LlamaModel, Logits, ModelError};
pub use quant::{Activation, GgmlType, Kernel, QuantMatrix};
pub use sample::{Sampler, Sampling};
pub use tokenizer::{Specials, Tokenizer, TokenizerError};
