//! What waits to go to the cloud, in the device database's outbox ([`walle_pipeline::Outbox`]):
//! task output records ([`RECORDS`]), task events for `Report` ([`REPORTS`]), and the run journal
//! ([`RUNS`]), which is never sent but lets a restarted agent run again what a crash
//! interrupted (see `runner`).
//!
//! [`Outgoing`] owns the outbox and the uplink's doorbell: every component that produces
//! something for the cloud writes it here, and each write wakes the uplink. It also makes the
//! ids records and reports carry, unique on this device, so that the cloud stores a batch sent
//! twice once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use serde::Serialize;
use tokio::sync::Notify;
use walle_pipeline::{Change, Item, NewItem, Outbox, OutboxError, QueueStats};
use walle_proto::v1::{TaskEvent, task_event};

use crate::clock::now_ms;
use crate::locks::lock;

/// Outbox queue of task output records (tunnel records).
pub(crate) const RECORDS: &str = "records";
/// Outbox queue of task events for `Report` (payload: an encoded `TaskEvent`).
pub(crate) const REPORTS: &str = "reports";
/// Outbox queue of task runs not yet committed (payload: the run's context as JSON).
pub(crate) const RUNS: &str = "runs";

/// The outbox, the uplink's doorbell and the device's id generator.
pub(crate) struct Outgoing {
    outbox: Mutex<Outbox>,
    doorbell: Notify,
    /// Outputs, reports and journal entries that could not be written (e.g. a full disk).
    failures: AtomicU64,
    id_prefix: String,
    id_seq: AtomicU64,
}

/// The outbox's queues as status shows them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Task output records (the tunnel).
    pub records: QueueStats,
    /// Task events for the cloud's release health.
    pub reports: QueueStats,
    /// Task runs not yet committed (kept for crash recovery, not sent).
    pub runs: QueueStats,
}

impl Outgoing {
    pub(crate) fn new(outbox: Outbox) -> Outgoing {
        Outgoing {
            outbox: Mutex::new(outbox),
            doorbell: Notify::new(),
            failures: AtomicU64::new(0),
            id_prefix: hex::encode(crate::random::bytes::<8>()),
            id_seq: AtomicU64::new(0),
        }
    }

    /// A new id unique on this device (random per start + counter).
    pub(crate) fn next_id(&self) -> String {
        format!(
            "{}-{}",
            self.id_prefix,
            self.id_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Queues a task event for the cloud.
    pub(crate) fn report(
        &self,
        kind: task_event::Kind,
        task: &str,
        version: &str,
        release_id: &str,
        detail: &str,
        duration_ms: u64,
    ) {
        let event = self.task_event(kind, task, version, release_id, detail);
        self.queue_report(TaskEvent {
            duration_ms,
            ..event
        });
    }

    /// A new task event, at now, with its detail cut to 4,000 characters (in the middle: a
    /// traceback keeps its exception line).
    pub(crate) fn task_event(
        &self,
        kind: task_event::Kind,
        task: &str,
        version: &str,
        release_id: &str,
        detail: &str,
    ) -> TaskEvent {
        let detail = walle_proto::report::cut_middle(detail, 4000);
        TaskEvent {
            id: self.next_id(),
            kind: kind as i32,
            task: task.to_owned(),
            version: version.to_owned(),
            release_id: release_id.to_owned(),
            at_ms: now_ms(),
            detail,
            ..TaskEvent::default()
        }
    }

    /// Queues a finished task event for the cloud.
    pub(crate) fn queue_report(&self, event: TaskEvent) {
        let payload = event.encode_to_vec();
        let change = Change {
            push: vec![(REPORTS, report_item(&event, &payload))],
            remove: Vec::new(),
        };
        self.commit(&change, |_| Ok(()));
    }

    /// Makes an outbox change (with what `also` writes) and wakes the uplink; a failure (e.g.
    /// a full disk) is logged and counted, since what produced the change has happened.
    pub(crate) fn commit(
        &self,
        change: &Change,
        also: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<()>,
    ) {
        if let Err(e) = lock(&self.outbox).commit(change, also) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot write to the outbox");
        }
        self.doorbell.notify_one();
    }

    /// Writes a run to the [`RUNS`] journal; `None` (logged and counted) if it cannot.
    pub(crate) fn journal_run(
        &self,
        task: &str,
        version: &str,
        context: &serde_json::Value,
    ) -> Option<i64> {
        let (id, payload) = (self.next_id(), context.to_string());
        let item = NewItem {
            id: &id,
            task,
            version,
            created_at_ms: now_ms(),
            payload: payload.as_bytes(),
        };
        match lock(&self.outbox).push(RUNS, &item) {
            Ok(seq) => Some(seq),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(task, error = %e, "cannot keep a run for crash recovery; it runs unprotected");
                None
            }
        }
    }

    /// The runs left in the [`RUNS`] journal, oldest first, each with how many times a process
    /// has now started it (this start included).
    pub(crate) fn journalled_runs(&self) -> Result<Vec<(Item, u32)>, OutboxError> {
        let mut outbox = lock(&self.outbox);
        let items = outbox.peek(RUNS, usize::MAX, usize::MAX)?;
        let seqs: Vec<i64> = items.iter().map(|item| item.seq).collect();
        let attempts = outbox.count_attempt(RUNS, &seqs)?;
        Ok(items.into_iter().zip(attempts).collect())
    }

    /// The oldest items of `queue`, at most `count` and about `max_bytes` of payload.
    pub(crate) fn peek(
        &self,
        queue: &str,
        count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        lock(&self.outbox).peek(queue, count, max_bytes)
    }

    /// Removes items the cloud acknowledged.
    pub(crate) fn remove(&self, queue: &str, seqs: &[i64]) -> Result<(), OutboxError> {
        lock(&self.outbox).remove(queue, seqs)
    }

    /// Waits until something is written (or was since the last wait).
    pub(crate) async fn written(&self) {
        self.doorbell.notified().await
    }

    /// Writes that failed since the agent started.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn status(&self) -> OutboxStatus {
        let outbox = lock(&self.outbox);
        OutboxStatus {
            records: outbox.stats(RECORDS),
            reports: outbox.stats(REPORTS),
            runs: outbox.stats(RUNS),
        }
    }
}

/// The outbox item of a report whose encoding is `payload`.
pub(crate) fn report_item<'a>(report: &'a TaskEvent, payload: &'a [u8]) -> NewItem<'a> {
    NewItem {
        id: &report.id,
        task: &report.task,
        version: &report.version,
        created_at_ms: report.at_ms,
        payload,
    }
}
