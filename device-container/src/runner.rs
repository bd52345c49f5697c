//! Executes the scheduler's runs on the VM pool and commits what each produced.
//!
//! A run is crash-safe: it is written to the outbox's [`RUNS`] queue when it is queued, and a
//! finished run's output records, its report, its `walle.state` writes and the removal of the
//! run from [`RUNS`] are one transaction. A process killed mid-run therefore leaves the run in
//! [`RUNS`], with none of its effects, and the next start runs it again
//! ([`recover`]); a process killed after the commit does not run it again. A run that was
//! interrupted [`MAX_RUN_ATTEMPTS`] times (e.g. it makes the process crash) is given up and
//! reported as failed instead of crash-looping the device.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prost::Message;
use tokio::sync::watch;
use walle_pipeline::{Change, NewItem};
use walle_proto::v1::{TaskEvent, task_event};
use walle_vm::{RunOutput, RunTiming, TimedRun, VmError};

use crate::agent::{RECORDS, REPORTS, RUNS, Shared, lock, now_ms};
use crate::install::InstalledTask;
use crate::scheduler::PendingRun;
use crate::{db, rollback};

/// Times a run may be interrupted by the device stopping before it is given up.
pub(crate) const MAX_RUN_ATTEMPTS: u32 = 3;

/// Starts runs as the scheduler allows until stopped.
pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        while let Some(pending) = lock(&shared.scheduler).next() {
            let shared = shared.clone();
            tokio::spawn(async move {
                let task = pending.task.clone();
                execute(&shared, pending).await;
                lock(&shared.scheduler).finished(&task);
                shared.wake_runner.notify_one();
            });
        }
        tokio::select! {
            _ = shared.wake_runner.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Puts the runs left in [`RUNS`] by the previous process back in the scheduler, oldest first
/// (their tasks are restored by then). Runs started [`MAX_RUN_ATTEMPTS`] times already are
/// given up and reported as failed.
pub(crate) fn recover(shared: &Shared) {
    let items = {
        let mut outbox = lock(&shared.outbox);
        let items = outbox.peek(RUNS, usize::MAX, usize::MAX);
        items.and_then(|items| {
            let seqs: Vec<i64> = items.iter().map(|item| item.seq).collect();
            let attempts = outbox.count_attempt(RUNS, &seqs)?;
            Ok(items.into_iter().zip(attempts).collect::<Vec<_>>())
        })
    };
    let items = match items {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the runs left by the previous process");
            return;
        }
    };
    for (item, attempts) in items {
        let context = serde_json::from_slice(&item.payload);
        match context {
            Ok(context) if attempts < MAX_RUN_ATTEMPTS => {
                shared
                    .counters
                    .runs_recovered
                    .fetch_add(1, Ordering::Relaxed);
                lock(&shared.scheduler).push(PendingRun {
                    journal_seq: Some(item.seq),
                    task: item.task,
                    context,
                    queued_at: Instant::now(),
                });
            }
            Ok(_) => give_up(shared, &item, attempts),
            Err(e) => {
                tracing::error!(task = %item.task, error = %e, "a stored run is not JSON; dropped");
                forget(shared, Some(item.seq));
            }
        }
    }
    shared.wake_runner.notify_one();
}

/// Drops a run that was interrupted too often, reporting it as failed.
fn give_up(shared: &Shared, item: &walle_pipeline::Item, attempts: u32) {
    let error = format!("the device stopped during this run {attempts} times; given up");
    tracing::error!(task = %item.task, version = %item.version, "{error}");
    shared.counters.runs_failed.fetch_add(1, Ordering::Relaxed);
    let release_id = lock(&shared.active)
        .get(&item.task)
        .map(|t| t.release_id.clone())
        .unwrap_or_default();
    let report = shared.task_event(
        task_event::Kind::RunFailed,
        &item.task,
        &item.version,
        &release_id,
        &error,
    );
    let report = TaskEvent {
        failure: "interrupted".into(),
        ..report
    };
    let payload = report.encode_to_vec();
    let change = Change {
        push: vec![(REPORTS, report_item(&report, &payload))],
        remove: vec![(RUNS, item.seq)],
    };
    shared.commit(&change, |_| Ok(()));
}

/// Removes a run from [`RUNS`] without effects (its task is gone, or the run is unreadable).
fn forget(shared: &Shared, journal_seq: Option<i64>) {
    if let Some(seq) = journal_seq {
        let change = Change {
            push: Vec::new(),
            remove: vec![(RUNS, seq)],
        };
        shared.commit(&change, |_| Ok(()));
    }
}

async fn execute(shared: &Arc<Shared>, run: PendingRun) {
    let Some(task) = lock(&shared.active).get(&run.task).cloned() else {
        // Removed between match and run: nothing to run.
        forget(shared, run.journal_seq);
        return;
    };
    let vm = shared.vm.clone();
    let key = task.vm_key();
    let context = run.context;
    let waited_here = run.queued_at.elapsed();
    let ran = tokio::task::spawn_blocking(move || vm.run_staged(&key, context))
        .await
        .unwrap_or_else(|e| TimedRun {
            result: Err(VmError::Pool(format!("run worker failed: {e}"))),
            timing: RunTiming::default(),
        });
    let TimedRun { result, timing } = ran;
    // Its own time only: waiting in the agent's queue and in the VM worker's is apart.
    let duration_ms = timing.executed.as_millis() as u64;
    let queued_ms = (waited_here + timing.queued).as_millis() as u64;
    walle_proto::crash::crash_point("device-mid-run");
    if let Err(VmError::Quarantined { .. }) = &result {
        // Reported once, when it was quarantined (`health`); its runs are refused quietly.
        shared.counters.runs_refused.fetch_add(1, Ordering::Relaxed);
        forget(shared, run.journal_seq);
        return;
    }
    let error = result.as_ref().err().map(ToString::to_string);
    lock(&shared.task_runs)
        .entry(task.vm_key())
        .or_default()
        .record(duration_ms, queued_ms, error.as_deref());
    let timing = RunTimes {
        duration_ms,
        queued_ms,
    };
    commit_run(shared, &task, run.journal_seq, &result, timing);
    // Counted once committed: a status that shows the run also shows its records in the outbox.
    let counter = match &result {
        Ok(_) => &shared.counters.runs_ok,
        Err(_) => &shared.counters.runs_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    walle_proto::crash::crash_point("device-run-committed");
    rollback::note_run(shared, &task, error.as_deref());
    if let Ok(output) = &result {
        if !output.logs.is_empty() {
            tracing::info!(task = %task.vm_key(), logs = %output.logs, "task printed");
        }
        shared.remember_outputs(task.task(), &output.records);
    }
    crate::health::check(shared);
}

/// A run's execution time and the time it waited before, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct RunTimes {
    duration_ms: u64,
    queued_ms: u64,
}

/// Commits a finished run in one transaction: its records and report into the outbox, its
/// state writes, and its removal from [`RUNS`].
fn commit_run(
    shared: &Shared,
    task: &InstalledTask,
    journal_seq: Option<i64>,
    result: &Result<RunOutput, VmError>,
    timing: RunTimes,
) {
    let version = task.version();
    let report = run_report(shared, task, result, timing);
    let report_payload = report.encode_to_vec();
    let (records, state): (Vec<(String, Vec<u8>)>, &[walle_vm::StateWrite]) = match result {
        Ok(output) => (
            output
                .records
                .iter()
                .map(|record| (shared.next_id(), record.to_string().into_bytes()))
                .collect(),
            &output.state,
        ),
        Err(_) => (Vec::new(), &[]),
    };
    let produced_at = now_ms();
    let mut push: Vec<(&str, NewItem)> = records
        .iter()
        .map(|(id, payload)| {
            let item = NewItem {
                id,
                task: task.task(),
                version: &version,
                created_at_ms: produced_at,
                payload,
            };
            (RECORDS, item)
        })
        .collect();
    push.push((REPORTS, report_item(&report, &report_payload)));
    let change = Change {
        push,
        remove: journal_seq.map(|seq| (RUNS, seq)).into_iter().collect(),
    };
    shared.commit(&change, |transaction| {
        db::write_state(transaction, task.task(), state)
    });
}

/// The report of a finished run.
fn run_report(
    shared: &Shared,
    task: &InstalledTask,
    result: &Result<RunOutput, VmError>,
    timing: RunTimes,
) -> TaskEvent {
    let (kind, detail, failure) = match result {
        Ok(_) => (task_event::Kind::RunOk, String::new(), ""),
        Err(e) => {
            tracing::warn!(task = %task.vm_key(), error = %e, "task run failed");
            (task_event::Kind::RunFailed, e.to_string(), e.kind())
        }
    };
    let event = shared.task_event(
        kind,
        task.task(),
        &task.version(),
        &task.release_id,
        &detail,
    );
    TaskEvent {
        duration_ms: timing.duration_ms,
        queued_ms: timing.queued_ms,
        failure: failure.to_owned(),
        ..event
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
