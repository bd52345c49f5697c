//! The run queue: how the intake (and the runner's own recovery) hands runs to the runner.
//!
//! [`RunQueue::submit`] takes a run only if the [`Scheduler`] has room for it (the device's
//! limits, lowered by the task's `limits.max_queued_runs`), and writes it to the run journal
//! before it is queued, so that a run is never waiting without its journal entry (lock order:
//! the scheduler, then the outbox; see `locks`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::scheduler::{PendingRun, Scheduler};
use crate::install::InstalledTask;
use crate::locks::lock;
use crate::uplink::Outgoing;

/// The task's run queue is full: the run was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueFull;

/// The scheduler, shared by the intake (submits) and the runner (takes).
pub(crate) struct RunQueue {
    scheduler: Mutex<Scheduler>,
    ready: Notify,
    outgoing: Arc<Outgoing>,
    /// Most runs of one task that may wait (the device's limit).
    per_task: usize,
}

impl RunQueue {
    /// A queue of at most `capacity` waiting runs, `per_task` per task, for `slots` VM workers.
    pub(crate) fn new(
        capacity: usize,
        per_task: usize,
        slots: usize,
        outgoing: Arc<Outgoing>,
    ) -> RunQueue {
        RunQueue {
            scheduler: Mutex::new(Scheduler::new(capacity, slots)),
            ready: Notify::new(),
            outgoing,
            per_task: per_task.max(1),
        }
    }

    /// Journals and queues a run of `task` with `context` as the handler's `ctx`, or refuses it
    /// if the task's queue is full.
    pub(crate) fn submit(
        &self,
        task: &InstalledTask,
        context: serde_json::Value,
    ) -> Result<(), QueueFull> {
        let name = task.task();
        let mut scheduler = lock(&self.scheduler);
        if !scheduler.has_room(name, self.task_limit(task)) {
            return Err(QueueFull);
        }
        let journal_seq = self.outgoing.journal_run(name, &task.version(), &context);
        scheduler.push(PendingRun {
            journal_seq,
            task: name.to_owned(),
            context,
            queued_at: Instant::now(),
        });
        drop(scheduler);
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a run the previous process journalled but did not finish.
    pub(super) fn push_recovered(&self, run: PendingRun) {
        lock(&self.scheduler).push(run);
        self.ready.notify_one();
    }

    /// How many runs of `task` may wait: the device's per-task limit, lowered by the task's.
    fn task_limit(&self, task: &InstalledTask) -> usize {
        match task.manifest.task.limits.max_queued_runs {
            Some(own) => self.per_task.min(own as usize),
            None => self.per_task,
        }
    }

    /// The next run that may start, if any (it then holds its task's slot until
    /// [`RunQueue::finished`]).
    pub(super) fn next(&self) -> Option<PendingRun> {
        lock(&self.scheduler).next()
    }

    /// Frees the slot of `task`'s run in flight.
    pub(super) fn finished(&self, task: &str) {
        lock(&self.scheduler).finished(task);
        self.ready.notify_one();
    }

    /// Waits until a run may have become startable.
    pub(super) async fn ready(&self) {
        self.ready.notified().await
    }

    /// Runs of `task` waiting.
    pub(crate) fn waiting_for(&self, task: &str) -> usize {
        lock(&self.scheduler).waiting_for(task)
    }

    /// (waiting, in flight) runs.
    pub(crate) fn depth(&self) -> (usize, usize) {
        lock(&self.scheduler).depth()
    }
}
