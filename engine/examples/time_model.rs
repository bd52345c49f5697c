//! Times one model on the engine alone (for profiling):
//! `cargo run --release -p walle-engine --example time_model -- MODEL.onnx INPUT.pb [RUNS]
//! [THREADS] [measure|cost-model]`.

use std::time::Instant;

use prost::Message;
use walle_engine::onnx::{pb, tensor_value};
use walle_engine::{Engine, Options, Search, Session, Tensor, Value};

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
        on_calling_thread: false,
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
    println!(
        "choices: {chosen:?}; concats written in place: {}",
        session.in_place_concats()
    );
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
    if std::env::var_os("WALLE_PROFILE").is_some() {
        print_profile(&session, &name, &x, runs)?;
    }
    println!(
        "median of {runs} runs on {threads} thread(s): {:.2} ms (fastest {:.2} ms)",
        times[runs / 2],
        times[0]
    );
    Ok(())
}

/// With `WALLE_PROFILE` set: each node's median time over `runs` profiled runs, slowest first,
/// and the total per op.
fn print_profile(
    session: &Session,
    name: &str,
    x: &Tensor,
    runs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut per_node: Vec<Vec<f64>> = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..runs {
        let profiled = session.run_profiled(vec![(name.to_owned(), Value::F32(x.clone()))])?;
        per_node.resize(profiled.nodes.len(), Vec::new());
        labels.clear();
        for (times, node) in per_node.iter_mut().zip(&profiled.nodes) {
            times.push(node.seconds * 1e3);
            let algorithm = node
                .algorithm
                .map(|c| format!(" {:?}/{:?}", c.algorithm, c.threads));
            labels.push(format!(
                "{} {}{}",
                node.op,
                node.node,
                algorithm.unwrap_or_default()
            ));
        }
    }
    let mut medians: Vec<(f64, &String)> = per_node
        .iter_mut()
        .map(|times| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        })
        .zip(&labels)
        .collect();
    let mut per_op: std::collections::BTreeMap<&str, f64> = Default::default();
    for (ms, label) in &medians {
        *per_op
            .entry(label.split(' ').next().unwrap_or(""))
            .or_default() += ms;
    }
    medians.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!(
        "per node (median ms, slowest first; sum {:.2} ms):",
        medians.iter().map(|m| m.0).sum::<f64>()
    );
    for (ms, label) in &medians {
        println!("  {ms:8.3}  {label}");
    }
    println!("per op: {per_op:.2?}");
    Ok(())
}
