//! Latency of Walle's engine, ONNX Runtime and tract on the ONNX light models (random weights,
//! as `bench/onnx_conformance.py` prepares them), same inputs, one run: medians and ratios at
//! 1 and 2 threads. tract runs single-threaded (it has no intra-op threading), so its figure
//! stands in both columns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use walle_engine::onnx::pb;
use walle_engine::ops::packed::Isa;
use walle_engine::{Engine, Value};

fn cases() -> PathBuf {
    let root =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/walle-onnx-cases");
    std::fs::read_dir(&root)
        .ok()
        .and_then(|dirs| dirs.filter_map(|e| e.ok().map(|e| e.path().join("light-random"))).find(|p| p.is_dir()))
        .unwrap_or_else(|| {
            eprintln!("no prepared cases in {}: run `cargo nextest run -p walle-engine --test conformance` first", root.display());
            std::process::exit(1)
        })
}

/// The CPU and the instruction set Walle's own kernels run on: AVX-512 (packed, implicit,
/// blocked Winograd, vectorised depthwise), AVX2 (packed and implicit) or neither (the gemm
/// crate and portable kernels); `WALLE_ENGINE_ISA` caps it. A table is read against the host
/// it came from.
fn cpu_line() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let has = |isa: Isa| if isa.supported() { "yes" } else { "no" };
    format!(
        "CPU: {model}, {cores} logical cores, AVX-512 {}, AVX2 {}; Walle's kernels: {}",
        has(Isa::Avx512),
        has(Isa::Avx2),
        Isa::detect().map_or("portable (no AVX2)".to_owned(), |isa| format!("{isa:?}"))
    )
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

struct Input {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn input(dir: &Path) -> Input {
    let session = Engine::load_file(&dir.join("model.onnx")).unwrap();
    let bytes = std::fs::read(dir.join("input_0.pb")).unwrap();
    let proto = pb::TensorProto::decode(bytes.as_slice()).unwrap();
    let Value::F32(t) = walle_engine::onnx::tensor_value(&proto, None).unwrap() else {
        panic!("float input expected")
    };
    Input {
        name: session.inputs()[0].name.clone(),
        shape: t.shape().to_vec(),
        data: t.into_data(),
    }
}

/// Walle's median ms, its GFLOP/s (2 FLOPs per multiply-add), and the search time at load.
fn walle(dir: &Path, x: &Input, threads: usize, runs: usize) -> (f64, f64, f64) {
    let options = walle_engine::Options {
        threads,
        ..Default::default()
    };
    let session = Engine::load_file_with(&dir.join("model.onnx"), &options).unwrap();
    let ms = time(runs, || {
        let t = walle_engine::Tensor::new(x.shape.clone(), x.data.clone()).unwrap();
        session.run(vec![(x.name.clone(), t)]).unwrap();
    });
    let gflops = 2.0 * session.graph().multiply_adds() as f64 / (ms * 1e6);
    (ms, gflops, session.search_report().seconds * 1e3)
}

fn onnx_runtime(
    env: &ort::environment::Environment,
    dir: &Path,
    x: &Input,
    threads: usize,
    runs: usize,
) -> f64 {
    let mut session = ort::session::Session::builder(env)
        .unwrap()
        .with_intra_threads(threads)
        .unwrap()
        .commit_from_file(dir.join("model.onnx"))
        .unwrap();
    time(runs, || {
        let shape: Vec<i64> = x.shape.iter().map(|&d| d as i64).collect();
        let value = ort::value::Tensor::from_array((shape, x.data.clone())).unwrap();
        session.run(ort::inputs![x.name.as_str() => value]).unwrap();
    })
}

fn tract(dir: &Path, x: &Input, runs: usize) -> f64 {
    use tract_onnx::prelude::*;
    let model = tract_onnx::onnx()
        .model_for_path(dir.join("model.onnx"))
        .unwrap()
        .with_input_fact(0, f32::fact(&x.shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    time(runs, || {
        let t = tract_ndarray::ArrayD::from_shape_vec(x.shape.clone(), x.data.clone()).unwrap();
        model.run(tvec!(Tensor::from(t).into())).unwrap();
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.first().cloned().unwrap_or_default();
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(10);
    let mut models: Vec<PathBuf> = std::fs::read_dir(cases())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(&filter))
        .collect();
    models.sort();
    println!("{}", cpu_line());
    println!("median ms of {runs} runs (ratio = walle / peer; < 1 is faster)");
    println!(
        "| model | threads | walle | ONNX Runtime | tract | walle/ORT | walle/tract | walle GFLOP/s | walle search ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let env = ort::init()
        .build()
        .expect("ONNX Runtime (ORT_DYLIB_PATH) did not load");
    for dir in models {
        let name = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("light_", "");
        let x = input(&dir);
        let tract_ms = tract(&dir, &x, runs);
        for threads in [1, 2] {
            let (ours, gflops, search_ms) = walle(&dir, &x, threads, runs);
            let ort_ms = onnx_runtime(&env, &dir, &x, threads, runs);
            println!(
                "| {name} | {threads} | {ours:.1} | {ort_ms:.1} | {tract_ms:.1} | {:.2} | {:.2} | {gflops:.0} | {search_ms:.0} |",
                ours / ort_ms,
                ours / tract_ms
            );
        }
    }
}
