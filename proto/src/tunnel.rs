//! The tunnel's wire batch: records serialized as one `RecordBatch` and zstd-compressed, with the
//! decompressed size bounded so a small hostile upload cannot expand into gigabytes.

use std::io::Read;

use prost::Message;

use crate::v1::{RecordBatch, TunnelRecord};

/// Largest decompressed batch accepted.
pub const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// zstd level for batches: fast on a phone, and JSON still shrinks several times.
const LEVEL: i32 = 3;

/// Why a compressed batch could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch is not valid zstd: {0}")]
    NotZstd(String),
    #[error("record batch decompresses to more than {MAX_BATCH_BYTES} bytes")]
    TooLarge,
    #[error("record batch is not a valid RecordBatch message: {0}")]
    Malformed(String),
}

/// Serializes and compresses records for `UploadRequest.zstd_batch`.
pub fn compress(records: Vec<TunnelRecord>) -> Vec<u8> {
    let encoded = RecordBatch { records }.encode_to_vec();
    // Compressing an in-memory buffer only fails on allocation failure.
    zstd::bulk::compress(&encoded, LEVEL).unwrap_or_default()
}

/// Decompresses and parses `UploadRequest.zstd_batch`.
pub fn decompress(batch: &[u8]) -> Result<Vec<TunnelRecord>, BatchError> {
    let decoder =
        zstd::stream::read::Decoder::new(batch).map_err(|e| BatchError::NotZstd(e.to_string()))?;
    let mut encoded = Vec::new();
    decoder
        .take(MAX_BATCH_BYTES + 1)
        .read_to_end(&mut encoded)
        .map_err(|e| BatchError::NotZstd(e.to_string()))?;
    if encoded.len() as u64 > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge);
    }
    RecordBatch::decode(encoded.as_slice())
        .map(|batch| batch.records)
        .map_err(|e| BatchError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, payload: &str) -> TunnelRecord {
        TunnelRecord {
            id: id.into(),
            task: "ipv".into(),
            version: "1.0.0".into(),
            created_at_ms: 5,
            payload: payload.as_bytes().to_vec(),
            seq: 9,
        }
    }

    #[test]
    fn a_batch_round_trips_and_json_shrinks() {
        let payload = format!(
            r#"{{"feature":"ipv","values":[{}]}}"#,
            "1.5,".repeat(5000) + "2"
        );
        let records = vec![record("a", &payload), record("b", "{}")];
        let batch = compress(records.clone());
        assert!(batch.len() * 5 < payload.len(), "{} bytes", batch.len());
        assert_eq!(decompress(&batch).unwrap(), records);
    }

    #[test]
    fn hostile_batches_are_refused_with_the_reason() {
        assert!(matches!(
            decompress(b"definitely not zstd"),
            Err(BatchError::NotZstd(_))
        ));
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_BATCH_BYTES as usize + 10], 3).unwrap();
        assert!(bomb.len() < 4096);
        assert_eq!(decompress(&bomb), Err(BatchError::TooLarge));
        let garbage = zstd::bulk::compress(&[0xff; 64], 3).unwrap();
        assert!(matches!(
            decompress(&garbage),
            Err(BatchError::Malformed(_))
        ));
    }
}
