"""ONNX Runtime's own per-node profile of one model, to set beside the engine's
(`WALLE_PROFILE=1 time_model ...`): median kernel time per node over RUNS runs after warm-ups,
slowest first, and the sum.

    ~/.cache/walle-py/bin/python bench/ort_profile.py MODEL_DIR [THREADS] [RUNS]

MODEL_DIR holds model.onnx and input_0.pb, as bench/onnx_conformance.py prepares them
(~/.cache/walle-onnx-cases/<hash>/light-random/light_squeezenet).
"""

import json
import os
import statistics
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def main() -> None:
    model_dir = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    warmups = 50
    tensor = onnx.TensorProto()
    with open(os.path.join(model_dir, "input_0.pb"), "rb") as f:
        tensor.ParseFromString(f.read())
    x = numpy_helper.to_array(tensor).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options)
    name = session.get_inputs()[0].name
    for _ in range(warmups + runs):
        session.run(None, {name: x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            times.setdefault(node, []).append(event["dur"] / 1000.0)
            ops[node] = event.get("args", {}).get("op_name", "?")
    medians = {node: statistics.median(t[warmups:] or t) for node, t in times.items()}
    print(f"ONNX Runtime {ort.__version__}, {threads} thread(s), median of {runs} runs per node")
    for node, ms in sorted(medians.items(), key=lambda kv: -kv[1]):
        print(f"{ms:9.3f}  {ops[node]:<20} {node}")
    print(f"sum of node medians: {sum(medians.values()):.2f} ms")


if __name__ == "__main__":
    main()
