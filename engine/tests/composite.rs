//! Composite ops are lowered to atomic ones at load: after loading, no composite node is left,
//! and the atomic graph matches a plain Rust computation of the op's definition.

use walle_engine::onnx::pb;
use walle_engine::ops::Op;
use walle_engine::{Engine, LoadError, Session, Tensor, Value};

mod common;

use common::{FLOAT, INT64, float_attr, int_attr, ints_attr, model_bytes as model, string_attr};

fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: format!("{op}_node"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// A graph input of `elem_type`; `dims: None` declares no shape.
fn input(name: &str, elem_type: i32, dims: Option<&[i64]>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    let shape = dims.map(|dims| pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                value: Some(dimension::Value::DimValue(d)),
                ..Default::default()
            })
            .collect(),
    });
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn floats(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// Loads a model and checks no composite node survived the load.
fn load_atomic(bytes: &[u8]) -> Session {
    let session = Engine::load(bytes).unwrap();
    for node in &session.graph().nodes {
        assert!(
            !matches!(node.op, Op::Composite(_)),
            "{} is still composite",
            node.name
        );
    }
    session
}

fn xs(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.77).sin() * 3.0).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn erf(x: f64) -> f64 {
    // The series is exact enough for |x| ≤ 3 in f64.
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..60 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn activations_lower_to_atomic_ops_and_follow_their_definitions() {
    type Reference = fn(f32) -> f32;
    let cases: Vec<(&str, Vec<pb::AttributeProto>, Reference)> = vec![
        ("LeakyRelu", vec![float_attr("alpha", 0.1)], |x| {
            if x < 0.0 { 0.1 * x } else { x }
        }),
        ("Elu", vec![], |x| if x < 0.0 { x.exp() - 1.0 } else { x }),
        ("Selu", vec![], |x| {
            1.050_701
                * if x <= 0.0 {
                    1.673_263_2 * (x.exp() - 1.0)
                } else {
                    x
                }
        }),
        ("Celu", vec![float_attr("alpha", 2.0)], |x| {
            x.max(0.0) + (2.0 * ((x / 2.0).exp() - 1.0)).min(0.0)
        }),
        ("HardSigmoid", vec![], |x| (0.2 * x + 0.5).clamp(0.0, 1.0)),
        ("HardSwish", vec![], |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0)),
        ("Softplus", vec![], |x| (1.0 + x.exp()).ln()),
        ("Softsign", vec![], |x| x / (1.0 + x.abs())),
        ("Mish", vec![], |x| x * (1.0 + x.exp()).ln().tanh()),
        ("Gelu", vec![], |x| {
            (0.5 * f64::from(x) * (1.0 + erf(f64::from(x) / 2f64.sqrt()))) as f32
        }),
        ("Gelu", vec![string_attr("approximate", "tanh")], |x| {
            0.5 * x
                * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }),
        ("ThresholdedRelu", vec![float_attr("alpha", 0.5)], |x| {
            if x > 0.5 { x } else { 0.0 }
        }),
        (
            "Shrink",
            vec![float_attr("lambd", 1.0), float_attr("bias", 0.5)],
            |x| {
                if x < -1.0 {
                    x + 0.5
                } else if x > 1.0 {
                    x - 0.5
                } else {
                    0.0
                }
            },
        ),
        ("Swish", vec![float_attr("alpha", 2.0)], |x| {
            x / (1.0 + (-2.0 * x).exp())
        }),
    ];
    let x = xs(10);
    for (op, attrs, reference) in cases {
        let bytes = model(
            vec![node(op, &["x"], &["y"], attrs)],
            vec![input("x", FLOAT, Some(&[2, 5]))],
            vec![],
            &["y"],
            24,
        );
        let session = load_atomic(&bytes);
        let y = session
            .run(vec![(
                "x".into(),
                Tensor::new(vec![2, 5], x.clone()).unwrap(),
            )])
            .unwrap();
        let want: Vec<f32> = x.iter().map(|&v| reference(v)).collect();
        assert_close(y[0].1.data(), &want, op);
    }
}

#[test]
fn normalizations_and_log_softmax_lower_to_reductions() {
    let x = xs(24);
    let (scale, bias) = (xs(4).iter().map(|v| v + 1.0).collect::<Vec<_>>(), xs(4));
    let bytes = model(
        vec![
            node(
                "LayerNormalization",
                &["x", "s", "b"],
                &["ln", "mean", "inv"],
                vec![],
            ),
            node("LogSoftmax", &["x"], &["ls"], vec![int_attr("axis", 1)]),
            node("Hardmax", &["x"], &["hm"], vec![]),
        ],
        vec![input("x", FLOAT, Some(&[2, 3, 4]))],
        vec![floats("s", &[4], &scale), floats("b", &[4], &bias)],
        &["ln", "mean", "inv", "ls", "hm"],
        11,
    );
    let session = load_atomic(&bytes);
    let out = session
        .run(vec![(
            "x".into(),
            Tensor::new(vec![2, 3, 4], x.clone()).unwrap(),
        )])
        .unwrap();
    let (mut ln, mut means, mut invs) = (vec![], vec![], vec![]);
    for row in x.chunks(4) {
        let mean = row.iter().sum::<f32>() / 4.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        let inv = 1.0 / (var + 1e-5).sqrt();
        ln.extend(
            row.iter()
                .enumerate()
                .map(|(i, v)| (v - mean) * inv * scale[i] + bias[i]),
        );
        means.push(mean);
        invs.push(inv);
    }
    assert_close(out[0].1.data(), &ln, "LayerNormalization");
    assert_eq!(out[1].1.shape(), [2, 3, 1]);
    assert_close(out[1].1.data(), &means, "Mean");
    assert_close(out[2].1.data(), &invs, "InvStdDev");
    // Opset 11: LogSoftmax and Hardmax see [2, 12] rows.
    let mut ls = vec![];
    let mut hm = vec![];
    for row in x.chunks(12) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
        ls.extend(row.iter().map(|v| v - max - log_sum));
        let first = row.iter().position(|&v| v == max).unwrap();
        hm.extend((0..12).map(|i| if i == first { 1.0 } else { 0.0 }));
    }
    assert_close(out[3].1.data(), &ls, "LogSoftmax");
    assert_eq!(out[4].1.shape(), [2, 3, 4]);
    assert_eq!(out[4].1.data(), hm, "Hardmax");
}

#[test]
fn composite_reductions_clip_and_variadic_ops() {
    let x = xs(12);
    let axes = |values: &[i64]| ints_attr("axes", values);
    let bytes = model(
        vec![
            node(
                "ReduceLogSumExp",
                &["x"],
                &["lse"],
                vec![axes(&[1]), int_attr("keepdims", 0)],
            ),
            node("ReduceL2", &["x"], &["l2"], vec![axes(&[0])]),
            node("Clip", &["x", "lo", ""], &["clip"], vec![]),
            node("Mean", &["x", "x", "lo"], &["mean"], vec![]),
        ],
        vec![input("x", FLOAT, Some(&[3, 4]))],
        vec![floats("lo", &[], &[-1.0])],
        &["lse", "l2", "clip", "mean"],
        13,
    );
    let session = load_atomic(&bytes);
    let out = session
        .run(vec![(
            "x".into(),
            Tensor::new(vec![3, 4], x.clone()).unwrap(),
        )])
        .unwrap();
    let lse: Vec<f32> = x
        .chunks(4)
        .map(|r| r.iter().map(|v| v.exp()).sum::<f32>().ln())
        .collect();
    assert_close(out[0].1.data(), &lse, "ReduceLogSumExp");
    let l2: Vec<f32> = (0..4)
        .map(|j| (0..3).map(|i| x[i * 4 + j].powi(2)).sum::<f32>().sqrt())
        .collect();
    assert_eq!(out[1].1.shape(), [1, 4]);
    assert_close(out[1].1.data(), &l2, "ReduceL2");
    let clip: Vec<f32> = x.iter().map(|v| v.max(-1.0)).collect();
    assert_close(out[2].1.data(), &clip, "Clip");
    let mean: Vec<f32> = x.iter().map(|v| (2.0 * v - 1.0) / 3.0).collect();
    assert_close(out[3].1.data(), &mean, "Mean");
}

#[test]
fn int64_inputs_compare_select_and_cast() {
    let three = pb::TensorProto {
        name: "three".into(),
        data_type: INT64,
        int64_data: vec![3],
        ..Default::default()
    };
    let bytes = model(
        vec![
            node("Greater", &["x", "three"], &["big"], vec![]),
            node("Where", &["big", "x", "three"], &["y"], vec![]),
            node("Cast", &["y"], &["f"], vec![int_attr("to", 1)]),
        ],
        vec![input("x", INT64, Some(&[4]))],
        vec![three],
        &["y", "f"],
        13,
    );
    let session = load_atomic(&bytes);
    let x = Value::I64 {
        shape: vec![4],
        data: vec![1, 5, 3, 9],
    };
    let out = session.run_values(vec![("x".into(), x)]).unwrap();
    assert_eq!(
        out[0].1,
        Value::I64 {
            shape: vec![4],
            data: vec![3, 5, 3, 9]
        }
    );
    assert_eq!(
        out[1].1,
        Value::F32(Tensor::new(vec![4], vec![3.0, 5.0, 3.0, 9.0]).unwrap())
    );
    let float = Value::F32(Tensor::zeros(vec![4]));
    assert!(
        session.run_values(vec![("x".into(), float)]).is_err(),
        "wrong type"
    );
}

#[test]
fn type_mixes_and_unknown_ranks_fail_the_load_naming_the_node() {
    let mixed = model(
        vec![node("Add", &["x", "i"], &["y"], vec![])],
        vec![input("x", FLOAT, Some(&[2])), input("i", INT64, Some(&[2]))],
        vec![],
        &["y"],
        13,
    );
    match Engine::load(&mixed).unwrap_err() {
        LoadError::Shape { node, reason, .. } => {
            assert_eq!(node, "Add_node");
            assert!(reason.contains("mixes float and int64"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let rankless = model(
        vec![node("LayerNormalization", &["x", "s"], &["y"], vec![])],
        vec![input("x", FLOAT, None)],
        vec![floats("s", &[1], &[1.0])],
        &["y"],
        17,
    );
    match Engine::load(&rankless).unwrap_err() {
        LoadError::Shape { node, reason, .. } => {
            assert_eq!(node, "LayerNormalization_node");
            assert!(reason.contains("rank"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_d_convolutions_and_pools_run_as_2d_ones_with_a_unit_width() {
    let ints = ints_attr;
    let (x, w) = (xs(2 * 10), xs(3 * 2 * 3));
    let bytes = model(
        vec![
            node(
                "Conv",
                &["x", "w"],
                &["c"],
                vec![
                    ints("kernel_shape", &[3]),
                    ints("pads", &[1, 0]),
                    ints("strides", &[2]),
                ],
            ),
            node("MaxPool", &["x"], &["p"], vec![ints("kernel_shape", &[4])]),
        ],
        vec![input("x", FLOAT, Some(&[1, 2, 10]))],
        vec![floats("w", &[3, 2, 3], &w)],
        &["c", "p"],
        13,
    );
    let session = load_atomic(&bytes);
    let out = session
        .run(vec![(
            "x".into(),
            Tensor::new(vec![1, 2, 10], x.clone()).unwrap(),
        )])
        .unwrap();
    // Output length: (10 + 1 - 3) / 2 + 1 = 5, reading positions 2·o − 1 + k.
    let mut conv = vec![];
    for m in 0..3 {
        for o in 0..5 {
            let mut sum = 0.0;
            for c in 0..2 {
                for k in 0..3 {
                    let at = (2 * o + k) as i64 - 1;
                    if (0..10).contains(&at) {
                        sum += x[c * 10 + at as usize] * w[(m * 2 + c) * 3 + k];
                    }
                }
            }
            conv.push(sum);
        }
    }
    assert_eq!(out[0].1.shape(), [1, 3, 5]);
    assert_close(out[0].1.data(), &conv, "Conv 1-D");
    let pool: Vec<f32> = (0..2)
        .flat_map(|c| (0..7).map(move |o| (c, o)))
        .map(|(c, o)| {
            x[c * 10 + o..c * 10 + o + 4]
                .iter()
                .cloned()
                .fold(f32::MIN, f32::max)
        })
        .collect();
    assert_eq!(out[1].1.shape(), [1, 2, 7]);
    assert_close(out[1].1.data(), &pool, "MaxPool 1-D");
}

#[test]
fn dropout_masks_rms_and_lp_normalization_and_nan_tests() {
    let x = xs(6);
    let bytes = model(
        vec![
            node("Dropout", &["x"], &["d", "mask"], vec![]),
            node("RMSNormalization", &["x", "s"], &["rms"], vec![]),
            node("LpNormalization", &["x"], &["lp"], vec![int_attr("p", 1)]),
            node("Div", &["x", "zero"], &["inf"], vec![]),
            node(
                "IsInf",
                &["inf"],
                &["isinf"],
                vec![int_attr("detect_negative", 0)],
            ),
        ],
        vec![input("x", FLOAT, Some(&[2, 3]))],
        vec![
            floats("s", &[3], &[1.0, 2.0, 3.0]),
            floats("zero", &[], &[0.0]),
        ],
        &["d", "mask", "rms", "lp", "isinf"],
        23,
    );
    let session = load_atomic(&bytes);
    let input = Value::F32(Tensor::new(vec![2, 3], x.clone()).unwrap());
    let out = session
        .run_values(vec![("x".into(), input.clone())])
        .unwrap();
    assert_eq!(out[0].1, input);
    assert_eq!(
        out[1].1,
        Value::I64 {
            shape: vec![2, 3],
            data: vec![1; 6]
        }
    );
    let (mut rms, mut lp) = (vec![], vec![]);
    for row in x.chunks(3) {
        let r = (row.iter().map(|v| v * v).sum::<f32>() / 3.0 + 1e-5).sqrt();
        rms.extend(row.iter().enumerate().map(|(i, v)| v / r * (i + 1) as f32));
        let n: f32 = row.iter().map(|v| v.abs()).sum();
        lp.extend(row.iter().map(|v| v / n));
    }
    let float = |v: &Value| match v {
        Value::F32(t) => t.data().to_vec(),
        other => panic!("{other:?}"),
    };
    assert_close(&float(&out[2].1), &rms, "RMSNormalization");
    assert_close(&float(&out[3].1), &lp, "LpNormalization");
    let positive: Vec<i64> = x.iter().map(|&v| i64::from(v > 0.0)).collect();
    assert_eq!(
        out[4].1,
        Value::I64 {
            shape: vec![2, 3],
            data: positive
        },
        "x/0 is ±∞ (x ≠ 0)"
    );
}

#[test]
fn losses_gather_weight_ignore_and_reduce() {
    let x = xs(2 * 3 * 2);
    let target = pb::TensorProto {
        name: "t".into(),
        dims: vec![2, 2],
        data_type: INT64,
        int64_data: vec![2, -1, 0, 1],
        ..Default::default()
    };
    let weight = [0.5, 1.0, 2.0];
    let attrs = || vec![int_attr("ignore_index", -1)];
    let bytes = model(
        vec![
            node(
                "NegativeLogLikelihoodLoss",
                &["x", "t", "w"],
                &["nll"],
                attrs(),
            ),
            node(
                "SoftmaxCrossEntropyLoss",
                &["x", "t"],
                &["sce", "logp"],
                attrs(),
            ),
        ],
        vec![input("x", FLOAT, Some(&[2, 3, 2]))],
        vec![target, floats("w", &[3], &weight)],
        &["nll", "sce", "logp"],
        13,
    );
    let session = load_atomic(&bytes);
    let out = session
        .run(vec![(
            "x".into(),
            Tensor::new(vec![2, 3, 2], x.clone()).unwrap(),
        )])
        .unwrap();
    let at = |n: usize, c: usize, d: usize| x[(n * 3 + c) * 2 + d];
    let kept = [(0, 0, 2), (1, 0, 0), (1, 1, 1)]; // (n, d, class); (0, 1) is ignored
    let (mut sum, mut weights) = (0.0, 0.0);
    for &(n, d, c) in &kept {
        sum -= weight[c] * at(n, c, d);
        weights += weight[c];
    }
    assert_close(out[0].1.data(), &[sum / weights], "NLL");
    let logp = |n: usize, c: usize, d: usize| {
        let total: f32 = (0..3).map(|k| at(n, k, d).exp()).sum();
        at(n, c, d) - total.ln()
    };
    let sce = -kept.iter().map(|&(n, d, c)| logp(n, c, d)).sum::<f32>() / 3.0;
    assert_eq!(out[1].1.shape(), [] as [usize; 0]);
    assert_close(out[1].1.data(), &[sce], "SoftmaxCrossEntropyLoss");
    assert_eq!(out[2].1.shape(), [2, 3, 2]);
    assert_close(&out[2].1.data()[..1], &[logp(0, 0, 0)], "log_prob");
}

#[test]
fn attention_is_matmuls_a_causal_bias_and_a_softmax() {
    let (q, k, v) = (xs(2 * 3 * 2), xs(3 * 2), xs(3 * 2));
    let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        q,
        k.iter().map(|x| x * 0.5).collect(),
        v.iter().map(|x| x - 1.0).collect(),
    );
    // Three query heads share one key/value head (grouped-query), queries 2, keys 3.
    let bytes = model(
        vec![node(
            "Attention",
            &["q", "k", "v"],
            &["y"],
            vec![int_attr("is_causal", 1)],
        )],
        vec![
            input("q", FLOAT, Some(&[1, 3, 2, 2])),
            input("k", FLOAT, Some(&[1, 1, 3, 2])),
            input("v", FLOAT, Some(&[1, 1, 3, 2])),
        ],
        vec![],
        &["y"],
        23,
    );
    let session = load_atomic(&bytes);
    let tensor =
        |shape: &[usize], data: &[f32]| Tensor::new(shape.to_vec(), data.to_vec()).unwrap();
    let out = session
        .run(vec![
            ("q".into(), tensor(&[1, 3, 2, 2], &q)),
            ("k".into(), tensor(&[1, 1, 3, 2], &k)),
            ("v".into(), tensor(&[1, 1, 3, 2], &v)),
        ])
        .unwrap();
    let mut want = vec![];
    for h in 0..3 {
        for i in 0..2 {
            let scores: Vec<f32> = (0..=i)
                .map(|j| {
                    (0..2)
                        .map(|e| q[(h * 2 + i) * 2 + e] * k[j * 2 + e])
                        .sum::<f32>()
                        / 2f32.sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::MIN, f32::max);
            let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = weights.iter().sum();
            for e in 0..2 {
                want.push(
                    (0..=i)
                        .map(|j| weights[j] / total * v[j * 2 + e])
                        .sum::<f32>(),
                );
            }
        }
    }
    assert_eq!(out[0].1.shape(), [1, 3, 2, 2]);
    assert_close(out[0].1.data(), &want, "Attention");
}

/// ConvTranspose by its definition: each input value scatters its kernel into the output.
fn conv_transpose_reference(
    (x, [n, c, h, w]): (&[f32], [usize; 4]),
    (weights, [cout_g, kh, kw]): (&[f32], [usize; 3]),
    (group, stride, pads_begin): (usize, [usize; 2], [usize; 2]),
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    let cin_g = c / group;
    let mut y = vec![0.0; n * cout_g * group * oh * ow];
    for b in 0..n {
        for ci in 0..c {
            let g = ci / cin_g;
            for i in 0..h {
                for j in 0..w {
                    for co in 0..cout_g {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let (r, s) = (
                                    (i * stride[0] + ki) as i64 - pads_begin[0] as i64,
                                    (j * stride[1] + kj) as i64 - pads_begin[1] as i64,
                                );
                                if r < 0 || s < 0 || r as usize >= oh || s as usize >= ow {
                                    continue;
                                }
                                let o = g * cout_g + co;
                                let out =
                                    ((b * cout_g * group + o) * oh + r as usize) * ow + s as usize;
                                y[out] += x[((b * c + ci) * h + i) * w + j]
                                    * weights[((ci * cout_g + co) * kh + ki) * kw + kj];
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

#[test]
fn conv_transpose_is_a_convolution_of_a_zero_spread_input() {
    let ints = ints_attr;
    let (x, w) = (xs(2 * 4 * 3 * 3), xs(4 * 2 * 3 * 2));
    let bytes = model(
        vec![node(
            "ConvTranspose",
            &["x", "w"],
            &["y"],
            vec![
                ints("strides", &[2, 3]),
                ints("pads", &[1, 0, 0, 1]),
                ints("output_padding", &[1, 0]),
                int_attr("group", 2),
            ],
        )],
        vec![input("x", FLOAT, Some(&[2, 4, 3, 3]))],
        vec![floats("w", &[4, 2, 3, 2], &w)],
        &["y"],
        13,
    );
    let session = load_atomic(&bytes);
    let out = session
        .run(vec![(
            "x".into(),
            Tensor::new(vec![2, 4, 3, 3], x.clone()).unwrap(),
        )])
        .unwrap();
    // Height: 2·(3 − 1) + 3 + 1 − 1 = 7; width: 3·(3 − 1) + 2 − 1 = 7.
    let want = conv_transpose_reference(
        (&x, [2, 4, 3, 3]),
        (&w, [2, 3, 2]),
        (2, [2, 3], [1, 0]),
        [7, 7],
    );
    assert_eq!(out[0].1.shape(), [2, 4, 7, 7]);
    assert_close(out[0].1.data(), &want, "ConvTranspose");
}

#[test]
fn one_hot_eye_like_and_lp_pool() {
    let ints = ints_attr;
    let x = xs(5);
    let bytes = model(
        vec![
            node(
                "OneHot",
                &["i", "depth", "values"],
                &["hot"],
                vec![int_attr("axis", 0)],
            ),
            node("EyeLike", &["m"], &["eye"], vec![int_attr("k", 1)]),
            node(
                "LpPool",
                &["x"],
                &["lp"],
                vec![ints("kernel_shape", &[2]), ints("pads", &[0, 1])],
            ),
        ],
        vec![
            input("i", INT64, Some(&[3])),
            input("x", FLOAT, Some(&[1, 1, 5])),
            input("m", FLOAT, Some(&[2, 3])),
        ],
        vec![
            floats("depth", &[1], &[4.0]),
            floats("values", &[2], &[-1.0, 2.0]),
        ],
        &["hot", "eye", "lp"],
        13,
    );
    let session = load_atomic(&bytes);
    let indices = Value::I64 {
        shape: vec![3],
        data: vec![0, -1, 5],
    };
    let input_x = Value::F32(Tensor::new(vec![1, 1, 5], x.clone()).unwrap());
    let m = Value::F32(Tensor::zeros(vec![2, 3]));
    let out = session
        .run_values(vec![
            ("i".into(), indices),
            ("x".into(), input_x),
            ("m".into(), m),
        ])
        .unwrap();
    let float = |v: &Value| match v {
        Value::F32(t) => (t.shape().to_vec(), t.data().to_vec()),
        other => panic!("{other:?}"),
    };
    // Axis 0: row d holds on where the index is d (−1 is 3; 5 is out of range: all off).
    let (shape, hot) = float(&out[0].1);
    assert_eq!(shape, [4, 3]);
    let mut want = vec![-1.0; 12];
    want[0] = 2.0;
    want[3 * 3 + 1] = 2.0;
    assert_eq!(hot, want);
    let (shape, eye) = float(&out[1].1);
    assert_eq!((shape, eye), (vec![2, 3], vec![0., 1., 0., 0., 0., 1.]));
    let (shape, lp) = float(&out[2].1);
    let padded: Vec<f32> = x.iter().cloned().chain([0.0]).collect();
    let want: Vec<f32> = padded
        .windows(2)
        .map(|w| (w[0] * w[0] + w[1] * w[1]).sqrt())
        .collect();
    assert_eq!(shape, [1, 1, 5]);
    assert_close(&lp, &want, "LpPool");
}

#[test]
fn center_crop_pad_and_dequantize_linear() {
    let ints = |name: &str, values: &[i64]| pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: INT64,
        int64_data: values.to_vec(),
        ..Default::default()
    };
    let bytes = model(
        vec![
            node("CenterCropPad", &["x", "target"], &["crop"], vec![]),
            node(
                "DequantizeLinear",
                &["q", "scale", "zero"],
                &["dq"],
                vec![int_attr("axis", 0)],
            ),
        ],
        vec![
            input("x", FLOAT, Some(&[3, 2])),
            input("q", INT64, Some(&[2, 2])),
        ],
        vec![
            ints("target", &[1, 4]),
            floats("scale", &[2], &[0.5, 2.0]),
            ints("zero", &[1, -1]),
        ],
        &["crop", "dq"],
        21,
    );
    let session = load_atomic(&bytes);
    let x = Value::F32(Tensor::new(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap());
    let q = Value::I64 {
        shape: vec![2, 2],
        data: vec![3, 5, 0, -3],
    };
    let out = session
        .run_values(vec![("x".into(), x), ("q".into(), q)])
        .unwrap();
    // Rows: the middle one of three; columns: one zero either side of two.
    let crop = Tensor::new(vec![1, 4], vec![0., 3., 4., 0.]).unwrap();
    assert_eq!(out[0].1, Value::F32(crop));
    // Row 0: (q − 1)·0.5; row 1: (q + 1)·2.
    let dq = Tensor::new(vec![2, 2], vec![1.0, 2.0, 2.0, -4.0]).unwrap();
    assert_eq!(out[1].1, Value::F32(dq));
}
