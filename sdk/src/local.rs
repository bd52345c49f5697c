//! Running a task locally, without a cloud: the task directory's triggers over a JSONL event file,
//! in the same sandboxed VM the device uses. What `walle task test` does.
//!
//! Timers do not fire on their own here (the run takes no time); the timers asked for are fired
//! once each after the events, as a device fires them: no event, features as of the last event.
//! Matches that wait for time only (a trailing "not followed by", a repetition's window) fire
//! when the clock is moved past them: to a given time, or to the end of the stream (the last
//! event's time plus the longest trigger window).
//!
//! Besides what the runs produced, the run reports each firing (trigger, features, how many
//! events it saw, outputs, logs, run time, the task's memory after the run) and warns about
//! silent mistakes: a trigger condition on a field no event has, and triggers that never fired.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use serde::Serialize;
use serde_json::{Map, Value};
use walle_pipeline::{Event, Firing, TaskPipeline, TaskRun};
use walle_proto::bundle;
use walle_proto::manifest::{TaskManifest, TimerSpec};
use walle_vm::VmPool;

/// How to run a task locally beyond its events.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// Timers to fire once each after the events.
    pub timers: Vec<String>,
    /// Move the clock to this Unix time (ms) after the events.
    pub advance_to: Option<i64>,
    /// Move the clock past the last event by the longest trigger window.
    pub end_of_stream: bool,
}

/// What one local run of a task over an event stream produced.
#[derive(Debug, Default, Serialize)]
pub struct LocalRun {
    pub events: usize,
    /// (line, why) for each line that is not an event.
    pub rejected: Vec<(usize, String)>,
    /// Runs started: by triggers, by the clock, and by the timers asked for.
    pub fired: usize,
    pub outputs: Vec<serde_json::Value>,
    /// What the runs printed, one entry per run that printed anything.
    pub logs: Vec<String>,
    pub failures: Vec<String>,
    /// The task's timers that were not asked for, described (`nightly (cron "0 3 * * *")`).
    pub timers_not_run: Vec<String>,
    /// Each run, in order.
    pub firings: Vec<FiringReport>,
    /// Mistakes that make a test pass silently.
    pub warnings: Vec<String>,
}

/// One run of the handler.
#[derive(Debug, Clone, Serialize)]
pub struct FiringReport {
    /// The trigger or timer that fired.
    pub trigger: String,
    /// Events matched by the trigger's positive steps and in its window.
    pub matched: usize,
    pub window: usize,
    pub features: Map<String, Value>,
    pub outputs: Vec<Value>,
    pub logs: String,
    pub run_ms: f64,
    /// Heap bytes the task held after the run (its interpreter, modules and data).
    pub memory_bytes: Option<u64>,
    /// Why the run failed (a limit hit says which).
    pub error: Option<String>,
}

/// Packs `task_dir` (validating it as the cloud would), feeds `events` through its triggers
/// and runs the handler on each match, then once for each timer named in `timers`.
pub fn run_task(task_dir: &Path, events: &[String], timers: &[String]) -> anyhow::Result<LocalRun> {
    let options = LocalOptions {
        timers: timers.to_vec(),
        ..LocalOptions::default()
    };
    run_task_with(task_dir, events, &options)
}

/// [`run_task`] with the clock moved after the events as `options` say.
pub fn run_task_with(
    task_dir: &Path,
    events: &[String],
    options: &LocalOptions,
) -> anyhow::Result<LocalRun> {
    let loaded = load(task_dir)?;
    let (vm, key, manifest) = (&loaded.vm, loaded.key.as_str(), &loaded.manifest);
    check_timers(&manifest.timers, &options.timers)?;
    let mut pipeline = TaskPipeline::new();
    pipeline.install(&manifest.name, &manifest.triggers, &manifest.features)?;
    let mut run = LocalRun::default();
    let mut seen: Vec<Value> = Vec::new();
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
        seen.push(event.to_json());
        for task_run in pipeline.on_event(&event) {
            execute(vm, key, &task_run, &mut run);
        }
    }
    let until = options.advance_to.or_else(|| {
        let last = pipeline.clock()?;
        let longest = manifest.triggers.iter().filter_map(|t| t.within_ms).max()?;
        options
            .end_of_stream
            .then(|| last.saturating_add(i64::try_from(longest).unwrap_or(i64::MAX / 2) + 1))
    });
    if let Some(ts) = until {
        for task_run in pipeline.advance_to(ts) {
            execute(vm, key, &task_run, &mut run);
        }
    }
    let firings = options
        .timers
        .iter()
        .map(|timer| Firing {
            task: manifest.name.clone(),
            trigger: timer.clone(),
            matched: Vec::new(),
            window: Vec::new(),
        })
        .collect();
    for task_run in pipeline.runs_for(firings) {
        execute(vm, key, &task_run, &mut run);
    }
    run.timers_not_run = manifest
        .timers
        .iter()
        .filter(|t| !options.timers.contains(&t.name))
        .map(describe)
        .collect();
    run.warnings = warnings(manifest, &seen, &run);
    Ok(run)
}

/// A task folder packed, checked and loaded in a VM of its own, as a device loads it.
pub(crate) struct Loaded {
    vm: VmPool,
    key: String,
    manifest: TaskManifest,
    limits: walle_vm::Limits,
}

fn load(task_dir: &Path) -> anyhow::Result<Loaded> {
    let (_, packed) = bundle::pack_dir(task_dir)?;
    load_bundle(&bundle::read_bundle(&packed)?).map_err(anyhow::Error::msg)
}

/// Loads a bundle's task in a VM of its own, as a device does; the VM's or the loader's
/// words when it does not load.
pub(crate) fn load_bundle(contents: &bundle::BundleContents) -> Result<Loaded, String> {
    let manifest = contents.manifest.clone();
    let key = format!("{}@{}", manifest.name, manifest.version);
    let read = |path: &str| {
        contents
            .file(path)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("the bundle has no {path}"))
    };
    // The bundle is in memory here: a language model is the task's own copy of its bytes.
    let language_model =
        |path: &str| read(path).map(|bytes| walle_vm::LlmSource::Bytes(std::sync::Arc::new(bytes)));
    let code = walle_device::code::task_code(
        key.clone(),
        &manifest,
        read,
        &contents.files,
        language_model,
    )?;
    let limits = code.limits;
    let vm = VmPool::new(1).map_err(|e| e.to_string())?;
    vm.load(code).map_err(|e| e.to_string())?;
    Ok(Loaded {
        vm,
        key,
        manifest,
        limits,
    })
}

/// Run times and memory of a task's handler over the firings of an event stream.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Handler runs timed (the stream's firings, repeated).
    pub runs: usize,
    /// Distinct firings of the stream.
    pub firings: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The most heap the task held after a run.
    pub peak_memory_bytes: u64,
    /// The task's limits as the VM applies them (declared, or the VM's defaults).
    pub deadline_ms: u64,
    pub memory_limit_bytes: u64,
}

/// Feeds `events` through the task's triggers once, then runs the handler `runs` times over
/// the firings (in turn) and measures each run.
pub fn bench_task(task_dir: &Path, events: &[String], runs: usize) -> anyhow::Result<BenchReport> {
    let loaded = load(task_dir)?;
    let mut pipeline = TaskPipeline::new();
    let manifest = &loaded.manifest;
    pipeline.install(&manifest.name, &manifest.triggers, &manifest.features)?;
    let mut contexts = Vec::new();
    for line in events.iter().filter(|l| !l.trim().is_empty()) {
        if let Ok(event) = Event::from_json(line) {
            contexts.extend(pipeline.on_event(&event).iter().map(TaskRun::context));
        }
    }
    if contexts.is_empty() {
        bail!("no trigger fired over these events: nothing to time (`walle task test` shows why)");
    }
    let mut times = Vec::with_capacity(runs);
    let (mut failed, mut peak) = (0, 0);
    for context in contexts.iter().cycle().take(runs.max(1)) {
        let started = Instant::now();
        let result = loaded.vm.run(&loaded.key, context.clone());
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        failed += usize::from(result.is_err());
        peak = peak.max(loaded.vm.task_memory(&loaded.key).unwrap_or(0));
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(BenchReport {
        runs: times.len(),
        firings: contexts.len(),
        failed,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        peak_memory_bytes: peak,
        deadline_ms: u64::try_from(loaded.limits.deadline.as_millis()).unwrap_or(u64::MAX),
        memory_limit_bytes: loaded.limits.memory_bytes,
    })
}

/// Silent mistakes: conditions on fields no event has, triggers that never fired.
fn warnings(manifest: &TaskManifest, events: &[Value], run: &LocalRun) -> Vec<String> {
    let mut out = Vec::new();
    for trigger in &manifest.triggers {
        let fields = trigger
            .steps
            .iter()
            .flat_map(|step| step.r#where.iter().map(|c| c.field.as_str()))
            .chain(trigger.partition_by.iter().map(String::as_str));
        let mut missing: Vec<&str> = fields
            .filter(|field| !events.iter().any(|e| lookup(e, field).is_some()))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for field in missing {
            out.push(format!(
                "trigger {:?}: no event has the field {field:?}, so a condition on it never holds (a typo?)",
                trigger.name
            ));
        }
        if !run.firings.iter().any(|f| f.trigger == trigger.name) {
            let hint = if trigger.steps.last().is_some_and(|s| s.not) {
                " (it ends with a \"not\" step: --end-of-stream moves the clock past its window)"
            } else {
                ""
            };
            out.push(format!("trigger {:?} never fired{hint}", trigger.name));
        }
    }
    out
}

/// A dotted field of an event's JSON (`args.action`).
fn lookup<'a>(event: &'a Value, field: &str) -> Option<&'a Value> {
    field
        .split('.')
        .try_fold(event, |value, part| value.get(part))
        .filter(|v| !v.is_null())
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
    let started = Instant::now();
    let result = vm.run(key, task_run.context());
    let mut report = FiringReport {
        trigger: task_run.firing.trigger.clone(),
        matched: task_run.firing.matched.len(),
        window: task_run.firing.window.len(),
        features: task_run.features.clone(),
        outputs: Vec::new(),
        logs: String::new(),
        run_ms: started.elapsed().as_secs_f64() * 1000.0,
        memory_bytes: vm.task_memory(key),
        error: None,
    };
    match result {
        Ok(output) => {
            report.outputs.clone_from(&output.records);
            report.logs.clone_from(&output.logs);
            run.outputs.extend(output.records);
            if !output.logs.is_empty() {
                run.logs.push(output.logs);
            }
        }
        Err(e) => {
            report.error = Some(e.to_string());
            run.failures.push(e.to_string());
        }
    }
    run.firings.push(report);
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

    #[test]
    fn the_clock_moves_past_a_trailing_negation_only_when_asked_and_silent_mistakes_warn() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("walle.toml"),
            r#"name = "no-click"
version = "1.0.0"
runtime = "python"
entry = "main.py"

[[triggers]]
name = "viewed-not-clicked"
partition_by = ["session", "item"]
within_ms = 10000
steps = [
    { event = "enter", page = "item" },
    { event = "click", not = true },
]

[[triggers]]
name = "typo"
steps = [{ event = "click", where = [{ field = "args.nme", equals = "x" }] }]
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("main.py"),
            "def run(ctx):\n    return {'item': ctx['matched'][0]['item']}\n",
        )
        .unwrap();
        let events = [
            r#"{"id":"1","ts":1000,"session":"s","page":"item","event":"enter","item":"a"}"#
                .to_owned(),
            r#"{"id":"2","ts":2000,"session":"s","page":"home","event":"enter"}"#.to_owned(),
        ];
        let quiet = run_task(dir.path(), &events, &[]).unwrap();
        assert_eq!(quiet.fired, 0);
        assert!(
            quiet.warnings.iter().any(|w| w.contains("\"args.nme\"")),
            "{:?}",
            quiet.warnings
        );
        assert!(
            quiet
                .warnings
                .iter()
                .any(|w| w.contains("\"viewed-not-clicked\" never fired")
                    && w.contains("--end-of-stream")),
            "{:?}",
            quiet.warnings
        );
        let options = LocalOptions {
            end_of_stream: true,
            ..LocalOptions::default()
        };
        let ended = run_task_with(dir.path(), &events, &options).unwrap();
        assert_eq!(ended.outputs, [serde_json::json!({"item": "a"})]);
        assert_eq!(ended.firings[0].trigger, "viewed-not-clicked");
        assert_eq!(ended.firings[0].matched, 1);
        assert!(ended.firings[0].memory_bytes.is_some());
        let early = LocalOptions {
            advance_to: Some(5000),
            ..LocalOptions::default()
        };
        assert_eq!(
            run_task_with(dir.path(), &events, &early).unwrap().fired,
            0,
            "the window is still open"
        );
    }
}
