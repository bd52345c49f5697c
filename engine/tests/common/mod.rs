//! Building ONNX models in Rust for the engine's integration tests: attributes, inputs and the
//! model bytes. (Each test binary uses some of them.)
#![allow(dead_code)]

use prost::Message;
use walle_engine::onnx::pb;

pub const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;
pub const INT64: i32 = pb::tensor_proto::DataType::Int64 as i32;

pub fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn ints_attr(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn float_attr(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

pub fn string_attr(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The bytes of a one-graph model of the default domain at `opset`.
pub fn model_bytes(
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    initializers: Vec<pb::TensorProto>,
    outputs: &[&str],
    opset: i64,
) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: initializers,
            input: inputs,
            output: outputs
                .iter()
                .map(|o| pb::ValueInfoProto {
                    name: o.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
