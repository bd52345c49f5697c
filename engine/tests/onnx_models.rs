//! Models built with the ONNX protobuf types, encoded to bytes and loaded like a file from disk:
//! results against a plain Rust computation, and every load-time and run-time error.

use prost::Message;
use walle_engine::onnx::pb;
use walle_engine::{Engine, LoadError, RunError, Tensor};

mod common;

use common::{FLOAT, INT64, int_attr, ints_attr, model_bytes};

fn floats(name: &str, dims: &[i64], values: &[f32], raw: bool) -> pb::TensorProto {
    let mut t = pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        ..Default::default()
    };
    if raw {
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    } else {
        t.float_data = values.to_vec();
    }
    t
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn tensor_input(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(if d < 0 {
                                dimension::Value::DimParam("batch".into())
                            } else {
                                dimension::Value::DimValue(d)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(nodes: Vec<pb::NodeProto>, initializers: Vec<pb::TensorProto>, opset: i64) -> Vec<u8> {
    let inputs = vec![tensor_input("x", &[-1, 4])];
    model_bytes(nodes, inputs, initializers, &["y"], opset)
}

fn seeded(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// A small model and the weights it holds.
struct Mlp {
    bytes: Vec<u8>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

/// x[b,4] → Gemm(W1ᵀ, b1) → Relu → MatMul(W2) → Add(b2) → Reshape(b,3) → Softmax.
fn mlp() -> Mlp {
    let (w1, b1, w2, b2) = (seeded(32, 1), seeded(8, 2), seeded(24, 3), seeded(3, 4));
    let mut gemm = node("Gemm", "fc1", &["x", "w1", "b1"], &["h"]);
    gemm.attribute.push(int_attr("transB", 1));
    let nodes = vec![
        gemm,
        node("Relu", "relu", &["h"], &["hr"]),
        node("MatMul", "fc2", &["hr", "w2"], &["z"]),
        node("Add", "bias", &["z", "b2"], &["zb"]),
        node("Reshape", "reshape", &["zb", "shape"], &["zr"]),
        node("Softmax", "softmax", &["zr"], &["y"]),
    ];
    let shape = pb::TensorProto {
        name: "shape".into(),
        dims: vec![2],
        data_type: INT64,
        int64_data: vec![0, -1],
        ..Default::default()
    };
    let initializers = vec![
        floats("w1", &[8, 4], &w1, true),
        floats("b1", &[8], &b1, false),
        floats("w2", &[8, 3], &w2, true),
        floats("b2", &[3], &b2, false),
        shape,
    ];
    Mlp {
        bytes: model(nodes, initializers, 13),
        w1,
        b1,
        w2,
        b2,
    }
}

#[test]
fn an_mlp_matches_a_plain_computation() {
    let Mlp {
        bytes,
        w1,
        b1,
        w2,
        b2,
    } = mlp();
    let session = Engine::load(&bytes).unwrap();
    assert_eq!(session.inputs()[0].name, "x");
    assert_eq!(session.outputs(), ["y"]);
    let x = seeded(8, 9);
    let out = session
        .run(vec![(
            "x".into(),
            Tensor::new(vec![2, 4], x.clone()).unwrap(),
        )])
        .unwrap();
    let y = &out[0].1;
    assert_eq!(y.shape(), [2, 3]);
    for row in 0..2 {
        let h: Vec<f32> = (0..8)
            .map(|j| {
                let s: f32 = (0..4).map(|k| x[row * 4 + k] * w1[j * 4 + k]).sum();
                (s + b1[j]).max(0.0)
            })
            .collect();
        let z: Vec<f32> = (0..3)
            .map(|c| (0..8).map(|j| h[j] * w2[j * 3 + c]).sum::<f32>() + b2[c])
            .collect();
        let total: f32 = z.iter().map(|v| v.exp()).sum();
        for (c, zc) in z.iter().enumerate() {
            let expected = zc.exp() / total;
            let got = y.data()[row * 3 + c];
            assert!(
                (got - expected).abs() < 1e-5,
                "row {row} class {c}: {got} vs {expected}"
            );
        }
    }
}

#[test]
fn load_errors_name_what_and_where() {
    let conv = model(
        vec![node("NonMaxSuppression", "nms1", &["x", "w"], &["y"])],
        vec![floats("w", &[1], &[1.0], false)],
        13,
    );
    assert_eq!(
        Engine::load(&conv).unwrap_err().to_string(),
        "unsupported op NonMaxSuppression in node \"nms1\" (opset 13)"
    );
    let dangling = model(vec![node("Relu", "r", &["nowhere"], &["y"])], vec![], 13);
    assert!(matches!(
        Engine::load(&dangling).unwrap_err(),
        LoadError::UnknownValue { ref node, ref value } if node == "r" && value == "nowhere"
    ));
    assert!(matches!(
        Engine::load(&[0xff, 0x01, 0x02]).unwrap_err(),
        LoadError::Decode(_)
    ));
    let bytes = mlp().bytes;
    assert!(
        Engine::load(&bytes[..bytes.len() / 2]).is_err(),
        "truncated model loaded"
    );
    assert_eq!(
        Engine::load(&model(vec![], vec![], 3)).unwrap_err(),
        LoadError::UnsupportedOpset(3)
    );
    let short = model(
        vec![node("Relu", "r", &["w"], &["y"])],
        vec![floats("w", &[2, 2], &[1.0, 2.0, 3.0], false)],
        13,
    );
    assert!(
        matches!(Engine::load(&short).unwrap_err(), LoadError::BadTensor { ref name, .. } if name == "w")
    );
}

#[test]
fn run_errors_name_the_input_or_node() {
    let bytes = mlp().bytes;
    let session = Engine::load(&bytes).unwrap();
    assert_eq!(
        session.run(vec![]).unwrap_err(),
        RunError::MissingInput("x".into())
    );
    let wrong = session
        .run(vec![("x".into(), Tensor::zeros(vec![2, 5]))])
        .unwrap_err();
    assert!(
        matches!(wrong, RunError::WrongShape { ref name, .. } if name == "x"),
        "{wrong}"
    );
    let extra = session
        .run(vec![
            ("x".into(), Tensor::zeros(vec![1, 4])),
            ("z".into(), Tensor::zeros(vec![1])),
        ])
        .unwrap_err();
    assert!(matches!(extra, RunError::UnknownInput(ref n, _) if n == "z"));
}

#[test]
fn external_data_is_read_from_beside_the_model_and_never_outside() {
    let dir = tempfile::tempdir().unwrap();
    let weights = seeded(16, 5);
    let mut blob = vec![0u8; 8];
    blob.extend(weights.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("weights.bin"), &blob).unwrap();
    let external = |location: &str| pb::TensorProto {
        name: "w".into(),
        dims: vec![4, 4],
        data_type: FLOAT,
        data_location: pb::tensor_proto::DataLocation::External as i32,
        external_data: [("location", location), ("offset", "8"), ("length", "64")]
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    };
    let bytes = model(
        vec![node("MatMul", "mm", &["x", "w"], &["y"])],
        vec![external("weights.bin")],
        13,
    );
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let session = Engine::load_file(&path).unwrap();
    let x = vec![1.0, 0.0, 0.0, 0.0];
    let y = session
        .run(vec![("x".into(), Tensor::new(vec![1, 4], x).unwrap())])
        .unwrap();
    assert_eq!(
        y[0].1.data(),
        &weights[..4],
        "row 0 of the external weights"
    );
    assert!(matches!(
        Engine::load(&bytes).unwrap_err(),
        LoadError::ExternalData { .. }
    ));
    let escaping = model(
        vec![node("MatMul", "mm", &["x", "w"], &["y"])],
        vec![external("../weights.bin")],
        13,
    );
    std::fs::write(&path, &escaping).unwrap();
    let err = Engine::load_file(&path).unwrap_err();
    assert!(
        err.to_string().contains("not a plain relative path"),
        "{err}"
    );
}

#[test]
fn constant_subgraphs_are_folded_at_load_and_dead_nodes_dropped() {
    let shape = pb::TensorProto {
        name: "w_shape".into(),
        dims: vec![2],
        data_type: INT64,
        int64_data: vec![4, 3],
        ..Default::default()
    };
    let mut fill = node("ConstantOfShape", "fill", &["w_shape"], &["w"]);
    fill.attribute.push(pb::AttributeProto {
        name: "value".into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(floats("", &[1], &[0.5], false)),
        ..Default::default()
    });
    let nodes = vec![
        fill,
        node("MatMul", "mm", &["x", "w"], &["y"]),
        node("Relu", "unused", &["x"], &["dead"]),
    ];
    let session = Engine::load(&model(nodes, vec![shape], 9)).unwrap();
    let ops: Vec<&str> = session
        .graph()
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(
        ops,
        ["mm"],
        "ConstantOfShape folded, the unused Relu dropped"
    );
    let x = Tensor::new(vec![1, 4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let y = session.run(vec![("x".into(), x)]).unwrap();
    assert_eq!(y[0].1.data(), [5.0, 5.0, 5.0]);
}

#[test]
fn batch_norm_folds_into_conv_and_relu_fuses_without_changing_results() {
    use walle_engine::ops::conv::{Window, conv};
    use walle_engine::ops::nn::batch_norm;
    let (w, b) = (seeded(2 * 3 * 9, 11), seeded(2, 12));
    let stats = [seeded(2, 13), seeded(2, 14), seeded(2, 15)];
    let var: Vec<f32> = seeded(2, 16).iter().map(|v| v.abs() + 0.5).collect();
    let mut conv_node = node("Conv", "conv", &["x", "w", "b"], &["c"]);
    conv_node.attribute.push(pb::AttributeProto {
        name: "pads".into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: vec![1, 1, 1, 1],
        ..Default::default()
    });
    let nodes = vec![
        conv_node,
        node(
            "BatchNormalization",
            "bn",
            &["c", "scale", "shift", "mean", "var"],
            &["n"],
        ),
        node("Relu", "relu", &["n"], &["y"]),
    ];
    let initializers = vec![
        floats("w", &[2, 3, 3, 3], &w, true),
        floats("b", &[2], &b, false),
        floats("scale", &[2], &stats[0], false),
        floats("shift", &[2], &stats[1], false),
        floats("mean", &[2], &stats[2], false),
        floats("var", &[2], &var, false),
    ];
    let mut bytes_model =
        pb::ModelProto::decode(model(nodes, initializers, 13).as_slice()).unwrap();
    bytes_model.graph.as_mut().unwrap().input = vec![tensor_input("x", &[1, 3, 5, 5])];
    let session = Engine::load(&bytes_model.encode_to_vec()).unwrap();
    assert_eq!(
        session.graph().nodes.len(),
        1,
        "Conv, BatchNorm and Relu are one node"
    );

    let x = Tensor::new(vec![1, 3, 5, 5], seeded(75, 17)).unwrap();
    let got = session
        .run(vec![("x".into(), x.clone())])
        .unwrap()
        .remove(0)
        .1;
    let t = |v: &[f32], shape: Vec<usize>| Tensor::new(shape, v.to_vec()).unwrap();
    let window = Window {
        kernel: [3, 3],
        strides: [1, 1],
        dilations: [1, 1],
        pads: [1; 4],
        ceil: false,
    };
    let c = conv(
        &x,
        &t(&w, vec![2, 3, 3, 3]),
        Some(&t(&b, vec![2])),
        &window,
        1,
        1,
    )
    .unwrap();
    let params = [
        t(&stats[0], vec![2]),
        t(&stats[1], vec![2]),
        t(&stats[2], vec![2]),
        t(&var, vec![2]),
    ];
    let n = batch_norm(
        c,
        [&params[0], &params[1], &params[2], &params[3]],
        1e-5,
        false,
    )
    .unwrap();
    for (g, e) in got.data().iter().zip(n.data()) {
        assert!((g - e.max(0.0)).abs() < 1e-5, "{g} vs {}", e.max(0.0));
    }
}

/// `model` with the input `x` declared as `dims` (-1: symbolic).
fn model_with_input(
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    dims: &[i64],
) -> Vec<u8> {
    let mut m = pb::ModelProto::decode(model(nodes, initializers, 13).as_slice()).unwrap();
    m.graph.as_mut().unwrap().input = vec![tensor_input("x", dims)];
    m.encode_to_vec()
}

/// x → Conv(3×3, pad 1, 4 filters) → MaxPool(2×2, stride 2) → Flatten → Gemm(10).
fn small_cnn(dims: &[i64]) -> Vec<u8> {
    let mut conv = node("Conv", "conv", &["x", "w"], &["c"]);
    conv.attribute.push(ints_attr("pads", &[1, 1, 1, 1]));
    let mut pool = node("MaxPool", "pool", &["c"], &["p"]);
    pool.attribute.push(ints_attr("kernel_shape", &[2, 2]));
    pool.attribute.push(ints_attr("strides", &[2, 2]));
    let mut gemm = node("Gemm", "fc", &["f", "fw"], &["y"]);
    gemm.attribute.push(int_attr("transB", 1));
    let nodes = vec![conv, pool, node("Flatten", "flat", &["p"], &["f"]), gemm];
    let inits = vec![
        floats("w", &[4, 3, 3, 3], &seeded(108, 1), true),
        floats("fw", &[10, 64], &seeded(640, 2), true),
    ];
    model_with_input(nodes, inits, dims)
}

#[test]
fn shapes_are_inferred_at_load_and_symbolic_dimensions_stay_unknown() {
    use walle_engine::{DType, ValueInfo};
    let session = Engine::load(&small_cnn(&[2, 3, 8, 8])).unwrap();
    let info = &session.graph().value_info;
    let shape = |name: &str| info[name].shape.clone();
    assert_eq!(shape("c"), Some(vec![2, 4, 8, 8]));
    assert_eq!(shape("p"), Some(vec![2, 4, 4, 4]));
    assert_eq!(shape("f"), Some(vec![2, 64]));
    assert_eq!(
        info["y"],
        ValueInfo {
            dtype: DType::F32,
            shape: Some(vec![2, 10])
        }
    );
    // Conv: 2·4·8·8 outputs of 3·3·3 products; Gemm: 2·10 outputs of 64.
    assert_eq!(
        session.graph().multiply_adds(),
        2 * 4 * 64 * 27 + 2 * 10 * 64
    );
    let outputs = session.output_info();
    assert_eq!(outputs[0].0, "y");
    assert_eq!(
        outputs[0].1.and_then(|i| i.shape.clone()),
        Some(vec![2, 10])
    );
    let symbolic = Engine::load(&small_cnn(&[-1, 3, 8, 8])).unwrap();
    assert_eq!(
        symbolic.graph().multiply_adds(),
        0,
        "no static shapes, nothing counted"
    );
    let info = &symbolic.graph().value_info;
    assert_eq!(info["y"].shape, None);
    let typed = symbolic.output_info()[0]
        .1
        .map(|i| (i.dtype, i.shape.clone()));
    assert_eq!(typed, Some((DType::F32, None)), "typed, shape unknown");
    assert_eq!(info["fw"].shape, Some(vec![10, 64]), "constants are known");
    let shape_const = Engine::load(&mlp().bytes).unwrap();
    assert_eq!(shape_const.graph().value_info["shape"].dtype, DType::I64);
}

#[test]
fn a_provable_shape_mismatch_fails_the_load_naming_the_node() {
    let shape_error = |bytes: Vec<u8>| match Engine::load(&bytes).unwrap_err() {
        LoadError::Shape { node, op, reason } => (node, op, reason),
        other => panic!("not a shape error: {other}"),
    };
    let add = model_with_input(
        vec![node("Add", "add1", &["x", "b"], &["y"])],
        vec![floats("b", &[4, 5], &[0.0; 20], false)],
        &[2, 3],
    );
    let (node_name, op, reason) = shape_error(add);
    assert_eq!((node_name.as_str(), op.as_str()), ("add1", "Binary"));
    assert!(reason.contains("do not broadcast"), "{reason}");

    let conv = model_with_input(
        vec![node("Conv", "conv7", &["x", "w"], &["y"])],
        vec![floats("w", &[2, 4, 1, 1], &[0.0; 8], false)],
        &[1, 3, 5, 5],
    );
    let (node_name, _, reason) = shape_error(conv);
    assert_eq!(node_name, "conv7");
    assert!(reason.contains("3 input channels"), "{reason}");

    let matmul = model_with_input(
        vec![node("MatMul", "mm", &["x", "w"], &["y"])],
        vec![floats("w", &[5, 2], &[0.0; 10], false)],
        &[3, 4],
    );
    let (node_name, _, reason) = shape_error(matmul);
    assert_eq!(node_name, "mm");
    assert!(reason.contains("inner dimensions"), "{reason}");
    let empty_kernel = model_with_input(
        vec![node("Conv", "conv0", &["x", "w"], &["y"])],
        vec![floats("w", &[2, 3, 0, 1], &[], false)],
        &[1, 3, 5, 5],
    );
    assert_eq!(shape_error(empty_kernel).0, "conv0", "refused, not a panic");
    let err = Engine::load(&small_cnn(&[1, 3, 10, 10]))
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("\"fc\"")),
        "100 features reach a Gemm of 64: {err:?}"
    );
}

fn int64s(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: INT64,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn transpose(name: &str, input: &str, output: &str, perm: &[i64]) -> pb::NodeProto {
    let mut n = node("Transpose", name, &[input], &[output]);
    n.attribute.push(ints_attr("perm", perm));
    n
}

/// The loaded graph's ops, in order.
fn ops(session: &walle_engine::Session) -> Vec<&'static str> {
    session.graph().nodes.iter().map(|n| n.op.name()).collect()
}

fn run1(session: &walle_engine::Session, shape: &[usize], x: &[f32]) -> Tensor {
    let x = Tensor::new(shape.to_vec(), x.to_vec()).unwrap();
    session.run(vec![("x".into(), x)]).unwrap().remove(0).1
}

#[test]
fn a_channel_shuffle_is_one_raster_between_its_neighbours() {
    let nodes = vec![
        node("Relu", "in", &["x"], &["r"]),
        node("Reshape", "split_groups", &["r", "grouped"], &["g"]),
        transpose("shuffle", "g", "t", &[0, 2, 1, 3, 4]),
        node("Reshape", "merge_groups", &["t", "flat"], &["s"]),
        node("Relu", "out", &["s"], &["y"]),
    ];
    let inits = vec![
        int64s("grouped", &[1, 2, 3, 4, 5]),
        int64s("flat", &[1, 6, 4, 5]),
    ];
    let session = Engine::load(&model_with_input(nodes, inits, &[1, 6, 4, 5])).unwrap();
    assert_eq!(ops(&session), ["Unary", "Raster", "Unary"]);
    let x = seeded(120, 3);
    let y = run1(&session, &[1, 6, 4, 5], &x);
    assert_eq!(y.shape(), [1, 6, 4, 5]);
    for c in 0..6 {
        // Output channel c = i·2 + g holds input channel g·3 + i.
        let source = (c % 2) * 3 + c / 2;
        for p in 0..20 {
            assert_eq!(
                y.data()[c * 20 + p],
                x[source * 20 + p].max(0.0),
                "channel {c}"
            );
        }
    }
}

#[test]
fn transposes_in_a_row_and_a_slice_of_a_concat_merge() {
    let nodes = vec![
        transpose("t1", "x", "a", &[2, 0, 1]),
        transpose("t2", "a", "y", &[0, 2, 1]),
    ];
    let session = Engine::load(&model_with_input(nodes, vec![], &[2, 3, 4])).unwrap();
    assert_eq!(ops(&session), ["Raster"]);
    let x = seeded(24, 5);
    let y = run1(&session, &[2, 3, 4], &x);
    assert_eq!(y.shape(), [4, 3, 2]);
    for (i, j, k) in (0..24).map(|f| (f / 6, f / 2 % 3, f % 2)) {
        assert_eq!(y.data()[(i * 3 + j) * 2 + k], x[(k * 3 + j) * 4 + i]);
    }

    let mut slice = node(
        "Slice",
        "slice",
        &["c", "starts", "ends", "axes", "steps"],
        &["y"],
    );
    slice.name = "slice".into();
    let nodes = vec![node("Concat", "cat", &["x", "w"], &["c"]), slice];
    let mut cat = nodes;
    cat[0].attribute.push(int_attr("axis", 1));
    let inits = vec![
        floats("w", &[2, 3], &[10.0, 11.0, 12.0, 13.0, 14.0, 15.0], false),
        int64s("starts", &[-1, 5]),
        int64s("ends", &[-2, 1]),
        int64s("axes", &[0, 1]),
        int64s("steps", &[-1, -2]),
    ];
    let session = Engine::load(&model_with_input(cat, inits, &[2, 4])).unwrap();
    assert_eq!(ops(&session), ["Raster"]);
    assert_eq!(session.graph().nodes[0].inputs, ["x", "w"]);
    let y = run1(&session, &[2, 4], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    // Row 1 of [x | w] = [4 5 6 7 13 14 15], columns 5 and 3.
    assert_eq!((y.shape(), y.data()), (&[1, 2][..], &[14.0, 7.0][..]));
}

#[test]
fn views_stay_views_and_splits_become_one_raster_per_part() {
    let session = Engine::load(&small_cnn(&[2, 3, 8, 8])).unwrap();
    assert_eq!(ops(&session), ["Conv", "Pool", "Flatten", "Gemm"]);

    let mut split = node("Split", "split", &["x"], &["a", "b"]);
    split.attribute.push(int_attr("axis", 1));
    let mut m = pb::ModelProto::decode(
        model_with_input(
            vec![split, node("Relu", "r", &["b"], &["y"])],
            vec![],
            &[2, 4],
        )
        .as_slice(),
    )
    .unwrap();
    m.graph.as_mut().unwrap().output.push(pb::ValueInfoProto {
        name: "a".into(),
        ..Default::default()
    });
    let session = Engine::load(&m.encode_to_vec()).unwrap();
    let names: Vec<&str> = session
        .graph()
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["split#0", "split#1", "r"]);
    let x = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0];
    let out = session
        .run(vec![(
            "x".into(),
            Tensor::new(vec![2, 4], x.to_vec()).unwrap(),
        )])
        .unwrap();
    assert_eq!(out[0].1.data(), [3.0, 0.0, 7.0, 0.0]);
    assert_eq!(out[1].1.data(), [1.0, -2.0, 5.0, -6.0]);
}

#[test]
fn layout_ops_with_symbolic_shapes_run_unlowered() {
    let nodes = vec![
        transpose("t", "x", "a", &[1, 0]),
        node("Tile", "tile", &["a", "reps"], &["y"]),
    ];
    let inits = vec![int64s("reps", &[1, 2])];
    let session = Engine::load(&model_with_input(nodes, inits, &[-1, 4])).unwrap();
    assert_eq!(ops(&session), ["Transpose", "Tile"]);
    let y = run1(&session, &[2, 4], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(y.shape(), [4, 4]);
    assert_eq!(&y.data()[..8], [0.0, 4.0, 0.0, 4.0, 1.0, 5.0, 1.0, 5.0]);
}

#[test]
fn huge_layout_outputs_are_refused_at_load() {
    for (op, param) in [
        ("Expand", vec![1 << 40, 2, 4]),
        ("Tile", vec![1 << 35, 1 << 35]),
    ] {
        let bytes = model_with_input(
            vec![node(op, "big", &["x", "p"], &["y"])],
            vec![int64s("p", &param)],
            &[2, 4],
        );
        match Engine::load(&bytes) {
            Err(LoadError::Shape { node, reason, .. }) => {
                assert_eq!(node, "big");
                assert!(
                    reason.contains("too large") || reason.contains("more than"),
                    "{reason}"
                );
            }
            other => panic!("{op}: {:?}", other.err()),
        }
    }
}

/// x[1,16,12,12] → 3×3 Conv (16→16, pad 1) → Relu → depthwise 3×3 Conv → 1×1 Conv (16→8).
fn three_convs(seed: u32) -> (Vec<u8>, [Vec<f32>; 3]) {
    let weights = [
        seeded(16 * 16 * 9, seed),
        seeded(16 * 9, seed + 1),
        seeded(8 * 16, seed + 2),
    ];
    let mut c3 = node("Conv", "c3", &["x", "w3"], &["a"]);
    c3.attribute.push(ints_attr("pads", &[1, 1, 1, 1]));
    let mut dw = node("Conv", "dw", &["r", "wd"], &["d"]);
    dw.attribute.push(ints_attr("pads", &[1, 1, 1, 1]));
    dw.attribute.push(int_attr("group", 16));
    let nodes = vec![
        c3,
        node("Relu", "relu", &["a"], &["r"]),
        dw,
        node("Conv", "pw", &["d", "wp"], &["y"]),
    ];
    let inits = vec![
        floats("w3", &[16, 16, 3, 3], &weights[0], true),
        floats("wd", &[16, 1, 3, 3], &weights[1], true),
        floats("wp", &[8, 16, 1, 1], &weights[2], true),
    ];
    (model_with_input(nodes, inits, &[1, 16, 12, 12]), weights)
}

#[test]
fn the_search_measures_each_convolution_and_caches_its_choices_on_disk() {
    use walle_engine::ops::conv::{Window, conv};
    use walle_engine::ops::winograd::Tile;
    use walle_engine::{Algorithm, Options, Search};
    let (bytes, weights) = three_convs(40);
    let x = Tensor::new(vec![1, 16, 12, 12], seeded(16 * 144, 41)).unwrap();
    let output =
        |s: &walle_engine::Session| s.run(vec![("x".into(), x.clone())]).unwrap()[0].1.clone();

    // The plain computation: im2col convolutions one after the other.
    let window = |k: usize, pad: usize| Window {
        kernel: [k, k],
        strides: [1, 1],
        dilations: [1, 1],
        pads: [pad; 4],
        ceil: false,
    };
    let t = |v: &[f32], shape: Vec<usize>| Tensor::new(shape, v.to_vec()).unwrap();
    let a = conv(
        &x,
        &t(&weights[0], vec![16, 16, 3, 3]),
        None,
        &window(3, 1),
        1,
        1,
    )
    .unwrap();
    let r = Tensor::new(
        a.shape().to_vec(),
        a.data().iter().map(|v| v.max(0.0)).collect(),
    )
    .unwrap();
    let d = conv(
        &r,
        &t(&weights[1], vec![16, 1, 3, 3]),
        None,
        &window(3, 1),
        16,
        1,
    )
    .unwrap();
    let expected = conv(
        &d,
        &t(&weights[2], vec![8, 16, 1, 1]),
        None,
        &window(1, 0),
        1,
        1,
    )
    .unwrap();
    let close = |got: &Tensor, what: &str| {
        assert_eq!(got.shape(), expected.shape());
        for (g, e) in got.data().iter().zip(expected.data()) {
            assert!((g - e).abs() < 1e-3 * (1.0 + e.abs()), "{what}: {g} vs {e}");
        }
    };

    // The cost model measures nothing and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let options = |search| Options {
        threads: 2,
        search,
        cache_dir: Some(dir.path().to_path_buf()),
        on_calling_thread: false,
    };
    let ruled = Engine::load_with(&bytes, &options(Search::CostModel)).unwrap();
    let report = ruled.search_report();
    assert_eq!((report.measured, report.cache_file.clone()), (0, None));
    let algorithms: Vec<Algorithm> = report.choices.iter().map(|(_, c)| c.algorithm).collect();
    assert_eq!(
        algorithms,
        [
            Algorithm::Winograd(Tile::F4),
            Algorithm::Depthwise,
            Algorithm::Gemm
        ]
    );
    close(&output(&ruled), "cost model");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Measuring times every candidate of every convolution and writes the choices.
    let measured = Engine::load_with(&bytes, &options(Search::Measure)).unwrap();
    let first = measured.search_report().clone();
    let names: Vec<&str> = first.choices.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["c3", "dw", "pw"]);
    // Candidates at 2 threads: c3 gemm + 2 Winograd, dw gemm + depthwise, pw gemm, and where
    // the CPU has AVX-512 c3 packed + implicit and pw packed; ×2 threads; each run 4 times (a
    // warm-up and 3 timed rounds).
    let runs = if walle_engine::ops::packed::available() {
        9
    } else {
        6
    } * 2
        * 4;
    assert_eq!((first.measured, first.cached), (runs, 0));
    assert!(first.seconds > 0.0 && first.cache_error.is_none());
    let file = first.cache_file.clone().unwrap();
    assert!(file.is_file(), "{} was not written", file.display());
    close(&output(&measured), "measured choices");

    // The same model on the same device: every choice from the cache, nothing measured.
    let again = Engine::load_with(&bytes, &options(Search::Measure)).unwrap();
    let second = again.search_report();
    assert_eq!((second.measured, second.cached), (0, 3));
    assert_eq!(second.choices, first.choices);
    close(&output(&again), "cached choices");

    // A damaged cache costs a new search, never a failure, and is rewritten.
    std::fs::write(&file, "garbage\nc3\twinograd-f9\tmany\n").unwrap();
    let repaired = Engine::load_with(&bytes, &options(Search::Measure)).unwrap();
    assert_eq!(repaired.search_report().measured, runs);
    let healed = Engine::load_with(&bytes, &options(Search::Measure)).unwrap();
    assert_eq!(healed.search_report().cached, 3);

    // Another thread count measures again, into its own file.
    let one_thread = Options {
        threads: 1,
        ..options(Search::Measure)
    };
    let single = Engine::load_with(&bytes, &one_thread).unwrap();
    assert_eq!(single.search_report().cached, 0);
    assert_ne!(single.search_report().cache_file.as_ref(), Some(&file));

    // Another model gets its own cache file.
    let (other, _) = three_convs(50);
    let other = Engine::load_with(&other, &options(Search::Measure)).unwrap();
    assert_ne!(other.search_report().cache_file.as_ref(), Some(&file));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn a_batch_norm_not_after_a_conv_fuses_its_relu_and_matches_the_formula() {
    let stats = [seeded(3, 21), seeded(3, 22), seeded(3, 23)];
    let var: Vec<f32> = seeded(3, 24).iter().map(|v| v.abs() + 0.5).collect();
    let nodes = vec![
        node(
            "BatchNormalization",
            "bn",
            &["x", "scale", "shift", "mean", "var"],
            &["n"],
        ),
        node("Relu", "relu", &["n"], &["y"]),
    ];
    let initializers = vec![
        floats("scale", &[3], &stats[0], false),
        floats("shift", &[3], &stats[1], false),
        floats("mean", &[3], &stats[2], false),
        floats("var", &[3], &var, false),
    ];
    let session = Engine::load(&model_with_input(nodes, initializers, &[1, 3, 2, 2])).unwrap();
    assert_eq!(ops(&session), ["BatchNormalization"], "the Relu is fused");
    let x = seeded(12, 25);
    let y = run1(&session, &[1, 3, 2, 2], &x);
    for (i, (&got, &v)) in y.data().iter().zip(&x).enumerate() {
        let c = i / 4;
        let expected =
            ((v - stats[2][c]) / (var[c] + 1e-5).sqrt() * stats[0][c] + stats[1][c]).max(0.0);
        assert!((got - expected).abs() < 1e-5, "[{i}] {got} vs {expected}");
    }
}

#[test]
fn a_profiled_run_times_every_node_and_returns_the_same_outputs() {
    use walle_engine::Value;
    let session = Engine::load(&small_cnn(&[2, 3, 8, 8])).unwrap();
    let x = Tensor::new(vec![2, 3, 8, 8], seeded(384, 3)).unwrap();
    let input = || vec![("x".to_string(), Value::F32(x.clone()))];
    let plain = session.run_values(input()).unwrap();
    let profiled = session.run_profiled(input()).unwrap();
    assert_eq!(profiled.outputs, plain);
    let ran: Vec<&str> = session
        .graph()
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    let timed: Vec<&str> = profiled.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(timed, ran, "one entry per node, in the order they ran");
    let conv = &profiled.nodes[0];
    assert_eq!(conv.op, "Conv");
    assert!(conv.algorithm.is_some(), "the search's choice is shown");
    assert!(profiled.nodes.iter().all(|n| n.seconds >= 0.0));
    assert!(
        profiled
            .nodes
            .iter()
            .all(|n| n.op != "Conv" || n.algorithm.is_some())
    );
}

/// A fire module (SqueezeNet's): x[n,8,10,10] → 1×1 Conv s (8→4) + Relu → 1×1 Conv e1 (4→6)
/// and 3×3 Conv e3 (4→5, pad 1) → Concat on channels → y. Also z = Concat(c, d) of two 1×1
/// convolutions (4→3, the same weights) where `c` is used once more: read by a Relu (output
/// v) or, with `c_is_output`, a graph output itself.
fn fire_module(batch: i64, weights: &[Vec<f32>; 4], c_is_output: bool) -> Vec<u8> {
    let mut e3 = node("Conv", "e3", &["s", "w3"], &["b"]);
    e3.attribute.push(ints_attr("pads", &[1, 1, 1, 1]));
    let mut concat = node("Concat", "concat", &["a", "b"], &["y"]);
    concat.attribute.push(int_attr("axis", 1));
    let mut mixed = node("Concat", "mixed", &["c", "d"], &["z"]);
    mixed.attribute.push(int_attr("axis", 1));
    let mut nodes = vec![
        node("Conv", "squeeze", &["x", "ws"], &["q"]),
        node("Relu", "relu", &["q"], &["s"]),
        node("Conv", "e1", &["s", "w1"], &["a"]),
        e3,
        node("Conv", "e1c", &["s", "wb"], &["c"]),
        node("Conv", "e1d", &["s", "wb"], &["d"]),
        concat,
        mixed,
    ];
    let third = if c_is_output {
        "c"
    } else {
        nodes.push(node("Relu", "again", &["c"], &["v"]));
        "v"
    };
    let inits = vec![
        floats("ws", &[4, 8, 1, 1], &weights[0], true),
        floats("w1", &[6, 4, 1, 1], &weights[1], true),
        floats("w3", &[5, 4, 3, 3], &weights[2], true),
        floats("wb", &[3, 4, 1, 1], &weights[3], true),
    ];
    let mut m =
        pb::ModelProto::decode(model_with_input(nodes, inits, &[batch, 8, 10, 10]).as_slice())
            .unwrap();
    let graph = m.graph.as_mut().unwrap();
    graph.output = ["y", "z", third]
        .iter()
        .map(|o| pb::ValueInfoProto {
            name: o.to_string(),
            ..Default::default()
        })
        .collect();
    m.encode_to_vec()
}

/// The fire module's values computed plainly: y, z, c and Relu(c) (see [`fire_module`]).
fn fire_reference(x: &Tensor, weights: &[Vec<f32>; 4]) -> [Tensor; 4] {
    use walle_engine::ops::conv::{Window, conv};
    let relu = |t: &Tensor| {
        let data = t.data().iter().map(|v| v.max(0.0)).collect();
        Tensor::new(t.shape().to_vec(), data).unwrap()
    };
    let conv_with = |x: &Tensor, w: &[f32], m: usize, k: usize| {
        let c = x.shape()[1];
        let weights = Tensor::new(vec![m, c, k, k], w.to_vec()).unwrap();
        let window = Window {
            kernel: [k, k],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [k / 2; 4],
            ceil: false,
        };
        conv(x, &weights, None, &window, 1, 1).unwrap()
    };
    // Channel concat of NCHW tensors, image by image.
    let concat = |parts: &[&Tensor]| {
        let n = parts[0].shape()[0];
        let mut data = Vec::new();
        for image in 0..n {
            for p in parts {
                let len = p.data().len() / n;
                data.extend_from_slice(&p.data()[image * len..(image + 1) * len]);
            }
        }
        let channels = parts.iter().map(|p| p.shape()[1]).sum();
        Tensor::new(vec![n, channels, 10, 10], data).unwrap()
    };
    let s = relu(&conv_with(x, &weights[0], 4, 1));
    let e1 = conv_with(&s, &weights[1], 6, 1);
    let e3 = conv_with(&s, &weights[2], 5, 3);
    let c = conv_with(&s, &weights[3], 3, 1);
    [concat(&[&e1, &e3]), concat(&[&c, &c]), relu(&c), c]
}

#[test]
fn concats_of_convolutions_are_written_in_place_with_every_algorithm() {
    use walle_engine::{Options, Search};
    let weights = [
        seeded(32, 60),
        seeded(24, 61),
        seeded(180, 62),
        seeded(12, 63),
    ];
    for batch in [1, 2] {
        let x = Tensor::new(vec![batch, 8, 10, 10], seeded(batch * 800, 64)).unwrap();
        let [y, z, v, c] = fire_reference(&x, &weights);
        for c_is_output in [false, true] {
            let expected = [&y, &z, if c_is_output { &c } else { &v }];
            let bytes = fire_module(batch as i64, &weights, c_is_output);
            let dir = tempfile::tempdir().unwrap();
            for (search, threads) in [
                (Search::CostModel, 1),
                (Search::CostModel, 2),
                (Search::Measure, 2),
            ] {
                let options = Options {
                    threads,
                    search,
                    cache_dir: Some(dir.path().to_path_buf()),
                    on_calling_thread: false,
                };
                let session = Engine::load_with(&bytes, &options).unwrap();
                // Only the first concat of one image is a plain layout of its inputs, each a
                // convolution's output read by nothing else.
                let in_place = if batch == 1 { 1 } else { 0 };
                assert_eq!(session.in_place_concats(), in_place, "batch {batch}");
                let mut sessions = vec![session];
                // Every algorithm the search may choose, forced through the choices cache (a
                // cached choice that is no candidate for a convolution is measured again).
                if let Some(file) = sessions[0].search_report().cache_file.clone() {
                    let text = std::fs::read_to_string(&file).unwrap();
                    for algorithm in ["gemm", "packed", "implicit", "winograd-f2", "winograd-f4"] {
                        let forced: String = text
                            .lines()
                            .map(|line| {
                                let mut fields: Vec<&str> = line.split('\t').collect();
                                if fields.len() == 3 {
                                    fields[1] = algorithm;
                                }
                                fields.join("\t") + "\n"
                            })
                            .collect();
                        std::fs::write(&file, forced).unwrap();
                        let session = Engine::load_with(&bytes, &options).unwrap();
                        assert_eq!(session.in_place_concats(), in_place);
                        sessions.push(session);
                    }
                }
                for session in &sessions {
                    let outputs = session.run(vec![("x".into(), x.clone())]).unwrap();
                    let choices = &session.search_report().choices;
                    assert_eq!(outputs.len(), 3);
                    for ((name, got), expected) in outputs.iter().zip(expected) {
                        assert_eq!(got.shape(), expected.shape(), "{name}");
                        for (i, (g, e)) in got.data().iter().zip(expected.data()).enumerate() {
                            assert!(
                                (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                                "{name}[{i}] with {choices:?}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
