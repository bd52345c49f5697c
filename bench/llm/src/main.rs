//! The Rust half of the cross-system LLM bench (`bench/llm/run.sh`). Each subcommand runs in a
//! process of its own, so its peak memory is its own, and prints one JSON object per figure:
//!
//! - `tokens MODEL TEXT OUT`: the first 4,096 tokens of the English text `TEXT` under the
//!   model's tokenizer (ours), one id per line, the prompt every system is given; and the
//!   bytes a decoded token reads (weights, KV cache per position);
//! - `bandwidth THREADS`: this machine's memory read bandwidth, a sum of u64s over a 1 GiB
//!   buffer split over `THREADS` threads (median of 5 passes);
//! - `ours MODEL TOKENS THREADS` / `candle MODEL TOKENS THREADS`: the protocol below on
//!   Walle's engine or on candle's quantized llama (`candle-transformers` 0.11).
//!
//! The protocol (`llama_cpp.py` runs the same on llama.cpp): prefill of the first 128 and
//! 1,024 tokens (one forward pass each from an empty cache, median of 3), then decode at
//! context 128, 1,024 and 4,096: the first `C − 64` tokens are prefilled untimed, and 64 tokens
//! are decoded greedily one at a time through the cache (tokens/s over the 64). Then the
//! process's peak resident memory (`VmHWM`), which includes the mapped model file's pages.

use std::fs;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const PREFILLS: [usize; 2] = [128, 1024];
const CONTEXTS: [usize; 3] = [128, 1024, 4096];
const DECODED: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("argument {i} missing (see the module doc)"))
    };
    match arg(0)? {
        "tokens" => tokens(arg(1)?, arg(2)?, arg(3)?),
        "bandwidth" => bandwidth(arg(1)?.parse()?),
        "ours" => {
            let threads: usize = arg(3)?.parse()?;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let prompt = read_tokens(arg(2)?)?;
            pool.install(|| run("ours", threads, &prompt, Ours::load(arg(1)?)?))
        }
        "candle" => {
            let threads: usize = arg(3)?.parse()?;
            if std::env::var("RAYON_NUM_THREADS").ok() != Some(threads.to_string()) {
                bail!("run candle with RAYON_NUM_THREADS={threads}: its kernels use that pool");
            }
            let prompt = read_tokens(arg(2)?)?;
            run("candle", threads, &prompt, Candle::load(arg(1)?)?)
        }
        other => bail!("unknown subcommand {other}"),
    }
}

fn tokens(model: &str, text: &str, out: &str) -> Result<()> {
    use walle_engine::llm::{Gguf, LlamaModel, Specials, Tokenizer};
    let gguf = Gguf::open(model.as_ref())?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let model = LlamaModel::from_gguf(gguf)?;
    let p = model.params();
    // Per decoded token: every weight matrix once (the tied embedding as the output layer),
    // and each cached position's keys and values in f16.
    println!(
        r#"{{"system":"model","weight_bytes":{},"kv_bytes_per_position":{}}}"#,
        model.weight_bytes(),
        p.block_count * 2 * p.head_count_kv * p.head_dim() * 2
    );
    let text = fs::read_to_string(text)?;
    let mut ids = tokenizer.encode(&text, Specials::AsText);
    if ids.len() < 4096 {
        bail!("the text makes {} tokens, fewer than 4096", ids.len());
    }
    ids.truncate(4096);
    let lines: Vec<String> = ids.iter().map(u32::to_string).collect();
    fs::write(out, lines.join("\n") + "\n")?;
    Ok(())
}

fn read_tokens(path: &str) -> Result<Vec<u32>> {
    let ids = fs::read_to_string(path)?
        .lines()
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()?;
    if ids.len() < 4096 {
        bail!("{path}: {} tokens, fewer than 4096", ids.len());
    }
    Ok(ids)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bandwidth(threads: usize) -> Result<()> {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let data = vec![1u64; 1 << 27];
    let mut times = Vec::new();
    for pass in 0..6 {
        let start = Instant::now();
        let sum: u64 = pool.install(|| {
            data.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                .sum()
        });
        std::hint::black_box(sum);
        // The first pass also faults the pages in on some kernels: not timed.
        if pass > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let gbs = (data.len() * 8) as f64 / median(times) / 1e9;
    println!(r#"{{"system":"bandwidth","threads":{threads},"gb_s":{gbs:.2}}}"#);
    Ok(())
}

/// A model under test: a conversation's state and one forward pass that returns the last
/// position's logits.
trait Lm {
    fn reset(&mut self) -> Result<()>;
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    fn info(&self) -> String;
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn run(system: &str, threads: usize, prompt: &[u32], mut lm: impl Lm) -> Result<()> {
    // A slow peer gets a shorter protocol: one run per prefill, no figure past `max` tokens.
    let env = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (max, runs) = (
        env("WALLE_LLM_BENCH_MAX", 4096),
        env("WALLE_LLM_BENCH_RUNS", 3),
    );
    let info = lm.info().replace('"', "'");
    let line = |metric: &str, n: usize, seconds: f64, tokens: usize| {
        println!(
            r#"{{"system":"{system}","threads":{threads},"metric":"{metric}","n":{n},"tok_s":{:.2},"info":"{info}"}}"#,
            tokens as f64 / seconds,
        );
    };
    // Warm-up: the weights into the page cache and the kernels' first touch.
    lm.reset()?;
    lm.forward(&prompt[..16])?;
    for n in PREFILLS.into_iter().filter(|&n| n <= max) {
        let mut times = Vec::new();
        for _ in 0..runs {
            lm.reset()?;
            let start = Instant::now();
            std::hint::black_box(lm.forward(&prompt[..n])?);
            times.push(start.elapsed().as_secs_f64());
        }
        line("prefill", n, median(times), n);
    }
    for c in CONTEXTS.into_iter().filter(|&c| c <= max) {
        lm.reset()?;
        let mut logits = Vec::new();
        for chunk in prompt[..c - DECODED].chunks(1024) {
            logits = lm.forward(chunk)?;
        }
        let start = Instant::now();
        for _ in 0..DECODED {
            let next = argmax(&logits);
            logits = lm.forward(&[next])?;
        }
        line("decode", c, start.elapsed().as_secs_f64(), DECODED);
    }
    let status = fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        r#"{{"system":"{system}","threads":{threads},"metric":"peak_rss_mb","value":{:.1}}}"#,
        hwm / 1024.0
    );
    Ok(())
}

struct Ours {
    model: Arc<walle_engine::llm::LlamaModel>,
    cache: walle_engine::llm::KvCache,
}

impl Ours {
    fn load(path: &str) -> Result<Ours> {
        use walle_engine::llm::{KvPrecision, LlamaModel};
        let model = Arc::new(LlamaModel::open(path.as_ref())?);
        let cache = model.new_cache(KvPrecision::F16, 4096);
        Ok(Ours { model, cache })
    }
}

impl Lm for Ours {
    fn reset(&mut self) -> Result<()> {
        self.cache = self
            .model
            .new_cache(walle_engine::llm::KvPrecision::F16, 4096);
        Ok(())
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self
            .model
            .forward(&mut self.cache, tokens, walle_engine::llm::Logits::Last)?)
    }

    fn info(&self) -> String {
        format!(
            "{:.1} MB of weights, kernel {:?}",
            self.model.weight_bytes() as f64 / 1e6,
            self.model.kernel()
        )
    }
}

struct Candle {
    model: candle_transformers::models::quantized_llama::ModelWeights,
    position: usize,
}

impl Candle {
    fn load(path: &str) -> Result<Candle> {
        use candle_core::quantized::gguf_file;
        let mut file = fs::File::open(path)?;
        let content = gguf_file::Content::read(&mut file)?;
        let model = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
            content,
            &mut file,
            &candle_core::Device::Cpu,
        )?;
        Ok(Candle { model, position: 0 })
    }
}

impl Lm for Candle {
    fn reset(&mut self) -> Result<()> {
        self.model.clear_kv_cache();
        self.position = 0;
        Ok(())
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let x = candle_core::Tensor::new(tokens, &candle_core::Device::Cpu)?.unsqueeze(0)?;
        let logits = self.model.forward(&x, self.position)?;
        self.position += tokens.len();
        Ok(logits.squeeze(0)?.to_vec1()?)
    }

    fn info(&self) -> String {
        format!(
            "candle-transformers 0.11.1 quantized_llama, avx {}, f16c {}",
            candle_core::utils::with_avx(),
            candle_core::utils::with_f16c()
        )
    }
}
