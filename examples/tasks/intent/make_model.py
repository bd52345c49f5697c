"""Writes intent.onnx, the intent task's model, with seeded random weights.

    python make_model.py [--out PATH]

Needs the `onnx` and `numpy` packages (scripts/setup.sh puts both in ~/.cache/walle-py). The model
predicts the category of the user's next query from the categories of their recent behaviour:

    recent:   i64 [1, 8]  the last 8 category ids (1-8, main.py's CATEGORIES), 0 where unknown
    activity: f32 [1, 2]  queries in the last 30 minutes / 10, distinct categories / 8
    probs:    f32 [1, 8]  softmax over the categories
    category: i64 [1, 1]  the most likely category's index (0-based, into CATEGORIES)

The logits are a random embedding-bag network (Gather of an embedding table, mean over the
sequence, Concat with the activity, Gemm) standing in for a trained one, plus 1.5 per recent
occurrence of each category (Unsqueeze, Equal, Cast, ReduceSum), so the category a user keeps
coming back to wins. Every operator is one the Walle engine runs.
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CATEGORIES = 8
SEQUENCE = 8
EMBEDDING = 16
ACTIVITY = 2
SEED = 20240523
RECENCY_WEIGHT = 1.5


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    embedding = rng.normal(0.0, 0.3, (CATEGORIES + 1, EMBEDDING)).astype(np.float32)
    embedding[0] = 0.0  # id 0: padding and unknown categories
    weights: dict[str, np.ndarray] = {
        "embedding": embedding,
        "w": rng.normal(0.0, 0.2, (EMBEDDING + ACTIVITY, CATEGORIES)).astype(np.float32),
        "b": rng.normal(0.0, 0.1, (CATEGORIES,)).astype(np.float32),
        "ids": np.arange(1, CATEGORIES + 1, dtype=np.int64),
        "seq_axis": np.array([1], dtype=np.int64),
        "last_axis": np.array([2], dtype=np.int64),
        "recency_weight": np.array([RECENCY_WEIGHT], dtype=np.float32),
    }
    nodes = [
        # Embedding bag: the mean of the recent categories' embeddings, with the activity.
        helper.make_node("Gather", ["embedding", "recent"], ["embedded"], axis=0),
        helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Concat", ["pooled", "activity"], ["x"], axis=1),
        helper.make_node("Gemm", ["x", "w", "b"], ["learned"]),
        # How often each category occurs in `recent`.
        helper.make_node("Unsqueeze", ["recent", "last_axis"], ["recent_col"]),
        helper.make_node("Equal", ["recent_col", "ids"], ["is_category"]),
        helper.make_node("Cast", ["is_category"], ["one_hot"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["one_hot", "seq_axis"], ["counts"], keepdims=0),
        helper.make_node("Mul", ["counts", "recency_weight"], ["recency"]),
        helper.make_node("Add", ["learned", "recency"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["probs"], ["category"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "intent",
        [
            helper.make_tensor_value_info("recent", TensorProto.INT64, [1, SEQUENCE]),
            helper.make_tensor_value_info("activity", TensorProto.FLOAT, [1, ACTIVITY]),
        ],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, CATEGORIES]),
            helper.make_tensor_value_info("category", TensorProto.INT64, [1, 1]),
        ],
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
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("intent.onnx"))
    out = parser.parse_args().out
    onnx.save(build(), str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
