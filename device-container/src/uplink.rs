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
        Err(status) => {
            tracing::warn!(error = %status, "report upload failed; will retry");
            false
        }
    }
}

/// Sends one batch of tunnel records; returns whether more may be waiting.
async fn flush_records(shared: &Shared, client: &mut crate::connection::Client) -> bool {
    let batch: Vec<_> = lock(&shared.outbox).iter().take(BATCH).cloned().collect();
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
        Err(status) => {
            tracing::warn!(error = %status, "record upload failed; will retry");
            false
        }
    }
}
