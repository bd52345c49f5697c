//! Sends queued reports and tunnel records to the cloud whenever connected, in order, retrying
//! until acknowledged. Records carry ids, so a batch sent twice is stored once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Code, Status};
use walle_proto::v1::{Rejected, ReportRequest, TunnelRecord, UploadRequest};

use crate::agent::{Shared, lock};
use crate::connection::Client;

/// Largest batch per call.
const BATCH: usize = 500;
/// Payload bytes per upload call, well under the gRPC message limit of 4 MiB.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Flush period when nothing wakes the uplink.
const PERIOD: Duration = Duration::from_millis(500);

pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.wake_uplink.notified() => {}
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let client = lock(&shared.client).clone();
        let Some(client) = client else { continue };
        while flush_reports(&shared, &client).await {}
        while flush_records(&shared, &client).await {}
    }
}

async fn flush_reports(shared: &Shared, client: &Client) -> bool {
    let mut client = client.clone();
    flush_batch(
        &shared.reports,
        "report",
        |q| q.iter().take(BATCH).cloned().collect(),
        |events| async move {
            let answer = client.report(ReportRequest { events }).await?;
            Ok(answer.into_inner().rejected)
        },
    )
    .await
    .is_some()
}

async fn flush_records(shared: &Shared, client: &Client) -> bool {
    let mut client = client.clone();
    let sent = flush_batch(
        &shared.outbox,
        "record",
        records_batch,
        |records| async move {
            let answer = client.upload(UploadRequest { records }).await?;
            Ok(answer.into_inner().rejected)
        },
    )
    .await;
    if let Some(count) = sent {
        shared
            .counters
            .records_uploaded
            .fetch_add(count as u64, Ordering::Relaxed);
    }
    sent.is_some()
}

/// The oldest records that fit one call: at least one, then as many as the byte budget allows.
fn records_batch(outbox: &VecDeque<TunnelRecord>) -> Vec<TunnelRecord> {
    let mut bytes = 0;
    outbox
        .iter()
        .take(BATCH)
        .take_while(|r| {
            bytes += r.payload.len();
            bytes <= MAX_BATCH_BYTES || bytes == r.payload.len()
        })
        .cloned()
        .collect()
}

/// Sends the front batch of `queue` and removes it once acknowledged. Returns how many items were
/// sent (or dropped as permanently rejected), or `None` when the queue is empty or the call failed
/// and should be retried later.
async fn flush_batch<T: Clone, Fut>(
    queue: &Mutex<VecDeque<T>>,
    what: &'static str,
    take: impl FnOnce(&VecDeque<T>) -> Vec<T>,
    send: impl FnOnce(Vec<T>) -> Fut,
) -> Option<usize>
where
    Fut: Future<Output = Result<Vec<Rejected>, Status>>,
{
    let batch = take(&lock(queue));
    let count = batch.len();
    if count == 0 {
        return None;
    }
    match send(batch).await {
        Ok(rejected) => {
            // The cloud stored the rest; these it will never take, so they are not resent.
            for r in rejected {
                tracing::error!(id = %r.id, reason = %r.reason, "cloud refused a {what}; dropping it");
            }
        }
        Err(status) if status.code() == Code::InvalidArgument => {
            // The cloud will never accept this batch; retrying would block everything behind it.
            tracing::error!(error = %status, dropped = count, "cloud rejected a {what} batch; dropping it");
        }
        Err(status) => {
            tracing::warn!(error = %status, "{what} upload failed; will retry");
            return None;
        }
    }
    lock(queue).drain(..count);
    Some(count)
}
