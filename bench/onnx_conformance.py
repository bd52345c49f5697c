#!/usr/bin/env python3
"""Prepares the engine's conformance cases from the PyPI `onnx` package's own backend test data.

    python bench/onnx_conformance.py OUTDIR

writes OUTDIR/<category>/<case>/{model.onnx, input_N.pb, output_N.pb} for the categories

- node, pytorch-converted, pytorch-operator, simple: the package's cases as shipped
  (`test_data_set_0`);
- light: the 9 light models with the shipped reference output and the input onnx's own runner
  generates (`generate_dummy_data(seed=0, random=False)`);
- light-random: the same models with every `ConstantOfShape` weight replaced by a seeded random
  initializer and a seeded random input, the reference computed by ONNX Runtime on that model
  (the shipped light outputs are uniform, so matching them alone proves little); the logits
  before the final Softmax are a second output, since random weights can saturate it.

The engine's test (engine/tests/conformance.rs) runs every case and reports pass rates per
category. Nothing here is committed output: it is regenerated from the installed packages.
"""

import os
import shutil
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.runner import Runner

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def copy_shipped(category, out):
    root = os.path.join(DATA, category)
    for case in sorted(os.listdir(root)):
        src = os.path.join(root, case)
        data = os.path.join(src, "test_data_set_0")
        if not os.path.isfile(os.path.join(src, "model.onnx")) or not os.path.isdir(data):
            continue
        dst = os.path.join(out, category, case)
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(src, "model.onnx"), dst)
        for name in os.listdir(data):
            if name.endswith(".pb"):
                shutil.copy(os.path.join(data, name), dst)


def save(path, array):
    with open(path, "wb") as f:
        f.write(numpy_helper.from_array(np.asarray(array)).SerializeToString())


def graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def light(out):
    for file in sorted(os.listdir(os.path.join(DATA, "light"))):
        if not file.endswith(".onnx"):
            continue
        name = file[: -len(".onnx")]
        model = onnx.load(os.path.join(DATA, "light", file))
        dst = os.path.join(out, "light", name)
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(DATA, "light", file), os.path.join(dst, "model.onnx"))
        for i, x in enumerate(graph_inputs(model)):
            save(os.path.join(dst, f"input_{i}.pb"), Runner.generate_dummy_data(x, seed=0, random=False))
        shutil.copy(os.path.join(DATA, "light", f"{name}_output_0.pb"), os.path.join(dst, "output_0.pb"))
        light_random(name, model, out)


def light_random(name, model, out):
    """Replaces each ConstantOfShape whose shape is an initializer by a random initializer."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed=sum(map(ord, name)))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            values = (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)
            if len(shape) == 1:  # BatchNorm statistics and biases: keep variances positive
                values = (np.abs(values) + 0.5).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    # Random weights saturate some softmaxes (one-hot); the logits before the final Softmax
    # are compared too, as a second output.
    softmaxes = [n for n in kept if n.op_type == "Softmax"]
    if softmaxes:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(softmaxes[-1].input[0], onnx.TensorProto.FLOAT, None)
        )
    dst = os.path.join(out, "light-random", name)
    os.makedirs(dst, exist_ok=True)
    path = os.path.join(dst, "model.onnx")
    onnx.save(model, path)
    feeds = {}
    for i, x in enumerate(graph_inputs(model)):
        shape = [d.dim_value or 1 for d in x.type.tensor_type.shape.dim]
        feeds[x.name] = rng.random(shape, dtype=np.float32)
        save(os.path.join(dst, f"input_{i}.pb"), feeds[x.name])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for i, value in enumerate(session.run(None, feeds)):
        save(os.path.join(dst, f"output_{i}.pb"), value)


def main():
    out = sys.argv[1]
    for category in ["node", "pytorch-converted", "pytorch-operator", "simple"]:
        copy_shipped(category, out)
    light(out)
    print(f"cases written to {out}")


if __name__ == "__main__":
    main()
