//! `walle.llm`: the bundle's language models (GGUF files) for a task, on `walle-engine`'s LLM.
//!
//! A task declares its models in `walle.toml` (`models = ["models/next-query.gguf"]`) and loads
//! one by name (`walle.llm.load("next-query")`). What this module promises:
//!
//! - **shared, read-only weights**: a model given as a file (an installed bundle on a device) is
//!   memory-mapped once per process, and every task that loads the same file gets the same
//!   [`LlamaModel`] ([`shared_models`] counts them); nothing a task does changes it. A model
//!   given as bytes (`walle task test`'s in-memory bundle) belongs to its task.
//! - **counted in the task's budget**: loading charges the model's weight bytes to the task's
//!   memory budget (they are mapped, not allocated, so the allocator would not see them), after
//!   checking that the weights and a full context's cache fit in what the budget has left; the
//!   cache itself is allocated on the task's worker thread as it grows, and counted as any
//!   allocation is. Two tasks sharing a model each count it: each could be the last user.
//! - **inside the run's limits**: every kernel runs on the task's worker thread
//!   ([`walle_engine::on_calling_thread`]); the prompt is evaluated in chunks and the answer one
//!   token at a time, and before each the deadline and the memory budget are asked, so a run
//!   past its deadline stops within one chunk or token with the VM's deadline error.
//! - each call is its own conversation: `generate` and `chat` start from an empty cache.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use walle_engine::llm::generate::{GenerateOptions, Session, SessionOptions, StopReason};
use walle_engine::llm::kv::KvPrecision;
use walle_engine::llm::sample::Sampling;
use walle_engine::llm::tokenizer::{Specials, Tokenizer};
use walle_engine::llm::{Gguf, LlamaModel};

use crate::VmError;

/// Where a task's model comes from.
#[derive(Debug, Clone)]
pub enum LlmSource {
    /// A GGUF file on disk, memory-mapped and shared by every task that loads it.
    File(PathBuf),
    /// A GGUF file's bytes (the task's own copy).
    Bytes(Arc<Vec<u8>>),
}

/// Prompt tokens evaluated between two checks of the run's limits.
const PREFILL_CHUNK: usize = 32;
/// Context (tokens) of a model loaded without one.
pub const DEFAULT_CONTEXT: usize = 2048;

/// A loaded model and its tokenizer.
struct Loaded {
    model: Arc<LlamaModel>,
    tokenizer: Arc<Tokenizer>,
}

/// Models loaded from files, by path: a task loading a file another task holds gets the same.
fn file_models() -> &'static Mutex<HashMap<PathBuf, Weak<Loaded>>> {
    static MODELS: std::sync::OnceLock<Mutex<HashMap<PathBuf, Weak<Loaded>>>> =
        std::sync::OnceLock::new();
    MODELS.get_or_init(Default::default)
}

/// How many models loaded from files are alive in the process now.
pub fn shared_models() -> usize {
    let models = file_models().lock().unwrap_or_else(|p| p.into_inner());
    models.values().filter(|m| m.strong_count() > 0).count()
}

/// One loaded model of a task, with its conversation.
struct TaskLlm {
    loaded: Arc<Loaded>,
    session: Session,
}

/// A task's language models: sources by name, loaded on `walle.llm.load`.
#[derive(Default)]
pub struct Llms {
    sources: HashMap<String, LlmSource>,
    loaded: HashMap<String, TaskLlm>,
}

/// What `generate` and `chat` take from the script.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub tokens: usize,
    /// `stop` (a stop token or string), `length` (max tokens) or `stopped` (the run's limits).
    pub finish: &'static str,
}

impl Llms {
    /// The models of a bundle, by name (their file name without `.gguf`).
    pub fn new(sources: &[(String, LlmSource)]) -> Llms {
        Llms {
            sources: sources.iter().cloned().collect(),
            loaded: HashMap::new(),
        }
    }

    /// Loads model `name` with room for `context` tokens (once; later loads return at once).
    pub fn load(&mut self, task: &str, name: &str, context: usize) -> Result<(), VmError> {
        let fail = model_error(task, name);
        let slot = match self.loaded.entry(name.to_owned()) {
            Entry::Occupied(_) => return Ok(()),
            Entry::Vacant(slot) => slot,
        };
        let Some(source) = self.sources.get(name) else {
            let mut names: Vec<&str> = self.sources.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(fail(format!(
                "no such language model in the bundle (it has {names:?})"
            )));
        };
        let loaded = open(source).map_err(&fail)?;
        let options = SessionOptions {
            context: context.clamp(1, loaded.model.params().context_length.max(1)),
            kv_precision: KvPrecision::F16,
            prefill_chunk: PREFILL_CHUNK,
        };
        let session = Session::new(loaded.model.clone(), loaded.tokenizer.clone(), &options)
            .map_err(|e| fail(e.to_string()))?;
        let weights = loaded.model.weight_bytes() as u64;
        let cache = (session.bytes_per_token() * options.context) as u64;
        if let Some(left) = crate::alloc::remaining_budget()
            && weights + cache > left
        {
            return Err(fail(format!(
                "needs {weights} bytes of weights and {cache} of cache for {} tokens, more than \
                 the {left} bytes left of the task's memory budget",
                options.context
            )));
        }
        crate::alloc::charge_outside_heap(weights);
        slot.insert(TaskLlm { loaded, session });
        Ok(())
    }

    fn llm(&mut self, task: &str, name: &str) -> Result<&mut TaskLlm, VmError> {
        self.loaded
            .get_mut(name)
            .ok_or_else(|| model_error(task, name)("not loaded: call walle.llm.load first".into()))
    }

    /// The tokens of `text` (no special tokens recognised, no BOS).
    pub fn tokenize(&mut self, task: &str, name: &str, text: &str) -> Result<Vec<u32>, VmError> {
        let llm = self.llm(task, name)?;
        Ok(llm.loaded.tokenizer.encode(text, Specials::AsText))
    }

    /// The chat prompt of one user turn (with a system turn when given), ready for the answer.
    pub fn chat_prompt(
        &mut self,
        task: &str,
        name: &str,
        messages: &[(String, String)],
    ) -> Result<String, VmError> {
        let llm = self.llm(task, name)?;
        let fail = model_error(task, name);
        chat_prompt(&llm.loaded.tokenizer, messages).map_err(fail)
    }

    /// Generates from `prompt` (special tokens such as `<|im_start|>` recognised), in a
    /// conversation of its own; stops early, with `finish` = `stopped`, when `keep_going` says.
    pub fn generate(
        &mut self,
        task: &str,
        name: &str,
        prompt: &str,
        request: &GenerateRequest,
        keep_going: &(dyn Fn() -> bool + Sync),
    ) -> Result<Generated, VmError> {
        let llm = self.llm(task, name)?;
        let fail = model_error(task, name);
        let tokens = prompt_tokens(&llm.loaded.tokenizer, prompt);
        let session = &mut llm.session;
        session.reset();
        let options = GenerateOptions {
            sampling: request.sampling.clone(),
            max_tokens: request.max_tokens,
            stop_strings: request.stop.clone(),
            stop_tokens: Vec::new(),
        };
        walle_engine::on_calling_thread(|| {
            if !prefill(session, &tokens, keep_going).map_err(&fail)? {
                return Ok(stopped(String::new(), 0));
            }
            let mut halted = false;
            let generation = session
                .generate(&[], &options, |_| {
                    if keep_going() {
                        ControlFlow::Continue(())
                    } else {
                        halted = true;
                        ControlFlow::Break(())
                    }
                })
                .map_err(|e| fail(e.to_string()))?;
            if halted {
                return Ok(stopped(generation.text, generation.tokens.len()));
            }
            let finish = match generation.stop {
                StopReason::MaxTokens => "length",
                _ => "stop",
            };
            Ok(Generated {
                text: generation.text,
                tokens: generation.tokens.len(),
                finish,
            })
        })
    }

    /// The log-likelihood of `text`'s tokens after the first, given those before each, and how
    /// many were scored; `None` when the run's limits stopped it.
    pub fn score(
        &mut self,
        task: &str,
        name: &str,
        text: &str,
        keep_going: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<(f64, usize)>, VmError> {
        let llm = self.llm(task, name)?;
        let fail = model_error(task, name);
        let tokens = prompt_tokens(&llm.loaded.tokenizer, text);
        let session = &mut llm.session;
        session.reset();
        walle_engine::on_calling_thread(|| {
            if !keep_going() {
                return Ok(None);
            }
            let score = session.score(&tokens).map_err(|e| fail(e.to_string()))?;
            Ok(Some((score.log_likelihood, score.tokens)))
        })
    }

    /// Bytes the task's models hold: weights (mapped) and caches.
    pub fn bytes(&self) -> (u64, u64) {
        self.loaded.values().fold((0, 0), |(w, c), llm| {
            (
                w + llm.loaded.model.weight_bytes() as u64,
                c + llm.session.cache_bytes() as u64,
            )
        })
    }
}

/// The error of model `name` of `task`, for a reason.
fn model_error<'a>(task: &'a str, name: &'a str) -> impl Fn(String) -> VmError + 'a {
    move |reason| VmError::Model {
        task: task.to_owned(),
        model: name.to_owned(),
        reason,
    }
}

fn stopped(text: String, tokens: usize) -> Generated {
    Generated {
        text,
        tokens,
        finish: "stopped",
    }
}

/// Evaluates `tokens` a chunk at a time; false when `keep_going` stopped it.
fn prefill(
    session: &mut Session,
    tokens: &[u32],
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Result<bool, String> {
    for chunk in tokens.chunks(PREFILL_CHUNK) {
        if !keep_going() {
            return Ok(false);
        }
        session.feed(chunk).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// The prompt's tokens: BOS first when the model wants one, special tokens recognised.
fn prompt_tokens(tokenizer: &Tokenizer, prompt: &str) -> Vec<u32> {
    let mut tokens: Vec<u32> = tokenizer
        .bos()
        .filter(|_| tokenizer.add_bos())
        .into_iter()
        .collect();
    tokens.extend(tokenizer.encode(prompt, Specials::Recognise));
    tokens
}

/// The model's chat prompt for `messages` (role, content): ChatML turns for a system and a
/// user message, as the model's template writes one user turn.
fn chat_prompt(tokenizer: &Tokenizer, messages: &[(String, String)]) -> Result<String, String> {
    let (system, user): (Vec<_>, Vec<_>) = messages.iter().partition(|(role, _)| role == "system");
    let [(_, user)] = user.as_slice() else {
        return Err(format!(
            "chat takes one user message (and optionally one system message), not {} messages",
            messages.len()
        ));
    };
    if !messages
        .iter()
        .all(|(role, _)| role == "system" || role == "user")
    {
        return Err("chat messages' roles are \"system\" and \"user\"".into());
    }
    let prompt = tokenizer.chat_prompt(user).map_err(|e| e.to_string())?;
    Ok(match system.as_slice() {
        [] => prompt,
        [(_, system)] => {
            // Replace the template's default system turn, if it writes one, with the task's.
            let own = format!("<|im_start|>system\n{system}<|im_end|>\n");
            let user_turn = prompt.find("<|im_start|>user").unwrap_or(0);
            format!("{own}{}", &prompt[user_turn..])
        }
        _ => return Err("chat takes at most one system message".into()),
    })
}

/// Opens a model: a file's is shared with every task that has it open.
fn open(source: &LlmSource) -> Result<Arc<Loaded>, String> {
    match source {
        LlmSource::Bytes(bytes) => {
            let gguf = Gguf::from_bytes(bytes.as_ref().clone()).map_err(|e| e.to_string())?;
            loaded(gguf).map(Arc::new)
        }
        LlmSource::File(path) => {
            let mut models = file_models().lock().unwrap_or_else(|p| p.into_inner());
            if let Some(model) = models.get(path).and_then(Weak::upgrade) {
                return Ok(model);
            }
            let gguf = Gguf::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let model = Arc::new(loaded(gguf)?);
            models.retain(|_, m| m.strong_count() > 0);
            models.insert(path.clone(), Arc::downgrade(&model));
            Ok(model)
        }
    }
}

fn loaded(gguf: Gguf) -> Result<Loaded, String> {
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| e.to_string())?;
    let model = LlamaModel::from_gguf(gguf).map_err(|e| e.to_string())?;
    Ok(Loaded {
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
    })
}

/// The name `walle.llm.load` knows a bundled model by: its file name without `.gguf`.
pub fn llm_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".gguf").unwrap_or(file)
}
