//! Running a task locally, without a cloud: the task directory's triggers over a JSONL event file,
//! in the same sandboxed VM the device uses. What `walle task test` does.
//!
//! Timers do not fire on their own here (the run takes no time); the timers asked for are fired
//! once each after the events, as a device fires them: no event, features as of the last event.

use std::path::Path;

use anyhow::bail;
use walle_pipeline::{Event, Firing, TaskPipeline, TaskRun};
use walle_proto::bundle;
use walle_proto::manifest::TimerSpec;
use walle_vm::VmPool;

/// What one local run of a task over an event stream produced.
#[derive(Debug, Default)]
pub struct LocalRun {
    pub events: usize,
    pub rejected: Vec<(usize, String)>,
    /// Runs started: by triggers and by the timers asked for.
    pub fired: usize,
    pub outputs: Vec<serde_json::Value>,
    /// What the runs printed, one entry per run that printed anything.
    pub logs: Vec<String>,
    pub failures: Vec<String>,
    /// The task's timers that were not asked for, described (`nightly (cron "0 3 * * *")`).
    pub timers_not_run: Vec<String>,
}

/// Packs `task_dir` (validating it as the cloud would), feeds `events` through its triggers
/// and runs the handler on each match, then once for each timer named in `timers`.
pub fn run_task(task_dir: &Path, events: &[String], timers: &[String]) -> anyhow::Result<LocalRun> {
    let (_, packed) = bundle::pack_dir(task_dir)?;
    let contents = bundle::read_bundle(&packed)?;
    let manifest = &contents.manifest;
    check_timers(&manifest.timers, timers)?;
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
            execute(&vm, &key, &task_run, &mut run);
        }
    }
    let firings = timers
        .iter()
        .map(|timer| Firing {
            task: manifest.name.clone(),
            trigger: timer.clone(),
            matched: Vec::new(),
            window: Vec::new(),
        })
        .collect();
    for task_run in pipeline.runs_for(firings) {
        execute(&vm, &key, &task_run, &mut run);
    }
    run.timers_not_run = manifest
        .timers
        .iter()
        .filter(|t| !timers.contains(&t.name))
        .map(describe)
        .collect();
    Ok(run)
}

/// Refuses timer names the task does not declare.
fn check_timers(declared: &[TimerSpec], asked: &[String]) -> anyhow::Result<()> {
    for name in asked {
        if !declared.iter().any(|t| &t.name == name) {
            let names: Vec<&str> = declared.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "the task has no timer {name:?} (its timers: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// A timer and its schedule, e.g. `nightly (cron "0 3 * * *")`.
fn describe(timer: &TimerSpec) -> String {
    match (&timer.cron, timer.every_ms) {
        (Some(cron), _) => format!("{} (cron {cron:?}, UTC)", timer.name),
        (None, Some(ms)) => format!("{} (every {ms} ms)", timer.name),
        (None, None) => timer.name.clone(),
    }
}

/// Runs the handler for one firing and keeps what it produced.
fn execute(vm: &VmPool, key: &str, task_run: &TaskRun, run: &mut LocalRun) {
    run.fired += 1;
    match vm.run(key, task_run.context()) {
        Ok(output) => {
            run.outputs.extend(output.records);
            if !output.logs.is_empty() {
                run.logs.push(output.logs);
            }
        }
        Err(e) => run.failures.push(e.to_string()),
    }
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
        let run = run_task(dir.path(), &lines, &[]).unwrap();
        assert!(run.failures.is_empty(), "{:?}", run.failures);
        assert_eq!(run.outputs.len(), visits.len());
        for ((output, log), visit) in run.outputs.iter().zip(&run.logs).zip(&visits) {
            assert_eq!(output["item"], visit.item.as_str());
            assert_eq!(log, &format!("visit of {}\n", visit.item));
        }
    }

    #[test]
    fn asked_for_timers_fire_once_after_the_events_with_the_features() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("walle.toml"),
            r#"name = "clicks-report"
version = "1.0.0"
runtime = "python"
entry = "main.py"

[[timers]]
name = "nightly"
cron = "0 3 * * *"

[[timers]]
name = "hourly"
every_ms = 3600000

[[features]]
name = "clicks_1h"
aggregate = "count"
event = "click"
window = { sliding_ms = 3600000 }
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("main.py"),
            "def run(ctx):\n    return {'trigger': ctx['trigger'], 'events': len(ctx['matched']), \
             'clicks_1h': ctx['features']['clicks_1h']}\n",
        )
        .unwrap();
        let clicks: Vec<String> = (0..3)
            .map(|n| {
                format!(
                    r#"{{"id":"c{n}","ts":{},"session":"s","page":"item","event":"click"}}"#,
                    1_000_000 + n * 1000
                )
            })
            .collect();
        let run = run_task(dir.path(), &clicks, &["nightly".to_owned()]).unwrap();
        assert!(run.failures.is_empty(), "{:?}", run.failures);
        assert_eq!((run.events, run.fired), (3, 1));
        assert_eq!(
            run.outputs,
            [serde_json::json!({"trigger": "nightly", "events": 0, "clicks_1h": 3})]
        );
        assert_eq!(run.timers_not_run, ["hourly (every 3600000 ms)"]);
        let run = run_task(dir.path(), &clicks, &[]).unwrap();
        assert_eq!(run.fired, 0);
        assert_eq!(
            run.timers_not_run,
            [
                r#"nightly (cron "0 3 * * *", UTC)"#,
                "hourly (every 3600000 ms)"
            ]
        );
        let err = run_task(dir.path(), &clicks, &["weekly".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"the task has no timer "weekly" (its timers: nightly, hourly)"#
        );
    }
}
