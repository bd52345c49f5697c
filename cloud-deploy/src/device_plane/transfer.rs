//! `FetchBundle`: a bundle streamed in chunks from any offset (resumable), under the cloud's
//! budget of concurrent transfers; a device over budget is told when to come back.

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use walle_proto::v1::{BundleChunk, FetchBundleRequest};

use super::{BoxedStream, DevicePlaneService, internal};
use crate::secrets;
use crate::store::releases::BundleAccess;

/// Largest bundle chunk sent in one message.
const CHUNK_BYTES: usize = 64 * 1024;

/// Metadata key of the come-back hint on a refused transfer, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// `RESOURCE_EXHAUSTED` telling the device when to come back: `base_ms` plus up to `base_ms` of
/// jitter.
fn busy(base_ms: u32) -> Status {
    let jitter =
        u32::from_le_bytes(secrets::random_bytes::<4>().unwrap_or_default()) % base_ms.max(1);
    let retry_ms = base_ms.saturating_add(jitter);
    let mut status = Status::resource_exhausted(format!(
        "too many bundle transfers in progress; come back in {retry_ms} ms"
    ));
    if let Ok(value) = retry_ms.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_MS, value);
    }
    status
}

pub(super) async fn fetch_bundle(
    service: &DevicePlaneService,
    request: Request<FetchBundleRequest>,
) -> Result<Response<BoxedStream<BundleChunk>>, Status> {
    let device = service.authenticate(&request).await?;
    let FetchBundleRequest { digest, offset } = request.into_inner();
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Status::invalid_argument(
            "`digest` must be 64 lowercase hex characters (sha256)",
        ));
    }
    // Only bundles of releases this device was handed (no browsing other apps' bundles).
    let size = match service
        .state
        .db
        .bundle_for_device(&device, &digest)
        .await
        .map_err(internal)?
    {
        BundleAccess::Size(size) => size as u64,
        BundleAccess::Unknown => {
            return Err(Status::not_found(format!("no bundle with digest {digest}")));
        }
        BundleAccess::NotHanded => {
            return Err(Status::not_found(format!(
                "no bundle with digest {digest} for this device"
            )));
        }
    };
    if offset > size {
        return Err(Status::out_of_range(format!(
            "offset {offset} is past the bundle's {size} bytes"
        )));
    }
    let Ok(permit) = service.state.transfers.clone().try_acquire_owned() else {
        return Err(busy(service.state.config.transfer_retry_ms));
    };
    let (tx, rx) = mpsc::channel(4);
    if offset == size {
        return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
    }
    let mut source = service
        .state
        .bundles
        .read_from(&digest, offset)
        .await
        .map_err(internal)?;
    let metrics = service.state.metrics.clone();
    tokio::spawn(async move {
        // Held until the transfer ends or the device goes away.
        let _permit = permit;
        let mut position = offset;
        while let Some(next) = source.next().await {
            let bytes = match next {
                Ok(bytes) => bytes,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            for piece in bytes.chunks(CHUNK_BYTES) {
                let chunk = BundleChunk {
                    offset: position,
                    data: piece.to_vec(),
                    total_size: size,
                };
                position += piece.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                metrics.bundle_bytes_sent(piece.len());
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}
