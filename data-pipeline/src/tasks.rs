//! The pipeline as the device runs it for its installed tasks: each event updates every
//! feature's windows, then advances every trigger; each completed match becomes a [`TaskRun`]
//! carrying the task's features computed for it. One type, so the device and `walle task test`
//! hand tasks exactly the same context.

use serde_json::{Map, Value};

use crate::event::Event;
use crate::feature::{FeatureError, FeatureSet, FeatureSpec, FeatureStats};
use crate::matcher::{Firing, TriggerSet};
use crate::pattern::{PatternError, PatternSpec};

/// A task to run: the match that triggered it and its features at that moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    pub firing: Firing,
    /// The task's declared features, by name.
    pub features: Map<String, Value>,
}

impl TaskRun {
    /// The task's context: `{task, trigger, matched, window, features}`.
    pub fn context(&self) -> Value {
        let mut context = self.firing.to_json();
        if let Some(object) = context.as_object_mut() {
            object.insert("features".into(), Value::Object(self.features.clone()));
        }
        context
    }
}

/// Why a task's triggers or features could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("invalid trigger: {0}")]
    Trigger(#[from] PatternError),
    #[error("invalid feature: {0}")]
    Feature(#[from] FeatureError),
}

/// Every installed task's triggers and features.
#[derive(Debug, Default)]
pub struct TaskPipeline {
    triggers: TriggerSet,
    features: FeatureSet,
}

impl TaskPipeline {
    pub fn new() -> TaskPipeline {
        TaskPipeline::default()
    }

    /// Installs (or replaces) a task's triggers and features; if either is refused, nothing
    /// changes. Other tasks' in-flight matches and windows are untouched.
    pub fn install(
        &mut self,
        task: &str,
        triggers: &[PatternSpec],
        features: &[FeatureSpec],
    ) -> Result<(), InstallError> {
        crate::feature::validate_features(features)?;
        self.triggers.try_install(task, triggers)?;
        self.features.install(task, features)?;
        Ok(())
    }

    /// Removes a task's triggers, in-flight matches and the feature state only it used.
    pub fn remove(&mut self, task: &str) {
        self.triggers.remove(task);
        self.features.remove(task);
    }

    /// Feeds one validated event: windows first (so a count window includes the triggering
    /// event), then triggers; returns the runs it completes.
    pub fn on_event(&mut self, event: &Event) -> Vec<TaskRun> {
        self.features.observe(event);
        let firings = self.triggers.on_event(event);
        self.runs_for(firings)
    }

    /// Moves the clock to `ts` (never back); returns the runs of matches that were waiting for
    /// time only (a trailing negation or repetition whose window ended).
    pub fn advance_to(&mut self, ts: i64) -> Vec<TaskRun> {
        self.features.advance_to(ts);
        let firings = self.triggers.advance_to(ts);
        self.runs_for(firings)
    }

    /// Replays stored events into the feature windows only (no trigger fires), after a restart.
    pub fn warm_up<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        for event in events {
            self.features.observe(event);
        }
    }

    /// How far back stored events must be replayed to rebuild the windows; `None` when no
    /// installed feature keeps a window.
    pub fn warm_up_ms(&self) -> Option<u64> {
        self.features.horizon_ms()
    }

    /// The triggers' clock: the largest event time seen or advanced to.
    pub fn clock(&self) -> Option<i64> {
        self.triggers.clock()
    }

    /// Installed trigger patterns.
    pub fn patterns(&self) -> usize {
        self.triggers.len()
    }

    /// What the feature windows hold.
    pub fn feature_stats(&self) -> FeatureStats {
        self.features.stats()
    }

    /// Runs for firings, with their tasks' features as of the current clock (also for firings
    /// from elsewhere, e.g. a device's timers).
    pub fn runs_for(&mut self, firings: Vec<Firing>) -> Vec<TaskRun> {
        firings
            .into_iter()
            .map(|firing| TaskRun {
                features: self.features.compute(&firing),
                firing,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn event(n: i64, kind: EventKind, action: Option<&str>) -> Event {
        let mut args = Map::new();
        if let Some(action) = action {
            args.insert("action".into(), Value::from(action));
        }
        Event {
            id: format!("e{n}"),
            ts: n * 1000,
            session: "s".into(),
            page: "item".into(),
            event: kind,
            item: "sku".into(),
            args,
        }
    }

    fn ipv() -> (Vec<PatternSpec>, Vec<FeatureSpec>) {
        let manifest: toml::Value = toml::from_str(
            r#"
            [[triggers]]
            name = "visit"
            partition_by = ["session", "item"]
            steps = [{ event = "enter" }, { event = "exit" }]

            [[features]]
            name = "dwell_ms"
            aggregate = "duration"

            [[features]]
            name = "add_to_cart"
            aggregate = "count"
            where = [{ field = "args.action", equals = "add_to_cart" }]

            [[features]]
            name = "item_views"
            aggregate = "count"
            event = "enter"
            partition_by = ["item"]
            window = { sliding_ms = 3600000 }
            "#,
        )
        .unwrap();
        (
            manifest["triggers"].clone().try_into().unwrap(),
            manifest["features"].clone().try_into().unwrap(),
        )
    }

    #[test]
    fn a_run_carries_the_features_of_its_match_and_of_the_windows() {
        let mut pipeline = TaskPipeline::new();
        let (triggers, features) = ipv();
        pipeline.install("ipv", &triggers, &features).unwrap();
        let stream = [
            event(0, EventKind::Enter, None),
            event(1, EventKind::Exit, None),
            event(10, EventKind::Enter, None),
            event(12, EventKind::Click, Some("add_to_cart")),
            event(15, EventKind::Exit, None),
        ];
        let runs: Vec<TaskRun> = stream.iter().flat_map(|e| pipeline.on_event(e)).collect();
        assert_eq!(runs.len(), 2);
        let features = runs[1].context()["features"].clone();
        assert_eq!(
            features,
            serde_json::json!({"dwell_ms": 5000, "add_to_cart": 1, "item_views": 2})
        );
        assert_eq!(runs[1].context()["matched"][0]["id"], "e10");
    }

    #[test]
    fn a_refused_feature_installs_nothing() {
        let mut pipeline = TaskPipeline::new();
        let (triggers, mut features) = ipv();
        features.push(features[0].clone());
        let error = pipeline.install("ipv", &triggers, &features).unwrap_err();
        assert!(error.to_string().contains("dwell_ms"), "{error}");
        assert_eq!(pipeline.patterns(), 0);
        assert!(
            pipeline
                .on_event(&event(0, EventKind::Enter, None))
                .is_empty()
        );
    }

    #[test]
    fn warming_up_fills_windows_without_running_tasks() {
        let mut pipeline = TaskPipeline::new();
        let (triggers, features) = ipv();
        pipeline.install("ipv", &triggers, &features).unwrap();
        assert_eq!(pipeline.warm_up_ms(), Some(3_600_000));
        let before = [
            event(0, EventKind::Enter, None),
            event(1, EventKind::Exit, None),
        ];
        pipeline.warm_up(&before);
        let runs: Vec<TaskRun> = [
            event(5, EventKind::Enter, None),
            event(6, EventKind::Exit, None),
        ]
        .iter()
        .flat_map(|e| pipeline.on_event(e))
        .collect();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].features["item_views"], 2);
    }
}
