//! Initializers and constant tensors: inline (typed fields or raw bytes) or external files.

use std::path::Path;

use super::pb;
use super::pb::tensor_proto::{DataLocation, DataType};
use crate::{LoadError, Tensor, Value};

/// The value of a `TensorProto` (float → f32; int64 and int32 → i64).
pub fn value_of(t: &pb::TensorProto, base_dir: Option<&Path>) -> Result<Value, LoadError> {
    let bad = |reason: String| LoadError::BadTensor {
        name: t.name.clone(),
        reason,
    };
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<Vec<usize>, _>>()?;
    let count: usize = shape.iter().product();
    let raw;
    let bytes: &[u8] = if t.data_location == DataLocation::External as i32 {
        raw = external_bytes(t, base_dir)?;
        &raw
    } else {
        &t.raw_data
    };
    let value = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) => {
            let data = if bytes.is_empty() {
                t.float_data.clone()
            } else {
                little_endian(bytes, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), 4)
                    .map_err(bad)?
            };
            Value::F32(Tensor::new(shape.clone(), data).map_err(|e| bad(e.to_string()))?)
        }
        Ok(DataType::Int64) => {
            let data = if bytes.is_empty() {
                t.int64_data.clone()
            } else {
                little_endian(
                    bytes,
                    |b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
                    8,
                )
                .map_err(bad)?
            };
            Value::I64 {
                shape: shape.clone(),
                data,
            }
        }
        Ok(DataType::Int32) => {
            let data = if bytes.is_empty() {
                t.int32_data.iter().map(|&v| i64::from(v)).collect()
            } else {
                little_endian(
                    bytes,
                    |b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    4,
                )
                .map_err(bad)?
            };
            Value::I64 {
                shape: shape.clone(),
                data,
            }
        }
        _ => {
            return Err(LoadError::UnsupportedType {
                name: t.name.clone(),
                data_type: t.data_type,
            });
        }
    };
    let len = match &value {
        Value::F32(t) => t.data().len(),
        Value::I64 { data, .. } => data.len(),
    };
    if len != count {
        return Err(bad(format!("{len} values for shape {shape:?}")));
    }
    Ok(value)
}

fn little_endian<T>(
    bytes: &[u8],
    read: impl Fn(&[u8]) -> T,
    width: usize,
) -> Result<Vec<T>, String> {
    if !bytes.len().is_multiple_of(width) {
        return Err(format!(
            "{} raw bytes are not a whole number of {width}-byte values",
            bytes.len()
        ));
    }
    Ok(bytes.chunks_exact(width).map(read).collect())
}

/// Reads an external-data tensor's bytes: `location` relative to the model's directory (never
/// outside it), optional `offset` and `length`.
fn external_bytes(t: &pb::TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, LoadError> {
    let bad = |reason: String| LoadError::ExternalData {
        name: t.name.clone(),
        reason,
    };
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let base = base_dir.ok_or_else(|| {
        bad("the model keeps this tensor in an external file; load the model from its file".into())
    })?;
    let location = entry("location").ok_or_else(|| bad("no `location` entry".into()))?;
    let relative = Path::new(location);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad(format!(
            "location {location:?} is not a plain relative path"
        )));
    }
    let number = |key: &str| -> Result<Option<usize>, LoadError> {
        entry(key)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| bad(format!("`{key}` {v:?} is not a number")))
            })
            .transpose()
    };
    let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
    let path = base.join(relative);
    let bytes = std::fs::read(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let end = match length {
        Some(length) => offset.checked_add(length),
        None => Some(bytes.len()),
    };
    match end {
        Some(end) if offset <= end && end <= bytes.len() => Ok(bytes[offset..end].to_vec()),
        _ => Err(bad(format!(
            "offset {offset} / length {length:?} lie outside {} ({} bytes)",
            path.display(),
            bytes.len()
        ))),
    }
}
