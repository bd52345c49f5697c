//! Running a task locally, without a cloud: the task directory's triggers over a JSONL event file,
//! in the same sandboxed VM the device uses. What `walle task test` does.

use std::path::Path;

use walle_pipeline::{Event, TriggerSet};
use walle_proto::bundle;
use walle_vm::{TaskCode, VmPool};

/// What one local run of a task over an event stream produced.
#[derive(Debug, Default)]
pub struct LocalRun {
    pub events: usize,
    pub rejected: Vec<(usize, String)>,
    pub fired: usize,
    pub outputs: Vec<serde_json::Value>,
    pub failures: Vec<String>,
}

/// Packs `task_dir` (validating it as the cloud would), then feeds `events` through its
/// triggers and runs the handler on each match.
pub fn run_task(task_dir: &Path, events: &[String]) -> anyhow::Result<LocalRun> {
    let (_, packed) = bundle::pack_dir(task_dir)?;
    let contents = bundle::read_bundle(&packed)?;
    let manifest = &contents.manifest;
    let source = contents
        .file(&manifest.entry)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let key = format!("{}@{}", manifest.name, manifest.version);
    let vm = VmPool::new(1)?;
    vm.load(TaskCode {
        key: key.clone(),
        entry_path: manifest.entry.clone(),
        source,
        handler: manifest.handler.clone(),
        max_output_bytes: manifest.limits.max_output_bytes,
    })?;
    let mut triggers = TriggerSet::new();
    triggers.install(&manifest.name, &manifest.triggers);
    let mut run = LocalRun::default();
    for (index, line) in events.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event = match Event::from_json(line) {
            Ok(event) => event,
            Err(e) => {
                run.rejected.push((index + 1, e.to_string()));
                continue;
            }
        };
        run.events += 1;
        for firing in triggers.on_event(&event) {
            run.fired += 1;
            match vm.run(&key, firing.to_json()) {
                Ok(records) => run.outputs.extend(records),
                Err(e) => run.failures.push(e.to_string()),
            }
        }
    }
    Ok(run)
}
