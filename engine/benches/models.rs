//! Latency of the engine on the ONNX light models (random weights, as prepared by
//! `bench/onnx_conformance.py`; run the engine's conformance test once to create them).
//!
//!     cargo bench -p walle-engine --bench models -- [MODEL_SUBSTRING] [RUNS]
//!
//! Prints the median latency per model at 1 and 2 threads. The peer columns (ONNX Runtime and
//! tract in the same run) are issue 4's next step.

use std::path::PathBuf;
use std::time::Instant;

use prost::Message;
use walle_engine::onnx::pb;
use walle_engine::{Engine, Tensor, Value};

fn cases() -> Option<PathBuf> {
    let root = PathBuf::from(std::env::var("HOME").ok()?).join(".cache/walle-onnx-cases");
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("light-random")))
        .find(|p| p.is_dir())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let filter = args.first().cloned().unwrap_or_default();
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(10);
    let Some(root) = cases() else {
        eprintln!(
            "no prepared cases: run `cargo nextest run -p walle-engine --test conformance` first"
        );
        std::process::exit(1);
    };
    let mut models: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(&filter))
        .collect();
    models.sort();
    println!("| model | walle 1 thread (ms) | walle 2 threads (ms) |\n|---|---|---|");
    for dir in models {
        let session = Engine::load_file(&dir.join("model.onnx")).unwrap();
        let bytes = std::fs::read(dir.join("input_0.pb")).unwrap();
        let proto = pb::TensorProto::decode(bytes.as_slice()).unwrap();
        let Value::F32(input) = walle_engine::onnx::tensor_value(&proto, None).unwrap() else {
            panic!("float input expected");
        };
        let name = session.inputs()[0].name.clone();
        let mut medians = Vec::new();
        for threads in [1, 2] {
            let session = session.clone().with_threads(threads);
            let run = |x: Tensor| session.run(vec![(name.clone(), x)]).unwrap();
            run(input.clone());
            let mut times: Vec<f64> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    run(input.clone());
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            medians.push(times[times.len() / 2]);
        }
        let model = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("light_", "");
        println!("| {model} | {:.1} | {:.1} |", medians[0], medians[1]);
    }
}
