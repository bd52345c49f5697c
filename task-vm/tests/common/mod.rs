//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use prost::Message;
use serde_json::{Value, json};
use walle_engine::onnx::pb;
use walle_vm::{Limits, RunOutput, TaskCode, TaskModule, VmError, VmPool};

/// How long a test waits for something that should take well under a second.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A task whose entry script is `source` with handler `run`, under `limits`.
pub fn task(key: &str, source: &str, limits: Limits) -> TaskCode {
    TaskCode::python(key, source, limits)
}

/// A task whose handler body is `body` (indented by the caller with four spaces per line).
pub fn handler(key: &str, body: &str, limits: Limits) -> TaskCode {
    task(key, &format!("def run(ctx):\n{body}\n"), limits)
}

/// Limits with a short deadline, so runaway tests end quickly.
pub fn quick() -> Limits {
    Limits {
        deadline: Duration::from_millis(500),
        ..Limits::default()
    }
}

/// Adds a bundled module.
pub fn with_module(mut code: TaskCode, name: &str, path: &str, source: &str) -> TaskCode {
    code.modules.push(TaskModule {
        name: name.into(),
        path: path.into(),
        source: source.into(),
    });
    code
}

/// Starts a run on another thread; the answer arrives on the returned channel.
pub fn spawn_run(pool: &Arc<VmPool>, key: &str) -> Receiver<Result<RunOutput, VmError>> {
    let (tx, rx) = channel();
    let pool = pool.clone();
    let key = key.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(pool.run(&key, json!(null)));
    });
    rx
}

/// Waits (generously) for a run started with [`spawn_run`].
pub fn wait(rx: &Receiver<Result<RunOutput, VmError>>) -> Result<RunOutput, VmError> {
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("run did not finish within {PATIENCE:?}"))
}

/// Runs and returns the records, failing the test on error.
pub fn records(pool: &VmPool, key: &str, context: Value) -> Vec<Value> {
    match pool.run(key, context) {
        Ok(out) => out.records,
        Err(e) => panic!("run of {key} failed: {e}"),
    }
}

/// A float graph input `name` of fixed `dims`.
pub fn float_input(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node `op(inputs) -> output`, named after its output.
pub fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// The bytes of an opset-13 model of `nodes` with one float input and one output.
pub fn onnx_model(
    nodes: Vec<pb::NodeProto>,
    input: pb::ValueInfoProto,
    initializers: Vec<pb::TensorProto>,
    output: &str,
) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "model".into(),
            node: nodes,
            initializer: initializers,
            input: vec![input],
            output: vec![pb::ValueInfoProto {
                name: output.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
