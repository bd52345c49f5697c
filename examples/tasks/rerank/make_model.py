"""Writes ranker.onnx, the rerank task's model, with seeded random weights.

    python make_model.py [--out PATH]

Needs the `onnx` and `numpy` packages (scripts/setup.sh puts both in ~/.cache/walle-py). The model
scores each item the user was shown from six features the task computes (see main.py):

    score = sigmoid(items · prior + mlp(items))        items: f32 [n, 6]  ->  score: f32 [n]

`prior` is fixed and says what a reranker should obviously do (push items of the categories the
user clicked up, items already clicked or shown again and again down); `mlp` is a small random
two-layer network standing in for a trained one, too small to overturn the prior. Only operators
the Walle engine runs are used: MatMul, Add, Relu, Sigmoid, Squeeze.
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 6
HIDDEN = 8
SEED = 20240522
# Per feature column (main.py's FEATURES): category affinity, extra exposures, already clicked,
# position, price, the session's click-through rate.
PRIOR = [2.0, -1.0, -3.0, -0.5, 0.0, 0.0]


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    weights: dict[str, np.ndarray] = {
        "prior": np.array(PRIOR, dtype=np.float32).reshape(FEATURES, 1),
        "w1": rng.normal(0.0, 0.3, (FEATURES, HIDDEN)).astype(np.float32),
        "b1": rng.normal(0.0, 0.1, (HIDDEN,)).astype(np.float32),
        "w2": rng.normal(0.0, 0.1, (HIDDEN, 1)).astype(np.float32),
        "b2": np.zeros((1,), dtype=np.float32),
        "squeeze_axes": np.array([1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["items", "prior"], ["prior_score"]),
        helper.make_node("MatMul", ["items", "w1"], ["h_lin"]),
        helper.make_node("Add", ["h_lin", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["m_lin"]),
        helper.make_node("Add", ["m_lin", "b2"], ["m"]),
        helper.make_node("Add", ["prior_score", "m"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Squeeze", ["prob", "squeeze_axes"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ranker",
        [helper.make_tensor_value_info("items", TensorProto.FLOAT, ["n", FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="walle-examples"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ranker.onnx"))
    out = parser.parse_args().out
    onnx.save(build(), str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
