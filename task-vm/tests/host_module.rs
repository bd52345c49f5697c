//! The `walle` host module as task scripts use it: tensors, models on the engine, the trigger
//! context, uploads, logs and per-task state.

mod common;

use std::sync::Arc;

use serde_json::json;
use walle_engine::onnx::pb;
use walle_vm::{Limits, MemoryState, StateStore, TaskCode, VmError, VmPool};

use common::{float_input, handler, node, onnx_model, records};

/// `y = Relu(x · w + b)` with `x: [1, 3]`, `w: [3, 2]`, `b: [2]`.
fn scorer() -> Vec<u8> {
    let floats = |name: &str, dims: &[i64], values: &[f32]| pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: values.to_vec(),
        ..Default::default()
    };
    let nodes = vec![
        node("MatMul", &["x", "w"], "xw"),
        node("Add", &["xw", "b"], "z"),
        node("Relu", &["z"], "y"),
    ];
    let weights = vec![
        floats("w", &[3, 2], &[1.0, -1.0, 2.0, -2.0, 3.0, 0.5]),
        floats("b", &[2], &[0.5, -0.25]),
    ];
    onnx_model(nodes, float_input("x", &[1, 3]), weights, "y")
}

fn with_scorer(mut code: TaskCode) -> TaskCode {
    code.models.push(("scorer".into(), Arc::new(scorer())));
    code
}

#[test]
fn tensors_convert_reshape_and_compute() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import walle
    t = walle.tensor([[1, 2, 3], [4, 5, 6]])
    r = t.reshape(3, -1)
    i = walle.tensor([1, 2], dtype='i64')
    return {
        'shape': list(t.shape), 'ndim': t.ndim, 'size': t.size, 'dtype': t.dtype,
        'reshaped': r.tolist(), 'sum': (t * 2 + 1).sum(), 'mean': t.mean(),
        'argmax': t.argmax(), 'div': (t / 2).tolist()[0], 'ints': (i + 1).tolist(),
        'int_dtype': (i * 3).dtype, 'neg': (-t).min(), 'rsub': (10 - i).tolist(),
    }";
    pool.load(handler("t@1", body, Limits::default())).unwrap();
    let out = records(&pool, "t@1", json!(null));
    assert_eq!(
        out,
        vec![json!({
            "shape": [2, 3], "ndim": 2, "size": 6, "dtype": "f32",
            "reshaped": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "sum": 48.0, "mean": 3.5,
            "argmax": 5, "div": [0.5, 1.0, 1.5], "ints": [2, 3], "int_dtype": "i64",
            "neg": -6.0, "rsub": [9, 8],
        })]
    );
}

#[test]
fn bad_tensors_raise_clear_errors() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import walle
    errors = []
    for make in (lambda: walle.tensor([[1, 2], [3]]), lambda: walle.tensor(['a']),
                 lambda: walle.tensor([1, 2, 3]).reshape(2, -1),
                 lambda: walle.tensor([1]) + walle.tensor([1, 2]),
                 lambda: walle.tensor([1], dtype='f16')):
        try:
            make()
            errors.append(None)
        except (ValueError, TypeError) as e:
            errors.append(str(e))
    return errors";
    pool.load(handler("t@1", body, Limits::default())).unwrap();
    let out = records(&pool, "t@1", json!(null));
    let texts: Vec<String> = out.iter().map(|e| e.to_string()).collect();
    for (text, expected) in texts.iter().zip([
        "ragged",
        "must be numbers",
        "cannot reshape 3 values",
        "shapes (1,) and (2,)",
        "dtype must be one of",
    ]) {
        assert!(text.contains(expected), "{text} should say {expected:?}");
    }
    assert_eq!(texts.len(), 5);
}

#[test]
fn a_bundled_model_runs_on_the_engine() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import walle
    model = walle.nn.load('scorer')
    out = model.run({'x': walle.tensor([ctx['x']])})
    y = out['y']
    return {'inputs': model.inputs, 'outputs': model.outputs, 'y': y.tolist(),
            'shape': list(y.shape), 'best': y.argmax()}";
    pool.load(with_scorer(handler("t@1", body, Limits::default())))
        .unwrap();
    let out = records(&pool, "t@1", json!({"x": [1.0, 0.5, -1.0]}));
    // x·w + b = [1 + 1 - 3 + 0.5, -1 - 1 - 0.5 - 0.25] → Relu → [0, 0]; another x below.
    assert_eq!(out[0]["y"], json!([[0.0, 0.0]]));
    assert_eq!(out[0]["inputs"], json!([["x", "f32", [1, 3]]]));
    assert_eq!(out[0]["outputs"], json!(["y"]));
    let out = records(&pool, "t@1", json!({"x": [2.0, 1.0, 1.0]}));
    // [2 + 2 + 3 + 0.5, -2 - 2 + 0.5 - 0.25] → [7.5, 0].
    assert_eq!(out[0]["y"], json!([[7.5, 0.0]]));
    assert_eq!(out[0]["shape"], json!([1, 2]));
    assert_eq!(out[0]["best"], json!(0));
}

#[test]
fn model_errors_name_the_model_and_the_problem() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import walle
    try:
        walle.nn.load(ctx['name']).run({'x': walle.tensor(ctx['x'])})
    except RuntimeError as e:
        return str(e)";
    pool.load(with_scorer(handler("t@1", body, Limits::default())))
        .unwrap();
    let missing = records(&pool, "t@1", json!({"name": "ranker", "x": [[1, 2, 3]]}));
    let text = missing[0].as_str().unwrap_or_default();
    assert!(
        text.contains("model ranker") && text.contains("scorer"),
        "{text}"
    );
    let wrong = records(&pool, "t@1", json!({"name": "scorer", "x": [[1, 2]]}));
    let text = wrong[0].as_str().unwrap_or_default();
    assert!(
        text.contains("model scorer") && text.contains("[1, 2]"),
        "{text}"
    );
}

#[test]
fn context_uploads_logs_and_state_reach_the_host() {
    let state = Arc::new(MemoryState::default());
    let pool = VmPool::with_state(1, state.clone()).unwrap();
    let body = "    import walle
    n = walle.state.get('runs', 0) + 1
    walle.state['runs'] = n
    walle.log('run', n, 'of', walle.context()['item'])
    walle.log('careful', level='warn')
    walle.upload({'item': ctx['item'], 'n': n})
    return {'done': n}";
    pool.load(handler("counter@1", body, Limits::default()))
        .unwrap();
    let first = pool.run("counter@1", json!({"item": "i1"})).unwrap();
    assert_eq!(
        first.records,
        vec![json!({"item": "i1", "n": 1}), json!({"done": 1})]
    );
    assert_eq!(first.logs, "[info] run 1 of i1\n[warn] careful\n");
    assert_eq!(
        records(&pool, "counter@1", json!({"item": "i2"}))[0],
        json!({"item": "i2", "n": 2})
    );
    // An upgrade keeps the task's state; another pool over the same store sees it too.
    let again = VmPool::with_state(1, state).unwrap();
    again
        .load(handler("counter@2", body, Limits::default()))
        .unwrap();
    assert_eq!(
        records(&again, "counter@2", json!({"item": "i3"}))[0],
        json!({"item": "i3", "n": 3})
    );
}

#[test]
fn a_failed_run_changes_no_state_and_a_staged_run_leaves_its_writes_to_the_caller() {
    let state = Arc::new(MemoryState::default());
    let pool = VmPool::with_state(1, state.clone()).unwrap();
    let body = "    import walle
    walle.state['n'] = walle.state.get('n', 0) + 1
    if ctx.get('fail'):
        raise ValueError('after writing')
    return walle.state['n']";
    pool.load(handler("t@1", body, Limits::default())).unwrap();
    assert_eq!(records(&pool, "t@1", json!({})), [json!(1)]);
    assert!(pool.run("t@1", json!({"fail": true})).is_err());
    assert_eq!(
        state.get("t", "n"),
        Ok(Some(json!(1))),
        "a failed run wrote state"
    );
    let staged = pool.run_staged("t@1", json!({})).result.unwrap();
    assert_eq!(staged.records, [json!(2)]);
    assert_eq!(staged.state[0].value, Some(json!(2)));
    assert_eq!(
        state.get("t", "n"),
        Ok(Some(json!(1))),
        "a staged run committed"
    );
    state.commit("t", &staged.state).unwrap();
    assert_eq!(records(&pool, "t@1", json!({})), [json!(3)]);
}

#[test]
fn an_upload_past_the_output_cap_fails_the_run_even_if_caught() {
    let pool = VmPool::new(1).unwrap();
    let body = "    import walle
    try:
        for i in range(100):
            walle.upload({'i': i, 'pad': 'x' * 50})
    except RuntimeError:
        pass
    return 'swallowed'";
    let limits = Limits {
        max_output_bytes: 500,
        ..Limits::default()
    };
    pool.load(handler("t@1", body, limits)).unwrap();
    let err = pool.run("t@1", json!(null));
    assert!(
        matches!(err, Err(VmError::OutputTooLarge { max: 500, .. })),
        "{err:?}"
    );
    // The worker and the task keep working.
    assert!(pool.run("t@1", json!(null)).is_err());
    pool.load(handler("ok@1", "    return 1", Limits::default()))
        .unwrap();
    assert_eq!(records(&pool, "ok@1", json!(null)), vec![json!(1)]);
}
