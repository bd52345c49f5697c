//! Sends queued reports and tunnel records to the cloud whenever connected, in order, retrying
//! until acknowledged. Records carry ids, so a batch sent twice is stored once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use walle_proto::v1::{ReportRequest, UploadRequest};

use crate::agent::{Shared, lock};

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
        let Some(mut client) = client else { continue };
        while flush_reports(&shared, &mut client).await {}
        while flush_records(&shared, &mut client).await {}
    }
}

/// Sends one batch of reports; returns whether more may be waiting.
async fn flush_reports(shared: &Shared, client: &mut crate::connection::Client) -> bool {
    let batch: Vec<_> = lock(&shared.reports).iter().take(BATCH).cloned().collect();
    if batch.is_empty() {
        return false;
    }
    let sent = batch.len();
    match client.report(ReportRequest { events: batch }).await {
        Ok(_) => {
            lock(&shared.reports).drain(..sent);
            true
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            // The cloud will never accept this batch; retrying would block every later report.
            tracing::error!(error = %status, dropped = sent, "cloud rejected a report batch; dropping it");
            lock(&shared.reports).drain(..sent);
            true
        }
        Err(status) => {
            tracing::warn!(error = %status, "report upload failed; will retry");
            false
        }
    }
}

/// Sends one batch of tunnel records; returns whether more may be waiting.
async fn flush_records(shared: &Shared, client: &mut crate::connection::Client) -> bool {
    let batch: Vec<_> = {
        let outbox = lock(&shared.outbox);
        let mut bytes = 0;
        // At least one record; then as many as fit the byte budget.
        outbox
            .iter()
            .take(BATCH)
            .take_while(|r| {
                bytes += r.payload.len();
                bytes <= MAX_BATCH_BYTES || bytes == r.payload.len()
            })
            .cloned()
            .collect()
    };
    if batch.is_empty() {
        return false;
    }
    let sent = batch.len();
    match client.upload(UploadRequest { records: batch }).await {
        Ok(_) => {
            lock(&shared.outbox).drain(..sent);
            shared
                .counters
                .records_uploaded
                .fetch_add(sent as u64, Ordering::Relaxed);
            true
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            tracing::error!(error = %status, dropped = sent, "cloud rejected a record batch; dropping it");
            lock(&shared.outbox).drain(..sent);
            true
        }
        Err(status) => {
            tracing::warn!(error = %status, "record upload failed; will retry");
            false
        }
    }
}
