//! The uplink: the outbox ([`Outgoing`], written by every component) and the sender that
//! empties it to the cloud whenever connected: task reports (`Report`) and task output records
//! (`Upload`, zstd-compressed batches), oldest first, each item removed only once the cloud
//! acknowledged it. Failures back off exponentially with jitter. Items carry ids, so a batch
//! sent again after a crash or a lost answer is stored once.
//!
//! It owns the outbox and the count of records uploaded; it learns of the cloud session's
//! client from activation through a `watch` channel, and of new items through the outbox's
//! doorbell.

mod outbox;

pub use outbox::OutboxStatus;
pub(crate) use outbox::{Outgoing, RECORDS, REPORTS, RUNS, report_item};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tonic::{Code, Status};
use walle_pipeline::Item;
use walle_proto::v1::{Rejected, ReportRequest, TaskEvent, TunnelRecord, UploadRequest};

use crate::backoff::Backoff;
use crate::cloud::Client;

/// Most items per call (the cloud takes at most 1,000).
const BATCH: usize = 500;
/// Payload bytes per batch before compression; the cloud accepts 8 MiB uncompressed.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Flush period when nothing wakes the uplink.
const PERIOD: Duration = Duration::from_millis(500);
/// Retry delays after a failed call.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The sending side of the outbox.
pub(crate) struct Uplink {
    outgoing: Arc<Outgoing>,
    /// The cloud session's client while connected (from activation).
    client: watch::Receiver<Option<Client>>,
    records_uploaded: AtomicU64,
}

impl Uplink {
    pub(crate) fn new(outgoing: Arc<Outgoing>, client: watch::Receiver<Option<Client>>) -> Uplink {
        Uplink {
            outgoing,
            client,
            records_uploaded: AtomicU64::new(0),
        }
    }

    /// Records the cloud acknowledged since the agent started.
    pub(crate) fn records_uploaded(&self) -> u64 {
        self.records_uploaded.load(Ordering::Relaxed)
    }
}

/// Sends what the outbox holds whenever connected, until stopped.
pub(crate) async fn run(uplink: Arc<Uplink>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut retry_in = None;
    let mut sessions = uplink.client.clone();
    loop {
        match retry_in {
            // After a failure, wait out the delay: new items must not hammer a failing cloud.
            Some(delay) => tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            },
            None => tokio::select! {
                _ = uplink.outgoing.written() => {}
                _ = sessions.changed() => {}
                _ = tokio::time::sleep(PERIOD) => {}
                _ = stop.wait_for(|s| *s) => return,
            },
        }
        let client = sessions.borrow_and_update().clone();
        let Some(client) = client else { continue };
        retry_in = match flush(&uplink, &client).await {
            Ok(()) => {
                backoff.reset();
                None
            }
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %status, retry_in = ?delay, "upload to the cloud failed");
                Some(delay)
            }
        };
    }
}

/// Sends everything queued, reports first (release health waits on them).
async fn flush(uplink: &Uplink, client: &Client) -> Result<(), Status> {
    while send_reports(uplink, client).await? {}
    while send_records(uplink, client).await? {}
    Ok(())
}

/// Sends the oldest batch of reports; `Ok(false)` when there was none.
async fn send_reports(uplink: &Uplink, client: &Client) -> Result<bool, Status> {
    let Some(batch) = peek(&uplink.outgoing, REPORTS)? else {
        return Ok(false);
    };
    let events = batch
        .iter()
        .filter_map(|item| match TaskEvent::decode(item.payload.as_slice()) {
            Ok(event) => Some(event),
            Err(e) => {
                // Only this device wrote it; a damaged row must not block the queue for ever.
                tracing::error!(id = %item.id, error = %e, "undecodable report in the outbox; dropping it");
                None
            }
        })
        .collect();
    let answer = client.clone().report(ReportRequest { events }).await;
    let rejected = accepted(answer.map(|a| a.into_inner().rejected), "report")?;
    log_rejected(&rejected, "report");
    remove(&uplink.outgoing, REPORTS, &batch)?;
    Ok(true)
}

/// Sends the oldest batch of records as one compressed upload; `Ok(false)` when there was none.
async fn send_records(uplink: &Uplink, client: &Client) -> Result<bool, Status> {
    let Some(batch) = peek(&uplink.outgoing, RECORDS)? else {
        return Ok(false);
    };
    let records = batch.iter().map(tunnel_record).collect();
    let request = UploadRequest {
        records: Vec::new(),
        zstd_batch: walle_proto::tunnel::compress(records),
    };
    let answer = client.clone().upload(request).await;
    let rejected = accepted(answer.map(|a| a.into_inner().rejected), "record")?;
    log_rejected(&rejected, "record");
    // The cloud has stored the batch; dying here means sending it again, which it deduplicates.
    walle_proto::crash::crash_point("device-upload-acked");
    remove(&uplink.outgoing, RECORDS, &batch)?;
    uplink
        .records_uploaded
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(true)
}

fn tunnel_record(item: &Item) -> TunnelRecord {
    TunnelRecord {
        id: item.id.clone(),
        task: item.task.clone(),
        version: item.version.clone(),
        created_at_ms: item.created_at_ms,
        payload: item.payload.clone(),
        seq: item.seq,
    }
}

fn peek(outgoing: &Outgoing, queue: &str) -> Result<Option<Vec<Item>>, Status> {
    let batch = outgoing
        .peek(queue, BATCH, MAX_BATCH_BYTES)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(Some(batch).filter(|b| !b.is_empty()))
}

fn remove(outgoing: &Outgoing, queue: &str, batch: &[Item]) -> Result<(), Status> {
    let seqs: Vec<i64> = batch.iter().map(|item| item.seq).collect();
    outgoing
        .remove(queue, &seqs)
        .map_err(|e| Status::internal(e.to_string()))
}

/// The entries the cloud refused if it took the batch; a batch the cloud refuses as a whole
/// (`InvalidArgument`) is dropped too, since sending it again would block everything behind it.
/// Any other failure is for retrying.
fn accepted(
    answer: Result<Vec<Rejected>, Status>,
    what: &'static str,
) -> Result<Vec<Rejected>, Status> {
    match answer {
        Err(status) if status.code() == Code::InvalidArgument => {
            tracing::error!(error = %status, "cloud rejected a {what} batch; dropping it");
            Ok(Vec::new())
        }
        other => other,
    }
}

fn log_rejected(rejected: &[Rejected], what: &str) {
    for r in rejected {
        tracing::error!(id = %r.id, reason = %r.reason, "cloud refused a {what}; dropping it");
    }
}
