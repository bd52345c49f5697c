//! Executes task runs queued by trigger matches, on the VM pool, and routes their results.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, watch};
use walle_pipeline::TaskRun;
use walle_proto::v1::task_event;

use crate::agent::{Shared, lock};
use crate::rollback;

/// Takes queued runs until stopped; at most one run per VM worker thread at a time.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<TaskRun>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.vm.threads()));
    loop {
        let firing = tokio::select! {
            firing = queue.recv() => match firing { Some(f) => f, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            execute(&shared, firing).await;
            shared.counters.pending_runs.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }
}

async fn execute(shared: &Arc<Shared>, run: TaskRun) {
    let Some(task) = lock(&shared.active).get(&run.firing.task).cloned() else {
        // Removed between match and run: nothing to run.
        return;
    };
    let vm = shared.vm.clone();
    let key = task.vm_key();
    let context = run.context();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || vm.run(&key, context)).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let version = task.version();
    let (error, failure) = match &result {
        Ok(Ok(_)) => (None, ""),
        Ok(Err(e)) => (Some(e.to_string()), e.kind()),
        Err(e) => (Some(format!("run worker failed: {e}")), "panic"),
    };
    lock(&shared.task_runs)
        .entry(task.vm_key())
        .or_default()
        .record(duration_ms, error.as_deref());
    rollback::note_run(shared, &task, error.as_deref());
    match (result, error) {
        (Ok(Ok(output)), _) => {
            shared.counters.runs_ok.fetch_add(1, Ordering::Relaxed);
            if !output.logs.is_empty() {
                tracing::info!(task = %task.vm_key(), logs = %output.logs, "task printed");
            }
            for record in output.records {
                shared.emit(&task, record);
            }
            shared.report(
                task_event::Kind::RunOk,
                task.task(),
                &version,
                &task.release_id,
                "",
                duration_ms,
            );
        }
        (_, error) => {
            let error = error.unwrap_or_default();
            shared.counters.runs_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task = %task.vm_key(), %error, "task run failed");
            shared.report_failure(
                task_event::Kind::RunFailed,
                task.task(),
                &version,
                &task.release_id,
                &error,
                failure,
                duration_ms,
            );
        }
    }
}
