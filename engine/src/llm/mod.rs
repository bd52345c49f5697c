//! Small language models from GGUF files: the room for issue 25's on-device LLM.
//!
//! - [`gguf`]: the file — header, metadata, tensor table, tensors' bytes memory-mapped in place
//!   — and [`gguf::LlamaParams`], the typed hyper-parameters of a Llama-family model. Every
//!   refusal of a file is a [`gguf::GgufError`] naming the key, tensor and byte offset;
//! - [`quant`]: the weight types (F32, F16, Q8_0, Q4_0, Q4_1), their dequantization and the
//!   matrix × vector kernels (scalar reference, AVX2, AVX-512, AVX-512 VNNI) over rows split on
//!   the rayon pool;
//! - [`tokenizer`]: byte-level BPE from the file's `tokenizer.*` metadata, special tokens and
//!   the chat prompt of one user turn.
//!
//! Data flows one way: a [`gguf::Gguf`] is opened once; the tokenizer and the hyper-parameters
//! read its metadata; a tensor's bytes become a [`quant::QuantMatrix`] borrowed from the map,
//! which multiplies [`quant::Activation`]s. Nothing here touches the ONNX side of the engine
//! besides its instruction-set cap; the model (layers, KV cache, generation) comes next and
//! belongs here too. What must not live here: task-facing APIs (`walle.llm` is the VM's).

pub mod gguf;
pub mod quant;
pub mod tokenizer;

pub use gguf::{Gguf, GgufError, LlamaParams};
pub use quant::{Activation, GgmlType, Kernel, QuantMatrix};
pub use tokenizer::{Specials, Tokenizer, TokenizerError};
