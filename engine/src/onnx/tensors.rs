//! Initializers and constant tensors: inline (typed fields or raw bytes) or external files.
//!
//! The engine computes in two element types: float (double is narrowed to it) and int64 (every
//! integer type is widened to it, and bool is carried as 0/1).

use std::path::Path;

use super::pb;
use super::pb::tensor_proto::{DataLocation, DataType};
use crate::{LoadError, Tensor, Value};

/// The value of a `TensorProto` (float and double → f32; integers and bool → i64).
pub fn value_of(t: &pb::TensorProto, base_dir: Option<&Path>) -> Result<Value, LoadError> {
    let bad = |reason: String| LoadError::BadTensor {
        name: t.name.clone(),
        reason,
    };
    let unsupported = || LoadError::UnsupportedType {
        name: t.name.clone(),
        data_type: t.data_type,
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
        Ok(DataType::Float) => float(shape.clone(), t.float_data.clone(), bytes, (read_f32, 4)),
        Ok(DataType::Double) => float(
            shape.clone(),
            t.double_data.iter().map(|&v| v as f32).collect(),
            bytes,
            (read_f64, 8),
        ),
        Ok(DataType::Int64) => ints(shape.clone(), t.int64_data.clone(), bytes, read_i64, 8),
        Ok(DataType::Uint64) => ints(
            shape.clone(),
            t.uint64_data.iter().map(|&v| v as i64).collect(),
            bytes,
            read_i64,
            8,
        ),
        Ok(kind) => match narrow_int(kind) {
            Some((read, width)) => {
                let typed = t.int32_data.iter().map(|&v| i64::from(v)).collect();
                ints(shape.clone(), typed, bytes, read, width)
            }
            None => return Err(unsupported()),
        },
        Err(_) => return Err(unsupported()),
    }
    .map_err(|e| bad(e.to_string()))?;
    let len = match &value {
        Value::F32(t) => t.data().len(),
        Value::I64 { data, .. } => data.len(),
    };
    if len != count {
        return Err(bad(format!("{len} values for shape {shape:?}")));
    }
    Ok(value)
}

/// A float tensor from the typed field or, when there are raw bytes, from those.
fn float(
    shape: Vec<usize>,
    typed: Vec<f32>,
    bytes: &[u8],
    (read, width): (fn(&[u8]) -> f32, usize),
) -> Result<Value, String> {
    let data = if bytes.is_empty() {
        typed
    } else {
        little_endian(bytes, read, width)?
    };
    Ok(Value::F32(
        Tensor::new(shape, data).map_err(|e| e.to_string())?,
    ))
}

/// An int64 tensor (any integer or bool type, widened) from the typed field or the raw bytes.
fn ints(
    shape: Vec<usize>,
    typed: Vec<i64>,
    bytes: &[u8],
    read: ReadInt,
    width: usize,
) -> Result<Value, String> {
    let data = if bytes.is_empty() {
        typed
    } else {
        little_endian(bytes, read, width)?
    };
    Ok(Value::I64 { shape, data })
}

/// Reads one little-endian integer.
type ReadInt = fn(&[u8]) -> i64;

/// How to read one value of an integer (or bool) type narrower than 64 bits, and its width.
fn narrow_int(kind: DataType) -> Option<(ReadInt, usize)> {
    Some(match kind {
        DataType::Int32 => (
            |b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            4,
        ),
        DataType::Uint32 => (
            |b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            4,
        ),
        DataType::Int16 => (|b| i64::from(i16::from_le_bytes([b[0], b[1]])), 2),
        DataType::Uint16 => (|b| i64::from(u16::from_le_bytes([b[0], b[1]])), 2),
        DataType::Int8 => (|b| i64::from(b[0] as i8), 1),
        DataType::Uint8 | DataType::Bool => (|b| i64::from(b[0]), 1),
        _ => return None,
    })
}

fn read_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn read_f64(b: &[u8]) -> f32 {
    f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32
}

fn read_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(data_type: DataType, dims: Vec<i64>, raw_data: Vec<u8>) -> pb::TensorProto {
        pb::TensorProto {
            name: "t".into(),
            dims,
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        }
    }

    #[test]
    fn integers_and_bools_widen_to_int64_and_doubles_narrow_to_float() {
        let int64 = |t| match value_of(&t, None).unwrap() {
            Value::I64 { data, .. } => data,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            int64(proto(DataType::Bool, vec![3], vec![1, 0, 1])),
            [1, 0, 1]
        );
        assert_eq!(int64(proto(DataType::Int8, vec![2], vec![255, 7])), [-1, 7]);
        assert_eq!(
            int64(proto(DataType::Uint8, vec![2], vec![255, 7])),
            [255, 7]
        );
        let le16: Vec<u8> = [-2i16, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(int64(proto(DataType::Int16, vec![2], le16)), [-2, 300]);
        let doubles: Vec<u8> = [1.5f64, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        match value_of(&proto(DataType::Double, vec![2], doubles), None).unwrap() {
            Value::F32(t) => assert_eq!(t.data(), [1.5, -2.25]),
            other => panic!("{other:?}"),
        }
        let odd = proto(DataType::Int16, vec![1], vec![1, 2, 3]);
        assert!(
            value_of(&odd, None).is_err(),
            "3 bytes are not whole int16s"
        );
        let half = proto(DataType::Float16, vec![1], vec![0, 0]);
        assert!(matches!(
            value_of(&half, None),
            Err(LoadError::UnsupportedType { .. })
        ));
    }
}
