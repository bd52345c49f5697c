//! Times one model on the engine alone (for profiling):
//! `cargo run --release -p walle-engine --example time_model -- MODEL.onnx INPUT.pb [RUNS]
//! [THREADS] [measure|cost-model]`.

use std::time::Instant;

use prost::Message;
use walle_engine::onnx::{pb, tensor_value};
use walle_engine::{Engine, Options, Search, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, input, ..] = args.as_slice() else {
        return Err("usage: time_model MODEL.onnx INPUT.pb [RUNS] [THREADS]".into());
    };
    let runs: usize = args.get(2).map_or(Ok(10), |r| r.parse())?;
    let threads: usize = args.get(3).map_or(Ok(1), |t| t.parse())?;
    let search = match args.get(4).map(String::as_str) {
        None | Some("measure") => Search::Measure,
        Some("cost-model") => Search::CostModel,
        Some(other) => return Err(format!("{other:?}: give measure or cost-model").into()),
    };
    let options = Options {
        threads,
        search,
        cache_dir: None,
    };
    let start = Instant::now();
    let session = Engine::load_file_with(model.as_ref(), &options)?;
    let report = session.search_report();
    println!(
        "load: {:.1} ms, of which search {:.1} ms ({} candidate runs)",
        start.elapsed().as_secs_f64() * 1e3,
        report.seconds * 1e3,
        report.measured
    );
    let mut chosen: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, choice) in &report.choices {
        *chosen
            .entry(format!("{:?}/{:?}", choice.algorithm, choice.threads))
            .or_default() += 1;
    }
    println!("choices: {chosen:?}");
    let proto = pb::TensorProto::decode(std::fs::read(input)?.as_slice())?;
    let Value::F32(x) = tensor_value(&proto, None)? else {
        return Err("the input is not a float tensor".into());
    };
    let name = session.inputs()[0].name.clone();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        session.run(vec![(name.clone(), x.clone())])?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "median of {runs} runs on {threads} thread(s): {:.2} ms",
        times[runs / 2]
    );
    Ok(())
}
