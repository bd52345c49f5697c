//! Running a task locally, without a cloud: the task directory's triggers over a JSONL event file,
//! in the same sandboxed VM the device uses. What `walle task test` does.

use std::path::Path;
use walle_pipeline::{Event, TaskPipeline};
use walle_proto::bundle;
use walle_vm::VmPool;

/// What one local run of a task over an event stream produced.
#[derive(Debug, Default)]
pub struct LocalRun {
    pub events: usize,
    pub rejected: Vec<(usize, String)>,
    pub fired: usize,
    pub outputs: Vec<serde_json::Value>,
    /// What the runs printed, one entry per run that printed anything.
    pub logs: Vec<String>,
    pub failures: Vec<String>,
}

/// Packs `task_dir` (validating it as the cloud would), then feeds `events` through its
/// triggers and runs the handler on each match.
pub fn run_task(task_dir: &Path, events: &[String]) -> anyhow::Result<LocalRun> {
    let (_, packed) = bundle::pack_dir(task_dir)?;
    let contents = bundle::read_bundle(&packed)?;
    let manifest = &contents.manifest;
    let key = format!("{}@{}", manifest.name, manifest.version);
    let read = |path: &str| {
        contents
            .file(path)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("the bundle has no {path}"))
    };
    let code = walle_device::code::task_code(key.clone(), manifest, read, &contents.files)
        .map_err(anyhow::Error::msg)?;
    let vm = VmPool::new(1)?;
    vm.load(code)?;
    let mut pipeline = TaskPipeline::new();
    pipeline.install(&manifest.name, &manifest.triggers, &manifest.features)?;
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
        for task_run in pipeline.on_event(&event) {
            run.fired += 1;
            match vm.run(&key, task_run.context()) {
                Ok(output) => {
                    run.outputs.extend(output.records);
                    if !output.logs.is_empty() {
                        run.logs.push(output.logs);
                    }
                }
                Err(e) => run.failures.push(e.to_string()),
            }
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example task's manifest, with a task that imports a bundled helper and prints.
    fn task_with_helper() -> tempfile::TempDir {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/ipv-feature/walle.toml");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(example, dir.path().join("walle.toml")).unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/__init__.py"), "").unwrap();
        std::fs::write(
            dir.path().join("lib/visit.py"),
            "import json\ndef item_of(ctx):\n    return json.loads(json.dumps(ctx['matched'][0]['item']))\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("main.py"),
            "from lib.visit import item_of\ndef run(ctx):\n    print('visit of', item_of(ctx))\n    return {'item': item_of(ctx)}\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_task_imports_its_bundled_modules_and_its_prints_are_kept() {
        let dir = task_with_helper();
        let (events, visits) = crate::events::synthetic_stream(5, 2, 1_000);
        let lines: Vec<String> = events.iter().map(|e| e.to_json().to_string()).collect();
        assert!(!visits.is_empty());
        let run = run_task(dir.path(), &lines).unwrap();
        assert!(run.failures.is_empty(), "{:?}", run.failures);
        assert_eq!(run.outputs.len(), visits.len());
        for ((output, log), visit) in run.outputs.iter().zip(&run.logs).zip(&visits) {
            assert_eq!(output["item"], visit.item.as_str());
            assert_eq!(log, &format!("visit of {}\n", visit.item));
        }
    }
}
