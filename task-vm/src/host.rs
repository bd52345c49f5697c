//! The host API a task calls, the same whatever its runtime: Python's `walle` module and a WASM
//! task's `walle` imports are thin bindings over one [`RunHost`] per run.
//!
//! A run can read its trigger context, log, upload records, read and write its task's
//! persistent key-value state and run the bundle's models on `walle-engine`. Log lines go to
//! the run's log (beside what the script printed, under the same cap); uploaded records and
//! then the handler's result are the run's records, under the task's output cap.
//!
//! A run's state writes are staged: the run reads its own writes, and they reach the
//! [`StateStore`] only when the run succeeded and its caller commits them
//! ([`RunOutput::state`](crate::RunOutput)), so a failed or interrupted run changes nothing and the
//! device can commit a run's state together with its outputs.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use walle_engine::{Engine, Options, Search, Session};

use crate::VmError;

/// Per-task persistent key-value state (`walle.state`), keyed by task name (not version, so
/// an upgrade keeps it). The device keeps it in its database; [`MemoryState`] in memory.
pub trait StateStore: Send + Sync {
    /// The value stored under `key`, if any.
    fn get(&self, task: &str, key: &str) -> Result<Option<Value>, String>;
    /// Stores `value` under `key` (`None` deletes it).
    fn set(&self, task: &str, key: &str, value: Option<&Value>) -> Result<(), String>;

    /// Applies a run's state writes.
    fn commit(&self, task: &str, writes: &[StateWrite]) -> Result<(), String> {
        writes
            .iter()
            .try_for_each(|write| self.set(task, &write.key, write.value.as_ref()))
    }
}

/// One key a run set (`Some`) or deleted (`None`) in its task's state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    pub key: String,
    pub value: Option<Value>,
}

/// State kept in memory (tests, the SDK's local runner).
#[derive(Debug, Default)]
pub struct MemoryState(Mutex<HashMap<(String, String), Value>>);

impl StateStore for MemoryState {
    fn get(&self, task: &str, key: &str) -> Result<Option<Value>, String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(&(task.to_owned(), key.to_owned())).cloned())
    }

    fn set(&self, task: &str, key: &str, value: Option<&Value>) -> Result<(), String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (task.to_owned(), key.to_owned());
        match value {
            Some(value) => map.insert(key, value.clone()),
            None => map.remove(&key),
        };
        Ok(())
    }
}

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// The level named `name` (`debug`, `info`, `warn`/`warning`, `error`).
    pub fn parse(name: &str) -> Option<Level> {
        match name {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }

    /// The level's name, as [`Level::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// A task's models: ONNX bytes from its bundle, each loaded into an engine session on first
/// use and kept for later runs.
#[derive(Default)]
pub struct Models {
    bytes: HashMap<String, Arc<Vec<u8>>>,
    sessions: HashMap<String, Session>,
    /// The bundle's language models (`walle.llm`).
    llms: crate::llm::Llms,
}

impl Models {
    /// The models of a bundle, by name (their file name without `.onnx`).
    pub fn new(models: &[(String, Arc<Vec<u8>>)]) -> Models {
        Models {
            bytes: models.iter().cloned().collect(),
            sessions: HashMap::new(),
            llms: crate::llm::Llms::default(),
        }
    }

    /// With the bundle's language models too (their file name without `.gguf`).
    pub fn with_llms(mut self, llms: &[(String, crate::llm::LlmSource)]) -> Models {
        self.llms = crate::llm::Llms::new(llms);
        self
    }

    /// The session of model `name`, loaded on first use.
    pub fn session(&mut self, task: &str, name: &str) -> Result<&Session, VmError> {
        let fail = |reason: String| VmError::Model {
            task: task.to_owned(),
            model: name.to_owned(),
            reason,
        };
        let slot = match self.sessions.entry(name.to_owned()) {
            Entry::Occupied(loaded) => return Ok(loaded.into_mut()),
            Entry::Vacant(slot) => slot,
        };
        let Some(bytes) = self.bytes.get(name) else {
            let mut names: Vec<&str> = self.bytes.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(fail(format!(
                "no such model in the bundle (it has {names:?})"
            )));
        };
        // On the worker's own thread: tasks already run in parallel on the VM's workers, the
        // model's memory counts in the task's budget, and its runs stop at the deadline.
        let options = Options {
            threads: 1,
            search: Search::Measure,
            cache_dir: None,
            on_calling_thread: true,
        };
        let session = Engine::load_with(bytes, &options).map_err(|e| fail(e.to_string()))?;
        Ok(slot.insert(session))
    }
}

/// Runs `f` collecting what it logs (through [`RunHost::log`]) into a string of at most
/// `max_bytes`, for a runtime that calls a task outside the pool (the pool does this itself).
pub fn with_log<T>(max_bytes: u64, f: impl FnOnce() -> T) -> (T, String) {
    let log = crate::output::capture(max_bytes);
    let result = f();
    (result, log.finish())
}

/// The name `walle.nn.load` knows a bundled model by: its file name without `.onnx`.
pub fn model_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".onnx").unwrap_or(file)
}

/// The host side of one run of one task.
pub struct RunHost<'a> {
    task: &'a str,
    context: &'a Value,
    state: &'a dyn StateStore,
    models: &'a mut Models,
    max_output_bytes: u64,
    records: Vec<Value>,
    output_bytes: u64,
    /// State written by this run, not yet in `state` (`None`: deleted).
    staged: RefCell<BTreeMap<String, Option<Value>>>,
}

impl<'a> RunHost<'a> {
    /// A run of `task` (its key, `name@version`) triggered with `context`.
    pub fn new(
        task: &'a str,
        context: &'a Value,
        state: &'a dyn StateStore,
        models: &'a mut Models,
        max_output_bytes: u64,
    ) -> RunHost<'a> {
        RunHost {
            task,
            context,
            state,
            models,
            max_output_bytes,
            records: Vec::new(),
            output_bytes: 0,
            staged: RefCell::default(),
        }
    }

    /// The task's key.
    pub fn task(&self) -> &str {
        self.task
    }

    /// Largest total JSON size of the records this run may produce.
    pub fn max_output_bytes(&self) -> u64 {
        self.max_output_bytes
    }

    /// The trigger context: the matched events, the window and the declared features.
    pub fn context(&self) -> &Value {
        self.context
    }

    /// Appends a line to the run's log (cut off at the task's log cap).
    pub fn log(&mut self, level: Level, message: &str) {
        crate::output::write(&format!("[{}] {message}\n", level.name()));
    }

    /// Queues a record for the tunnel; fails the run past the output cap.
    pub fn upload(&mut self, record: Value) -> Result<(), VmError> {
        let size = record.to_string().len() as u64;
        self.output_bytes += size;
        if self.output_bytes > self.max_output_bytes {
            return Err(VmError::OutputTooLarge {
                task: self.task.to_owned(),
                size: self.output_bytes,
                max: self.max_output_bytes,
            });
        }
        self.records.push(record);
        Ok(())
    }

    /// The task's state under `key`, as this run left it.
    pub fn state_get(&self, key: &str) -> Result<Option<Value>, VmError> {
        if let Some(staged) = self.staged.borrow().get(key) {
            return Ok(staged.clone());
        }
        self.state
            .get(task_name(self.task), key)
            .map_err(|reason| self.state_error(key, reason))
    }

    /// Sets (or with `None` deletes) the task's state under `key`, staged until the run's
    /// caller commits it.
    pub fn state_set(&self, key: &str, value: Option<&Value>) -> Result<(), VmError> {
        self.staged
            .borrow_mut()
            .insert(key.to_owned(), value.cloned());
        Ok(())
    }

    /// The state this run wrote, in key order, for its caller to commit.
    pub fn take_state_writes(&mut self) -> Vec<StateWrite> {
        std::mem::take(self.staged.get_mut())
            .into_iter()
            .map(|(key, value)| StateWrite { key, value })
            .collect()
    }

    fn state_error(&self, key: &str, reason: String) -> VmError {
        VmError::State {
            task: self.task.to_owned(),
            key: key.to_owned(),
            reason,
        }
    }

    /// The engine session of the bundle's model `name`.
    pub fn model(&mut self, name: &str) -> Result<&Session, VmError> {
        self.models.session(self.task, name)
    }

    /// The task's language models.
    pub fn llms(&mut self) -> &mut crate::llm::Llms {
        &mut self.models.llms
    }

    /// Ends the run: the records it uploaded, then the handler's `returned` ones.
    pub fn finish(&mut self, returned: Vec<Value>) -> Result<Vec<Value>, VmError> {
        for record in returned {
            self.upload(record)?;
        }
        Ok(std::mem::take(&mut self.records))
    }
}

/// The task name in a task key `name@version`.
pub fn task_name(key: &str) -> &str {
    key.split_once('@').map_or(key, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MAX_OUTPUT: u64 = 32;

    #[test]
    fn log_lines_go_to_the_run_log_under_its_cap() {
        let (state, mut models, context) = (MemoryState::default(), Models::default(), json!({}));
        let mut host = RunHost::new("t@1", &context, &state, &mut models, MAX_OUTPUT);
        let log = crate::output::capture(20);
        host.log(Level::Info, "ready");
        host.log(Level::Warn, "something odd");
        assert_eq!(
            log.finish(),
            "[info] ready\n[warn] \n[walle: log truncated, 14 more bytes dropped]\n"
        );
    }

    #[test]
    fn uploads_and_returned_records_share_the_output_cap() {
        let (state, mut models, context) = (MemoryState::default(), Models::default(), json!({}));
        let mut host = RunHost::new("t@1", &context, &state, &mut models, MAX_OUTPUT);
        assert!(host.upload(json!({"a": "0123456789"})).is_ok());
        let err = host.finish(vec![json!({"b": "0123456789"})]);
        assert!(matches!(
            err,
            Err(VmError::OutputTooLarge { size: 32.., .. })
        ));
    }

    #[test]
    fn state_is_kept_per_task_name_across_versions() -> Result<(), VmError> {
        let (state, mut models, context) = (MemoryState::default(), Models::default(), json!({}));
        let mut host = RunHost::new("t@1", &context, &state, &mut models, MAX_OUTPUT);
        host.state_set("n", Some(&json!(3)))?;
        state
            .commit("t", &host.take_state_writes())
            .map_err(VmError::Pool)?;
        let mut other_models = Models::default();
        let upgraded = RunHost::new("t@2", &context, &state, &mut other_models, MAX_OUTPUT);
        assert_eq!(upgraded.state_get("n")?, Some(json!(3)));
        let stranger = RunHost::new("u@1", &context, &state, &mut models, MAX_OUTPUT);
        assert_eq!(stranger.state_get("n")?, None);
        upgraded.state_set("n", None)?;
        assert_eq!(upgraded.state_get("n")?, None);
        Ok(())
    }

    #[test]
    fn a_run_reads_its_own_writes_which_reach_the_store_only_when_committed() -> Result<(), VmError>
    {
        let (state, mut models, context) = (MemoryState::default(), Models::default(), json!({}));
        state
            .set("t", "kept", Some(&json!(1)))
            .map_err(VmError::Pool)?;
        let mut host = RunHost::new("t@1", &context, &state, &mut models, MAX_OUTPUT);
        host.state_set("n", Some(&json!(7)))?;
        host.state_set("kept", None)?;
        assert_eq!(host.state_get("n")?, Some(json!(7)));
        assert_eq!(host.state_get("kept")?, None);
        assert_eq!(state.get("t", "n"), Ok(None));
        assert_eq!(state.get("t", "kept"), Ok(Some(json!(1))));
        let writes = host.take_state_writes();
        assert_eq!(
            writes,
            [
                StateWrite {
                    key: "kept".into(),
                    value: None
                },
                StateWrite {
                    key: "n".into(),
                    value: Some(json!(7))
                },
            ]
        );
        state.commit("t", &writes).map_err(VmError::Pool)?;
        assert_eq!(state.get("t", "n"), Ok(Some(json!(7))));
        assert_eq!(state.get("t", "kept"), Ok(None));
        Ok(())
    }

    #[test]
    fn a_missing_model_is_named_with_the_ones_there_are() {
        let mut models = Models::new(&[("ranker".into(), Arc::new(Vec::new()))]);
        let err = models.session("t@1", "scorer").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("scorer") && text.contains("ranker"), "{text}");
        let err = models.session("t@1", "ranker").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("model ranker"),
            "an empty model fails to load: {text}"
        );
    }
}
