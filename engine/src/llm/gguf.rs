//! GGUF files (versions 2 and 3): the header, the metadata, the tensor table, and the
//! tensors' bytes memory-mapped in place.
//!
//! A file is little-endian: the magic `GGUF`, a `u32` version, the `u64` counts of tensors
//! and of metadata entries, the entries (a string key, a `u32` value type, the value; arrays
//! hold an element type, a `u64` count and the elements, arrays of arrays included), the
//! tensor infos (name, `u32` dimension count, `u64` dimensions innermost first, `u32` ggml
//! type, `u64` offset), then, at the next multiple of `general.alignment` (default 32), the
//! tensor data, each tensor at its offset from there, itself a multiple of the alignment.
//!
//! [`Gguf::open`] maps the file and parses everything but the tensor data up front; a
//! tensor's bytes are then a slice of the map ([`Gguf::tensor`]), never copied. Metadata is
//! copied out (strings and arrays: the tokenizer's 49k tokens are a megabyte).
//!
//! **A file is not trusted.** Every read is bounds-checked against the file's length; a count
//! read from the file is checked against the bytes left before anything is allocated for it
//! (an entry, tensor info or array element takes at least a known number of bytes), so what
//! is allocated stays within a small multiple of the file's own size; nested arrays are
//! limited to [`MAX_ARRAY_DEPTH`]; dimensions are limited to 4 and their product must fit an
//! `i64`; every tensor must lie inside the file, aligned; unknown value types and tensor types
//! are refused by number (and ggml's name for it). Every refusal is a [`GgufError`] saying
//! what was wrong and where: the key, the tensor, the byte offset.
//!
//! [`LlamaParams`] is the typed view of a Llama-family model's hyper-parameters
//! (`general.architecture` = `llama` or `qwen2`, keys `{arch}.*`).
//!
//! Mapping a file is the one `unsafe` here: the map is only sound while no one truncates or
//! rewrites the file. Model files are written once and read, like every mmap-based loader
//! (llama.cpp's included) assumes.

use std::collections::HashMap;
use std::path::Path;

use super::quant::{GgmlType, QuantError, QuantMatrix, ggml_type_name};

/// Nested arrays deeper than this are refused (GGUF writers produce depth 1 or 2).
pub const MAX_ARRAY_DEPTH: usize = 3;
/// The tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's largest number of dimensions.
pub const MAX_DIMS: usize = 4;

/// Why a GGUF file was refused, or a key or tensor was not there. Each says what and where.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file ends inside something.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes, the file has {len}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
        /// The file's length.
        len: u64,
    },
    /// Not a GGUF file.
    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A version other than 2 or 3 (1 had 32-bit counts; a byte-swapped one is big-endian).
    #[error("GGUF version {version} is not supported (2 and 3 are, little-endian)")]
    UnsupportedVersion {
        /// The version read.
        version: u32,
    },
    /// A count that cannot fit in the rest of the file.
    #[error("{what}: a count of {count} at byte {offset} cannot fit in the {room} bytes left")]
    CountTooLarge {
        /// What is counted.
        what: String,
        /// The count read.
        count: u64,
        /// Where it was read.
        offset: u64,
        /// The bytes left after it.
        room: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what} at byte {offset} is not UTF-8")]
    BadUtf8 {
        /// Which string.
        what: String,
        /// Where it starts.
        offset: u64,
    },
    /// A metadata value type this version of GGUF does not define.
    #[error("metadata `{key}`: unknown value type {type_id} at byte {offset}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type number read.
        type_id: u32,
        /// Where it was read.
        offset: u64,
    },
    /// A bool that is neither 0 nor 1.
    #[error("metadata `{key}`: byte {value} at {offset} is not a bool (0 or 1)")]
    BadBool {
        /// The key.
        key: String,
        /// The byte read.
        value: u8,
        /// Where.
        offset: u64,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH} at byte {offset}")]
    ArrayTooDeep {
        /// The key.
        key: String,
        /// Where the too-deep array starts.
        offset: u64,
    },
    /// A key given twice.
    #[error("metadata `{key}` appears twice (again at byte {offset})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where the second one is.
        offset: u64,
    },
    /// A required key is missing.
    #[error("metadata `{key}` is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A key holds a value of the wrong type.
    #[error("metadata `{key}` is {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What was expected.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// A key holds a value out of its range.
    #[error("metadata `{key}`: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor name given twice.
    #[error("tensor `{name}` appears twice (again at byte {offset})")]
    DuplicateTensor {
        /// The name.
        name: String,
        /// Where the second info starts.
        offset: u64,
    },
    /// A tensor's dimensions are not usable.
    #[error("tensor `{tensor}`: dimensions {dims:?}: {reason}")]
    BadDims {
        /// The tensor.
        tensor: String,
        /// Its dimensions (as many as were read).
        dims: Vec<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A tensor type the engine does not read.
    #[error("tensor `{tensor}`: type {type_id}{} is not supported (F32, F16, Q4_0, Q4_1, Q8_0 are)", name.map(|n| format!(" ({n})")).unwrap_or_default())]
    UnsupportedTensorType {
        /// The tensor.
        tensor: String,
        /// ggml's type number.
        type_id: u32,
        /// ggml's name for it, if it has one.
        name: Option<&'static str>,
    },
    /// A tensor's offset is not a multiple of the alignment.
    #[error("tensor `{tensor}`: offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// The tensor.
        tensor: String,
        /// Its offset from the start of the data.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's bytes are not all inside the file.
    #[error(
        "tensor `{tensor}`: {size} bytes at byte {start} run past the end of the file ({len} bytes)"
    )]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Its first byte in the file (saturated).
        start: u64,
        /// Its size in bytes.
        size: u64,
        /// The file's length.
        len: u64,
    },
    /// No tensor of that name.
    #[error("no tensor `{name}`")]
    NoSuchTensor {
        /// The name asked for.
        name: String,
    },
    /// A tensor is not of the shape asked for.
    #[error("tensor `{tensor}`: {reason}")]
    TensorShape {
        /// The tensor.
        tensor: String,
        /// What was expected.
        reason: String,
    },
    /// A tensor's data does not make a matrix.
    #[error("tensor `{tensor}`: {source}")]
    Matrix {
        /// The tensor.
        tensor: String,
        /// The cause.
        #[source]
        source: QuantError,
    },
    /// `general.architecture` is not a Llama-family one.
    #[error("architecture `{0}` is not supported (llama and qwen2 are)")]
    UnsupportedArchitecture(String),
}

/// The type of a metadata value (GGUF's `gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// `u8`.
    U8,
    /// `i8`.
    I8,
    /// `u16`.
    U16,
    /// `i16`.
    I16,
    /// `u32`.
    U32,
    /// `i32`.
    I32,
    /// `f32`.
    F32,
    /// One byte, 0 or 1.
    Bool,
    /// A `u64` length and UTF-8 bytes.
    String,
    /// An element type, a `u64` count and the elements.
    Array,
    /// `u64`.
    U64,
    /// `i64`.
    I64,
    /// `f64`.
    F64,
}

impl ValueType {
    /// The type numbered `id`.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        [
            U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64,
        ]
        .get(id as usize)
        .copied()
    }

    /// The fewest bytes a value of this type takes in a file.
    fn min_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// A bool.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array.
    Array(MetaArray),
}

/// A metadata array: its elements, of one type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
    /// Bools.
    Bool(Vec<bool>),
    /// Strings.
    Str(Vec<String>),
    /// Arrays.
    Array(Vec<MetaArray>),
}

impl MetaValue {
    /// The type's name, for messages (`u32`, `array of string`, …).
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::U8(_) => "u8".into(),
            MetaValue::I8(_) => "i8".into(),
            MetaValue::U16(_) => "u16".into(),
            MetaValue::I16(_) => "i16".into(),
            MetaValue::U32(_) => "u32".into(),
            MetaValue::I32(_) => "i32".into(),
            MetaValue::U64(_) => "u64".into(),
            MetaValue::I64(_) => "i64".into(),
            MetaValue::F32(_) => "f32".into(),
            MetaValue::F64(_) => "f64".into(),
            MetaValue::Bool(_) => "bool".into(),
            MetaValue::Str(_) => "string".into(),
            MetaValue::Array(a) => format!("array of {}", a.element_name()),
        }
    }

    /// An integer of any width that is not negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float (`f32`, or `f64` narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetaArray {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn element_name(&self) -> String {
        match self {
            MetaArray::U8(_) => "u8".into(),
            MetaArray::I8(_) => "i8".into(),
            MetaArray::U16(_) => "u16".into(),
            MetaArray::I16(_) => "i16".into(),
            MetaArray::U32(_) => "u32".into(),
            MetaArray::I32(_) => "i32".into(),
            MetaArray::U64(_) => "u64".into(),
            MetaArray::I64(_) => "i64".into(),
            MetaArray::F32(_) => "f32".into(),
            MetaArray::F64(_) => "f64".into(),
            MetaArray::Bool(_) => "bool".into(),
            MetaArray::Str(_) => "string".into(),
            MetaArray::Array(_) => "array".into(),
        }
    }

    /// String elements.
    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            MetaArray::Str(v) => Some(v),
            _ => None,
        }
    }

    /// Integer elements of any width as `i64` (`None` for other elements, or a `u64` past
    /// `i64::MAX`).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            MetaArray::U8(v) => all(v, |x| Some(x.into())),
            MetaArray::I8(v) => all(v, |x| Some(x.into())),
            MetaArray::U16(v) => all(v, |x| Some(x.into())),
            MetaArray::I16(v) => all(v, |x| Some(x.into())),
            MetaArray::U32(v) => all(v, |x| Some(x.into())),
            MetaArray::I32(v) => all(v, |x| Some(x.into())),
            MetaArray::U64(v) => all(v, |x| i64::try_from(x).ok()),
            MetaArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// Float elements as `f32`.
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        match self {
            MetaArray::F32(v) => Some(v.clone()),
            MetaArray::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }
}

/// One tensor's entry in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// Its dimensions, innermost (a row's length) first, as ggml's `ne`.
    pub dims: Vec<u64>,
    /// Its element type.
    pub ty: GgmlType,
    /// Its first byte, from the start of the tensor data.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// The number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row (the innermost dimension; 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// The number of rows (the product of the other dimensions).
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// The file's bytes: mapped, or owned (for bytes made in memory).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open GGUF file: its metadata and tensor table, parsed and checked, and its bytes.
pub struct Gguf {
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    names: HashMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("bytes", &self.bytes.as_slice().len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A tensor: its entry and its bytes, borrowed from the file.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    /// Its entry in the table.
    pub info: &'a TensorInfo,
    /// Its bytes.
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// The tensor as a matrix of [`TensorInfo::rows`] rows (a 1-D tensor is one row).
    pub fn matrix(&self) -> Result<QuantMatrix<'a>, GgufError> {
        let fail = |source| GgufError::Matrix {
            tensor: self.info.name.clone(),
            source,
        };
        let too_big = || GgufError::TensorShape {
            tensor: self.info.name.clone(),
            reason: format!(
                "{:?} does not fit this machine's address space",
                self.info.dims
            ),
        };
        let rows = usize::try_from(self.info.rows()).map_err(|_| too_big())?;
        let cols = usize::try_from(self.info.row_len()).map_err(|_| too_big())?;
        QuantMatrix::new(self.info.ty, rows, cols, self.data).map_err(fail)
    }

    /// All elements as f32, in the file's order.
    pub fn dequantize(&self) -> Result<Vec<f32>, GgufError> {
        Ok(self.matrix()?.dequantize())
    }
}

impl Gguf {
    /// Maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = if len == 0 {
            // Mapping an empty file fails on some systems; an empty file is simply truncated.
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and lives as long as `Gguf`; it is sound as long as
            // no other process truncates or rewrites the file meanwhile (see the module docs).
            Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Gguf::parse(bytes)
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        Gguf::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Gguf, GgufError> {
        let parsed = Parser::new(bytes.as_slice()).file()?;
        Ok(Gguf {
            bytes,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            keys: index(parsed.metadata.iter().map(|(k, _)| k)),
            metadata: parsed.metadata,
            names: index(parsed.tensors.iter().map(|t| &t.name)),
            tensors: parsed.tensors,
        })
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The tensor data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The byte where the tensor data starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// Whether the file is empty (never, for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.bytes.as_slice().is_empty()
    }

    /// The metadata entries, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key`, or [`GgufError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// `key` as a non-negative integer of any width.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| wrong(key, "a non-negative integer", v))
    }

    /// `key` as a count or size (a non-negative integer that fits a `usize`).
    pub fn usize(&self, key: &str) -> Result<usize, GgufError> {
        usize::try_from(self.u64(key)?).map_err(|_| GgufError::BadValue {
            key: key.into(),
            reason: "too large for this machine".into(),
        })
    }

    /// `key` as a float.
    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| wrong(key, "a float", v))
    }

    /// `key` as a string.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong(key, "a string", v))
    }

    /// `key` as an array.
    pub fn array(&self, key: &str) -> Result<&MetaArray, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| wrong(key, "an array", v))
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>, GgufError> {
        let info = self
            .names
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::NoSuchTensor { name: name.into() })?;
        Ok(Tensor {
            info,
            data: self.tensor_data(info),
        })
    }

    /// The bytes of a tensor of this file's table (checked at parse time to lie inside it).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_offset.saturating_add(info.offset);
        let end = start.saturating_add(info.size);
        let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
            return &[];
        };
        self.bytes.as_slice().get(start..end).unwrap_or(&[])
    }
}

fn index<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.clone(), i)).collect()
}

fn wrong(key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
    GgufError::WrongType {
        key: key.into(),
        expected,
        found: found.type_name(),
    }
}

/// What the parser found.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
}

/// A cursor over the file that never reads past its end.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Parser<'a> {
        Parser { bytes, at: 0 }
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn room(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    /// The next `n` bytes, or a [`GgufError::Truncated`] naming `what`.
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated {
            what: what(),
            offset: self.at as u64,
            needed: n,
            len: self.len(),
        };
        if n > self.room() {
            return Err(truncated());
        }
        let n = n as usize; // ≤ room, so it fits
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` things of at least `min` bytes each fit in the bytes left.
    fn check_count(
        &self,
        count: u64,
        min: u64,
        what: impl FnOnce() -> String,
    ) -> Result<(), GgufError> {
        if count
            .checked_mul(min)
            .is_none_or(|bytes| bytes > self.room())
        {
            return Err(GgufError::CountTooLarge {
                what: what(),
                count,
                offset: (self.at as u64).saturating_sub(8),
                room: self.room(),
            });
        }
        Ok(())
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("the length of {}", what()))?;
        let start = self.at as u64;
        let bytes = self.take(len, &what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::BadUtf8 {
                what: what(),
                offset: start,
            })
    }

    fn file(mut self) -> Result<Parsed, GgufError> {
        let magic = self.array::<4>(|| "the magic".into())?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = self.u32(|| "the version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = self.u64(|| "the tensor count".into())?;
        // The smallest tensor info: an empty name, no dimensions, a type and an offset.
        self.check_count(tensor_count, 8 + 4 + 4 + 8, || "tensor infos".into())?;
        let entry_count = self.u64(|| "the metadata entry count".into())?;
        // The smallest entry: an empty key, a type and a one-byte value.
        self.check_count(entry_count, 8 + 4 + 1, || "metadata entries".into())?;

        let mut metadata = Vec::with_capacity(entry_count as usize);
        let mut keys = HashMap::new();
        for i in 0..entry_count {
            let start = self.at as u64;
            let key = self.string(|| format!("the key of metadata entry {i}"))?;
            if keys.insert(key.clone(), ()).is_some() {
                return Err(GgufError::DuplicateKey { key, offset: start });
            }
            let value = self.value(&key)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, MetaValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((key, MetaValue::U32(a))) => {
                return Err(GgufError::BadValue {
                    key: key.clone(),
                    reason: format!("{a} is not a power of two"),
                });
            }
            Some((key, other)) => return Err(wrong(key, "u32", other)),
        };

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut names = HashMap::new();
        for i in 0..tensor_count {
            let start = self.at as u64;
            let name = self.string(|| format!("the name of tensor {i}"))?;
            if names.insert(name.clone(), ()).is_some() {
                return Err(GgufError::DuplicateTensor {
                    name,
                    offset: start,
                });
            }
            tensors.push(self.tensor_info(name)?);
        }
        let data_offset = (self.at as u64).next_multiple_of(alignment);
        for t in &tensors {
            let start = data_offset.saturating_add(t.offset);
            if start.checked_add(t.size).is_none_or(|end| end > self.len()) {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    start,
                    size: t.size,
                    len: self.len(),
                });
            }
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::Misaligned {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
        }
        Ok(Parsed {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }

    fn tensor_info(&mut self, name: String) -> Result<TensorInfo, GgufError> {
        let n_dims = self.u32(|| format!("the dimension count of tensor `{name}`"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::BadDims {
                tensor: name,
                dims: Vec::new(),
                reason: format!("{n_dims} dimensions (ggml has at most {MAX_DIMS})"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(self.u64(|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let type_id = self.u32(|| format!("the type of tensor `{name}`"))?;
        let offset = self.u64(|| format!("the offset of tensor `{name}`"))?;
        let bad = |reason: String| GgufError::BadDims {
            tensor: name.clone(),
            dims: dims.clone(),
            reason,
        };
        let elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad("the element count overflows".into()))?;
        let Some(ty) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnsupportedTensorType {
                name: ggml_type_name(type_id),
                tensor: name.clone(),
                type_id,
            });
        };
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_elems() as u64) {
            return Err(bad(format!(
                "rows of {row} are not whole {ty} blocks of {}",
                ty.block_elems()
            )));
        }
        let size = ty
            .bytes_of(elements)
            .ok_or_else(|| bad("the byte size overflows".into()))?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        })
    }

    fn value(&mut self, key: &str) -> Result<MetaValue, GgufError> {
        let at = self.at as u64;
        let id = self.u32(|| format!("the value type of `{key}`"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.into(),
            type_id: id,
            offset: at,
        })?;
        let what = || format!("the value of `{key}`");
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let at = self.at as u64;
                let [b] = self.array(what)?;
                MetaValue::Bool(bool_of(key, b, at)?)
            }
            ValueType::String => MetaValue::Str(self.string(what)?),
            ValueType::Array => MetaValue::Array(self.meta_array(key, 1)?),
        })
    }

    fn meta_array(&mut self, key: &str, depth: usize) -> Result<MetaArray, GgufError> {
        let at = self.at as u64;
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep {
                key: key.into(),
                offset: at,
            });
        }
        let id = self.u32(|| format!("the element type of `{key}`"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.into(),
            type_id: id,
            offset: at,
        })?;
        let count = self.u64(|| format!("the element count of `{key}`"))?;
        self.check_count(count, ty.min_size(), || format!("elements of `{key}`"))?;
        // `count · min_size` fits in the bytes left, so the sizes below cannot overflow.
        let what = || format!("the elements of `{key}`");
        let n = count as usize;
        fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let size = ty.min_size() * count;
        Ok(match ty {
            ValueType::U8 => MetaArray::U8(self.take(size, what)?.to_vec()),
            ValueType::I8 => MetaArray::I8(le(self.take(size, what)?, i8::from_le_bytes)),
            ValueType::U16 => MetaArray::U16(le(self.take(size, what)?, u16::from_le_bytes)),
            ValueType::I16 => MetaArray::I16(le(self.take(size, what)?, i16::from_le_bytes)),
            ValueType::U32 => MetaArray::U32(le(self.take(size, what)?, u32::from_le_bytes)),
            ValueType::I32 => MetaArray::I32(le(self.take(size, what)?, i32::from_le_bytes)),
            ValueType::U64 => MetaArray::U64(le(self.take(size, what)?, u64::from_le_bytes)),
            ValueType::I64 => MetaArray::I64(le(self.take(size, what)?, i64::from_le_bytes)),
            ValueType::F32 => MetaArray::F32(le(self.take(size, what)?, f32::from_le_bytes)),
            ValueType::F64 => MetaArray::F64(le(self.take(size, what)?, f64::from_le_bytes)),
            ValueType::Bool => {
                let start = self.at as u64;
                let bytes = self.take(size, what)?;
                let mut out = Vec::with_capacity(n);
                for (i, &b) in bytes.iter().enumerate() {
                    out.push(bool_of(key, b, start + i as u64)?);
                }
                MetaArray::Bool(out)
            }
            ValueType::String => {
                let mut out = Vec::with_capacity(n);
                for i in 0..count {
                    out.push(self.string(|| format!("element {i} of `{key}`"))?);
                }
                MetaArray::Str(out)
            }
            ValueType::Array => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..count {
                    out.push(self.meta_array(key, depth + 1)?);
                }
                MetaArray::Array(out)
            }
        })
    }
}

fn bool_of(key: &str, b: u8, offset: u64) -> Result<bool, GgufError> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::BadBool {
            key: key.into(),
            value,
            offset,
        }),
    }
}

/// A Llama-family architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `llama` (Llama 1–3, SmolLM, TinyLlama, …).
    Llama,
    /// `qwen2` (Llama's layout with biases on q, k and v).
    Qwen2,
}

impl Architecture {
    /// The name in `general.architecture`, which prefixes its keys.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// A Llama-family model's hyper-parameters, from a GGUF file's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaParams {
    /// The architecture.
    pub architecture: Architecture,
    /// Transformer blocks (`{arch}.block_count`).
    pub block_count: usize,
    /// The model width (`{arch}.embedding_length`).
    pub embedding_length: usize,
    /// The feed-forward width (`{arch}.feed_forward_length`).
    pub feed_forward_length: usize,
    /// Query heads (`{arch}.attention.head_count`).
    pub head_count: usize,
    /// Key/value heads (`{arch}.attention.head_count_kv`; default: `head_count`).
    pub head_count_kv: usize,
    /// The RMSNorm epsilon (`{arch}.attention.layer_norm_rms_epsilon`).
    pub rms_epsilon: f32,
    /// RoPE's base frequency (`{arch}.rope.freq_base`; default 10,000).
    pub rope_freq_base: f32,
    /// Dimensions of a head that RoPE rotates (`{arch}.rope.dimension_count`; default: all).
    pub rope_dimensions: usize,
    /// The context the model was trained for (`{arch}.context_length`).
    pub context_length: usize,
    /// Tokens in the vocabulary (`{arch}.vocab_size`, or the length of
    /// `tokenizer.ggml.tokens`).
    pub vocab_size: usize,
}

impl LlamaParams {
    /// Reads and checks the hyper-parameters: each missing key is named, and sizes must
    /// agree (heads divide the width, KV heads divide the heads, head dimensions are even).
    pub fn from_gguf(gguf: &Gguf) -> Result<LlamaParams, GgufError> {
        let arch = gguf.str("general.architecture")?;
        let architecture = match arch {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => return Err(GgufError::UnsupportedArchitecture(other.into())),
        };
        let key = |name: &str| format!("{arch}.{name}");
        let positive = |name: &str| -> Result<usize, GgufError> {
            let k = key(name);
            match gguf.usize(&k)? {
                0 => Err(GgufError::BadValue {
                    key: k,
                    reason: "must not be 0".into(),
                }),
                n => Ok(n),
            }
        };
        let optional = |name: &str, default: usize| -> Result<usize, GgufError> {
            if gguf.get(&key(name)).is_some() {
                positive(name)
            } else {
                Ok(default)
            }
        };
        let embedding_length = positive("embedding_length")?;
        let head_count = positive("attention.head_count")?;
        let head_count_kv = optional("attention.head_count_kv", head_count)?;
        let bad = |name: &str, reason: String| GgufError::BadValue {
            key: key(name),
            reason,
        };
        if !embedding_length.is_multiple_of(head_count) {
            return Err(bad(
                "attention.head_count",
                format!("{head_count} heads do not divide the width {embedding_length}"),
            ));
        }
        let head_dim = embedding_length / head_count;
        if !head_count.is_multiple_of(head_count_kv) {
            return Err(bad(
                "attention.head_count_kv",
                format!("{head_count_kv} KV heads do not divide {head_count} heads"),
            ));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(bad(
                "attention.head_count",
                format!("a head of {head_dim} dimensions cannot be rotated in pairs"),
            ));
        }
        let rope_dimensions = optional("rope.dimension_count", head_dim)?;
        if rope_dimensions > head_dim || !rope_dimensions.is_multiple_of(2) {
            return Err(bad(
                "rope.dimension_count",
                format!("{rope_dimensions} is odd or more than a head's {head_dim} dimensions"),
            ));
        }
        let rms_epsilon = gguf.f32(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rms_epsilon.is_finite() && rms_epsilon > 0.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("{rms_epsilon} is not a positive number"),
            ));
        }
        let rope_freq_base = match gguf.get(&key("rope.freq_base")) {
            None => 10_000.0,
            Some(_) => gguf.f32(&key("rope.freq_base"))?,
        };
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
            return Err(bad(
                "rope.freq_base",
                format!("{rope_freq_base} is not a positive number"),
            ));
        }
        let vocab_size = match gguf.get(&key("vocab_size")) {
            Some(_) => positive("vocab_size")?,
            None => gguf.array("tokenizer.ggml.tokens")?.len(),
        };
        Ok(LlamaParams {
            architecture,
            block_count: positive("block_count")?,
            embedding_length,
            feed_forward_length: positive("feed_forward_length")?,
            head_count,
            head_count_kv,
            rms_epsilon,
            rope_freq_base,
            rope_dimensions,
            context_length: positive("context_length")?,
            vocab_size,
        })
    }

    /// Dimensions of one attention head.
    pub fn head_dim(&self) -> usize {
        self.embedding_length / self.head_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF file built by hand: entries and tensor infos as raw bytes.
    struct Builder {
        version: u32,
        entries: Vec<Vec<u8>>,
        infos: Vec<Vec<u8>>,
        data: Vec<u8>,
        alignment: u64,
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend(s.as_bytes());
        out
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                version: 3,
                entries: Vec::new(),
                infos: Vec::new(),
                data: Vec::new(),
                alignment: 32,
            }
        }

        fn entry(mut self, key: &str, type_id: u32, value: &[u8]) -> Builder {
            let mut e = string(key);
            e.extend(type_id.to_le_bytes());
            e.extend(value);
            self.entries.push(e);
            self
        }

        fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Builder {
            let mut t = string(name);
            t.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                t.extend(d.to_le_bytes());
            }
            t.extend(type_id.to_le_bytes());
            t.extend(offset.to_le_bytes());
            self.infos.push(t);
            self
        }

        fn data(mut self, bytes: usize) -> Builder {
            self.data = (0..bytes).map(|i| i as u8).collect();
            self
        }

        fn counts(&self) -> (u64, u64) {
            (self.infos.len() as u64, self.entries.len() as u64)
        }

        fn bytes_with_counts(&self, tensors: u64, entries: u64) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(self.version.to_le_bytes());
            out.extend(tensors.to_le_bytes());
            out.extend(entries.to_le_bytes());
            for e in &self.entries {
                out.extend(e);
            }
            for t in &self.infos {
                out.extend(t);
            }
            while !(out.len() as u64).is_multiple_of(self.alignment) {
                out.push(0);
            }
            out.extend(&self.data);
            out
        }

        fn bytes(&self) -> Vec<u8> {
            let (t, e) = self.counts();
            self.bytes_with_counts(t, e)
        }

        fn parse(&self) -> Result<Gguf, GgufError> {
            Gguf::from_bytes(self.bytes())
        }
    }

    fn small() -> Builder {
        Builder::new()
            .entry("general.architecture", 8, &string("llama"))
            .entry(
                "a.list",
                9,
                &[
                    &4u32.to_le_bytes()[..],
                    &2u64.to_le_bytes(),
                    &7u32.to_le_bytes(),
                    &9u32.to_le_bytes(),
                ]
                .concat(),
            )
            .tensor("w", &[32, 2], 8, 0)
            .tensor("n", &[4], 0, 96)
            .data(96 + 16)
    }

    #[test]
    fn a_small_file_parses() {
        let g = small().parse().unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.array("a.list").unwrap(), &MetaArray::U32(vec![7, 9]));
        let w = g.tensor("w").unwrap();
        assert_eq!((w.info.ty, w.data.len()), (GgmlType::Q8_0, 68));
        assert_eq!(w.data[0], 0);
        let n = g.tensor("n").unwrap();
        assert_eq!(n.data[0], 96);
        assert!(matches!(g.tensor("x"), Err(GgufError::NoSuchTensor { .. })));
        assert!(matches!(g.u64("nope"), Err(GgufError::MissingKey { key }) if key == "nope"));
        assert!(matches!(
            g.u64("general.architecture"),
            Err(GgufError::WrongType {
                expected: "a non-negative integer",
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = small().bytes();
        for len in 0..bytes.len() {
            assert!(
                Gguf::from_bytes(bytes[..len].to_vec()).is_err(),
                "cut at {len}"
            );
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let b = small();
        let (t, e) = b.counts();
        for (tensors, entries) in [(u64::MAX, e), (t, u64::MAX), (1 << 40, e), (t, 1 << 40)] {
            let err = Gguf::from_bytes(b.bytes_with_counts(tensors, entries)).unwrap_err();
            assert!(matches!(err, GgufError::CountTooLarge { .. }), "{err}");
        }
        // An array claiming 2^61 elements, and a string claiming 2^63 bytes.
        let huge = Builder::new()
            .entry(
                "a",
                9,
                &[&4u32.to_le_bytes()[..], &(1u64 << 61).to_le_bytes()].concat(),
            )
            .parse()
            .unwrap_err();
        assert!(
            matches!(huge, GgufError::CountTooLarge { ref what, .. } if what.contains("`a`")),
            "{huge}"
        );
        let long = Builder::new()
            .entry("s", 8, &(1u64 << 63).to_le_bytes())
            .parse()
            .unwrap_err();
        assert!(
            matches!(long, GgufError::Truncated { ref what, .. } if what.contains("`s`")),
            "{long}"
        );
    }

    #[test]
    fn bad_headers_are_named() {
        let mut bytes = small().bytes();
        bytes[0] = b'X';
        assert!(matches!(
            Gguf::from_bytes(bytes),
            Err(GgufError::BadMagic { .. })
        ));
        for version in [1, 4, 0x0300_0000] {
            let mut b = small();
            b.version = version;
            assert!(
                matches!(b.parse(), Err(GgufError::UnsupportedVersion { version: v }) if v == version)
            );
        }
    }

    #[test]
    fn bad_metadata_is_named_with_its_key() {
        let err = Builder::new()
            .entry("k.x", 13, &[0; 8])
            .parse()
            .unwrap_err();
        assert!(
            matches!(err, GgufError::UnknownValueType { ref key, type_id: 13, offset: 35 } if key == "k.x"),
            "{err}"
        );
        let err = Builder::new().entry("b", 7, &[2]).parse().unwrap_err();
        assert!(matches!(err, GgufError::BadBool { value: 2, .. }), "{err}");
        let err = Builder::new()
            .entry("d", 1, &[1])
            .entry("d", 1, &[2])
            .parse()
            .unwrap_err();
        assert!(
            matches!(err, GgufError::DuplicateKey { ref key, .. } if key == "d"),
            "{err}"
        );
        let err = Builder::new()
            .entry("s", 8, &[&2u64.to_le_bytes()[..], &[0xFF, 0xFE]].concat())
            .parse()
            .unwrap_err();
        assert!(
            matches!(err, GgufError::BadUtf8 { ref what, .. } if what.contains("`s`")),
            "{err}"
        );
        // Arrays of arrays: depth 3 parses, depth 4 does not.
        let nest = |depth: usize| {
            let mut value = [
                &4u32.to_le_bytes()[..],
                &1u64.to_le_bytes(),
                &5u32.to_le_bytes(),
            ]
            .concat();
            for _ in 1..depth {
                value = [&9u32.to_le_bytes()[..], &1u64.to_le_bytes(), &value].concat();
            }
            Builder::new().entry("n", 9, &value).parse()
        };
        assert!(nest(3).is_ok());
        assert!(matches!(nest(4), Err(GgufError::ArrayTooDeep { .. })));
        for alignment in [0u32, 3, 48] {
            let err = small()
                .entry("general.alignment", 4, &alignment.to_le_bytes())
                .parse()
                .unwrap_err();
            assert!(
                matches!(err, GgufError::BadValue { ref key, .. } if key == "general.alignment"),
                "{err}"
            );
        }
        let err = small()
            .entry("general.alignment", 10, &64u64.to_le_bytes())
            .parse()
            .unwrap_err();
        assert!(matches!(err, GgufError::WrongType { .. }), "{err}");
    }

    #[test]
    fn bad_tensors_are_named() {
        let one = |dims: &[u64], type_id: u32, offset: u64, data: usize| {
            Builder::new()
                .tensor("t", dims, type_id, offset)
                .data(data)
                .parse()
        };
        assert!(one(&[32], 8, 0, 34).is_ok());
        let err = one(&[32], 12, 0, 34).unwrap_err();
        assert!(
            matches!(err, GgufError::UnsupportedTensorType { type_id: 12, name: Some("Q4_K"), ref tensor } if tensor == "t"),
            "{err}"
        );
        assert!(err.to_string().contains("Q4_K"));
        assert!(matches!(
            one(&[32], 99, 0, 34),
            Err(GgufError::UnsupportedTensorType { name: None, .. })
        ));
        assert!(matches!(
            one(&[33], 8, 0, 34),
            Err(GgufError::BadDims { .. })
        ));
        assert!(matches!(
            one(&[1 << 32, 1 << 32], 0, 0, 34),
            Err(GgufError::BadDims { .. })
        ));
        assert!(matches!(
            one(&[u64::MAX, 2], 0, 0, 34),
            Err(GgufError::BadDims { .. })
        ));
        assert!(matches!(
            one(&[1, 1, 1, 1, 1], 0, 0, 34),
            Err(GgufError::BadDims { .. })
        ));
        // Huge element counts whose byte size still fits a u64: out of bounds.
        assert!(matches!(
            one(&[1 << 40], 0, 0, 34),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        assert!(matches!(
            one(&[32], 8, 32, 34),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        assert!(matches!(
            one(&[32], 8, u64::MAX - 8, 34),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        assert!(matches!(
            one(&[32], 8, 0, 33),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        assert!(matches!(
            one(&[4], 0, 16, 64),
            Err(GgufError::Misaligned {
                offset: 16,
                alignment: 32,
                ..
            })
        ));
        let err = Builder::new()
            .tensor("t", &[4], 0, 0)
            .tensor("t", &[4], 0, 0)
            .data(16)
            .parse()
            .unwrap_err();
        assert!(matches!(err, GgufError::DuplicateTensor { .. }), "{err}");
    }

    fn llama(entries: &[(&str, u32, Vec<u8>)]) -> Result<LlamaParams, GgufError> {
        let mut b = Builder::new().entry("general.architecture", 8, &string("llama"));
        let base: [(&str, u32, Vec<u8>); 6] = [
            ("llama.block_count", 4, 2u32.to_le_bytes().to_vec()),
            ("llama.embedding_length", 4, 64u32.to_le_bytes().to_vec()),
            (
                "llama.feed_forward_length",
                4,
                128u32.to_le_bytes().to_vec(),
            ),
            ("llama.attention.head_count", 4, 4u32.to_le_bytes().to_vec()),
            ("llama.context_length", 4, 256u32.to_le_bytes().to_vec()),
            (
                "llama.attention.layer_norm_rms_epsilon",
                6,
                1e-5f32.to_le_bytes().to_vec(),
            ),
        ];
        for (key, t, v) in base
            .iter()
            .filter(|(k, ..)| !entries.iter().any(|(e, ..)| e == k))
        {
            b = b.entry(key, *t, v);
        }
        for (key, t, v) in entries.iter().filter(|(_, t, _)| *t != u32::MAX) {
            b = b.entry(key, *t, v);
        }
        b = b.entry(
            "tokenizer.ggml.tokens",
            9,
            &[&8u32.to_le_bytes()[..], &1u64.to_le_bytes(), &string("a")].concat(),
        );
        LlamaParams::from_gguf(&b.parse()?)
    }

    #[test]
    fn llama_hyper_parameters_are_read_and_checked() {
        let p = llama(&[]).unwrap();
        assert_eq!(
            (
                p.head_count_kv,
                p.head_dim(),
                p.rope_dimensions,
                p.vocab_size
            ),
            (4, 16, 16, 1)
        );
        assert_eq!(p.rope_freq_base, 10_000.0);
        let missing = llama(&[("llama.block_count", u32::MAX, vec![])]).unwrap_err();
        assert!(
            matches!(missing, GgufError::MissingKey { ref key } if key == "llama.block_count"),
            "{missing}"
        );
        let bad = llama(&[(
            "llama.attention.head_count_kv",
            4,
            3u32.to_le_bytes().to_vec(),
        )])
        .unwrap_err();
        assert!(
            matches!(bad, GgufError::BadValue { ref key, .. } if key == "llama.attention.head_count_kv"),
            "{bad}"
        );
        let zero = llama(&[("llama.block_count", 4, 0u32.to_le_bytes().to_vec())]).unwrap_err();
        assert!(matches!(zero, GgufError::BadValue { .. }), "{zero}");
        let float = llama(&[("llama.context_length", 6, 1f32.to_le_bytes().to_vec())]).unwrap_err();
        assert!(matches!(float, GgufError::WrongType { .. }), "{float}");
        let err = Builder::new()
            .entry("general.architecture", 8, &string("gpt2"))
            .parse()
            .and_then(|g| LlamaParams::from_gguf(&g));
        assert!(matches!(err, Err(GgufError::UnsupportedArchitecture(a)) if a == "gpt2"));
    }
}
