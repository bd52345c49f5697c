//! The ONNX front end: decodes a model and turns its graph into the engine's [`Graph`].
//!
//! The protobuf types in [`pb`] are generated from `proto/onnx_subset.proto` (ONNX's own field
//! numbers). Loading checks everything a run relies on: the default-domain opset, every node's
//! op and attributes (an op the engine lacks fails here, naming op, node and opset), every
//! initializer's type and size, external data files, and that each value is produced before use.

mod tensors;

pub use tensors::value_of as tensor_value;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message;

use crate::LoadError;
use crate::graph::{DType, Dim, Graph, IoSpec, Node};
use crate::ops::Op;

/// Generated ONNX protobuf messages.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Decodes model bytes into a graph. `base_dir` is where external data files are looked up
/// (`None`: a model that needs them is refused).
pub fn load(bytes: &[u8], base_dir: Option<&Path>) -> Result<Graph, LoadError> {
    let model = pb::ModelProto::decode(bytes)
        .map_err(|e| LoadError::Decode(format!("not an ONNX model: {e}")))?;
    let opset = default_opset(&model)?;
    let graph = model.graph.ok_or(LoadError::NoGraph)?;
    let mut constants = HashMap::new();
    for initializer in &graph.initializer {
        let value = tensors::value_of(initializer, base_dir)?;
        constants.insert(initializer.name.clone(), value);
    }
    let inputs = graph
        .input
        .iter()
        .filter(|i| !constants.contains_key(&i.name))
        .map(io_spec)
        .collect::<Result<Vec<_>, _>>()?;
    let mut nodes = Vec::with_capacity(graph.node.len());
    for (index, node) in graph.node.iter().enumerate() {
        let name = if node.name.is_empty() {
            format!("{}_{index}", node.op_type)
        } else {
            node.name.clone()
        };
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(LoadError::UnsupportedOp {
                op: format!("{}:{}", node.domain, node.op_type),
                node: name,
                opset,
            });
        }
        let op = Op::parse(node, &name, opset, base_dir)?;
        nodes.push(Node {
            name,
            op,
            inputs: node.input.clone(),
            outputs: node.output.clone(),
        });
    }
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    check_dataflow(&inputs, &constants, &nodes, &outputs)?;
    let mut graph = Graph {
        opset,
        inputs,
        outputs,
        constants,
        nodes,
        value_info: HashMap::new(),
    };
    graph.fold_constants()?;
    graph.decompose()?;
    graph.fold_constants()?;
    graph.fuse();
    graph.value_info = graph.infer_shapes()?;
    graph.lower_to_rasters()?;
    Ok(graph)
}

/// The version of the default (`ai.onnx`) operator set the model imports.
fn default_opset(model: &pb::ModelProto) -> Result<i64, LoadError> {
    let version = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| LoadError::Decode("model imports no ai.onnx operator set".into()))?;
    if !(crate::MIN_OPSET..=crate::MAX_OPSET).contains(&version) {
        return Err(LoadError::UnsupportedOpset(version));
    }
    Ok(version)
}

fn io_spec(info: &pb::ValueInfoProto) -> Result<IoSpec, LoadError> {
    use pb::tensor_shape_proto::dimension::Value as D;
    use pb::type_proto::Value as T;
    let Some(T::TensorType(tensor)) = info.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(LoadError::Decode(format!(
            "graph input {:?} is not a tensor",
            info.name
        )));
    };
    let dtype = element_type(tensor.elem_type).ok_or_else(|| LoadError::UnsupportedType {
        name: info.name.clone(),
        data_type: tensor.elem_type,
    })?;
    let dims = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(D::DimValue(v)) if v >= 0 => Dim::Fixed(v as usize),
                    Some(D::DimParam(ref p)) => Dim::Named(p.clone()),
                    _ => Dim::Named(String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(IoSpec {
        name: info.name.clone(),
        dtype,
        dims,
    })
}

/// The engine's element type for an ONNX one: float and double compute as f32, integers and
/// bool as i64 (see [`tensors`]).
fn element_type(elem_type: i32) -> Option<DType> {
    use pb::tensor_proto::DataType as T;
    match T::try_from(elem_type).ok()? {
        T::Float | T::Double => Some(DType::F32),
        T::Int64
        | T::Int32
        | T::Int16
        | T::Int8
        | T::Uint64
        | T::Uint32
        | T::Uint16
        | T::Uint8
        | T::Bool => Some(DType::I64),
        _ => None,
    }
}

/// Every node input is a graph input, a constant or an earlier node's output (ONNX requires
/// topological order), and every graph output is produced.
fn check_dataflow(
    inputs: &[IoSpec],
    constants: &HashMap<String, crate::Value>,
    nodes: &[Node],
    outputs: &[String],
) -> Result<(), LoadError> {
    let mut known: HashSet<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    known.extend(constants.keys().map(String::as_str));
    for node in nodes {
        for input in node.inputs.iter().filter(|i| !i.is_empty()) {
            if !known.contains(input.as_str()) {
                return Err(LoadError::UnknownValue {
                    node: node.name.clone(),
                    value: input.clone(),
                });
            }
        }
        known.extend(node.outputs.iter().map(String::as_str));
    }
    if let Some(missing) = outputs.iter().find(|o| !known.contains(o.as_str())) {
        return Err(LoadError::UnknownValue {
            node: "graph output".into(),
            value: missing.clone(),
        });
    }
    Ok(())
}
